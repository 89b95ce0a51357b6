"""Channels and servers made before an event loop runs (at import time, in a test's
set-up) work in the loop they are first used in."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc


class Echo(echo_pb2_grpc.EchoServicer):
    async def Unary(self, request, context):
        return request


def test_channel_and_server_made_outside_any_loop():
    server = rpc.server()
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    channel = rpc.insecure_channel(f"127.0.0.1:{port}")
    stub = echo_pb2_grpc.EchoStub(channel)

    async def main():
        await server.start()
        try:
            await asyncio.wait_for(channel.channel_ready(), 5)
            reply = await stub.Unary(echo_pb2.EchoMessage(payload=b"early"), timeout=5)
            assert reply.payload == b"early"
        finally:
            await channel.close()
            await server.stop(0)

    asyncio.run(main())


def test_unused_channel_moves_to_the_next_loop():
    async def make():
        return rpc.insecure_channel("127.0.0.1:1")   # never used in this loop

    channel = asyncio.run(make())

    async def main():
        server = rpc.server()
        echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with rpc.insecure_channel(f"127.0.0.1:{port}") as other:
                reply = await echo_pb2_grpc.EchoStub(other).Unary(
                    echo_pb2.EchoMessage(payload=b"x"), timeout=5)
                assert reply.payload == b"x"
            # The first channel dials a closed port: it fails the grpc way, in this loop
            # (not with "attached to a different loop").
            with pytest.raises(rpc.AioRpcError) as info:
                await echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoMessage(), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close()
            await server.stop(0)

    asyncio.run(main())
