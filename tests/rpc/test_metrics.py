"""rpc.enable_metrics(): lanerpc's calls recorded through OpenTelemetry's metrics API,
with grpc's metric names (gRFC A66), read back with the SDK's InMemoryMetricReader."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import rpc
from rpc import _metrics
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, within


@pytest.fixture
def reader():
    reader = InMemoryMetricReader()
    rpc.enable_metrics(MeterProvider(metric_readers=[reader]))
    try:
        yield reader
    finally:
        rpc.disable_metrics()


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    out: dict[str, list] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def _one(points: list, **attributes: str):
    matching = [p for p in points if all(p.attributes.get(k) == v for k, v in attributes.items())]
    assert len(matching) == 1, (attributes, [dict(p.attributes) for p in points])
    return matching[0]


async def _requests(n: int):
    for i in range(n):
        yield msg(b"x" * (10 + i))


async def test_calls_are_recorded_with_lane_method_and_status(reader):
    async with serve(Echo()) as served:
        shm_stub = echo_pb2_grpc.EchoStub(served.channel())
        tcp_stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        for _ in range(3):
            await within(shm_stub.Unary(msg(b"a" * 100), timeout=5))
        await within(tcp_stub.Unary(msg(b"b" * 50), timeout=5))
        with pytest.raises(grpc.aio.AioRpcError):
            await within(tcp_stub.Unary(msg(b"fail"), timeout=5))
        reply = await within(shm_stub.ClientStream(_requests(4), timeout=5))
        assert reply.payload
    points = _points(reader)
    unary = "lanerpc.echo.Echo/Unary"
    target = served.target

    started = _one(points["grpc.client.attempt.started"], **{"grpc.method": unary})
    assert started.value == 5 and started.attributes["grpc.target"] == target
    duration = points["grpc.client.attempt.duration"]
    shm_ok = _one(duration, **{"grpc.method": unary, "lanerpc.lane": "shm", "grpc.status": "OK"})
    assert shm_ok.count == 3 and 0 < shm_ok.sum < 15
    assert _one(duration, **{"grpc.method": unary, "lanerpc.lane": "tcp", "grpc.status": "OK"}).count == 1
    assert _one(duration, **{"grpc.method": unary, "lanerpc.lane": "tcp",
                             "grpc.status": "FAILED_PRECONDITION"}).count == 1
    assert _one(points["grpc.client.call.duration"], **{"lanerpc.lane": "shm",
                                                       "grpc.method": unary}).count == 3
    # Bytes: the serialized messages.
    size = msg(b"a" * 100).ByteSize()
    sent = _one(points["grpc.client.attempt.sent_total_compressed_message_size"],
                **{"grpc.method": unary, "lanerpc.lane": "shm"})
    assert sent.sum == 3 * size
    rcvd = _one(points["grpc.client.attempt.rcvd_total_compressed_message_size"],
                **{"grpc.method": unary, "lanerpc.lane": "shm"})
    assert rcvd.sum == 3 * size
    stream = "lanerpc.echo.Echo/ClientStream"
    assert _one(points["lanerpc.client.attempt.sent_messages"], **{"grpc.method": stream}).sum == 4
    assert _one(points["lanerpc.client.attempt.rcvd_messages"], **{"grpc.method": stream}).sum == 1

    # The server's side of the same calls.
    assert _one(points["grpc.server.call.started"], **{"grpc.method": unary}).value == 5
    server_duration = points["grpc.server.call.duration"]
    assert _one(server_duration, **{"grpc.method": unary, "lanerpc.lane": "shm",
                                    "grpc.status": "OK"}).count == 3
    assert _one(server_duration, **{"grpc.method": unary, "lanerpc.lane": "tcp",
                                    "grpc.status": "FAILED_PRECONDITION"}).count == 1
    assert _one(points["grpc.server.call.rcvd_total_compressed_message_size"],
                **{"grpc.method": unary, "lanerpc.lane": "shm"}).sum == 3 * size
    assert _one(points["lanerpc.server.call.rcvd_messages"], **{"grpc.method": stream}).sum == 4
    assert _one(points["lanerpc.server.call.sent_messages"], **{"grpc.method": stream}).sum == 1


async def test_a_call_that_found_no_server_is_recorded_without_a_lane(reader):
    channel = rpc.insecure_channel("127.0.0.1:1")
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(), timeout=0.5))
    finally:
        await within(channel.close())
    point = _one(_points(reader)["grpc.client.attempt.duration"], **{"lanerpc.lane": "none"})
    assert point.attributes["grpc.status"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


async def test_disabled_metrics_record_nothing():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    rpc.enable_metrics(provider)
    rpc.disable_metrics()
    assert _metrics.recorder is None
    async with serve(Echo()) as served:
        await within(echo_pb2_grpc.EchoStub(served.channel()).Unary(msg(b"a"), timeout=5))
    assert not _points(reader)


def test_lanerpc_imports_no_opentelemetry_until_asked():
    code = "import sys, rpc\nassert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
