"""One stream's state: the states, the inputs that move them, the transition
table (the only place a stream changes state), and the per-stream bookkeeping of
messages waiting for window and messages being assembled."""

from __future__ import annotations

import collections
import enum
from typing import Any

from rpc._wire import ProtocolError


# True when this module runs as the extension setup.py compiles from this source
# (rpc._compiled says which runs, and how to force the source).
COMPILED: bool = not __file__.endswith(".py")

class StreamState(enum.Enum):
    OPEN = "open"                       # both sides may send messages
    HALF_CLOSED_LOCAL = "half-closed-local"    # we sent END_STREAM
    HALF_CLOSED_REMOTE = "half-closed-remote"  # the peer sent END_STREAM
    CLOSED = "closed"

    # Members are singletons: identity hashing is correct and, unlike Enum's
    # own __hash__, costs no Python call on the per-frame path.
    __hash__ = object.__hash__


class StreamInput(enum.Enum):
    SEND_END = "send END_STREAM"
    RECV_END = "receive END_STREAM"
    SEND_MESSAGE = "send MESSAGE"
    RECV_MESSAGE = "receive MESSAGE"
    CLOSE = "send/receive TRAILERS or CANCEL"

    __hash__ = object.__hash__


S, I = StreamState, StreamInput
# Everything that moves a stream from one state to another. A pair missing from
# the table is a protocol violation (when the peer caused it) or a bug (when we did).
_TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (S.OPEN, I.SEND_MESSAGE): S.OPEN,
    (S.OPEN, I.RECV_MESSAGE): S.OPEN,
    (S.OPEN, I.SEND_END): S.HALF_CLOSED_LOCAL,
    (S.OPEN, I.RECV_END): S.HALF_CLOSED_REMOTE,
    (S.OPEN, I.CLOSE): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, I.RECV_MESSAGE): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, I.RECV_END): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, I.CLOSE): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, I.SEND_MESSAGE): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_REMOTE, I.SEND_END): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, I.CLOSE): S.CLOSED,
}
del S, I
# The same table by state, then input: a look-up needs no (state, input) tuple.
_BY_STATE: dict[StreamState, dict[StreamInput, StreamState]] = {state: {} for state in StreamState}
for (_state, _input), _next in _TRANSITIONS.items():
    _BY_STATE[_state][_input] = _next
del _state, _input, _next
# Read once: an enum member read through its class goes through the enum's metaclass
# on every read (about 850 instructions, once per stream).
_OPEN = StreamState.OPEN


def transition(state: StreamState, event: StreamInput) -> StreamState:
    moves = _BY_STATE[state]
    new = moves.get(event)
    if new is not None:
        return new
    else:
        raise ProtocolError(f"{event.value} not allowed on a {state.value} stream")


class Stream:
    __slots__ = (
        "id", "state", "send_window", "outbox", "outbox_bytes", "partial", "partial_size",
        "partial_credited", "held", "held_bytes", "held_credited", "headers_sent", "headers_received",
        "discarding", "want_writable", "credit_pending", "trailers_pending", "recv_window",
        "closing", "announced", "assembly", "out_batch",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.state = _OPEN
        self.send_window = send_window
        self.recv_window = recv_window   # what the peer may still send before our credit
        self.closing = False             # our TRAILERS wait behind the outbox; input is ignored
        # Outbound: messages waiting for window, as [buffer, offset, end_stream, encoding flags]
        # (a list: the offset moves as pieces go out); made when a message first waits
        # (most never do).
        self.outbox: collections.deque[list[Any]] | None = None
        self.outbox_bytes = 0
        # Inbound: chunks of a message being assembled: in one buffer of the size the
        # peer announced (assembly), or, unannounced or without room for that, as pieces.
        self.announced = 0
        self.assembly: bytearray | None = None
        self.partial: list[bytes | bytearray | memoryview] = []
        self.partial_size = 0
        self.partial_credited = 0
        # Delivered but not yet consumed messages and their bytes (credited on
        # consume); of those bytes, how many the stream credited as they came in.
        self.held = 0
        self.held_bytes = 0
        self.held_credited = 0
        self.headers_sent = False
        self.headers_received = False
        self.discarding = False       # over the size limit: drop the rest of this message
        self.want_writable = False
        self.credit_pending = 0       # stream-level credit not yet sent
        self.trailers_pending: bytes | None = None   # TRAILERS queued behind the outbox
        # The connection's batch (see Connection.data_to_send) this stream last queued
        # a frame in: when the stream dies with that batch unsent, those frames are
        # dropped.
        self.out_batch = -1
