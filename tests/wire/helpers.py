"""Two sans-IO connections wired together in memory (after h11's tests/helpers.py).

``ConnectionPair`` moves the bytes one side asks to send into the other side's
``receive_data``, whole or one byte at a time, and keeps what it saw: the events
each side produced and the frames that crossed the wire in each direction (decoded
by a tap of its own, so tests can check what was on the wire, not just what the
peer made of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rpc import _wire
from rpc._connection import Connection, Event, HelloReceived, Limits, Role
from rpc._wire import FrameDecoder

CLIENT, SERVER = Role.CLIENT, Role.SERVER


@dataclass
class WireFrame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


@dataclass
class _Tap:
    """Decodes one direction of the wire independently of the receiving connection."""

    decoder: FrameDecoder = field(
        default_factory=lambda: FrameDecoder(_wire.MAX_FRAME_SIZE_LIMIT, expect_magic=True))
    frames: list[WireFrame] = field(default_factory=list)
    total_bytes: int = 0

    def see(self, data: bytes) -> None:
        self.total_bytes += len(data)
        self.decoder.feed(data)
        self.frames.extend(WireFrame(*f) for f in self.decoder.frames())

    def message_bytes(self, stream_id: int | None = None) -> int:
        """Message bytes seen in MESSAGE frames, for one stream or all (a size
        announcement carries none: what flow control counts)."""
        return sum(len(f.payload) for f in self.frames
                   if f.type == _wire.MESSAGE and not f.flags & _wire.FLAG_SIZE
                   and (stream_id is None or f.stream_id == stream_id))


class ConnectionPair:
    """A client and a server :class:`Connection`, connected by memory.

    ``byte_at_a_time=True`` delivers every byte in its own ``receive_data`` call;
    ``reads_of=N`` delivers as a buffered socket would: copied into the
    connection's ``receive_buffer()`` at most N bytes at a time (``received_into``).
    ``events[role]`` accumulates everything ``role``'s connection produced.
    """

    def __init__(
        self,
        client_limits: Limits | None = None,
        server_limits: Limits | None = None,
        *,
        byte_at_a_time: bool = False,
        reads_of: int | None = None,
    ) -> None:
        self.conn = {
            CLIENT: Connection(CLIENT, client_limits),
            SERVER: Connection(SERVER, server_limits),
        }
        self.byte_at_a_time = byte_at_a_time
        self.reads_of = reads_of
        self.events: dict[Role, list[Event]] = {CLIENT: [], SERVER: []}
        # taps[role]: the frames *sent by* role.
        self.taps: dict[Role, _Tap] = {CLIENT: _Tap(), SERVER: _Tap()}

    @property
    def client(self) -> Connection:
        return self.conn[CLIENT]

    @property
    def server(self) -> Connection:
        return self.conn[SERVER]

    @staticmethod
    def other(role: Role) -> Role:
        return SERVER if role is CLIENT else CLIENT

    def take(self, sender: Role) -> bytes:
        """What ``sender`` wants to send, taken off it without delivering it."""
        data = b"".join(self.conn[sender].data_to_send())
        if data:
            self.taps[sender].see(data)
        return data

    def feed(self, receiver: Role, data: bytes) -> list[Event]:
        """Deliver ``data`` to ``receiver``; returns (and records) its events."""
        conn = self.conn[receiver]
        if self.reads_of is not None:
            events = read_into(conn, data, self.reads_of)
        elif self.byte_at_a_time:
            events = []
            for i in range(len(data)):
                events.extend(receive(conn, data[i:i + 1]))
        else:
            events = receive(conn, data)
        self.events[receiver].extend(events)
        return events

    def send(self, sender: Role) -> list[Event]:
        """Move what ``sender`` has queued to its peer; returns the peer's events."""
        data = self.take(sender)
        return self.feed(self.other(sender), data) if data else []

    def pump(self, max_rounds: int = 10_000) -> tuple[list[Event], list[Event]]:
        """Move bytes both ways until neither side has anything to send.

        Returns (client events, server events) produced during this pump.
        """
        got: dict[Role, list[Event]] = {CLIENT: [], SERVER: []}
        for _ in range(max_rounds):
            moved = False
            for sender in (CLIENT, SERVER):
                data = self.take(sender)
                if data:
                    moved = True
                    receiver = self.other(sender)
                    got[receiver].extend(self.feed(receiver, data))
            if not moved:
                return got[CLIENT], got[SERVER]
        raise AssertionError(f"the pair did not go quiet within {max_rounds} rounds")

    def handshake(self) -> None:
        self.pump()
        assert self.client.handshake_done and self.server.handshake_done


def receive(conn: Connection, data: bytes) -> list[Event]:
    """``conn.receive_data(data)``; a server answers the client's HELLO as a link that
    offers nothing would (``accept()``), then reads what came behind it."""
    events = conn.receive_data(data)
    if any(type(e) is HelloReceived for e in events):
        conn.accept()
        events += conn.receive_data(b"")
    return events


def read_into(conn: Connection, data: bytes, step: int) -> list[Event]:
    """Deliver ``data`` as a buffered socket read would: into ``conn.receive_buffer()``,
    at most ``step`` bytes per read (a server accepts the HELLO as in :func:`receive`)."""
    events: list[Event] = []
    view = memoryview(data)
    while view:
        into = conn.receive_buffer()
        n = min(len(into), step, len(view))
        into[:n] = view[:n]
        view = view[n:]
        got = conn.received_into(n)
        if any(type(e) is HelloReceived for e in got):
            conn.accept()
            got += conn.receive_data(b"")
        events += got
    return events


def events_of(events: list[Event], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def drain_frames(conn: Connection) -> list[WireFrame]:
    """Decode what ``conn`` has queued (its magic preface skipped if still queued)."""
    decoder = FrameDecoder(_wire.MAX_FRAME_SIZE_LIMIT, expect_magic=False)
    data = b"".join(conn.data_to_send())
    if data.startswith(_wire.MAGIC):
        data = data[len(_wire.MAGIC):]
    decoder.feed(data)
    frames = [WireFrame(*f) for f in decoder.frames()]
    assert decoder.buffered == 0, "a connection queued a partial frame"
    return frames
