"""Frames of a stream that dies while they are still queued in the connection (not
yet handed out by ``data_to_send``) are dropped, not sent: a call whose deadline
passed or that was cancelled before its HEADERS left sends nothing at all (no CANCEL
either: the server never saw it), and a started stream's queued frames give way to
its CANCEL. Live streams' frames go out whole and in order, and both sides' views of
the connection window stay the same (what was never sent was never counted)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpc import _wire
from rpc._connection import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    Connection,
    HandshakeDone,
    Limits,
    MessageReceived,
    RequestReceived,
    Role,
    StreamEnded,
    StreamWritable,
)
from rpc._proto import handshake_pb2
from tests.wire.helpers import CLIENT, SERVER, ConnectionPair, drain_frames, events_of

KIB = 1024


def _handshaken(**limits: Limits) -> ConnectionPair:
    pair = ConnectionPair(**limits)
    pair.handshake()
    return pair


def _encoded(frames: list) -> bytes:
    """Frames drained from one connection, as bytes for the other."""
    return b"".join(_wire.frame(f.type, f.flags, f.stream_id, f.payload) for f in frames)


def _windows_agree(pair: ConnectionPair) -> None:
    """Nothing in flight: each sender's connection window is what its receiver
    thinks it may still send."""
    assert pair.client.send_window == pair.server._recv_window
    assert pair.server.send_window == pair.client._recv_window


def _consumed_windows_agree(pair: ConnectionPair, *sids: int) -> None:
    """The server's application consumes what ``sids`` delivered, the credit goes
    back, and then the windows agree (see _windows_agree)."""
    for sid in sids:
        pair.server.consume(sid)
    pair.pump()
    _windows_agree(pair)


def _requests(events: list) -> list[int]:
    return [e.stream_id for e in events_of(events, RequestReceived)]


def test_a_call_cancelled_before_its_headers_left_sends_nothing() -> None:
    pair = _handshaken()
    client = pair.client
    window = client.send_window
    sid = client.start_request("/svc/Unary", 0.005, None, message=b"r" * 100)
    client.cancel(sid, DEADLINE_EXCEEDED)
    assert client.data_to_send() == []
    assert client.streams == {} and client.streams_withdrawn == 1
    assert client.send_window == window     # the request's bytes were never counted
    _, server_events = pair.pump()
    assert server_events == [] and pair.server.streams == {}
    _windows_agree(pair)


def test_only_the_dead_calls_frames_are_dropped_the_live_ones_go_out_in_order() -> None:
    pair = _handshaken()
    client = pair.client
    a = client.start_request("/svc/A", None, None)
    b = client.start_request("/svc/B", 1.0, None, message=b"b" * 50)
    client.send_message(a, b"a1")
    c = client.start_request("/svc/C", None, None)
    client.send_message(c, b"c1")
    client.send_message(a, b"a2", end_stream=True)
    client.cancel(b, CANCELLED)
    client.send_message(c, b"c2", end_stream=True)
    _, server_events = pair.pump()
    assert _requests(server_events) == [a, c]
    assert [(e.stream_id, e.data) for e in events_of(server_events, MessageReceived)] == [
        (a, b"a1"), (c, b"c1"), (a, b"a2"), (c, b"c2")]
    assert all(f.stream_id != b for f in pair.taps[CLIENT].frames)
    assert not any(f.type == _wire.CANCEL for f in pair.taps[CLIENT].frames)
    # A stream id skipped is no error: the next call opens a higher one.
    d = client.start_request("/svc/D", None, None, message=b"d")
    _, server_events = pair.pump()
    assert _requests(server_events) == [d]
    _consumed_windows_agree(pair, a, c, d)


def test_many_calls_dying_in_one_batch_leave_the_others_intact() -> None:
    pair = _handshaken()
    client = pair.client
    sids = [client.start_request("/svc/M", 0.01, None, message=bytes([i]) * (i + 1))
            for i in range(200)]
    for sid in sids[::3]:
        client.cancel(sid, DEADLINE_EXCEEDED)
    _, server_events = pair.pump()
    live = [sid for sid in sids if sid not in sids[::3]]
    assert _requests(server_events) == live
    assert [e.data for e in events_of(server_events, MessageReceived)] == [
        bytes([i]) * (i + 1) for i, sid in enumerate(sids) if sid in live]
    assert client.streams_withdrawn == len(sids[::3])
    _consumed_windows_agree(pair, *live)


def test_a_started_streams_queued_messages_give_way_to_its_cancel() -> None:
    pair = _handshaken()
    client = pair.client
    sid = client.start_request("/svc/Stream", None, None)
    pair.pump()                              # its HEADERS went out: the server has it
    sent = client.send_window
    for i in range(5):
        client.send_message(sid, b"m" * KIB)
    assert client.send_window == sent - 5 * KIB
    client.cancel(sid, CANCELLED)
    frames = drain_frames(client)
    assert [(f.type, f.stream_id) for f in frames] == [(_wire.CANCEL, sid)]
    assert client.send_window == sent        # the messages never left: not counted
    assert client.streams_withdrawn == 0
    # Delivered, the server ends its stream (and sees no message).
    server_events = pair.feed(SERVER, _encoded(frames))
    assert [type(e) for e in server_events] == [StreamEnded]
    pair.pump()
    _windows_agree(pair)


def test_only_messages_still_queued_are_dropped_not_those_handed_out() -> None:
    pair = _handshaken()
    client = pair.client
    sid = client.start_request("/svc/Stream", None, None)
    client.send_message(sid, b"first")
    pair.pump()
    client.send_message(sid, b"second")
    client.cancel(sid, CANCELLED)
    _, server_events = pair.pump()
    assert [type(e) for e in server_events] == [StreamEnded]
    assert [e.data for e in events_of(pair.events[SERVER], MessageReceived)] == [b"first"]
    _windows_agree(pair)


def test_a_withdrawn_call_releases_a_stream_blocked_behind_it_in_the_same_batch() -> None:
    pair = _handshaken(server_limits=Limits(stream_window=64 * KIB, connection_window=16 * KIB))
    client = pair.client
    waiting = client.start_request("/svc/Waiting", None, None)
    pair.pump()
    doomed = client.start_request("/svc/Doomed", 0.01, None, message=b"x" * 16 * KIB)
    assert client.send_window == 0
    assert client.send_message(waiting, b"w" * 4 * KIB) is False
    assert client.wait_writable(waiting)
    client.cancel(doomed, DEADLINE_EXCEEDED)
    frames = drain_frames(client)      # the doomed call's 16 KiB give way to the waiting 4
    assert [(f.type, f.stream_id, len(f.payload)) for f in frames] == [
        (_wire.MESSAGE, waiting, 4 * KIB)]
    assert client.take_events() == [StreamWritable(waiting)]
    assert client.take_events() == []
    assert client.send_window == 12 * KIB
    server_events = pair.feed(SERVER, _encoded(frames))
    assert [e.data for e in events_of(server_events, MessageReceived)] == [b"w" * 4 * KIB]
    assert _requests(pair.events[SERVER]) == [waiting]
    _consumed_windows_agree(pair, waiting)


def test_the_peers_cancel_drops_our_queued_frames_for_that_stream() -> None:
    pair = _handshaken()
    client, server = pair.client, pair.server
    sid = client.start_request("/svc/ServerStream", None, None, message=b"go")
    keep = client.start_request("/svc/Other", None, None, message=b"go")
    pair.pump()
    server.send_initial_metadata(sid, None)
    for _ in range(3):
        server.send_message(sid, b"r" * KIB)
    server.send_message(keep, b"kept")
    client.cancel(sid, CANCELLED)
    pair.send(CLIENT)                  # the server reads the CANCEL before it flushes
    frames = drain_frames(server)
    assert [(f.type, f.stream_id) for f in frames] == [(_wire.MESSAGE, keep)]
    pair.feed(CLIENT, _encoded(frames))
    server.consume(sid)
    server.consume(keep)
    client.consume(keep)
    pair.pump()
    _windows_agree(pair)


def test_a_call_withdrawn_in_the_batch_that_starts_the_connection() -> None:
    """The client's first batch (its magic and HELLO) is still queued when the call
    dies: those go out, the call does not."""
    client = Connection(Role.CLIENT)
    hello = handshake_pb2.Hello(versions=[1])
    events = client.receive_data(_wire.MAGIC + _wire.frame(_wire.HELLO, 0, 0, hello.SerializeToString()))
    assert [type(e) for e in events] == [HandshakeDone]
    sid = client.start_request("/svc/Unary", 0.01, None, message=b"r")
    client.cancel(sid, DEADLINE_EXCEEDED)
    data = client.data_to_send()
    assert data[0] is _wire.MAGIC
    decoder = _wire.FrameDecoder(_wire.MAX_FRAME_SIZE_LIMIT, expect_magic=True)
    decoder.feed(b"".join(data))
    assert [ftype for ftype, _, _, _ in decoder.frames()] == [_wire.HELLO]


def test_big_messages_in_pieces_are_dropped_whole() -> None:
    """A big message queued as header, message and size announcement buffers (not
    joined) is dropped whole, its window given back, the frames around it kept."""
    pair = _handshaken()
    client = pair.client
    window = client.send_window
    live = client.start_request("/svc/Live", None, None)
    dead = client.start_request("/svc/Dead", 0.01, None, message=b"d" * 100 * KIB)
    client.send_message(live, b"l" * 100 * KIB, end_stream=True)
    client.cancel(dead, DEADLINE_EXCEEDED)
    _, server_events = pair.pump()
    assert _requests(server_events) == [live]
    assert [len(e.data) for e in events_of(server_events, MessageReceived)] == [100 * KIB]
    assert client.send_window == window - 100 * KIB
    _consumed_windows_agree(pair, live)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["open", "unary", "send", "cancel", "flush"]),
                          st.integers(0, 7), st.integers(0, 6 * KIB)), max_size=60))
def test_random_calls_dying_at_random_moments_keep_both_sides_in_step(ops) -> None:
    """Whatever dies when: the server sees no stream the client withdrew, every live
    stream's messages whole and in order, a dead one's only as a prefix, and once all
    is read both sides agree on every connection window (small, so streams block)."""
    pair = _handshaken(server_limits=Limits(stream_window=8 * KIB, connection_window=12 * KIB))
    client, server = pair.client, pair.server
    sids: list[int] = []
    sent: dict[int, list[bytes]] = {}
    cancelled: set[int] = set()
    withdrawn: set[int] = set()
    ended: set[int] = set()       # unary: the request ended the input
    handed_out = 0     # streams below this id had their HEADERS handed out

    def deliver() -> bytes:
        """The client's queue to the server, which consumes each message it gets."""
        nonlocal handed_out
        handed_out = client._next_stream_id
        data = pair.take(CLIENT)
        for ev in pair.feed(SERVER, data) if data else []:
            if type(ev) is MessageReceived:
                server.consume(ev.stream_id)
        return data

    def settle() -> None:
        for _ in range(1000):
            data = deliver()
            back = pair.take(SERVER)
            if back:
                pair.feed(CLIENT, back)
            client.take_events()
            if not data and not back:
                return
        raise AssertionError("did not settle")

    for op, which, size in ops:
        if op in ("open", "unary"):
            message = bytes([len(sids) % 256]) * size
            sid = client.start_request("/svc/M", 1.0, None,
                                       message=message if op == "unary" else None)
            sids.append(sid)
            sent[sid] = [message] if op == "unary" else []
            if op == "unary":
                ended.add(sid)
        elif not sids:
            continue
        elif op == "send":
            sid = sids[which % len(sids)]
            if sid in cancelled or sid in ended or sid not in client.streams:
                continue
            message = bytes([size % 256]) * size
            client.send_message(sid, message)
            sent[sid].append(message)
        elif op == "cancel":
            sid = sids[which % len(sids)]
            if sid in cancelled or sid not in client.streams:
                continue
            if sid >= handed_out:
                withdrawn.add(sid)
            cancelled.add(sid)
            client.cancel(sid, CANCELLED)
        else:
            deliver()
    settle()
    opened = set(_requests(pair.events[SERVER]))
    assert not opened & withdrawn
    assert client.streams_withdrawn == len(withdrawn)
    for sid in sids:
        got = [e.data for e in events_of(pair.events[SERVER], MessageReceived) if e.stream_id == sid]
        if sid in cancelled:
            assert got == sent[sid][:len(got)]
        else:
            assert got == sent[sid]
    _windows_agree(pair)
