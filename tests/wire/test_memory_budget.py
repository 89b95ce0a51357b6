"""The receive side's memory bound, in the sans-IO core: pieces of unfinished messages
hold connection window until their message is consumed; pieces alone filling the
window get the largest refused; a server's connections share a budget. Frames are
written by hand, as a peer that does not play along would."""

from __future__ import annotations

from rpc import _wire
from rpc._connection import Connection, Limits, MessageReceived, StreamEnded
from rpc._settings import MemoryBudget
from rpc._wire import FLAG_MORE, FLAG_NOT_STARTED
from tests.wire.helpers import SERVER, drain_frames, events_of, receive
from tests.wire.test_connection import _headers, _hello

KIB = 1024
RESOURCE_EXHAUSTED = 8


def _server(window: int = 64 * KIB, budget: MemoryBudget | None = None) -> Connection:
    server = Connection(SERVER, Limits(stream_window=window, connection_window=window,
                                       max_frame_size=16 * KIB), budget=budget)
    receive(server, _wire.MAGIC + _hello())
    drain_frames(server)
    return server


def _piece(sid: int, size: int, *, more: bool = True) -> bytes:
    """``size`` bytes of a message on ``sid`` in frames of at most 16 KiB; the last one
    ends the message unless ``more``."""
    frames = []
    while size > 0 or not frames:
        n = min(size, 16 * KIB)
        size -= n
        last = size == 0 and not more
        frames.append(_wire.frame(_wire.MESSAGE, 0 if last else FLAG_MORE, sid, b"p" * n))
    return b"".join(frames)


def _connection_credit(server: Connection) -> int:
    return sum(_wire.decode_window_update(f.payload) for f in drain_frames(server)
               if f.type == _wire.WINDOW_UPDATE and f.stream_id == 0)


def test_pieces_are_credited_to_the_connection_only_once_their_message_is_consumed():
    server = _server()
    receive(server, _headers(1))
    for _ in range(3):
        receive(server, _piece(1, 8 * KIB))
    assert server.buffered == 24 * KIB
    assert _connection_credit(server) == 0          # the stream's, yes; the connection's, no
    events = receive(server, _piece(1, 8 * KIB, more=False))
    assert [len(m.data) for m in events_of(events, MessageReceived)] == [32 * KIB]
    assert _connection_credit(server) == 0          # delivered, not consumed yet
    server.consume(1)
    assert server.buffered == 0
    assert _connection_credit(server) == 32 * KIB


def test_unfinished_messages_filling_the_window_get_the_largest_refused():
    server = _server(window=64 * KIB)
    events = []
    for sid in (1, 3, 5, 7):
        receive(server, _headers(sid))
    for sid, size in ((1, 16 * KIB), (3, 16 * KIB), (5, 16 * KIB), (7, 15 * KIB)):
        events += receive(server, _piece(sid, size))
    assert events_of(events, StreamEnded) == []      # 1 KiB of window left: not stuck yet
    events = receive(server, _piece(7, KIB))         # now no credit can ever come
    [ended] = events_of(events, StreamEnded)
    assert ended.code == RESOURCE_EXHAUSTED and ended.stream_id in (1, 3, 5, 7)
    assert "fill the connection's window" in ended.details
    assert server.buffered == 48 * KIB               # the refused one's pieces are let go
    frames = drain_frames(server)
    assert any(f.type == _wire.TRAILERS and f.stream_id == ended.stream_id for f in frames)
    credit = sum(_wire.decode_window_update(f.payload) for f in frames
                 if f.type == _wire.WINDOW_UPDATE and f.stream_id == 0)
    assert credit == 16 * KIB                        # given back: the others can go on


def test_a_whole_message_waiting_to_be_consumed_is_not_a_deadlock():
    server = _server(window=64 * KIB)
    receive(server, _headers(1))
    receive(server, _headers(3))
    receive(server, _piece(1, 32 * KIB, more=False))     # whole, held by its reader
    events = receive(server, _piece(3, 32 * KIB))        # window full, but credit will come
    assert events_of(events, StreamEnded) == []
    server.consume(1)
    assert _connection_credit(server) == 32 * KIB


def test_a_spent_budget_refuses_new_streams_on_connections_that_hold_some():
    budget = MemoryBudget(64 * KIB)
    heavy, light = _server(budget=budget), _server(budget=budget)
    assert budget.connections == 2
    receive(heavy, _headers(1))
    receive(heavy, _piece(1, 40 * KIB))
    receive(light, _headers(1))
    receive(light, _piece(1, 24 * KIB))
    assert budget.used == 64 * KIB and budget.exhausted
    receive(heavy, _headers(3))
    [refusal] = [f for f in drain_frames(heavy) if f.stream_id == 3]
    assert refusal.type == _wire.CANCEL and refusal.flags & FLAG_NOT_STARTED
    assert _wire.decode_cancel(refusal.payload)[0] == RESOURCE_EXHAUSTED
    # A connection that holds nothing is still served.
    idle = _server(budget=budget)
    assert [e.stream_id for e in receive(idle, _headers(1)) if hasattr(e, "method")] == [1]


def test_over_the_budget_the_connection_over_its_share_gives_up_its_largest_message():
    budget = MemoryBudget(64 * KIB)
    heavy, light = _server(window=256 * KIB, budget=budget), _server(budget=budget)
    receive(light, _headers(1))
    receive(light, _piece(1, 8 * KIB))
    receive(heavy, _headers(1))
    receive(heavy, _headers(3))
    receive(heavy, _piece(1, 40 * KIB))
    events = receive(heavy, _piece(3, 24 * KIB))     # the budget is now spent
    [ended] = events_of(events, StreamEnded)
    assert ended.stream_id == 1 and "memory budget" in ended.details
    assert budget.used == 32 * KIB


def test_a_lost_connection_gives_back_all_it_held():
    budget = MemoryBudget(1024 * KIB)
    server = _server(budget=budget)
    receive(server, _headers(1))
    receive(server, _headers(3))
    receive(server, _piece(1, 10 * KIB))
    receive(server, _piece(3, 5 * KIB, more=False))
    assert budget.used == 15 * KIB
    server.connection_lost()
    assert budget.used == 0 and budget.connections == 0
    assert all(not s.partial for s in server.streams.values())
