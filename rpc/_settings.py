"""The limits a side announces in its HELLO, and the peer's, checked."""

from __future__ import annotations

from dataclasses import dataclass

from rpc import _wire
from rpc._proto import handshake_pb2
from rpc._wire import ProtocolError


@dataclass(slots=True)
class PeerLimits:
    """What a side accepts, as its HELLO announces it: what the peer obeys."""
    max_frame_size: int = _wire.DEFAULT_MAX_FRAME_SIZE
    stream_window: int = _wire.DEFAULT_STREAM_WINDOW
    connection_window: int = _wire.DEFAULT_CONNECTION_WINDOW
    max_concurrent_streams: int = _wire.DEFAULT_MAX_CONCURRENT_STREAMS
    max_metadata_size: int = _wire.DEFAULT_MAX_METADATA_SIZE

    def to_settings(self) -> handshake_pb2.Settings:
        return handshake_pb2.Settings(
            max_frame_size=self.max_frame_size,
            initial_stream_window=self.stream_window,
            initial_connection_window=self.connection_window,
            max_concurrent_streams=self.max_concurrent_streams,
            max_metadata_size=self.max_metadata_size,
        )

    @classmethod
    def from_settings(cls, s: handshake_pb2.Settings) -> "PeerLimits":
        def pick(value: int, default: int, low: int, high: int, name: str) -> int:
            if value == 0:
                return default
            if not low <= value <= high:
                raise ProtocolError(f"peer's {name} {value} outside [{low}, {high}]")
            return value
        return cls(
            max_frame_size=pick(s.max_frame_size, _wire.DEFAULT_MAX_FRAME_SIZE, 1024,
                                _wire.MAX_FRAME_SIZE_LIMIT, "max_frame_size"),
            stream_window=pick(s.initial_stream_window, _wire.DEFAULT_STREAM_WINDOW, 1024,
                               _wire.MAX_WINDOW, "stream window"),
            connection_window=pick(s.initial_connection_window, _wire.DEFAULT_CONNECTION_WINDOW,
                                   1024, _wire.MAX_WINDOW, "connection window"),
            max_concurrent_streams=pick(s.max_concurrent_streams,
                                        _wire.DEFAULT_MAX_CONCURRENT_STREAMS, 1, 2**31,
                                        "max_concurrent_streams"),
            max_metadata_size=pick(s.max_metadata_size, _wire.DEFAULT_MAX_METADATA_SIZE, 1024,
                                   2**24, "max_metadata_size"),
        )


@dataclass(slots=True)
class Limits(PeerLimits):
    """What this side accepts: what its HELLO announces, and the largest message it
    takes (not announced: a message over it ends that call, not the connection)."""
    max_receive_message_length: int = 4 * 1024 * 1024


class MemoryBudget:
    """The bytes of incoming messages a server holds, counted over all its connections:
    pieces of messages still arriving and whole messages the application has not taken
    yet. Each :class:`~rpc._connection.Connection` charges what it buffers and releases
    it as the application consumes it (or the stream ends). Over ``limit``, new streams
    are refused and a connection holding more than its share gives up its largest
    unfinished message (see ``Connection._relieve``)."""

    __slots__ = ("limit", "used", "connections")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"a memory budget must be positive; got {limit}")
        self.limit = limit
        self.used = 0
        self.connections = 0      # connections charging this budget

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    @property
    def fair_share(self) -> int:
        return self.limit // max(1, self.connections)
