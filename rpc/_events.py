"""What :class:`rpc._connection.Connection` tells its owner: the events that
``receive_data`` returns. Plain data, no behaviour.

Plain classes with ``__slots__`` rather than dataclasses: setup.py compiles this
module too, and ``_events.pxd`` makes each an extension type with C fields, so the
connection makes an event without running Python code. Events compare equal when
they are of one type with equal fields, and print as dataclasses do.
"""

from __future__ import annotations

from typing import ClassVar

from rpc._proto import handshake_pb2
from rpc._wire import DecodedMetadata

# True when this module runs as the extension setup.py compiles from this source
# (rpc._compiled says which runs, and how to force the source).
COMPILED: bool = not __file__.endswith(".py")


class Event:
    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()    # the fields, in __init__'s order

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self._fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"


class HelloReceived(Event):
    """Server: the client's HELLO, checked. Nothing more is read until the owner
    answers with :meth:`Connection.accept` (or refuses)."""
    __slots__ = _fields = ("hello",)
    hello: handshake_pb2.Hello

    def __init__(self, hello: handshake_pb2.Hello) -> None:
        self.hello = hello


class HandshakeDone(Event):
    """Client: the server's HELLO, checked; the connection carries calls now."""
    __slots__ = _fields = ("hello",)
    hello: handshake_pb2.Hello

    def __init__(self, hello: handshake_pb2.Hello) -> None:
        self.hello = hello


class RequestReceived(Event):
    """Server: a client opened a stream (a call); ``end_stream``: its input ends here."""
    __slots__ = _fields = ("stream_id", "method", "timeout", "metadata", "end_stream")
    stream_id: int
    method: str
    timeout: float | None     # seconds, relative, as sent
    metadata: DecodedMetadata
    end_stream: bool

    def __init__(self, stream_id: int, method: str, timeout: float | None,
                 metadata: DecodedMetadata, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.end_stream = end_stream


class InitialMetadataReceived(Event):
    """Client: the server's initial metadata for the call."""
    __slots__ = _fields = ("stream_id", "metadata")
    stream_id: int
    metadata: DecodedMetadata

    def __init__(self, stream_id: int, metadata: DecodedMetadata) -> None:
        self.stream_id = stream_id
        self.metadata = metadata


class MessageReceived(Event):
    """A whole message; the owner credits it back with ``consume()`` once it took it.
    ``encoding``: 0, or how ``data`` is compressed (rpc._compression's numbers)."""
    __slots__ = _fields = ("stream_id", "data", "end_stream", "encoding")
    stream_id: int
    data: bytes | bytearray | memoryview   # big ones are read into a buffer of their own
    end_stream: bool
    encoding: int

    def __init__(self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool,
                 encoding: int = 0) -> None:
        self.stream_id = stream_id
        self.data = data
        self.end_stream = end_stream
        self.encoding = encoding


class EndOfInput(Event):
    """The client half-closed with no message in the same frame."""
    __slots__ = _fields = ("stream_id",)
    stream_id: int

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamEnded(Event):
    """The stream is over. For a client: the call's final status. For a server:
    the call was cancelled (``cancelled``) or, when a limit was broken, ended by
    us with ``code`` already sent to the peer."""
    __slots__ = _fields = ("stream_id", "code", "details", "metadata", "not_started", "by_peer")
    stream_id: int
    code: int
    details: str
    metadata: DecodedMetadata
    not_started: bool
    by_peer: bool

    def __init__(self, stream_id: int, code: int, details: str, metadata: DecodedMetadata = (),
                 not_started: bool = False, by_peer: bool = True) -> None:
        self.stream_id = stream_id
        self.code = code
        self.details = details
        self.metadata = metadata
        self.not_started = not_started
        self.by_peer = by_peer


class StreamWritable(Event):
    """Everything the stream had queued went out within the peer's windows: a writer
    waiting for room may go on."""
    __slots__ = _fields = ("stream_id",)
    stream_id: int

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class PingReceived(Event):
    """The peer sent a PING; its answer is queued already."""
    __slots__ = _fields = ("payload",)
    payload: bytes

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class PingAcked(Event):
    """The peer answered one of our PINGs (keepalive compares the payload)."""
    __slots__ = _fields = ("payload",)
    payload: bytes

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class LaneChange(Event):
    """Server: the client asks to move to ``lane``. Client: the server's answer."""
    __slots__ = _fields = ("lane",)
    lane: str

    def __init__(self, lane: str) -> None:
        self.lane = lane


class GoAwayReceived(Event):
    """The peer takes no new streams. Streams above ``last_stream_id`` were never
    seen by it; on a client they have ended (not started) in the same batch."""
    __slots__ = _fields = ("last_stream_id", "code", "reason")
    last_stream_id: int
    code: int
    reason: str

    def __init__(self, last_stream_id: int, code: int, reason: str) -> None:
        self.last_stream_id = last_stream_id
        self.code = code
        self.reason = reason
