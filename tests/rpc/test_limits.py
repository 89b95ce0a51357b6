"""Limits a server announces are respected by lanerpc clients, and calls that
break one fail alone."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc


class CountingEcho(echo_pb2_grpc.EchoServicer):
    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    async def Unary(self, request, context):
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.01)
            if request.payload.startswith(b"trailer:"):
                context.set_trailing_metadata((("big", "x" * int(request.payload[8:])),))
            return request
        finally:
            self.running -= 1


async def serve(options=None):
    servicer = CountingEcho()
    server = rpc.server(options=options)
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", servicer


async def test_client_waits_for_the_servers_stream_limit():
    server, target, servicer = await serve([("grpc.max_concurrent_streams", 2)])
    try:
        async with rpc.insecure_channel(target) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            replies = await asyncio.gather(*(
                stub.Unary(echo_pb2.EchoMessage(payload=bytes([i])), timeout=10) for i in range(20)))
            assert [r.payload for r in replies] == [bytes([i]) for i in range(20)]
            assert servicer.most == 2
    finally:
        await server.stop(0)


async def test_oversized_request_metadata_fails_that_call_only():
    server, target, servicer = await serve()
    try:
        async with rpc.insecure_channel(target) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            with pytest.raises(rpc.AioRpcError) as info:
                await stub.Unary(echo_pb2.EchoMessage(), metadata=(("big", "x" * 20000),), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub.Unary(echo_pb2.EchoMessage(payload=b"ok"), timeout=5)).payload == b"ok"
    finally:
        await server.stop(0)


async def test_oversized_trailing_metadata_fails_that_call_only():
    server, target, servicer = await serve()
    try:
        async with rpc.insecure_channel(target) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            with pytest.raises(rpc.AioRpcError) as info:
                await stub.Unary(echo_pb2.EchoMessage(payload=b"trailer:40000"), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reply = await stub.Unary(echo_pb2.EchoMessage(payload=b"trailer:10"), timeout=5)
            assert reply.payload == b"trailer:10"
    finally:
        await server.stop(0)
