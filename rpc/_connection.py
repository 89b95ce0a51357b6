"""The lanerpc connection state machine: bytes in, events out. No I/O, no asyncio.

``Connection.receive_data(data)`` returns a list of events (:mod:`rpc._events`); the
``send_*`` methods queue frames; ``data_to_send()`` returns the bytes to write. Stream
states and their transitions live in the table in :mod:`rpc._streams` and nowhere
else; the limits each side announces in :mod:`rpc._settings`. Flow control
(docs/wire-protocol.md, "Flow control") is done here: a message is queued whole by
the sender, released to the wire as the peer's windows allow, and
:class:`StreamWritable` tells the owner when it has drained.
"""

from __future__ import annotations

import collections
import enum
import os
import sys

from rpc import _wire
from rpc._events import (
    EndOfInput,
    Event,
    GoAwayReceived,
    HandshakeDone,
    HelloReceived,
    InitialMetadataReceived,
    LaneChange,
    MessageReceived,
    PingAcked,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamWritable,
)
from rpc._proto import handshake_pb2
from rpc._settings import Limits, MemoryBudget, PeerLimits
from rpc._streams import _TRANSITIONS, Stream, StreamInput, StreamState, transition
from rpc._wire import (
    CANCEL,
    FLAG_ACK,
    FLAG_END_STREAM,
    FLAG_MORE,
    FLAG_NO_MESSAGE,
    FLAG_WITH_MESSAGE,
    FLAG_NOT_STARTED,
    FLAG_SIZE,
    ENCODING_MASK,
    ENCODING_SHIFT,
    GOAWAY,
    HEADERS,
    LANE,
    HELLO,
    MESSAGE,
    PING,
    TRAILERS,
    WINDOW_UPDATE,
    GoAwayCode,
    ProtocolError,
)

__all__ = (
    "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
    "UNKNOWN", "Connection", "ConnectionClosed", "EndOfInput", "Event", "GoAwayReceived",
    "HandshakeDone", "HelloReceived", "InitialMetadataReceived", "LaneChange", "Limits",
    "MessageReceived", "MetadataTooLarge", "PeerLimits", "PingAcked", "PingReceived",
    "RequestReceived", "Role", "StreamClosed", "StreamEnded", "StreamInput", "StreamState",
    "StreamWritable", "_TRANSITIONS", "transition",
)

# True when this module runs as the extension setup.py compiles from this source
# (rpc._compiled says which runs, and how to force the source).
COMPILED: bool = not __file__.endswith(".py")

_pack_header = _wire.HEADER.pack
# A frame's header and, first in its payload, the u32 length of the message it carries
# (HEADERS / TRAILERS with WITH_MESSAGE): one pack for both.
_pack_header_and_size = _wire.HEADER_AND_SIZE.pack
_pack_u32 = _wire.pack_u32
_unpack_header = _wire.HEADER.unpack_from
_unpack_header_and_size = _wire.HEADER_AND_SIZE.unpack_from
_HEADER_SIZE = _wire.HEADER_SIZE
# The limits as module constants: C integers in the compiled build.
_MAX_WINDOW = _wire.MAX_WINDOW
_MAX_STREAM_ID = _wire.MAX_STREAM_ID
_MAX_TIMEOUT_US = _wire.MAX_TIMEOUT_US
_ANNOUNCE_FROM = _wire.ANNOUNCE_FROM

# The states and inputs the per-frame code names, bound once (no enum look-up per use).
_OPEN = StreamState.OPEN
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_CLOSED = StreamState.CLOSED
_SEND_END = StreamInput.SEND_END
_RECV_END = StreamInput.RECV_END
_SEND_MESSAGE = StreamInput.SEND_MESSAGE
_RECV_MESSAGE = StreamInput.RECV_MESSAGE
_CLOSE = StreamInput.CLOSE

# grpc.StatusCode values as plain ints, so this module needs no grpc import.
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED = 0, 1, 2, 4
RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE = 8, 13, 14


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Connection:
    """One lanerpc connection, either side. See module docstring."""

    def __init__(
        self,
        role: Role,
        limits: Limits | None = None,
        *,
        hello: handshake_pb2.Hello | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        """``hello``: client only, the fields its HELLO carries besides version and
        settings (the lanes it takes, an upgrade claim). A server's are given to
        :meth:`accept`. ``budget``: shared with the other connections of a server; what
        this one buffers is charged to it."""
        self.role = role
        self._server = role is Role.SERVER
        self.limits = limits = limits or Limits()
        # The limits read per frame, as plain fields (limits don't change once given).
        self._max_metadata = limits.max_metadata_size
        self._max_message = limits.max_receive_message_length
        self._stream_window = limits.stream_window
        self._max_streams = limits.max_concurrent_streams
        # The peer's, once its HELLO said them (until then: the defaults).
        self._peer_max_frame = _wire.DEFAULT_MAX_FRAME_SIZE
        self._peer_max_metadata = _wire.DEFAULT_MAX_METADATA_SIZE
        self._peer_stream_window = _wire.DEFAULT_STREAM_WINDOW
        self.peer: PeerLimits | None = None
        self.peer_hello: handshake_pb2.Hello | None = None
        self.version: int | None = None
        self._decoder = _wire.FrameDecoder(self.limits.max_frame_size,
                                           handshake_limit=_wire.MAX_HANDSHAKE_FRAME_SIZE)
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        # What _out holds is one batch: data_to_send hands it out whole and starts the
        # next. The frames of a stream that dies while some of its own are still in the
        # batch are dropped from it (see _unqueue): the peer never gets them.
        self._batch = 0
        self._batch_first_sid = 1       # client: the first stream opened in this batch
        self._dropping: dict[int, int] | None = None   # see _unqueue
        self._later: list[Event] = []   # see take_events
        # Client: streams that ended before their HEADERS were handed out: nothing of
        # them was sent (not even a CANCEL).
        self.streams_withdrawn = 0
        self.streams: dict[int, Stream] = {}
        self._last_peer_stream = 0      # server: highest stream id the client opened
        self._next_stream_id = 1        # client
        self.send_window = _wire.DEFAULT_CONNECTION_WINDOW  # until the peer's HELLO says
        self._recv_window = self.limits.connection_window   # what the peer may still send
        self._recv_window_pending = 0   # connection-level credit not yet sent
        self._credit_quarter = self.limits.connection_window // 4
        # Bytes of incoming messages held here: pieces of unfinished messages and whole
        # ones not consumed yet. Their connection credit goes back only as they are
        # consumed (or dropped), so the connection window bounds them.
        self.buffered = 0
        self._held_messages = 0         # whole messages delivered, not yet consumed
        # Bytes of announced messages' buffers not filled yet (see _on_message_size):
        # allocated, so counted against the connection's window and the budget too.
        self._reserved = 0
        # The buffer the last announced message was read into, kept for the next one
        # (see _message_buffer): a fresh 16 MiB buffer costs thousands of page faults,
        # a reused one none. _spare_alone: its reference count while only this field
        # holds it. Let go with the connection.
        self._spare: bytearray | None = None
        self._spare_alone = 0
        # The peer reads announced sizes (protocol version 2): big messages we send
        # are announced, so it reads them straight into one buffer.
        self._announce_sizes = False
        self.budget = budget
        if budget is not None:
            budget.connections += 1
        self._blocked: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.goaway_sent = False
        self.goaway_received: GoAwayReceived | None = None
        # Bytes of PING frames (ours and our ACKs) queued so far: keepalive and the ping
        # policy ask whether anything else was sent (gRPC's "data or headers").
        self.ping_bytes_sent = 0
        self.closed = False
        self.handshake_done = False
        self._accept_pending = False    # server: the client's HELLO awaits accept()
        self._lane_asked: str | None = None
        self._lane_answered = False
        # Both sides start with the magic, so even a refusal (GOAWAY before
        # HELLO) is readable by a lanerpc peer.
        self._emit(_wire.MAGIC)
        if role is Role.CLIENT:
            self._send_hello(list(_wire.SUPPORTED_VERSIONS), hello)
        elif hello is not None:
            raise ValueError("a server's HELLO fields are given to accept()")

    # ----------------------------------------------------------- plumbing

    def _emit(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)

    # A message under this size is copied into its frame (one buffer to write beats
    # three); a bigger one goes out as it is, between its frame's head and tail.
    _JOIN_BELOW = 16 * 1024

    def _emit_with_message(self, head: bytes, message: bytes, tail: bytes) -> None:
        if len(message) < self._JOIN_BELOW:
            self._emit(head + message + tail)
        else:
            self._emit(head)
            self._emit(message)
            self._emit(tail)

    def data_to_send(self) -> list[bytes | memoryview]:
        """The buffers to write, in order (may be empty). Once handed out, frames are
        the owner's to send: only frames still queued here are dropped when their
        stream dies (so an owner that can't write keeps them here, not in a buffer of
        its own). Then see :meth:`take_events`."""
        self._flush_credit()
        if self._dropping is not None:
            self._drop_frames()
        out = self._out
        if out:
            self._out = []
            self._out_bytes = 0
            self._batch += 1
        self._batch_first_sid = self._next_stream_id
        return out

    def take_events(self) -> list[Event]:
        """Events that came about in :meth:`data_to_send` rather than from the peer:
        streams waiting for connection window that the dropped frames gave back get
        it, and :class:`StreamWritable` when they drain. Usually empty."""
        events = self._later
        if events:
            self._later = []
        return events

    @property
    def bytes_to_send(self) -> int:
        """How many bytes of frames are queued (what ``data_to_send()`` would return,
        counting frames of dead streams it will drop)."""
        return self._out_bytes

    @property
    def has_data_to_send(self) -> bool:
        if self._out:
            return True
        # Connection credit goes out in batches of a quarter window, or at once when the
        # peer is nearly out of window (it may be waiting for exactly this).
        pending = self._recv_window_pending
        quarter = self._credit_quarter
        return pending > 0 and (pending >= quarter or self._recv_window < quarter)

    def _send_hello(self, versions: list[int], fields: handshake_pb2.Hello | None) -> None:
        hello = handshake_pb2.Hello()
        if fields is not None:
            hello.CopyFrom(fields)
        hello.versions[:] = versions
        hello.settings.CopyFrom(self.limits.to_settings())
        body = hello.SerializeToString()
        self._emit(_wire.frame(HELLO, 0, 0, body))

    # ----------------------------------------------------------- receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the peer; returns the events they complete.

        Raises :class:`ProtocolError` on any violation; the connection is then
        unusable and the caller should send ``data_to_send()`` (a GOAWAY has been
        queued) and close.
        """
        if self.closed:
            return []
        self._decoder.feed(data)
        return self._read_frames()

    def receive_buffer(self) -> memoryview:
        """Where the next bytes from the peer may be read into, straight from the
        kernel (then :meth:`received_into`): the rest of a big frame (its place in
        the message it belongs to), or the free end of the receive buffer."""
        if self.closed:
            return self._decoder.scratch()
        return self._decoder.get_buffer()

    def received_into(self, nbytes: int) -> list[Event]:
        """``nbytes`` were read into the last :meth:`receive_buffer`; as
        :meth:`receive_data` from there on."""
        if self.closed:
            return []
        self._decoder.buffer_updated(nbytes)
        return self._read_frames()

    def _read_frames(self) -> list[Event]:
        events: list[Event] = []
        decoder = self._decoder
        if self._accept_pending:
            return events      # buffered until our HELLO has gone out (accept)
        sink = self._place_of
        try:
            while True:
                payload = decoder.next_frame(sink)
                if payload is None:
                    break
                ftype = decoder.frame_type
                flags = decoder.frame_flags
                sid = decoder.frame_stream
                # The decoder lets only known types through; the per-call ones first.
                if ftype == MESSAGE:
                    self._on_message(flags, sid, payload, events)
                    continue
                # Only a MESSAGE's payload may be a memoryview (its place in a message).
                whole: bytes | bytearray = payload  # type: ignore[assignment]
                if ftype == HEADERS:
                    self._on_headers(flags, sid, whole, events)
                elif ftype == TRAILERS:
                    self._on_trailers(flags, sid, whole, events)
                elif ftype == WINDOW_UPDATE:
                    self._on_window_update(flags, sid, whole, events)
                elif ftype == CANCEL:
                    self._on_cancel(flags, sid, whole, events)
                elif ftype == PING:
                    self._on_ping(flags, sid, whole, events)
                elif ftype == GOAWAY:
                    self._on_goaway(flags, sid, whole, events)
                elif ftype == HELLO:
                    if self._on_hello(flags, sid, whole, events):
                        break   # the frames behind it wait for accept(): our HELLO goes first
                elif ftype == LANE:
                    if self._on_lane(flags, sid, whole, events):
                        break   # the frames behind it arrive on the new lane
                else:
                    raise ProtocolError(f"no reader for frame type {ftype}")
        except ProtocolError as exc:
            self.fail(exc)
            raise
        return events

    def accept(self, hello: handshake_pb2.Hello | None = None) -> None:
        """Server: answer the client's HELLO (after :class:`HelloReceived`) with ours,
        carrying ``hello``'s fields (an upgrade offer or proof, an shm offer). Then call
        ``receive_data(b"")``: frames that arrived behind the client's HELLO are read."""
        if not self._server or not self._accept_pending:
            raise RuntimeError("accept() answers a client's HELLO, once")
        self._accept_pending = False
        if self.closed:
            return
        assert self.version is not None
        self._send_hello([self.version], hello)
        self.handshake_done = True

    def refuse(self, code: int, reason: str) -> None:
        """Turn the peer away: a GOAWAY saying why, then nothing more either way."""
        self.goaway(code, reason)
        self.closed = True

    def fail(self, exc: ProtocolError) -> None:
        """The peer broke the protocol: a GOAWAY naming the violation, then closed."""
        if not self.closed:
            self._emit(_wire.frame(GOAWAY, 0, 0, _wire.encode_goaway(
                self._last_peer_stream, exc.code, str(exc))))
            self.closed = True
            self._spare = None

    def connection_lost(self) -> None:
        """The transport is gone: nothing more is received or sent, and what was
        buffered is let go at once (and given back to the budget)."""
        self.closed = True
        self._accept_pending = False
        for stream in self.streams.values():
            stream.partial.clear()
            stream.assembly = None
        self._spare = None
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.used -= self.buffered + self._reserved
            budget.connections -= 1
        self.buffered = 0
        self._reserved = 0

    def _require_handshake(self) -> None:
        if not self.handshake_done:
            raise ProtocolError("frame before HELLO")

    def _on_hello(self, flags: int, sid: int, payload: bytes | bytearray, events: list[Event]) -> bool:
        """True on a server: what follows waits for accept(), our HELLO goes first."""
        if self.handshake_done or self._accept_pending:
            raise ProtocolError("second HELLO")
        if sid != 0:
            raise ProtocolError("HELLO on a stream")
        hello = handshake_pb2.Hello()
        try:
            hello.ParseFromString(payload)
        except Exception:
            raise ProtocolError("HELLO is not a valid handshake message") from None
        peer = PeerLimits.from_settings(hello.settings)
        if self._server:
            common = [v for v in hello.versions if v in _wire.SUPPORTED_VERSIONS]
            if not common:
                raise ProtocolError(
                    f"no common protocol version (peer speaks {list(hello.versions)}, "
                    f"we speak {list(_wire.SUPPORTED_VERSIONS)})",
                    GoAwayCode.UNSUPPORTED_VERSION)
            self.version = max(common)
            self._accept_pending = True
        else:
            if len(hello.versions) != 1 or hello.versions[0] not in _wire.SUPPORTED_VERSIONS:
                raise ProtocolError(f"server chose an unknown version {list(hello.versions)}",
                                    GoAwayCode.UNSUPPORTED_VERSION)
            self.version = hello.versions[0]
        self.peer = peer
        self._peer_max_frame = peer.max_frame_size
        self._peer_max_metadata = peer.max_metadata_size
        self._peer_stream_window = peer.stream_window
        self.peer_hello = hello
        self._announce_sizes = self.version >= 2
        self.send_window = peer.connection_window
        self._decoder.handshake_limit = None     # the peer said who it is: full-size frames
        if self._server:
            events.append(HelloReceived(hello))
            return True
        self.handshake_done = True
        events.append(HandshakeDone(hello))
        return False

    def _on_headers(self, flags: int, sid: int, payload: bytes | bytearray, events: list[Event]) -> None:
        self._require_handshake()
        message = None
        if flags & FLAG_WITH_MESSAGE:
            if not self._server:
                raise ProtocolError("HEADERS with a message from the server")
            message, payload = _wire.split_message(payload)
            # The message goes through _on_message below, which then ends the input.
            end_after_message = bool(flags & FLAG_END_STREAM)
            message_encoding = flags & ENCODING_MASK
            flags &= ~FLAG_END_STREAM
        if len(payload) > self._max_metadata + 512:
            # The request can't be parsed for a reply; refuse the stream only.
            if self._server and sid > self._last_peer_stream:
                self._last_peer_stream = sid
                self._emit(_wire.frame(TRAILERS, 0, sid, _wire.encode_trailers(
                    RESOURCE_EXHAUSTED, "request metadata larger than the limit", None)))
                self._discard_message(message)
                return
        stream: Stream | None     # a new stream (server) or a known one (client)
        if self._server:
            if sid <= self._last_peer_stream or sid == 0:
                raise ProtocolError(f"HEADERS reuse stream id {sid}")
            self._last_peer_stream = sid
            method, timeout_us, metadata = _wire.decode_request_headers(payload)
            if self.goaway_sent:
                self._emit(_wire.frame(CANCEL, FLAG_NOT_STARTED, sid, _wire.encode_cancel(
                    UNAVAILABLE, "server is shutting down")))
                self._discard_message(message)
                return
            if len(self.streams) >= self._max_streams:
                self._emit(_wire.frame(CANCEL, FLAG_NOT_STARTED, sid, _wire.encode_cancel(
                    RESOURCE_EXHAUSTED, "too many concurrent streams on this connection")))
                self._discard_message(message)
                return
            if self.buffered and self.budget is not None and self.budget.exhausted:
                # Only connections that hold some of it; never started, so the client
                # may retry it elsewhere or later.
                self._emit(_wire.frame(CANCEL, FLAG_NOT_STARTED, sid, _wire.encode_cancel(
                    RESOURCE_EXHAUSTED, "the server's memory budget for incoming messages "
                    "is spent")))
                self._discard_message(message)
                return
            stream = Stream(sid, self._peer_stream_window, self._stream_window)
            stream.headers_received = True
            end = bool(flags & FLAG_END_STREAM)
            if end:
                stream.state = _HALF_CLOSED_REMOTE
            self.streams[sid] = stream
            events.append(RequestReceived(
                sid, method, timeout_us / 1e6 if timeout_us else None, metadata, end))
            if message is not None:
                self._on_message((FLAG_END_STREAM if end_after_message else 0) | message_encoding,
                                 sid, message, events)
        else:
            stream = self.streams.get(sid)
            if stream is None:
                self._check_known(sid)
                return
            if stream.headers_received:
                raise ProtocolError(f"second HEADERS on stream {sid}")
            stream.headers_received = True
            metadata, size = _wire.decode_metadata(payload)
            if size != len(payload):
                raise ProtocolError("trailing bytes after response headers")
            if len(payload) > self._max_metadata:
                detail = (f"CLIENT: initial metadata of {len(payload)} bytes is over the limit "
                          f"of {self._max_metadata}")
                self.cancel(sid, CANCELLED, "response metadata too large")
                events.append(StreamEnded(sid, RESOURCE_EXHAUSTED, detail, by_peer=False))
                return
            events.append(InitialMetadataReceived(sid, metadata))

    def _discard_message(self, message: _wire.Buffer | None) -> None:
        """A message that came with a refused request still used connection window."""
        if message:
            if len(message) > self._recv_window:
                raise ProtocolError("peer overran the connection's flow-control window")
            self._recv_window -= len(message)
            self._recv_window_pending += len(message)

    def _check_known(self, sid: int) -> None:
        """A frame for a stream we don't hold: fine if it was closed (frames
        cross in flight), a violation if it was never opened."""
        highest = self._last_peer_stream if self._server else self._next_stream_id - 1
        if sid == 0 or sid > highest:
            raise ProtocolError(f"frame for stream {sid}, which was never opened")

    def _on_message(self, flags: int, sid: int, payload: _wire.Buffer, events: list[Event]) -> None:
        self._require_handshake()
        if flags & FLAG_SIZE:
            self._on_message_size(sid, payload, events)
            return
        stream = self.streams.get(sid)
        size = len(payload)
        if size > self._recv_window:
            raise ProtocolError("peer overran the connection's flow-control window")
        self._recv_window -= size
        if stream is None:
            self._check_known(sid)
            self._recv_window_pending += size    # still counts against the connection
            return
        if size > stream.recv_window:
            raise ProtocolError(f"peer overran the flow-control window of stream {sid}")
        stream.recv_window -= size
        if stream.closing:
            self._recv_window_pending += size
            return
        # A response's first MESSAGE without HEADERS before it implies empty
        # initial metadata (saves a frame per call).
        stream.headers_received = True
        if flags & FLAG_NO_MESSAGE:
            if (size or not flags & FLAG_END_STREAM or flags & FLAG_MORE or stream.partial_size
                    or stream.announced):
                raise ProtocolError("a bare half-close must be empty and end the stream")
            self._recv_end(stream)
            events.append(EndOfInput(sid))
            return
        stream.state = transition(stream.state, _RECV_MESSAGE)
        if flags & ENCODING_MASK == ENCODING_MASK:    # checked before anything is counted
            raise ProtocolError(f"message on stream {sid} flags an unknown encoding")
        more = flags & FLAG_MORE
        if stream.discarding:
            self._recv_window_pending += size
            if not more:
                stream.discarding = False
            return
        total = stream.partial_size + size
        announced = stream.announced
        if announced and (total > announced or (not more and total != announced)):
            raise ProtocolError(f"message on stream {sid} is not the {announced} bytes announced")
        if total > self._max_message:
            limit = self._max_message
            side = "SERVER" if self._server else "CLIENT"
            self._recv_window_pending += size
            self._reject_message(stream, bool(more), RESOURCE_EXHAUSTED,
                                 f"{side}: Received message larger than max ({total} vs. {limit})",
                                 events)
            return
        self.buffered += size               # charged to the connection and the budget
        if self.budget is not None:
            self.budget.used += size
        assembly = stream.assembly
        if assembly is not None:
            if not (type(payload) is memoryview and payload.obj is assembly):
                assembly[stream.partial_size:total] = payload   # (else read in place)
            self._reserved -= size       # no longer reserved: buffered, counted above
            if self.budget is not None:
                self.budget.used -= size
        if more:
            if assembly is None:
                stream.partial.append(payload)
            stream.partial_size = total
            if not stream.held:
                # Nothing queued ahead of this message: the reader is waiting for it,
                # so the stream (not the connection) credits its pieces at once: a
                # message larger than the stream window can't deadlock.
                stream.partial_credited += size
                self._credit_stream(stream, size)
            self._relieve(stream, events)
            return
        data: _wire.Buffer
        if assembly is not None:
            data = assembly
            stream.assembly = None
        elif stream.partial:
            stream.partial.append(payload)
            data = b"".join(stream.partial)
            stream.partial.clear()
        else:
            data = payload
        stream.announced = 0
        stream.held += 1
        stream.held_bytes += total
        stream.held_credited += stream.partial_credited
        stream.partial_size = 0
        stream.partial_credited = 0
        self._held_messages += 1
        end = bool(flags & FLAG_END_STREAM)
        if end:
            self._recv_end(stream)
        encoding = flags & ENCODING_MASK
        if encoding:
            events.append(MessageReceived(sid, data, end, encoding >> ENCODING_SHIFT))
        else:
            events.append(MessageReceived(sid, data, end))

    def _on_message_size(self, sid: int, payload: _wire.Buffer, events: list[Event]) -> None:
        """MESSAGE with SIZE (protocol version 2): the length of the message whose
        chunks follow on this stream. Checked against the receive limit before
        anything is allocated (over it, the message is refused now and its chunks
        dropped as they come); then, when the connection's window and the memory
        budget have room for it, one buffer of that size is made, and the chunks are
        read straight into it (see :meth:`_place_of`). It carries no message bytes
        and counts against no window."""
        if not self._announce_sizes:
            raise ProtocolError("message size announced on a protocol version 1 connection")
        total = _wire.decode_message_size(payload)
        stream = self.streams.get(sid)
        if stream is None:
            self._check_known(sid)
            return
        if stream.closing:
            return      # we ended it; what still comes is dropped (see _on_message)
        if stream.partial_size or stream.announced or stream.discarding:
            raise ProtocolError(f"message size announced in the middle of a message on stream {sid}")
        stream.state = transition(stream.state, _RECV_MESSAGE)
        limit = self._max_message
        if total > limit:
            side = "SERVER" if self._server else "CLIENT"
            self._reject_message(stream, True, RESOURCE_EXHAUSTED,
                                 f"{side}: Received message larger than max ({total} vs. {limit})",
                                 events)
            return
        stream.announced = total
        budget = self.budget
        if (self.buffered + self._reserved + total <= self.limits.connection_window
                and (budget is None or not budget.exhausted)):
            stream.assembly = self._message_buffer(total)
            self._reserved += total
            if budget is not None:
                budget.used += total
        # else: no room to hold it all at once; its chunks are kept as they come

    def _message_buffer(self, size: int) -> bytearray:
        """One buffer for an announced message of ``size`` bytes: the spare when nothing
        else holds it any more and it is that size (or up to twice it: cut to size in
        place); else a new one, which becomes the spare.

        Nothing else holds the spare when its reference count is what it was when it
        was made: the message it carried was parsed (protobuf's ``FromString`` copies
        what it keeps) or copied into bytes, and dropped, and no view of it is left (a
        memoryview, even one a C library holds, keeps a reference). So a buffer anyone
        still holds is never written into. On a server a spare is kept only while it
        is within the connection's share of the memory budget, so idle spares stay
        within the budget's limit, one per connection at most."""
        if self._spare is not None and self._spare_refs() == self._spare_alone:
            spare = self._spare
            have = len(spare)
            if have == size:
                return spare
            if size < have <= 2 * size:
                del spare[size:]       # a bytearray shrinks in place (no copy)
                return spare
        budget = self.budget
        if budget is not None and size > budget.fair_share:
            self._spare = None
            return bytearray(size)
        self._spare = bytearray(size)
        self._spare_alone = self._spare_refs()
        return self._spare

    def _spare_refs(self) -> int:
        """The spare's reference count, as :meth:`_message_buffer` compares it (the same
        expression both times, so the build's temporaries count the same)."""
        return sys.getrefcount(self._spare)

    def _place_of(self, ftype: int, flags: int, sid: int, length: int) -> memoryview | None:
        """The decoder's sink: where a big MESSAGE chunk is read into, its place in
        its message's buffer (None: not a chunk of an announced message, or one
        that does not fit it, which :meth:`_on_message` then refuses)."""
        if ftype != MESSAGE:
            return None
        stream = self.streams.get(sid)
        if stream is None or stream.assembly is None:
            return None
        at = stream.partial_size
        if at + length > len(stream.assembly):
            return None
        return memoryview(stream.assembly)[at:at + length]

    def _reject_message(self, stream: Stream, more: bool, code: int, detail: str,
                        events: list[Event]) -> None:
        """End the stream over the message being received (too large, or over the
        memory budget): its pieces are let go and credited back, the rest of it is
        discarded as it comes."""
        self._let_go_partial(stream)
        stream.discarding = more
        if self._server:
            self.end_stream(stream.id, code, detail)
        else:
            self.cancel(stream.id, CANCELLED, "response not accepted")
        events.append(StreamEnded(stream.id, code, detail, by_peer=False))

    # ----------------------------------------------------------- memory budget

    def _let_go_partial(self, stream: Stream) -> None:
        """Forget the pieces of the message being received, crediting them back."""
        if stream.partial_size:
            self._recv_window_pending += stream.partial_size
            self._release(stream.partial_size)
        if stream.assembly is not None:
            unfilled = len(stream.assembly) - stream.partial_size
            self._reserved -= unfilled
            if self.budget is not None:
                self.budget.used -= unfilled
            stream.assembly = None
        stream.announced = 0
        stream.partial.clear()
        stream.partial_size = 0
        stream.partial_credited = 0

    def _release(self, size: int) -> None:
        self.buffered -= size
        if self.budget is not None:
            self.budget.used -= size

    def _relieve(self, stream: Stream, events: list[Event]) -> None:
        """After a piece of an unfinished message came in: make sure the connection
        can go on, and that it is not the one holding the budget over its limit.

        Pieces of unfinished messages hold connection window until their message is
        consumed. When they alone have used it all (no whole message waits to be
        consumed, so no credit will come), the peer can't finish any of them: the
        largest is refused. The same happens while the server-wide budget is spent
        and this connection holds more than its share: the connection that holds
        the most is the one that gives up memory."""
        if self._recv_window <= 0:
            if self._recv_window_pending or self._held_messages:
                return    # credit is on its way, or comes as the application consumes
            reason = "unfinished messages fill the connection's window"
        elif self.budget is not None and self.budget.exhausted and self.buffered > self.budget.fair_share:
            reason = "the server's memory budget is spent"
        else:
            return
        largest = max((s for s in self.streams.values() if s.partial_size),
                      key=lambda s: s.partial_size, default=None)
        if largest is not None:
            self._reject_message(largest, True, RESOURCE_EXHAUSTED,
                                 f"message not accepted: {reason}", events)

    def _recv_end(self, stream: Stream) -> None:
        if not self._server:
            raise ProtocolError("END_STREAM from the server; it ends streams with TRAILERS")
        stream.state = transition(stream.state, _RECV_END)
        if stream.state is _CLOSED:
            self._drop(stream)

    def _on_trailers(self, flags: int, sid: int, payload: bytes | bytearray, events: list[Event]) -> None:
        self._require_handshake()
        if self._server:
            raise ProtocolError("TRAILERS from a client")
        if flags & FLAG_WITH_MESSAGE:
            message, payload = _wire.split_message(payload)
            # May end the stream (too large).
            self._on_message(flags & ENCODING_MASK, sid, message, events)
        stream = self.streams.get(sid)
        if stream is None:
            self._check_known(sid)
            return
        code, details, metadata = _wire.decode_trailers(payload)
        stream.state = transition(stream.state, _CLOSE)
        self._unqueue(stream)     # what we still had to say on it goes nowhere
        self._drop(stream)
        size = sum(len(k) + len(v) for k, v in metadata) if metadata else 0
        if size > self._max_metadata:
            events.append(StreamEnded(sid, RESOURCE_EXHAUSTED, (
                f"CLIENT: trailing metadata of {size} bytes is over the limit of "
                f"{self._max_metadata}"), (), by_peer=False))
            return
        events.append(StreamEnded(sid, code, details, metadata))

    def _on_cancel(self, flags: int, sid: int, payload: bytes | bytearray, events: list[Event]) -> None:
        self._require_handshake()
        code, details = _wire.decode_cancel(payload)
        stream = self.streams.get(sid)
        if stream is None:
            self._check_known(sid)
            return
        stream.state = transition(stream.state, _CLOSE)
        self._unqueue(stream)     # what we still had to say on it goes nowhere
        self._drop(stream)
        if stream.closing:
            return    # we ended it already (our status waits behind its messages)
        not_started = bool(flags & FLAG_NOT_STARTED) and not self._server
        events.append(StreamEnded(sid, code, details, (), not_started))

    def _on_window_update(self, flags: int, sid: int, payload: bytes | bytearray, events: list[Event]) -> None:
        self._require_handshake()
        inc = _wire.decode_window_update(payload)
        if sid == 0:
            self.send_window += inc
            if self.send_window > _MAX_WINDOW:
                raise ProtocolError("connection window overflow")
            self._release_blocked(events)
            return
        stream = self.streams.get(sid)
        if stream is None:
            self._check_known(sid)
            return
        stream.send_window += inc
        if stream.send_window > _MAX_WINDOW:
            raise ProtocolError(f"window overflow on stream {sid}")
        if stream.outbox:
            self._pump(stream, events)

    def _on_ping(self, flags: int, sid: int, payload: bytes | bytearray, events: list[Event]) -> None:
        self._require_handshake()
        if sid != 0 or len(payload) != 8:
            raise ProtocolError("PING must be 8 bytes on stream 0")
        payload = bytes(payload)      # 8 bytes: cut from the receive buffer, already bytes
        if flags & FLAG_ACK:
            events.append(PingAcked(payload))
        else:
            ack = _wire.frame(PING, FLAG_ACK, 0, payload)
            self.ping_bytes_sent += len(ack)
            self._emit(ack)
            events.append(PingReceived(payload))

    def _on_lane(self, flags: int, sid: int, payload: bytes | bytearray, events: list[Event]) -> bool:
        """A lane switch (docs/wire-protocol.md, "Lane switch"). Returns True when
        the frames after this one arrive on another lane."""
        self._require_handshake()
        if sid != 0:
            raise ProtocolError("LANE on a stream")
        lane = _wire.decode_lane(payload)
        if self._server:
            if self._lane_asked is not None:
                raise ProtocolError("second LANE from the client")
            self._lane_asked = lane
            switching = False     # the server answers first, then switches
        else:
            if self._lane_asked is None or self._lane_answered:
                raise ProtocolError("LANE from the server that answers no request")
            if lane == "shm" and self._lane_asked != "shm":
                raise ProtocolError("server granted shm, which was not asked for")
            self._lane_answered = True
            switching = lane != "unix"
        events.append(LaneChange(lane))
        if switching and self._decoder.buffered:
            # The bytes that follow travel on the new lane: none may follow on this one.
            raise ProtocolError("bytes after a LANE switch on the old lane")
        return switching

    def send_lane(self, lane: str) -> None:
        """Client: ask for a lane ("unix": decline the offer). Server: grant one;
        after granting "shm" the server writes only to the new lane."""
        if lane not in _wire.LANES_SWITCHABLE:
            raise ValueError(f"unknown lane {lane!r}")
        if not self._server:
            if self._lane_asked is not None:
                raise RuntimeError("a lane was asked for already")
            self._lane_asked = lane
            if lane == "unix":
                self._lane_answered = True      # a decline needs no answer
        self._emit(_wire.frame(LANE, 0, 0, lane.encode("ascii")))

    def _on_goaway(self, flags: int, sid: int, payload: bytes | bytearray, events: list[Event]) -> None:
        if sid != 0:
            raise ProtocolError("GOAWAY on a stream")
        last, code, reason = _wire.decode_goaway(payload)
        ev = GoAwayReceived(last, code, reason)
        self.goaway_received = ev
        events.append(ev)
        if not self._server:
            # Streams the server never saw will never be answered: they end now,
            # marked not started so they may be retried elsewhere.
            for stream in [s for s in self.streams.values() if s.id > last]:
                self._drop(stream)
                events.append(StreamEnded(stream.id, UNAVAILABLE,
                                          f"server going away: {reason}" if reason else
                                          "server going away", (), True, by_peer=True))

    # ----------------------------------------------------------- flow control

    def _credit_stream(self, stream: Stream, size: int) -> None:
        """Give ``size`` bytes of the stream's window back to the peer, batched: a
        WINDOW_UPDATE goes out once a quarter of the window is owed."""
        # Per-stream credit matters only while the peer can still send on it.
        if stream.state in (_OPEN, _HALF_CLOSED_LOCAL):
            pending = stream.credit_pending + size
            if pending >= self._stream_window // 4:
                stream.credit_pending = 0
                stream.recv_window += pending
                self._emit(_wire.frame(WINDOW_UPDATE, 0, stream.id, _wire.encode_window_update(pending)))
            else:
                stream.credit_pending = pending

    def consume(self, stream_id: int) -> None:
        """The owner took one delivered message off the stream: once it holds none
        any more, credit them back (the connection's window and the budget too)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # stream gone: _drop() already credited what it held
        if stream.held <= 0:
            return
        stream.held -= 1
        self._held_messages -= 1
        if stream.held == 0:
            size = stream.held_bytes
            stream_size = size - stream.held_credited
            stream.held_bytes = 0
            stream.held_credited = 0
            self.buffered -= size
            if self.budget is not None:
                self.budget.used -= size
            self._recv_window_pending += size
            # Nothing left queued: chunks already in of the next message are now
            # the head, the reader waits for them.
            extra = stream.partial_size - stream.partial_credited
            if extra:
                stream.partial_credited = stream.partial_size
                stream_size += extra
            if stream_size:
                self._credit_stream(stream, stream_size)

    def _flush_credit(self) -> None:
        pending = self._recv_window_pending
        quarter = self._credit_quarter
        if pending > 0 and (pending >= quarter or self._recv_window < quarter):
            self._recv_window_pending = 0
            self._recv_window += pending
            self._emit(_wire.frame(WINDOW_UPDATE, 0, 0, _wire.encode_window_update(pending)))

    def _release_blocked(self, events: list[Event]) -> None:
        while self._blocked and self.send_window > 0:
            sid = next(iter(self._blocked))
            del self._blocked[sid]
            stream = self.streams.get(sid)
            if stream is not None and stream.outbox:
                self._pump(stream, events)

    # ----------------------------------------------------------- sending

    def _check_can_send(self) -> None:
        if self.closed:
            raise ConnectionClosed("connection is closed")
        if not self.handshake_done:
            raise RuntimeError("handshake not done")

    def start_request(self, method: str, timeout: float | None, metadata: _wire.Metadata | None, *,
                      end_stream: bool = False, message: bytes | None = None,
                      encoding: int = 0) -> int:
        """Client: open a stream. Returns its id. With ``message``: the whole
        request of a unary call, which also ends the input (one frame when it fits);
        ``encoding``: how ``message`` is compressed (0: not)."""
        self._check_can_send()
        if self.goaway_received is not None:
            raise ConnectionClosed("server sent GOAWAY")
        sid = self._next_stream_id
        if sid > _MAX_STREAM_ID:
            raise ConnectionClosed("stream ids exhausted")
        self._next_stream_id = sid + 1
        timeout_us = 0
        if timeout is not None:
            scaled = timeout * 1e6
            if 1 <= scaled < _MAX_TIMEOUT_US:     # (NaN and infinity take the other way)
                timeout_us = int(scaled)
            else:
                timeout_us = max(1, min(int(timeout * 1e6), _MAX_TIMEOUT_US))
        block = _wire.encode_metadata(metadata)
        if len(block) > self._peer_max_metadata:
            raise MetadataTooLarge(
                f"request metadata of {len(block)} bytes is over the server's limit of "
                f"{self._peer_max_metadata}")
        payload = _wire.encode_request_headers_block(method, timeout_us, block)
        if len(payload) > self._peer_max_frame:
            raise MetadataTooLarge(f"request headers of {len(payload)} bytes don't fit a frame")
        stream = Stream(sid, self._peer_stream_window, self._stream_window)
        stream.headers_sent = True
        stream.out_batch = self._batch
        self.streams[sid] = stream
        if message is not None:
            size = len(message)
            if (size + len(payload) + 4 <= self._peer_max_frame
                    and size <= stream.send_window and size <= self.send_window):
                stream.send_window -= size
                self.send_window -= size
                stream.state = _HALF_CLOSED_LOCAL
                self._emit_with_message(
                    _pack_header_and_size(len(payload) + 4 + size, HEADERS,
                                          FLAG_END_STREAM | FLAG_WITH_MESSAGE
                                          | encoding << ENCODING_SHIFT, sid, size),
                    message, payload)
                return sid
            self._emit(_pack_header(len(payload), HEADERS, 0, sid) + payload)
            self.send_message(sid, message, end_stream=True, encoding=encoding)
            return sid
        if end_stream:
            stream.state = _HALF_CLOSED_LOCAL
        self._emit(_pack_header(len(payload), HEADERS, FLAG_END_STREAM if end_stream else 0, sid) + payload)
        return sid

    def send_initial_metadata(self, stream_id: int, metadata: _wire.Metadata | None) -> None:
        """Server: the response's initial metadata (once, before any message)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.headers_sent:
            return
        payload = _wire.encode_metadata(metadata)
        if len(payload) > min(self._peer_max_metadata, self._peer_max_frame):
            raise MetadataTooLarge(
                f"initial metadata of {len(payload)} bytes is over the client's limit of "
                f"{self._peer_max_metadata}")
        stream.headers_sent = True
        stream.out_batch = self._batch
        self._emit(_pack_header(len(payload), HEADERS, 0, stream_id) + payload)

    def send_message(self, stream_id: int, data: bytes, *, end_stream: bool = False,
                     encoding: int = 0) -> bool:
        """Queue one whole message (``encoding``: how ``data`` is compressed, 0: not).
        Returns True if it all went to the wire now, False if part waits for the
        peer's window (a StreamWritable follows)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamClosed(stream_id)
        stream.headers_sent = True     # none sent yet: this MESSAGE implies empty ones
        stream.state = transition(stream.state, _SEND_MESSAGE)
        if end_stream:
            stream.state = transition(stream.state, _SEND_END)
        size = len(data)
        if (not stream.outbox and size <= stream.send_window and size <= self.send_window
                and size <= self._peer_max_frame):
            stream.send_window -= size
            self.send_window -= size
            stream.out_batch = self._batch
            self._emit(_pack_header(size, MESSAGE, (FLAG_END_STREAM if end_stream else 0)
                                    | encoding << ENCODING_SHIFT, stream_id))
            if size:
                self._out.append(data)
                self._out_bytes += size
            return True
        outbox = stream.outbox
        if outbox is None:
            outbox = stream.outbox = collections.deque()
        outbox.append([data, 0, end_stream, encoding << ENCODING_SHIFT])
        stream.outbox_bytes += size
        self._pump(stream, None)
        return not stream.outbox

    def _pump(self, stream: Stream, events: list[Event] | None) -> None:
        """Send as much of the stream's queued messages as the windows allow."""
        max_frame = self._peer_max_frame
        outbox = stream.outbox
        while outbox:
            item = outbox[0]
            data, offset, end, encoded = item
            remaining = len(data) - offset
            allowance = min(stream.send_window, self.send_window, max_frame)
            if remaining and allowance <= 0:
                if self.send_window <= 0:
                    self._blocked[stream.id] = None
                return
            n = min(remaining, allowance)
            last = n == remaining
            stream.out_batch = self._batch
            if not offset and not last and self._announce_sizes and remaining >= _ANNOUNCE_FROM:
                # The peer makes one buffer of this size and reads the chunks into it.
                self._emit(_pack_header(4, MESSAGE, FLAG_SIZE, stream.id) + _pack_u32(remaining))
            flags = ((FLAG_END_STREAM if end else 0) if last else FLAG_MORE) | encoded
            self._emit(_pack_header(n, MESSAGE, flags, stream.id))
            if n:
                chunk = data if (offset == 0 and last) else memoryview(data)[offset:offset + n]
                self._out.append(chunk)
                self._out_bytes += n
            stream.send_window -= n
            self.send_window -= n
            stream.outbox_bytes -= n
            if last:
                outbox.popleft()
            else:
                item[1] = offset + n
        if stream.trailers_pending is not None:
            payload = stream.trailers_pending
            self._emit(_pack_header(len(payload), TRAILERS, 0, stream.id) + payload)
            self._drop(stream)
            return
        if stream.want_writable and events is not None:
            stream.want_writable = False
            events.append(StreamWritable(stream.id))

    def wait_writable(self, stream_id: int) -> bool:
        """Ask for a StreamWritable event when the stream's queue drains.
        Returns False if it is already drained (no event will come)."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.outbox:
            return False
        stream.want_writable = True
        return True

    def end_input(self, stream_id: int) -> None:
        """Client: half-close (done writing)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.outbox:
            stream.outbox[-1][2] = True
            stream.state = transition(stream.state, _SEND_END)
            return
        stream.state = transition(stream.state, _SEND_END)
        stream.out_batch = self._batch
        self._emit(_pack_header(0, MESSAGE, FLAG_END_STREAM | FLAG_NO_MESSAGE, stream_id))

    def end_stream(self, stream_id: int, code: int, details: str = "", metadata: _wire.Metadata | None = None,
                   message: bytes | None = None, encoding: int = 0) -> None:
        """Server: send the final status and close the stream; with ``message``, the
        unary response goes first (in the same frame when it fits). Trailers the
        client would refuse become RESOURCE_EXHAUSTED (long details are cut instead)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        payload = self._fitting_trailers(code, details, metadata)
        if message is not None:
            size = len(message)
            if (not stream.outbox and size + len(payload) + 4 <= self._peer_max_frame
                    and size <= stream.send_window and size <= self.send_window):
                stream.state = transition(stream.state, _SEND_MESSAGE)
                stream.send_window -= size
                self.send_window -= size
                self._emit_with_message(
                    _pack_header_and_size(len(payload) + 4 + size, TRAILERS,
                                          FLAG_WITH_MESSAGE | encoding << ENCODING_SHIFT,
                                          stream_id, size),
                    message, payload)
                self._drop(stream)
                return
            self.send_message(stream_id, message, encoding=encoding)
        if not stream.outbox:
            self._emit(_pack_header(len(payload), TRAILERS, 0, stream_id) + payload)
            self._drop(stream)
            return
        # Messages still wait for window: the trailers wait behind them, and
        # nothing more is taken from the peer on this stream.
        stream.trailers_pending = payload
        stream.closing = True
        self._let_go_partial(stream)

    def _fitting_trailers(self, code: int, details: str, metadata: _wire.Metadata | None) -> bytes:
        if not details and not metadata:
            return _wire.bare_trailers(code)      # the usual case: nothing to fit
        peer = self.peer
        block = _wire.encode_metadata(metadata)
        if len(block) > peer.max_metadata_size:  # type: ignore[union-attr]
            return _wire.encode_trailers(RESOURCE_EXHAUSTED, (
                f"trailing metadata of {len(block)} bytes is over the client's limit of "
                f"{peer.max_metadata_size}"), None)  # type: ignore[union-attr]
        room = peer.max_frame_size - len(block) - 8  # type: ignore[union-attr]
        raw = details.encode("utf-8") if details else b""
        if len(raw) > room:
            details = raw[:max(room - 3, 0)].decode("utf-8", errors="ignore") + "..."
        return _wire.encode_trailers(code, details, metadata)

    def cancel(self, stream_id: int, code: int = CANCELLED, details: str = "", *, not_started: bool = False) -> None:
        """Either side: abandon the stream. Messages waiting for window are dropped,
        and so are its frames still queued (not handed out by data_to_send); the
        CANCEL goes out. A client's stream whose HEADERS are still queued is withdrawn
        instead: nothing of it is sent, not even the CANCEL (the server never saw it;
        gRPC sends nothing for a stream it never started)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self._unqueue(stream)
        if not self._server and stream_id >= self._batch_first_sid:
            self.streams_withdrawn += 1
            self._drop(stream)
            return
        self._emit(_wire.frame(CANCEL, FLAG_NOT_STARTED if not_started else 0, stream_id,
                               _wire.encode_cancel(code, details)))
        self._drop(stream)

    def _unqueue(self, stream: Stream) -> None:
        """The stream is over: its frames queued so far, if it queued any in this
        batch, are dropped at the next data_to_send (one pass over the batch however
        many streams die in it). Only those queued so far: a CANCEL queued after this
        goes out."""
        if stream.out_batch != self._batch:
            return
        dropping = self._dropping
        if dropping is None:
            dropping = self._dropping = {}
        dropping[stream.id] = len(self._out)

    def _drop_frames(self) -> None:
        """Take the frames _unqueue named out of the batch, and give back the
        connection window their messages took: the peer never receives them, so it
        never counts them either. Streams that waited for that window go on."""
        dropping = self._dropping
        assert dropping is not None
        self._dropping = None
        out = self._out
        count = len(out)
        kept: list[bytes | memoryview] = []
        kept_bytes = 0
        restored = 0
        i = 0
        if count and out[0] is _wire.MAGIC:      # (a batch that starts the connection)
            kept.append(out[0])
            kept_bytes = len(out[0])
            i = 1
        while i < count:
            # Every frame starts a buffer of its own and ends one (see _emit's callers):
            # its header, then as many buffers as its payload fills.
            head = out[i]
            length, ftype, flags, sid = _unpack_header(head)
            whole = _HEADER_SIZE + length
            size = len(head)
            j = i + 1
            while size < whole:
                size += len(out[j])
                j += 1
            if size != whole:
                raise AssertionError("a queued buffer holds parts of two frames")
            if sid and i < dropping.get(sid, 0):
                if ftype == MESSAGE:
                    if not flags & FLAG_SIZE:
                        restored += length
                elif flags & FLAG_WITH_MESSAGE and (ftype == HEADERS or ftype == TRAILERS):
                    restored += _unpack_header_and_size(head)[4]
            else:
                while i < j:
                    kept.append(out[i])
                    i += 1
                kept_bytes += size
            i = j
        self._out = kept
        self._out_bytes = kept_bytes
        if restored:
            self.send_window += restored
            if self._blocked:
                self._release_blocked(self._later)

    def _drop(self, stream: Stream) -> None:
        stream.state = _CLOSED
        self.streams.pop(stream.id, None)
        if self._blocked:
            self._blocked.pop(stream.id, None)
        # Bytes the owner will never consume: let go, and credited to the connection.
        if stream.partial_size or stream.announced:
            self._let_go_partial(stream)
        if stream.held_bytes:
            self._recv_window_pending += stream.held_bytes
            self._release(stream.held_bytes)
        self._held_messages -= stream.held
        stream.held = 0
        stream.held_bytes = 0
        stream.held_credited = 0

    def ping(self, payload: bytes | None = None) -> bytes:
        payload = payload if payload is not None else os.urandom(8)
        if len(payload) != 8:
            raise ValueError("a PING carries exactly 8 bytes")
        frame = _wire.frame(PING, 0, 0, payload)
        self.ping_bytes_sent += len(frame)
        self._emit(frame)
        return payload

    def goaway(self, code: int = GoAwayCode.NO_ERROR, reason: str = "") -> None:
        if self.goaway_sent:
            return
        self.goaway_sent = True
        last = self._last_peer_stream if self._server else 0
        self._emit(_wire.frame(GOAWAY, 0, 0, _wire.encode_goaway(last, code, reason)))

    def outbox_bytes(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        return stream.outbox_bytes if stream is not None else 0


class ConnectionClosed(Exception):
    """The connection can't carry new work."""


class MetadataTooLarge(ValueError):
    """Metadata the peer announced it would refuse; nothing was sent."""


class StreamClosed(Exception):
    """The stream is over; nothing more can be sent on it."""
