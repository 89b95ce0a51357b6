"""grpc's own helper packages (health, reflection, status) work on a lanerpc server and
channel unchanged: they check isinstance against grpc.aio's classes and use its API."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from examples.echo import echo_pb2, echo_pb2_grpc
from tests._support import msg, serve


@pytest.fixture(params=["tcp", "unix,tcp", "shm,unix,tcp"], ids=["tcp", "unix", "shm"])
def lanes(request):
    """Dial TCP; end up on the first lane listed."""
    return request.param


async def test_health_check_and_watch(lanes):
    servicer = health.aio.HealthServicer()
    async with serve(lambda s: health_pb2_grpc.add_HealthServicer_to_server(servicer, s),
                     lanes=lanes) as served:
        channel = served.channel(lanes=lanes)
        stub = health_pb2_grpc.HealthStub(channel)
        await servicer.set("echo", health_pb2.HealthCheckResponse.SERVING)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="echo"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        watch = stub.Watch(health_pb2.HealthCheckRequest(service="echo"), timeout=5)
        first = await asyncio.wait_for(watch.read(), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await servicer.set("echo", health_pb2.HealthCheckResponse.NOT_SERVING)
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert channel.lane == lanes.split(",")[0]


async def test_reflection_lists_and_describes_services(lanes):
    names = (echo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name, reflection.SERVICE_NAME)
    async with serve(lambda s: reflection.enable_server_reflection(names, s), lanes=lanes) as served:
        channel = served.channel(lanes=lanes)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=names[0]),
        ]
        replies = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=5)]
        listed = {s.name for s in replies[0].list_services_response.service}
        assert listed == set(names)
        files = replies[1].file_descriptor_response.file_descriptor_proto
        assert files and b"Echo" in files[0]


class RichErrors(echo_pb2_grpc.EchoServicer):
    async def Unary(self, request, context):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="payload", description="empty")]))
        await context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message="payload is empty", details=[detail])))


async def test_rich_error_details_round_trip(lanes):
    async with serve(RichErrors(), lanes=lanes) as served:
        channel = served.channel(lanes=lanes)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await echo_pb2_grpc.EchoStub(channel).Unary(msg(), timeout=5)
        error = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "payload is empty"
        status = rpc_status.from_call(error)
        assert status is not None and status.message == "payload is empty"
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert bad.field_violations[0].field == "payload"
