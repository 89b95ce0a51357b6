"""rpc._stream.Stream without sockets: two sans-IO connections paired in memory,
a link without a transport that records which writing steps it took. The write
policy (when to flush, batch, stay awake, wait) is checked here once for both
sides: the link's opening and ending of a stream, the stream's sending."""

from __future__ import annotations

import asyncio
import collections

import pytest

from rpc._connection import (ConnectionClosed, Connection, Limits, MessageReceived, Role,
                             StreamWritable)
from rpc._link import Link
from rpc._options import Options
from rpc._stream import _WRITES_PER_YIELD, Stream, too_large
from tests._support import within
from tests.wire.helpers import ConnectionPair, events_of


class RecordingLink(Link):
    """A real link on ``conn``, with no transport: it writes nothing and remembers
    which of its writing steps it took (the write policy is the link's own)."""

    role = Role.CLIENT

    def __init__(self, conn: Connection) -> None:
        super().__init__(Options())
        self.conn = conn
        self.asked: list[str] = []

    def flush(self) -> None:
        self.asked.append("flush")

    def flush_soon(self) -> None:
        self.asked.append("flush_soon")

    def stay_awake(self) -> None:
        self.asked.append("stay_awake")

    async def drain(self) -> None:   # type: ignore[override]  # (a coroutine will do)
        self.asked.append("drain")

    def writer_yields(self) -> None:
        self.asked.append("writer_yields")


class Side(Stream):
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._received = collections.deque()


def _pair() -> ConnectionPair:
    pair = ConnectionPair()
    pair.handshake()
    return pair


async def _opened(pair: ConnectionPair, message: bytes | None = None,
                  end: bool = False) -> tuple[Side, RecordingLink]:
    link = RecordingLink(pair.client)
    side = Side()
    link.open_stream(side, "/svc/M", None, (), message, end, 0)
    return side, link


async def test_a_lone_unary_request_flushes_at_once_and_stays_awake() -> None:
    side, link = await _opened(_pair(), b"request")
    assert link.asked == ["flush", "stay_awake"]
    assert link.calls == {side._sid: side} and side._link is link


async def test_a_lone_streaming_request_flushes_at_once_without_staying_awake() -> None:
    _, link = await _opened(_pair())
    assert link.asked == ["flush"]


async def test_requests_batch_while_other_streams_are_in_flight() -> None:
    link = RecordingLink(_pair().client)
    link.calls[99] = object()
    link.open_stream(Side(), "/svc/M", None, (), b"request", False, 0)
    assert link.asked == ["flush_soon"]


async def test_a_request_the_connection_refuses_leaves_nothing_behind() -> None:
    pair = _pair()
    pair.server.goaway()
    pair.pump()
    link = RecordingLink(pair.client)
    side = Side()
    with pytest.raises(ConnectionClosed):
        link.open_stream(side, "/svc/M", None, (), b"request", False, 0)
    assert link.calls == {} and link.asked == [] and side._link is None


async def test_a_server_status_flushes_at_once_only_when_alone() -> None:
    pair = _pair()
    sid = pair.client.start_request("/svc/M", None, (), message=b"x")
    pair.pump()
    for others, expected in (({}, ["flush", "stay_awake"]), ({99: object()}, ["flush_soon"])):
        link = RecordingLink(pair.server)
        side = Side()
        side._link, side._sid = link, sid
        link.calls.update({sid: side, **others})
        link.end_stream(sid, 0, "", (), b"response", 0)
        assert link.asked == expected


async def test_a_message_within_the_window_batches_and_does_not_wait() -> None:
    pair = _pair()
    side, link = await _opened(pair)
    link.asked.clear()
    await side._send(b"hello")
    assert link.asked == ["flush_soon", "drain"]
    _, server_events = pair.pump()
    assert [e.data for e in events_of(server_events, MessageReceived)] == [b"hello"]


async def test_a_writer_that_never_waits_still_lets_the_loop_run() -> None:
    # 1000 small messages, all within the window: no write has to wait, yet another
    # task on the same loop runs in between, about once per _WRITES_PER_YIELD writes.
    pair = _pair()
    side, link = await _opened(pair)
    turns = 0
    writing = True

    async def other_task() -> None:
        nonlocal turns
        while writing:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.ensure_future(other_task())
    await asyncio.sleep(0)     # the other task starts
    started = turns

    async def writer() -> None:
        for _ in range(1000):
            await side._send(b"m" * 10)

    try:
        await within(writer(), 10)
    finally:
        writing = False
        await within(other, 10)
    ran = turns - started
    # At least once per 50 writes ("a few dozen"), and not once per write (a few
    # turns more than the policy's: the bound wraps the writer in a task of its own).
    assert 1000 // 50 <= ran <= 1000 // _WRITES_PER_YIELD + 8, ran
    assert not side._writable


async def test_a_message_over_the_window_waits_for_stream_writable() -> None:
    # (A server that takes messages this big: over its limit it would refuse this one
    # as soon as its size is announced.)
    pair = ConnectionPair(server_limits=Limits(max_receive_message_length=16 * 1024 * 1024))
    pair.handshake()
    side, link = await _opened(pair)
    big = b"x" * (pair.client.peer.stream_window * 2)
    sending = asyncio.ensure_future(side._send(big))
    await asyncio.sleep(0)
    assert not sending.done() and side._writable is not None
    # The server takes what arrived until the client's outbox has drained.
    writable = []
    for _ in range(100):
        client_events, _ = pair.pump()
        for sid in list(pair.server.streams):
            pair.server.consume(sid)
        writable = events_of(client_events, StreamWritable)
        if writable:
            break
    assert [e.stream_id for e in writable] == [side._sid]
    side._on_writable()
    await sending
    assert link.asked[-1] == "drain" and side._writable is None


async def test_receive_returns_buffered_messages_then_none_at_the_end() -> None:
    side = Side()
    side._deliver(b"a")
    assert await side._receive() == b"a"
    waiting = asyncio.ensure_future(side._receive())
    await asyncio.sleep(0)
    side._deliver(b"b")
    assert await waiting == b"b"
    waiting = asyncio.ensure_future(side._receive())
    await asyncio.sleep(0)
    side._recv_ended = True
    side._wake_reader()
    assert await waiting is None


async def test_releasing_waiters_wakes_a_reader() -> None:
    side = Side()
    waiting = asyncio.ensure_future(side._receive())
    await asyncio.sleep(0)
    side._recv_ended = True
    side._release_waiters()
    assert await waiting is None


def test_too_large_names_the_size_and_the_limit_as_grpc_does() -> None:
    assert too_large(11, 10) == "Sent message larger than max (11 vs. 10)"
