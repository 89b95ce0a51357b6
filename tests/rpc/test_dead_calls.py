"""Dead calls cost the server nothing they need not. A call that ends (deadline,
cancel) while its request waits in the client (the transport paused: the peer reads
slower than we write) sends nothing at all; the live calls' requests go out once the
transport takes them again. And a server that reads several requests at once does
not start a handler for one whose deadline passed while those before it started
(gRPC's rule: a call whose deadline is gone before its handler starts never starts)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, within


class Seen(echo_pb2_grpc.EchoServicer):
    """Unary: records each request it runs for; ``slow`` holds the loop 150 ms in its
    first step (a handler that computes before it answers)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def Unary(self, request, context):
        self.seen.append(request.payload)
        if request.payload == b"slow":
            time.sleep(0.15)
        return request


@contextlib.asynccontextmanager
async def _linked(servicer: Any, big: bool = False) -> AsyncIterator[tuple[Any, Any]]:
    """A stub on a tcp channel to a server of ``servicer``, after one call, and the
    channel's link (``big``: 8 MiB messages allowed both ways)."""
    limit = 8 << 20
    server_options = [("grpc.max_receive_message_length", limit)] if big else None
    async with serve(servicer, lanes="tcp", options=server_options) as served:
        channel = served.channel(
            lanes="tcp", options=[("grpc.max_send_message_length", limit)] if big else [])
        stub = echo_pb2_grpc.EchoStub(channel)
        await within(stub.Unary(msg(b"warm")))
        yield stub, channel._last_link


async def _deadline_exceeded(call) -> bool:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    return False


async def test_calls_that_die_while_the_transport_is_paused_send_nothing() -> None:
    echo = Echo()
    async with _linked(echo) as (stub, link):
        sent = link.bytes_out
        link.pause_writing()            # as the transport does when the peer reads slowly
        doomed = [stub.Unary(msg(b"late"), timeout=0.02) for _ in range(20)]
        live = stub.Unary(msg(b"live"), timeout=10)
        assert all(await within(asyncio.gather(*map(_deadline_exceeded, doomed))))
        assert link.bytes_out == sent   # nothing was handed to the transport meanwhile
        assert link.conn.streams_withdrawn == 20
        link.resume_writing()
        assert (await within(live)).payload == b"live"
        # Only the live call's request (no HEADERS, no CANCEL of the dead ones) went out.
        assert echo.started_calls == 2
        assert link.conn.bytes_to_send == 0


async def test_requests_read_together_whose_deadline_passes_before_their_turn_never_start() -> None:
    servicer = Seen()
    async with _linked(servicer) as (stub, link):
        # Held, then written at once: the server reads the three requests in one read.
        link.pause_writing()
        slow = stub.Unary(msg(b"slow"), timeout=10)
        late = [stub.Unary(msg(b"late"), timeout=0.05) for _ in range(2)]
        await asyncio.sleep(0)
        link.resume_writing()
        assert (await within(slow)).payload == b"slow"
        assert all(await within(asyncio.gather(*map(_deadline_exceeded, late))))
        # (The three were dispatched together, before the slow call's answer went out.)
        assert servicer.seen == [b"warm", b"slow"]


async def test_a_lone_request_with_a_short_deadline_still_starts() -> None:
    servicer = Seen()
    async with serve(servicer, lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        for _ in range(5):
            assert (await within(stub.Unary(msg(b"quick"), timeout=0.5))).payload == b"quick"
        assert servicer.seen == [b"quick"] * 5


class _ResumesInsideWrite:
    """A transport (around the real one) that, when armed, pauses its protocol and
    resumes it from inside a write, as the shm lane's transport does when its buffer
    drains during the write that filled it."""

    def __init__(self, transport, link) -> None:
        self._transport = transport
        self._link = link
        self.armed = False
        self.pause_only = False

    def write(self, data) -> None:
        self._transport.write(data)
        if self.pause_only:
            self.pause_only = False
            self._link.pause_writing()
        elif self.armed:
            self.armed = False
            self._link.pause_writing()
            self._link.resume_writing()

    def writelines(self, pieces) -> None:
        for piece in pieces:
            self.write(piece)

    def __getattr__(self, name):
        return getattr(self._transport, name)


async def test_a_resume_from_inside_a_write_keeps_the_bytes_in_order() -> None:
    async with _linked(Echo(), big=True) as (stub, link):
        transport = _ResumesInsideWrite(link.transport, link)
        link.transport = transport
        # A big request: paused after its first piece, the rest waits in the link.
        transport.pause_only = True
        big = stub.Unary(msg(bytes(2 << 20)), timeout=10)
        await asyncio.sleep(0)
        assert link._backlog
        # Meanwhile another call's frames wait in the connection.
        small = stub.Unary(msg(b"small"), timeout=10)
        await asyncio.sleep(0)
        assert link.conn.has_data_to_send
        # The resume writes the big request's rest, and the transport resumes us again
        # from inside that write: the small call's frames must come after it, not
        # inside it (the server would read garbage and close the connection).
        transport.armed = True
        link.resume_writing()
        assert len((await within(big)).payload) == 2 << 20
        assert (await within(small)).payload == b"small"
