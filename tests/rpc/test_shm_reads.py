"""The shm lane reads a little waiting data as bytes (one ring read) and a lot straight
into the connection's buffers (a big message's own): both ways, and switching between
them in the middle of one message, deliver every message whole and in order."""

from __future__ import annotations

import os

import pytest

import rpc.transports.shm as shm_module
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, within

LIMITS = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
SIZES = [1, 100, 5_000, 70_000, 300_000, 3 * 1024 * 1024, 17, 1024 * 1024 + 3]


@pytest.mark.parametrize("direct_copy", [1, 100_000, 1 << 40])
async def test_messages_of_every_size_arrive_whole_whichever_way_the_ring_is_read(
    monkeypatch: pytest.MonkeyPatch, direct_copy: int
) -> None:
    # 1: every read goes straight into the link's buffers; 1 << 40: every read is bytes;
    # 100_000: a big message is read partly one way, partly the other.
    monkeypatch.setattr(shm_module, "_DIRECT_COPY", direct_copy)
    payloads = [os.urandom(size) for size in SIZES]
    async with serve(Echo(), options=LIMITS) as served:
        channel = served.channel(options=LIMITS)
        stub = echo_pb2_grpc.EchoStub(channel)
        for payload in payloads:
            call = stub.Unary(msg(payload), timeout=30)
            assert (await within(call, 30)).payload == payload
            assert call.lane == "shm"
        bidi = stub.Bidi(timeout=30)
        for payload in payloads:
            await within(bidi.write(msg(payload)), 30)
        await within(bidi.done_writing(), 30)
        echoed = [reply.payload async for reply in bidi]
        assert echoed == payloads
