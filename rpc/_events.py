"""What :class:`rpc._connection.Connection` tells its owner: the events that
``receive_data`` returns. Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from rpc._proto import handshake_pb2
from rpc._wire import DecodedMetadata


class Event:
    __slots__ = ()


@dataclass(slots=True)
class HelloReceived(Event):
    """Server: the client's HELLO, checked. Nothing more is read until the owner
    answers with :meth:`Connection.accept` (or refuses)."""
    hello: handshake_pb2.Hello


@dataclass(slots=True)
class HandshakeDone(Event):
    """Client: the server's HELLO, checked; the connection carries calls now."""
    hello: handshake_pb2.Hello


@dataclass(slots=True)
class RequestReceived(Event):
    """Server: a client opened a stream (a call); ``end_stream``: its input ends here."""
    stream_id: int
    method: str
    timeout: float | None     # seconds, relative, as sent
    metadata: DecodedMetadata
    end_stream: bool


@dataclass(slots=True)
class InitialMetadataReceived(Event):
    """Client: the server's initial metadata for the call."""
    stream_id: int
    metadata: DecodedMetadata


@dataclass(slots=True)
class MessageReceived(Event):
    """A whole message; the owner credits it back with ``consume()`` once it took it.
    ``encoding``: 0, or how ``data`` is compressed (rpc._compression's numbers)."""
    stream_id: int
    data: bytes | bytearray | memoryview   # big ones are read into a buffer of their own
    end_stream: bool
    encoding: int = 0


@dataclass(slots=True)
class EndOfInput(Event):
    """The client half-closed with no message in the same frame."""
    stream_id: int


@dataclass(slots=True)
class StreamEnded(Event):
    """The stream is over. For a client: the call's final status. For a server:
    the call was cancelled (``cancelled``) or, when a limit was broken, ended by
    us with ``code`` already sent to the peer."""
    stream_id: int
    code: int
    details: str
    metadata: DecodedMetadata = ()
    not_started: bool = False
    by_peer: bool = True


@dataclass(slots=True)
class StreamWritable(Event):
    """Everything the stream had queued went out within the peer's windows: a writer
    waiting for room may go on."""
    stream_id: int


@dataclass(slots=True)
class PingReceived(Event):
    """The peer sent a PING; its answer is queued already."""
    payload: bytes


@dataclass(slots=True)
class PingAcked(Event):
    """The peer answered one of our PINGs (keepalive compares the payload)."""
    payload: bytes


@dataclass(slots=True)
class LaneChange(Event):
    """Server: the client asks to move to ``lane``. Client: the server's answer."""
    lane: str


@dataclass(slots=True)
class GoAwayReceived(Event):
    """The peer takes no new streams. Streams above ``last_stream_id`` were never
    seen by it; on a client they have ended (not started) in the same batch."""
    last_stream_id: int
    code: int
    reason: str
