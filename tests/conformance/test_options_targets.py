"""Targets lanerpc can't resolve and server ports already taken, as grpc.aio answers
them. Run against every active implementation with the same assertions."""

from __future__ import annotations

import socket

import grpc
import pytest
from grpc import aio

from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, within

TIMEOUT = 5


@pytest.mark.parametrize("target", ["xds:///some-service", "nosuchscheme://host/path",
                                    "nosuchscheme:name"])
async def test_a_target_with_an_unresolvable_scheme_fails_each_call_unavailable(impl, target):
    # grpc.aio makes the channel; each call fails UNAVAILABLE and the channel is in
    # TRANSIENT_FAILURE. (xds: needs an xDS bootstrap, which neither has here.)
    channel = impl.channel(target, ())
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(2):
            with pytest.raises(aio.AioRpcError) as info:
                await within(stub.Unary(msg(), timeout=TIMEOUT), TIMEOUT)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
    finally:
        await within(channel.close())


async def test_binding_a_tcp_port_in_use_raises_runtime_error(impl, start):
    if impl.bind in ("unix", "memory", "pipe"):
        pytest.skip(f"{impl.name} binds a socket file; unix ports: tests/rpc/test_config_edges.py")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="Failed to bind to address"):
            await start(Echo(), address=impl.address(port))
