"""The IO of one stream, shared by both ends of a call.

:class:`Stream` is what a client call (:class:`rpc._channel._Call`) and a
server call (:class:`rpc._context.ServicerContext`) have in common: sending
messages with the write policy below, receiving them into a buffer a reader
waits on, and ending. Each of them *is* a Stream (a base class, not an object
it holds): the link dispatches events straight to the call, and a call costs
no second object.

Write policy, in one place:

- a message goes out with the other streams' writes at the end of this loop
  turn (``Link.flush_soon``): more writes usually follow in the same turn;
- opening a request and ending a call flush at once when this stream is the
  only one on its link (nothing to batch with; don't wait a loop turn), and
  when that write leaves this side waiting for one answer, keep the process
  awake for it (``Link.stay_awake``); with other streams in flight, they batch
  (``Link.open_stream`` and ``Link.end_stream`` do this in one compiled step:
  the two are on every unary call's path);
- a writer waits for the peer's flow-control window (``StreamWritable``) and
  then for the transport's buffer (``Link.drain``);
- a writer that never has to wait still lets the loop go round every
  ``_WRITES_PER_YIELD`` messages: while window remains, ``write()`` would
  otherwise never suspend, and a writer bursting thousands of messages starves
  the loop it runs on (the reader of the answers, other calls; on tcp the
  peer's answers then fill our receive window and stall on TCP's zero-window
  probes). Its messages still go out in big writes (``Link.writer_yields``): a
  write per turn would wake the peer per few dozen messages.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from typing import Any, Protocol

from google.protobuf.message import Message as _ProtoMessage

from rpc import _connection as c
from rpc import _wire
from rpc._compression import Compressed, DecompressionError, compress, decompress


# A writer lets the event loop run at least once per this many messages (see the
# module docstring). Each yield costs one loop turn (~2 µs); 32 messages of bidi
# traffic are 100-300 µs of work, so the loop still runs every few hundred µs.
_WRITES_PER_YIELD = 32


def parses_buffers(deserializer: object) -> bool:
    """Whether ``deserializer`` is a protobuf message class's ``FromString`` (what
    generated code passes), which parses a bytearray or memoryview as it does bytes."""
    owner = getattr(deserializer, "__self__", None)
    return (getattr(deserializer, "__name__", None) == "FromString" and isinstance(owner, type)
            and issubclass(owner, _ProtoMessage))


def too_large(size: int, limit: int) -> str:
    """The status details for a message of ``size`` bytes over the send ``limit``
    (callers compare first: this runs only for a message that does not fit)."""
    return f"Sent message larger than max ({size} vs. {limit})"


class StreamLink(Protocol):
    """What a stream uses of its connection (an :class:`rpc._link.Link`)."""

    conn: c.Connection
    calls: dict[int, Any]         # the streams in flight on it, by id
    lane: str | None              # "tcp", "unix", "shm" (compression is for tcp)

    def open_stream(self, call: Any, method: str, timeout: float | None,
                    metadata: _wire.Metadata, message: bytes | None, end: bool,
                    encoding: int) -> None:
        """Client: open ``call``'s stream (setting its ``_link`` and ``_sid``), with
        ``message`` the whole request of a unary call, and write it (the write policy:
        at once when it is the only stream, else at the end of the loop turn).
        Raises ConnectionClosed or MetadataTooLarge (nothing sent)."""

    def end_stream(self, sid: int, code: int, details: str, trailing: _wire.Metadata,
                   message: bytes | None, encoding: int) -> None:
        """Server: the final status of stream ``sid``, after ``message`` (a unary
        response), written under the same policy."""

    def flush_soon(self) -> None:
        """Write at the end of this loop turn, with everyone else's."""

    def drain(self) -> Awaitable[None]:
        """What to await while the transport's buffer is full."""

    def writer_yields(self) -> None:
        """A writer lets the loop turn mid-burst; what it queued may wait for more."""


class Stream:
    """One stream's IO. Subclasses set ``_loop`` and ``_received`` when made,
    ``_link`` and ``_sid`` once the stream exists, and ``_recv_ended`` when no
    more messages will arrive."""

    # State most streams never change lives on the class: a stream stores
    # only what differs (fewer stores per call on the hot path).
    _link: StreamLink | None = None
    _sid = 0
    _reader: asyncio.Future[None] | None = None      # a read waiting for a message
    _writable: asyncio.Future[None] | None = None    # a write waiting for window
    _recv_ended = False
    # Compression of what this side sends (rpc._compression's numbers): the call's or
    # the context's; only on the tcp lane unless asked for this very call.
    _encoding = 0
    _encoding_everywhere = False
    _skip_next_compression = False
    _unyielded = 0        # messages sent since this stream's writer last let the loop run

    _loop: asyncio.AbstractEventLoop
    _received: collections.deque[bytes | Compressed]    # messages not read yet

    # ------------------------------------------------------------ receiving

    def _deliver(self, data: bytes | Compressed) -> None:
        """A message arrived: buffer it and wake the reader."""
        self._received.append(data)
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _big_message(self, data: bytearray | memoryview) -> bytes:
        """A big message, read straight into a buffer of its own, as this call takes
        it: that buffer when the call's deserializer parses buffers (no copy), else
        bytes (what a grpc.aio application gets)."""
        if parses_buffers(self._message_deserializer()):
            return data  # type: ignore[return-value]  # parsed at once, never seen as bytes
        return bytes(data)

    def _message_deserializer(self) -> object:
        """What parses this side's incoming messages (None: they are handed on)."""
        return None

    def _wake_reader(self) -> None:
        """Input ended (``_recv_ended`` is set): a waiting reader sees it."""
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    async def _receive(self) -> bytes | None:
        """The next message, or None once input has ended and all were read.
        Taking a message gives its bytes back to the peer's window."""
        received = self._received
        while not received:
            if self._recv_ended:
                return None
            self._reader = reader = self._loop.create_future()
            try:
                await reader
            except asyncio.CancelledError:
                self._read_cancelled()
                raise
            finally:
                self._reader = None
        return self._take()

    def _take(self) -> bytes:
        """The first buffered message (there must be one), credited back: the credit
        goes out with this loop turn's writes, so a peer waiting for it goes on."""
        data = self._received.popleft()
        link = self._link
        if link is not None:
            conn = link.conn
            conn.consume(self._sid)
            if conn.has_data_to_send:
                link.flush_soon()
        if type(data) is Compressed:
            return self._inflate(data)
        return data  # type: ignore[return-value]  # bytes: the type check above

    def _inflate(self, message: Compressed) -> bytes:
        """A compressed message, inflated up to this side's receive limit; past it, or
        not valid, the call ends (see :meth:`_decompression_failed`)."""
        try:
            return decompress(message.data, message.encoding, self._receive_limit(),
                              self._side)
        except DecompressionError as exc:
            raise self._decompression_failed(exc) from None

    _side = "CLIENT"

    def _receive_limit(self) -> int:
        """The largest message this side takes (after decompression)."""
        raise NotImplementedError

    def _decompression_failed(self, exc: DecompressionError) -> BaseException:
        """End the call with ``exc``'s status; returns what the reader raises."""
        raise NotImplementedError

    def _read_cancelled(self) -> None:
        """The task waiting in :meth:`_receive` was cancelled."""

    # ------------------------------------------------------------ sending

    def _send_initial_metadata(self, metadata: _wire.Metadata) -> None:
        """Server: the response's initial metadata, queued: it goes out with the
        response or status that follows. Raises MetadataTooLarge (nothing sent)."""
        link = self._link
        assert link is not None
        link.conn.send_initial_metadata(self._sid, metadata)

    async def _send(self, data: bytes) -> None:
        """Send one message; return once the peer's window and the transport
        can take more. Nothing is sent on a stream that is already over."""
        link = self._link
        assert link is not None
        conn = link.conn
        sid = self._sid
        try:
            if self._encoding:
                data, encoding = self._outgoing(data, link)
                sent = conn.send_message(sid, data, encoding=encoding)
            else:
                sent = conn.send_message(sid, data)
        except c.StreamClosed:
            return
        link.flush_soon()
        if not sent and conn.wait_writable(sid):
            self._writable = waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._writable = None
            self._unyielded = 0
            self._window_waited()
        await link.drain()
        unyielded = self._unyielded + 1
        if unyielded >= _WRITES_PER_YIELD:
            self._unyielded = 0
            link.writer_yields()
            await asyncio.sleep(0)
        else:
            self._unyielded = unyielded

    def _window_waited(self) -> None:
        """:meth:`_send` waited for window, and the wait is over (the window
        opened or the stream ended)."""

    def _on_writable(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ ending

    def _half_close(self) -> None:
        """Client: no more requests."""
        link = self._link
        if link is not None:
            link.conn.end_input(self._sid)
            link.flush_soon()

    def _outgoing(self, data: bytes, link: StreamLink) -> tuple[bytes, int]:
        """``data`` as it goes out, and its encoding: compressed when this stream
        compresses on ``link``'s lane and that makes it smaller."""
        if self._skip_next_compression:
            self._skip_next_compression = False
            return data, 0
        if not self._encoding_everywhere and link.lane != "tcp":
            return data, 0     # on unix and shm compression only costs CPU
        packed = compress(data, self._encoding)
        if len(packed) >= len(data):
            return data, 0
        return packed, self._encoding

    def _release_waiters(self) -> None:
        """The stream is over: a waiting reader or writer goes on (and finds out)."""
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)

