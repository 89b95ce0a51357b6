"""Channels and servers made before an event loop runs (at import time, in a test's
set-up, ``rpc.serve(server)`` style) work in the loop they are first used in."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve


@pytest.mark.parametrize("address", ["127.0.0.1:0", "grpc://127.0.0.1:0"], ids=["lanerpc", "grpc-port"])
def test_channel_and_server_made_outside_any_loop(address):
    server = rpc.server()
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port(address)
    # A lanerpc channel can be made here too; a grpc.aio one (for the grpc:// port)
    # needs its loop, so it is made in main().
    early = rpc.insecure_channel(f"127.0.0.1:{port}") if address == "127.0.0.1:0" else None

    async def main():
        channel = early or grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            await asyncio.wait_for(server.start(), 5)
            await asyncio.wait_for(channel.channel_ready(), 5)
            reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"early"), timeout=5)
            assert reply.payload == b"early"
        finally:
            await asyncio.wait_for(channel.close(), 5)
            await asyncio.wait_for(server.stop(0), 5)

    asyncio.run(main())


def test_unused_channel_moves_to_the_next_loop():
    async def make():
        return rpc.insecure_channel("127.0.0.1:1")   # never used in this loop

    channel = asyncio.run(make())

    async def main():
        async with serve(Echo()) as served:
            served.keep(channel)
            reply = await echo_pb2_grpc.EchoStub(served.channel()).Unary(msg(b"x"), timeout=5)
            assert reply.payload == b"x"
            # The first channel dials a closed port: it fails the grpc way, in this loop
            # (not with "attached to a different loop").
            with pytest.raises(rpc.AioRpcError) as info:
                await echo_pb2_grpc.EchoStub(channel).Unary(msg(), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())
