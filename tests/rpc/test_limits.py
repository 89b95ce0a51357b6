"""Limits a server announces are respected by lanerpc clients, and calls that
break one fail alone."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve


async def test_client_waits_for_the_servers_stream_limit():
    servicer = Echo(delay=0.01)
    async with serve(servicer, options=[("grpc.max_concurrent_streams", 2)]) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        replies = await asyncio.gather(*(stub.Unary(msg(bytes([i])), timeout=10) for i in range(20)))
        assert [r.payload for r in replies] == [bytes([i]) for i in range(20)]
        assert servicer.peak == 2


@pytest.mark.parametrize("payload, metadata, then", [
    (b"ok", (("big", "x" * 20000),), b"ok"),           # request metadata over the limit
    (b"trailer:40000", None, b"trailer:10"),            # trailing metadata over the limit
], ids=["request-metadata", "trailing-metadata"])
async def test_oversized_metadata_fails_that_call_only(payload, metadata, then):
    async with serve(Echo(delay=0.01)) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        with pytest.raises(rpc.AioRpcError) as info:
            await stub.Unary(msg(payload), metadata=metadata, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.Unary(msg(then), timeout=5)).payload == then


def test_memory_budget_option_is_checked() -> None:
    import rpc
    with pytest.raises(ValueError, match="lanerpc.memory_budget_bytes"):
        rpc.server(options=[("lanerpc.memory_budget_bytes", 1000)])
    server = rpc.server(options=[("lanerpc.memory_budget_bytes", 64 * 2**20)])
    assert server._budget.limit == 64 * 2**20
