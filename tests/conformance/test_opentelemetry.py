"""OpenTelemetry's grpc.aio instrumentation, unchanged, on every implementation: its aio
client interceptors and aio server interceptor make one client span and one server
span per call, linked (same trace, the server span a child of the client span), for
the four call kinds, streaming requests sent with ``write()``.

Every await that could hang is bounded.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc import aio

pytest.importorskip("opentelemetry.instrumentation.grpc")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from tests._support import wait_until, within  # noqa: E402
from tests.conformance import conformance_pb2 as pb  # noqa: E402
from tests.conformance import conformance_pb2_grpc  # noqa: E402
from tests.conformance.impls import Impl  # noqa: E402
from tests.conformance.servicer import ConformanceServicer  # noqa: E402

RPC_TIMEOUT = 5.0
SERVICE = "/lanerpc.conformance.TestService/"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A tracer provider of the test's own (the global one is left alone)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def traced_stub(start, connect, provider: TracerProvider) -> Any:
    served = await start(ConformanceServicer(),
                         interceptors=[aio_server_interceptor(tracer_provider=provider)])
    channel = connect(served, interceptors=aio_client_interceptors(tracer_provider=provider))
    return conformance_pb2_grpc.TestServiceStub(channel)


async def unary_unary(stub: Any, impl: Impl) -> None:
    await within(stub.UnaryCall(pb.SimpleRequest(response_size=3), timeout=RPC_TIMEOUT))


async def unary_stream(stub: Any, impl: Impl) -> None:
    request = pb.StreamingOutputCallRequest(
        response_parameters=[pb.ResponseParameters(size=1), pb.ResponseParameters(size=2)])
    call = stub.StreamingOutputCall(request, timeout=RPC_TIMEOUT)
    assert [len(r.payload.body) async for r in call] == [1, 2]


async def stream_unary(stub: Any, impl: Impl) -> None:
    request = pb.StreamingInputCallRequest(payload=pb.Payload(body=bytes(4)))
    if not impl.lanerpc_channel:
        # grpc.aio's write() waits for the interceptors to return the call, and
        # OpenTelemetry's stream-unary interceptor returns it only once the call has
        # ended: write() never returns there. Its callers pass a request iterator.
        async def requests() -> Any:
            yield request

        call = stub.StreamingInputCall(requests(), timeout=RPC_TIMEOUT)
    else:
        call = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
        await within(call.write(request))
        await within(call.done_writing())
    assert (await within(call)).aggregated_payload_size == 4


async def stream_stream(stub: Any, impl: Impl) -> None:
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(call.write(pb.StreamingOutputCallRequest(
        response_parameters=[pb.ResponseParameters(size=5)])))
    assert len((await within(call.read())).payload.body) == 5
    await within(call.done_writing())
    assert await within(call.read()) is aio.EOF
    assert await within(call.code()) == grpc.StatusCode.OK


@pytest.mark.parametrize("kind, method", [
    (unary_unary, "UnaryCall"),
    (unary_stream, "StreamingOutputCall"),
    (stream_unary, "StreamingInputCall"),
    (stream_stream, "FullDuplexCall"),
], ids=["unary_unary", "unary_stream", "stream_unary", "stream_stream"])
async def test_client_and_server_spans_are_linked(start, connect, impl, provider, exporter,
                                                  kind, method):
    if impl.bind in ("memory", "pipe"):
        pytest.skip("the in-memory and pipe transports' peer addresses (memory:NAME, pipe:PID) "
                    "have no gRPC peer form (ipv4:, ipv6:, unix:), which OpenTelemetry's "
                    "server span parses")
    stub = await traced_stub(start, connect, provider)
    await kind(stub, impl)
    await wait_until(lambda: len(exporter.get_finished_spans()) >= 2)
    spans = exporter.get_finished_spans()
    assert len(spans) == 2, spans
    client = next(span for span in spans if span.kind is SpanKind.CLIENT)
    server = next(span for span in spans if span.kind is SpanKind.SERVER)
    assert client.name == server.name == SERVICE + method
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert client.status.is_ok and server.status.is_ok
