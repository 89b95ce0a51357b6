"""A closed connection frees its memory at once: with the garbage collector off, no
link, connection state machine or shm transport of a closed channel or a stopped
server is left (nothing waits in a reference cycle for a full collection)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from rpc._connection import Connection
from rpc._link import Link
from rpc.transports.shm import ShmTransport
from tests._support import Echo, msg, serve, within

KINDS = (Link, Connection, ShmTransport)


def _alive() -> dict[str, int]:
    counts = {kind.__name__: 0 for kind in KINDS}
    for obj in gc.get_objects():
        for kind in KINDS:
            if isinstance(obj, kind):
                counts[kind.__name__] += 1
    return counts


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("lanes, lane", [("tcp", "tcp"), ("unix,tcp", "unix"),
                                         ("shm,unix,tcp", "shm")])
async def test_closed_connections_free_their_memory_without_the_gc(
        no_gc: None, lanes: str, lane: str) -> None:
    before = _alive()
    async with serve(Echo(), lanes=lanes) as served:
        for _ in range(3):
            channel = rpc.insecure_channel(served.target, options=[("lanerpc.lanes", lanes)])
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(3):
                reply = await within(stub.Unary(msg(b"x" * 200_000)))
                assert len(reply.payload) == 200_000
            call = stub.Bidi()
            await within(call.write(msg(b"y")))
            assert (await within(call.read())).payload == b"y"
            await within(call.done_writing())
            assert await within(call.read()) is grpc.aio.EOF
            assert channel.lane == lane
            await within(channel.close())
            del channel, stub, call, reply
    # Transports hand connection_lost over a loop turn or two (shm: its waiter thread).
    for _ in range(50):
        if _alive() == before:
            break
        await asyncio.sleep(0.01)
    assert _alive() == before
