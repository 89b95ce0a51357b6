"""``lanerpc health``: grpc.health.v1 Check; exit 0 only when SERVING, and a code of its
own for each way of not being so."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

from tests._support import Echo, serve
from tests.cli._cli import ECHO, assert_no_traceback, cli, with_health


async def test_serving_and_not_serving():
    servicer = health.aio.HealthServicer()
    await servicer.set(ECHO, health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("sleepy.Service", health_pb2.HealthCheckResponse.NOT_SERVING)
    async with serve(Echo(), with_health(servicer)) as served:
        whole = await cli("health", served.target)
        echo = await cli("health", served.target, ECHO)
        sleepy = await cli("health", served.target, "sleepy.Service")
    assert (whole.code, whole.out, whole.err) == (0, "SERVING\n", "")
    assert (echo.code, echo.out) == (0, "SERVING\n")
    assert (sleepy.code, sleepy.out) == (1, "NOT_SERVING\n")


async def test_an_unknown_service_is_not_found():
    async with serve(Echo(), with_health(health.aio.HealthServicer())) as served:
        result = await cli("health", served.target, "no.Such")
    assert result.code == 5
    assert result.out == ""
    assert result.err.startswith("ERROR:\n  Code: NotFound\n")
    assert "does not know no.Such" in result.err


async def test_no_health_service_is_unimplemented():
    async with serve(Echo()) as served:
        result = await cli("health", served.target)
    assert result.code == 12
    assert result.err.startswith("ERROR:\n  Code: Unimplemented\n")
    assert_no_traceback(result)


async def test_nothing_listening_is_unavailable(tmp_path):
    result = await cli("health", f"unix:{tmp_path}/nobody.sock")
    assert result.code == 14
    assert result.err.startswith("ERROR:\n  Code: Unavailable\n")
    assert_no_traceback(result)
