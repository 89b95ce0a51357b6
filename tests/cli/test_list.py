"""``lanerpc list``: a server's services and a service's methods, through reflection."""

from __future__ import annotations

from tests._support import Echo, serve
from tests.cli._cli import ECHO, assert_no_traceback, cli, lines, with_reflection


async def test_lists_the_services_one_per_line():
    async with serve(Echo(), with_reflection) as served:
        result = await cli("list", served.target)
    assert (result.code, result.err) == (0, "")
    assert lines(result.out) == sorted([ECHO, "grpc.reflection.v1alpha.ServerReflection"])


async def test_lists_a_services_methods_by_full_name(tmp_path):
    async with serve(Echo(), with_reflection, address=f"unix:{tmp_path}/s.sock") as served:
        result = await cli("list", served.target, ECHO)
    assert (result.code, result.err) == (0, "")
    assert lines(result.out) == [f"{ECHO}.{m}" for m in ("Unary", "ServerStream", "ClientStream", "Bidi")]


async def test_an_unknown_service_is_not_found():
    async with serve(Echo(), with_reflection) as served:
        result = await cli("list", served.target, "no.Such")
    assert result.code == 5
    assert result.out == ""
    assert "no.Such not found" in result.err
    assert_no_traceback(result)


async def test_a_server_without_reflection_says_so():
    async with serve(Echo()) as served:
        result = await cli("list", served.target)
    assert result.code == 12
    assert "does not serve reflection" in result.err
    assert_no_traceback(result)


async def test_nothing_listening_is_unavailable_printed_as_grpcurl_does():
    async with serve(Echo()) as served:
        target = served.target
    result = await cli("list", target)          # the server is gone: its port is free
    assert result.code == 14
    assert result.err.startswith("ERROR:\n  Code: Unavailable\n  Message: ")
    assert_no_traceback(result)
