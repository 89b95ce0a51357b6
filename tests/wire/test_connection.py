"""The connection state machine (rpc._connection), two peers paired in memory.

Calls whole and one byte at a time, many streams at once, flow control against
slow readers, limits, PING, GOAWAY, protocol violations, and random sequences of
valid operations.
"""

from __future__ import annotations

import collections

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpc import _wire
from rpc._connection import (
    Connection,
    ConnectionClosed,
    EndOfInput,
    GoAwayReceived,
    HandshakeDone,
    HelloReceived,
    InitialMetadataReceived,
    Limits,
    MessageReceived,
    MetadataTooLarge,
    PingAcked,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamState,
    StreamWritable,
)
from rpc._proto import handshake_pb2
from rpc._wire import FrameDecoder, GoAwayCode, ProtocolError
from tests.wire.helpers import (
    CLIENT, SERVER, ConnectionPair, WireFrame, drain_frames, events_of, receive,
)

OK, CANCELLED, RESOURCE_EXHAUSTED, UNAVAILABLE = 0, 1, 8, 14
KIB = 1024


def _hello(versions=(1,), **settings) -> bytes:
    hello = handshake_pb2.Hello(versions=list(versions))
    for name, value in settings.items():
        setattr(hello.settings, name, value)
    return _wire.frame(_wire.HELLO, 0, 0, hello.SerializeToString())


def _headers(sid: int, method: str = "/svc/Method", *, flags: int = 0, metadata=None) -> bytes:
    return _wire.frame(_wire.HEADERS, flags, sid, _wire.encode_request_headers(method, 0, metadata))


def _goaway_queued(conn: Connection) -> tuple[int, int, str]:
    """The GOAWAY ``conn`` queued last: (last stream id, code, reason)."""
    frames = drain_frames(conn)
    assert frames and frames[-1].type == _wire.GOAWAY, frames
    return _wire.decode_goaway(frames[-1].payload)


def _messages(events, sid=None) -> list[bytes]:
    return [e.data for e in events_of(events, MessageReceived) if sid is None or e.stream_id == sid]


# ------------------------------------------------------------------ handshake

@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
def test_handshake(byte_at_a_time):
    server_limits = Limits(stream_window=64 * KIB, connection_window=256 * KIB,
                           max_frame_size=32 * KIB, max_concurrent_streams=7)
    pair = ConnectionPair(server_limits=server_limits, byte_at_a_time=byte_at_a_time)
    assert not pair.client.handshake_done and not pair.server.handshake_done
    client_events, server_events = pair.pump()

    assert [type(e) for e in client_events] == [HandshakeDone]
    assert [type(e) for e in server_events] == [HelloReceived]
    assert list(client_events[0].hello.versions) == [_wire.PROTOCOL_VERSION]
    assert pair.client.version == pair.server.version == _wire.PROTOCOL_VERSION
    # The client learned the server's limits and uses them for what it sends.
    peer = pair.client.peer
    assert (peer.stream_window, peer.connection_window, peer.max_frame_size,
            peer.max_concurrent_streams) == (64 * KIB, 256 * KIB, 32 * KIB, 7)
    assert pair.client.send_window == 256 * KIB
    # Both sides start with the magic, then HELLO.
    for role in (CLIENT, SERVER):
        assert [f.type for f in pair.taps[role].frames] == [_wire.HELLO]


def test_server_answers_with_the_highest_common_version():
    server = Connection(SERVER)
    server.data_to_send()
    events = server.receive_data(_wire.MAGIC + _hello(versions=(7, 1, 3)))
    assert [type(e) for e in events] == [HelloReceived]
    assert drain_frames(server) == [], "the server's HELLO waits for accept()"
    server.accept()
    (reply,) = drain_frames(server)
    hello = handshake_pb2.Hello.FromString(reply.payload)
    assert list(hello.versions) == [1]


def test_frames_behind_the_clients_hello_wait_for_the_servers_answer():
    server = Connection(SERVER)
    server.data_to_send()
    events = server.receive_data(_wire.MAGIC + _hello() + _headers(1))
    assert [type(e) for e in events] == [HelloReceived]
    assert server.receive_data(b"") == [], "read before the server answered"
    assert drain_frames(server) == []
    server.accept(handshake_pb2.Hello(claim_answer=b"p" * 32))
    (reply,) = drain_frames(server)
    assert reply.type == _wire.HELLO
    assert handshake_pb2.Hello.FromString(reply.payload).claim_answer == b"p" * 32
    assert [type(e) for e in server.receive_data(b"")] == [RequestReceived]
    with pytest.raises(RuntimeError):
        server.accept()


def test_a_second_hello_while_the_first_awaits_its_answer_is_an_error():
    server = Connection(SERVER)
    server.data_to_send()
    server.receive_data(_wire.MAGIC + _hello())
    server.accept()
    with pytest.raises(ProtocolError, match="second HELLO"):
        server.receive_data(_hello())


def test_a_refused_peer_gets_the_reason_and_nothing_more_is_read():
    server = Connection(SERVER)
    server.data_to_send()
    server.refuse(GoAwayCode.PERMISSION_DENIED, "uid 7 is not admitted")
    _, code, reason = _goaway_queued(server)
    assert (code, reason) == (GoAwayCode.PERMISSION_DENIED, "uid 7 is not admitted")
    assert server.receive_data(_wire.MAGIC + _hello() + _headers(1)) == []
    assert drain_frames(server) == []


def test_a_client_hello_belongs_to_the_client():
    with pytest.raises(ValueError):
        Connection(SERVER, hello=handshake_pb2.Hello())
    with pytest.raises(RuntimeError):
        Connection(CLIENT).accept()


def test_settings_of_zero_mean_the_protocol_defaults():
    server = Connection(SERVER)
    receive(server, _wire.MAGIC + _hello())
    assert server.peer.stream_window == _wire.DEFAULT_STREAM_WINDOW
    assert server.peer.max_frame_size == _wire.DEFAULT_MAX_FRAME_SIZE


# ------------------------------------------------------------------ a unary call

def _unary_call(byte_at_a_time: bool) -> ConnectionPair:
    pair = ConnectionPair(byte_at_a_time=byte_at_a_time)
    pair.handshake()
    client, server = pair.client, pair.server
    sid = client.start_request("/helloworld.Greeter/SayHello", 1.5,
                               [("x-user", "ünïcode"), ("trace-bin", b"\x00\xff")])
    assert client.send_message(sid, b"request bytes", end_stream=True)
    pair.pump()
    server.consume(sid)
    server.send_initial_metadata(sid, [("initial", "1")])
    assert server.send_message(sid, b"response bytes")
    server.end_stream(sid, OK, "", [("trailing", "2"), ("t-bin", b"\x01")])
    pair.pump()
    client.consume(sid)
    return pair


def test_unary_call():
    pair = _unary_call(byte_at_a_time=False)
    assert pair.events[SERVER][1:] == [
        RequestReceived(1, "/helloworld.Greeter/SayHello", 1.5,
                        (("x-user", "ünïcode"), ("trace-bin", b"\x00\xff")), False),
        MessageReceived(1, b"request bytes", True),
    ]
    assert pair.events[CLIENT][1:] == [
        InitialMetadataReceived(1, (("initial", "1"),)),
        MessageReceived(1, b"response bytes", False),
        StreamEnded(1, OK, "", (("trailing", "2"), ("t-bin", b"\x01"))),
    ]
    assert pair.client.streams == {} and pair.server.streams == {}


def test_unary_call_one_byte_at_a_time_gives_the_same_events():
    whole = _unary_call(byte_at_a_time=False)
    bytewise = _unary_call(byte_at_a_time=True)
    assert bytewise.events == whole.events
    # And the same bytes went over the wire.
    for role in (CLIENT, SERVER):
        assert bytewise.taps[role].frames == whole.taps[role].frames


def test_request_with_end_stream_on_headers_and_a_bare_half_close():
    pair = ConnectionPair()
    pair.handshake()
    sid = pair.client.start_request("/svc/NoInput", None, None, end_stream=True)
    other = pair.client.start_request("/svc/ClientStream", None, None)
    pair.client.end_input(other)
    _, server_events = pair.pump()
    assert server_events == [
        RequestReceived(sid, "/svc/NoInput", None, (), True),
        RequestReceived(other, "/svc/ClientStream", None, (), False),
        EndOfInput(other),
    ]
    assert pair.server.streams[sid].state is StreamState.HALF_CLOSED_REMOTE
    assert pair.server.streams[other].state is StreamState.HALF_CLOSED_REMOTE


def test_trailers_only_response():
    pair = ConnectionPair()
    pair.handshake()
    sid = pair.client.start_request("/svc/Missing", None, None, end_stream=True)
    pair.pump()
    pair.server.end_stream(sid, 12, "Method not found!")
    client_events, _ = pair.pump()
    assert client_events == [StreamEnded(sid, 12, "Method not found!", ())]


def test_first_response_message_without_headers_implies_empty_initial_metadata():
    pair = ConnectionPair()
    pair.handshake()
    sid = pair.client.start_request("/svc/M", None, None, end_stream=True)
    pair.pump()
    pair.server.send_message(sid, b"resp")
    pair.server.end_stream(sid, OK)
    client_events, _ = pair.pump()
    assert client_events == [MessageReceived(sid, b"resp", False), StreamEnded(sid, OK, "", ())]
    assert [f.type for f in pair.taps[SERVER].frames] == [_wire.HELLO, _wire.MESSAGE, _wire.TRAILERS]


# ------------------------------------------------------------------ many streams

@pytest.mark.parametrize("byte_at_a_time, n", [(False, 60), (True, 6)], ids=["whole", "bytewise"])
def test_many_streams_interleaved(byte_at_a_time, n):
    pair = ConnectionPair(byte_at_a_time=byte_at_a_time)
    pair.handshake()
    client, server = pair.client, pair.server
    sids = [client.start_request(f"/svc/M{i}", None, [("n", str(i))]) for i in range(n)]
    assert sids == list(range(1, n + 1))
    index = {sid: i for i, sid in enumerate(sids)}
    for rnd in range(3):
        for sid in sids:                                     # client: every stream, in order
            client.send_message(sid, f"req {index[sid]}.{rnd}".encode())
        _, server_events = pair.pump()
        for ev in reversed(events_of(server_events, MessageReceived)):   # server: backwards
            server.consume(ev.stream_id)
            server.send_message(ev.stream_id, ev.data.replace(b"req", b"resp"))
        client_events, _ = pair.pump()
        for ev in events_of(client_events, MessageReceived):
            client.consume(ev.stream_id)
    for sid in sids:
        client.end_input(sid)
    pair.pump()
    for sid in reversed(sids):
        server.end_stream(sid, index[sid] % 17, f"done {index[sid]}")
    pair.pump()

    requests = events_of(pair.events[SERVER], RequestReceived)
    assert [(r.stream_id, r.method, r.metadata) for r in requests] == [
        (sid, f"/svc/M{index[sid]}", (("n", str(index[sid])),)) for sid in sids]
    for sid in sids:
        i = index[sid]
        assert _messages(pair.events[SERVER], sid) == [f"req {i}.{r}".encode() for r in range(3)]
        assert _messages(pair.events[CLIENT], sid) == [f"resp {i}.{r}".encode() for r in range(3)]
    ended = events_of(pair.events[CLIENT], StreamEnded)
    assert sorted((e.stream_id, e.code, e.details) for e in ended) == [
        (sid, index[sid] % 17, f"done {index[sid]}") for sid in sids]
    assert client.streams == {} and server.streams == {}


def test_server_refuses_streams_beyond_its_concurrency_limit():
    pair = ConnectionPair(server_limits=Limits(max_concurrent_streams=2))
    pair.handshake()
    a, b, c = (pair.client.start_request("/svc/M", None, None) for _ in range(3))
    client_events, server_events = pair.pump()
    assert [e.stream_id for e in events_of(server_events, RequestReceived)] == [a, b]
    assert client_events == [StreamEnded(c, RESOURCE_EXHAUSTED, client_events[0].details, (), True)]
    assert "concurrent" in client_events[0].details
    # Once one ends, a new stream is served.
    pair.server.end_stream(a, OK)
    d = pair.client.start_request("/svc/M", None, None)
    _, server_events = pair.pump()
    assert [e.stream_id for e in events_of(server_events, RequestReceived)] == [d]


def test_oversized_request_metadata_is_refused_before_sending():
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(MetadataTooLarge):
        pair.client.start_request("/svc/M", None, [("big", "x" * (_wire.DEFAULT_MAX_METADATA_SIZE + 1024))])
    assert pair.client.data_to_send() == []


def test_oversized_request_metadata_from_a_peer_refuses_that_stream_only():
    """A client that ignores the server's announced limit gets that stream refused."""
    server = Connection(SERVER)
    receive(server, _wire.MAGIC + _hello())
    server.data_to_send()
    big = [("big", "x" * (_wire.DEFAULT_MAX_METADATA_SIZE + 1024))]
    assert server.receive_data(_headers(1, metadata=big)) == []
    frames = drain_frames(server)
    assert [(f.type, f.stream_id) for f in frames] == [(_wire.TRAILERS, 1)]
    assert _wire.decode_trailers(frames[0].payload)[0] == RESOURCE_EXHAUSTED
    assert [type(e) for e in server.receive_data(_headers(3))] == [RequestReceived]


# ------------------------------------------------------------------ flow control

def test_message_bigger_than_the_window_moves_only_as_the_reader_consumes():
    window = 16 * KIB
    pair = ConnectionPair(server_limits=Limits(stream_window=window, connection_window=1024 * KIB))
    pair.handshake()
    client, server = pair.client, pair.server
    sid = client.start_request("/svc/Upload", None, None)
    first = b"a" * (window // 2)
    big = bytes(range(256)) * (4 * window // 256)            # four windows' worth
    assert client.send_message(sid, first) is True
    assert client.send_message(sid, big) is False             # part of it waits for window
    assert client.wait_writable(sid) is True
    _, server_events = pair.pump()
    assert _messages(server_events) == [first]
    # The reader holds `first`: only the rest of the window crossed, the rest waits.
    assert pair.taps[CLIENT].message_bytes(sid) == window
    assert client.outbox_bytes(sid) == len(big) - window // 2
    assert pair.pump() == ([], [])                            # nothing moves by itself

    server.consume(sid)
    client_events, server_events = pair.pump()
    assert _messages(server_events) == [big]
    assert client.outbox_bytes(sid) == 0
    assert StreamWritable(sid) in client_events
    # It crossed in pieces, none larger than the window, its size announced first.
    frames = [f for f in pair.taps[CLIENT].frames if f.type == _wire.MESSAGE and f.stream_id == sid]
    sizes = [_wire.decode_message_size(f.payload) for f in frames if f.flags & _wire.FLAG_SIZE]
    assert sizes == [len(big)]
    chunks = [f for f in frames if not f.flags & _wire.FLAG_SIZE]
    assert len(chunks) > 2
    assert all(len(f.payload) <= window for f in chunks)
    assert [f.flags & _wire.FLAG_MORE for f in chunks[1:]] == [_wire.FLAG_MORE] * (len(chunks) - 2) + [0]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=5 * 4 * KIB), min_size=1, max_size=8),
    schedule=st.lists(st.booleans(), max_size=60),
)
def test_receiver_holds_at_most_one_window_plus_one_message(sizes, schedule):
    window = 4 * KIB
    pair = ConnectionPair(server_limits=Limits(stream_window=window, connection_window=64 * KIB,
                                               max_frame_size=1 * KIB))
    pair.handshake()
    client, server = pair.client, pair.server
    sid = client.start_request("/svc/Upload", None, None)
    sent = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    for data in sent:
        client.send_message(sid, data)
    client.end_input(sid)
    received: collections.deque[bytes] = collections.deque()
    delivered: list[bytes] = []
    consumed = 0
    bound = window + max(sizes)

    def step(consume: bool) -> None:
        nonlocal consumed
        new = events_of(pair.send(CLIENT), MessageReceived)
        pair.send(SERVER)
        for ev in new:
            delivered.append(ev.data)
            received.append(ev.data)
        if consume and received:
            consumed += len(received.popleft())
            server.consume(sid)
        held = pair.taps[CLIENT].message_bytes(sid) - consumed
        assert held <= bound

    for consume in schedule:
        step(consume)
    for _ in range(10 * len(sizes) + 20):                     # the reader catches up
        step(True)
        if len(delivered) == len(sent) and not received:
            break
    assert delivered == sent
    assert client.outbox_bytes(sid) == 0


def test_slow_reader_bounds_the_writer():
    stream_window, connection_window = 8 * KIB, 20 * KIB
    pair = ConnectionPair(server_limits=Limits(stream_window=stream_window,
                                               connection_window=connection_window))
    pair.handshake()
    client = pair.client
    sids = [client.start_request("/svc/Upload", None, None) for _ in range(4)]
    message = b"m" * 1000
    accepted = {sid: [] for sid in sids}
    for _ in range(30):
        for sid in sids:
            accepted[sid].append(client.send_message(sid, message))
        pair.pump()
    for sid in sids:
        # Once the window is gone every further message is queued, not sent.
        first_refused = accepted[sid].index(False)
        assert all(a is False for a in accepted[sid][first_refused:])
        assert pair.taps[CLIENT].message_bytes(sid) <= stream_window
        assert client.outbox_bytes(sid) == 30 * len(message) - pair.taps[CLIENT].message_bytes(sid)
    # The connection window caps the sum over all streams.
    assert pair.taps[CLIENT].message_bytes() <= connection_window
    wire_bytes = pair.taps[CLIENT].total_bytes
    for _ in range(3):
        for sid in sids:
            client.send_message(sid, message)
        pair.pump()
    assert pair.taps[CLIENT].total_bytes == wire_bytes       # not one more byte on the wire

    # The reader wakes up: everything arrives, in order.
    for ev in events_of(pair.events[SERVER], MessageReceived):
        pair.server.consume(ev.stream_id)
    for _ in range(200):
        _, server_events = pair.pump()
        for ev in events_of(server_events, MessageReceived):
            pair.server.consume(ev.stream_id)
        if all(client.outbox_bytes(sid) == 0 for sid in sids):
            break
    pair.pump()
    for sid in sids:
        assert _messages(pair.events[SERVER], sid) == [message] * 33


def test_connection_window_is_shared_and_released_to_blocked_streams():
    pair = ConnectionPair(server_limits=Limits(stream_window=8 * KIB, connection_window=8 * KIB))
    pair.handshake()
    client = pair.client
    a = client.start_request("/svc/A", None, None)
    b = client.start_request("/svc/B", None, None)
    assert client.send_message(a, b"a" * 8 * KIB) is True    # takes the whole connection window
    assert client.send_message(b, b"b" * KIB) is False
    assert client.wait_writable(b)
    _, server_events = pair.pump()
    assert _messages(server_events) == [b"a" * 8 * KIB]
    pair.server.consume(a)
    client_events, server_events = pair.pump()
    assert _messages(server_events) == [b"b" * KIB]
    assert StreamWritable(b) in client_events


def test_message_over_the_receive_limit_ends_that_stream_only_on_the_server():
    pair = ConnectionPair(server_limits=Limits(max_receive_message_length=1000))
    pair.handshake()
    client, server = pair.client, pair.server
    big = client.start_request("/svc/M", None, None)
    ok = client.start_request("/svc/M", None, None)
    client.send_message(big, b"x" * 5000, end_stream=True)
    client.send_message(ok, b"y" * 1000, end_stream=True)
    client_events, server_events = pair.pump()
    (ended,) = events_of(server_events, StreamEnded)
    assert (ended.stream_id, ended.code, ended.by_peer) == (big, RESOURCE_EXHAUSTED, False)
    assert "larger than max (5000 vs. 1000)" in ended.details
    assert MessageReceived(ok, b"y" * 1000, True) in server_events
    assert [(e.stream_id, e.code) for e in events_of(client_events, StreamEnded)] == [
        (big, RESOURCE_EXHAUSTED)]
    # The connection goes on.
    server.send_message(ok, b"fine")
    server.end_stream(ok, OK)
    client_events, _ = pair.pump()
    assert MessageReceived(ok, b"fine", False) in client_events
    assert StreamEnded(ok, OK, "", ()) in client_events


def test_message_over_the_receive_limit_in_chunks():
    # The limit trips in the middle of a message that arrives in window-sized pieces.
    pair = ConnectionPair(server_limits=Limits(max_receive_message_length=1500, stream_window=KIB,
                                               max_frame_size=KIB))
    pair.handshake()
    sid = pair.client.start_request("/svc/M", None, None)
    pair.client.send_message(sid, b"x" * 50 * KIB, end_stream=True)
    client_events, server_events = pair.pump()
    assert [(e.stream_id, e.code, e.by_peer) for e in events_of(server_events, StreamEnded)] == [
        (sid, RESOURCE_EXHAUSTED, False)]
    assert [(e.stream_id, e.code) for e in client_events] == [(sid, RESOURCE_EXHAUSTED)]
    assert pair.client.streams == {} and pair.server.streams == {}
    # Far less than the 50 KiB crossed: the sender stopped with the stream.
    assert pair.taps[CLIENT].message_bytes(sid) <= 3 * KIB
    other = pair.client.start_request("/svc/M", None, None, end_stream=True)
    _, server_events = pair.pump()
    assert [e.stream_id for e in server_events] == [other]


def test_message_over_the_receive_limit_on_the_client():
    pair = ConnectionPair(client_limits=Limits(max_receive_message_length=1000))
    pair.handshake()
    client, server = pair.client, pair.server
    big = client.start_request("/svc/M", None, None, end_stream=True)
    ok = client.start_request("/svc/M", None, None, end_stream=True)
    pair.pump()
    server.send_message(big, b"x" * 5000)
    server.send_message(ok, b"y" * 1000)
    client_events, server_events = pair.pump()
    (ended,) = events_of(client_events, StreamEnded)
    assert (ended.stream_id, ended.code, ended.by_peer) == (big, RESOURCE_EXHAUSTED, False)
    assert "larger than max (5000 vs. 1000)" in ended.details
    assert MessageReceived(ok, b"y" * 1000, False) in client_events
    # The client cancelled the stream on the server.
    assert [(e.stream_id, e.code, e.by_peer) for e in events_of(server_events, StreamEnded)] == [
        (big, CANCELLED, True)]
    server.end_stream(ok, OK)
    client_events, _ = pair.pump()
    assert client_events == [StreamEnded(ok, OK, "", ())]


# ------------------------------------------------------------------ PING, GOAWAY

@pytest.mark.parametrize("pinger", [CLIENT, SERVER])
def test_ping_is_answered(pinger):
    pair = ConnectionPair()
    pair.handshake()
    payload = pair.conn[pinger].ping(b"12345678")
    random_payload = pair.conn[pinger].ping()
    assert len(random_payload) == 8
    pair.pump()
    other = ConnectionPair.other(pinger)
    assert pair.events[other][1:] == [PingReceived(payload), PingReceived(random_payload)]
    assert pair.events[pinger][1:] == [PingAcked(payload), PingAcked(random_payload)]
    acks = [f for f in pair.taps[other].frames if f.type == _wire.PING]
    assert [(f.flags, f.payload) for f in acks] == [(_wire.FLAG_ACK, payload), (_wire.FLAG_ACK, random_payload)]


def test_goaway_ends_client_streams_the_server_never_saw():
    pair = ConnectionPair()
    pair.handshake()
    client, server = pair.client, pair.server
    seen = client.start_request("/svc/M", None, None)
    pair.pump()
    server.goaway(GoAwayCode.NO_ERROR, "maintenance")
    # Two more calls start while the GOAWAY is in flight.
    late1 = client.start_request("/svc/M", None, None)
    late2 = client.start_request("/svc/M", None, None)
    in_flight = pair.take(CLIENT)
    client_events = pair.send(SERVER)
    assert client_events == [
        GoAwayReceived(seen, GoAwayCode.NO_ERROR, "maintenance"),
        StreamEnded(late1, UNAVAILABLE, "server going away: maintenance", (), True, by_peer=True),
        StreamEnded(late2, UNAVAILABLE, "server going away: maintenance", (), True, by_peer=True),
    ]
    with pytest.raises(ConnectionClosed):
        client.start_request("/svc/M", None, None)
    # The late HEADERS reach the server: refused as not started; the client
    # already ended those calls and doesn't end them twice.
    assert pair.feed(SERVER, in_flight) == []
    client_events, _ = pair.pump()
    assert client_events == []
    # The stream the server saw still completes.
    client.send_message(seen, b"req", end_stream=True)
    pair.pump()
    server.send_initial_metadata(seen, None)
    server.send_message(seen, b"resp")
    server.end_stream(seen, OK)
    client_events, _ = pair.pump()
    assert [type(e) for e in client_events] == [InitialMetadataReceived, MessageReceived, StreamEnded]
    ends = events_of(pair.events[CLIENT], StreamEnded)
    assert sorted(e.stream_id for e in ends) == [seen, late1, late2]


# ------------------------------------------------------------------ protocol violations

def _violation(frames: bytes, receiver=SERVER, setup=None, match=None):
    pair = ConnectionPair()
    pair.handshake()
    if setup is not None:
        setup(pair)
        pair.pump()
    conn = pair.conn[receiver]
    with pytest.raises(ProtocolError, match=match):
        conn.receive_data(frames)
    last, code, reason = _goaway_queued(conn)
    assert code == GoAwayCode.PROTOCOL_ERROR
    assert reason
    assert conn.closed
    assert conn.receive_data(_wire.frame(_wire.PING, 0, 0, b"12345678")) == []
    return pair, last, reason


def _open_stream(pair):
    pair.client.start_request("/svc/M", None, None)


def _open_and_half_close(pair):
    sid = pair.client.start_request("/svc/M", None, None)
    pair.client.end_input(sid)


VIOLATIONS = [
    pytest.param(_hello(), SERVER, None, "second HELLO", id="second-hello-to-server"),
    pytest.param(_hello(), CLIENT, None, "second HELLO", id="second-hello-to-client"),
    pytest.param(_headers(1), SERVER, _open_stream, "reuse stream id", id="headers-reuse-id"),
    pytest.param(_headers(3) + _headers(1), SERVER, None, "reuse stream id", id="headers-lower-id"),
    pytest.param(_headers(0), SERVER, None, "reuse stream id 0", id="headers-stream-0"),
    pytest.param(_wire.frame(_wire.MESSAGE, 0, 7, b"x"), SERVER, None, "never opened",
                 id="message-never-opened-to-server"),
    pytest.param(_wire.frame(_wire.MESSAGE, 0, 5, b"x"), CLIENT, _open_stream, "never opened",
                 id="message-never-opened-to-client"),
    pytest.param(_wire.frame(_wire.MESSAGE, 0, 0, b"x"), SERVER, None, "never opened",
                 id="message-on-stream-0"),
    pytest.param(_wire.frame(_wire.TRAILERS, 0, 1, _wire.encode_trailers(0, "", None)), SERVER,
                 _open_stream, "TRAILERS from a client", id="trailers-from-client"),
    pytest.param(_wire.frame(_wire.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), SERVER, None,
                 "increment 0", id="window-increment-0"),
    pytest.param(_wire.frame(_wire.WINDOW_UPDATE, 0, 0, _wire.encode_window_update(_wire.MAX_WINDOW)),
                 SERVER, None, "connection window overflow", id="connection-window-overflow"),
    pytest.param(_wire.frame(_wire.WINDOW_UPDATE, 0, 1, _wire.encode_window_update(_wire.MAX_WINDOW)),
                 SERVER, _open_stream, "window overflow on stream 1", id="stream-window-overflow"),
    pytest.param(_wire.frame(_wire.WINDOW_UPDATE, 0, 9, _wire.encode_window_update(1)), CLIENT,
                 None, "never opened", id="window-update-never-opened"),
    pytest.param(_wire.frame(_wire.PING, 0, 0, b"short"), SERVER, None, "8 bytes", id="ping-length"),
    pytest.param(_wire.frame(_wire.PING, 0, 3, b"12345678"), SERVER, None, "stream 0",
                 id="ping-on-stream"),
    pytest.param(_wire.frame(_wire.GOAWAY, 0, 1, _wire.encode_goaway(0, 0, "")), CLIENT, None,
                 "GOAWAY on a stream", id="goaway-on-stream"),
    pytest.param(_wire.frame(_wire.MESSAGE, 0, 1, b"x") + _wire.frame(_wire.HEADERS, 0, 1, b"\x00\x00"),
                 CLIENT, _open_stream, "second HEADERS", id="response-headers-after-a-message"),
    pytest.param(_wire.frame(_wire.HEADERS, 0, 1, b"\x00\x00") + _wire.frame(_wire.MESSAGE, 1, 1, b"x"),
                 CLIENT, _open_stream, "END_STREAM from the server", id="end-stream-from-server"),
    pytest.param(_wire.frame(_wire.MESSAGE, 0, 1, b"x"), SERVER, _open_and_half_close,
                 "not allowed on a half-closed-remote", id="message-after-half-close"),
    pytest.param(_wire.frame(_wire.MESSAGE, _wire.FLAG_NO_MESSAGE, 1, b""), SERVER, _open_stream,
                 "bare half-close", id="bare-half-close-without-end"),
    pytest.param(_wire.frame(_wire.HEADERS, 0, 1, b"\x00\x00") * 2, CLIENT, _open_stream,
                 "second HEADERS", id="second-response-headers"),
    pytest.param(_wire.frame(_wire.TRAILERS, 0, 1, _wire.encode_trailers(17, "", None)), CLIENT,
                 _open_stream, "out of range", id="trailers-status-17"),
    pytest.param(_wire.frame_header(_wire.MESSAGE, 0, 1, 2**32 - 1), SERVER, _open_stream,
                 "exceeds the limit", id="frame-length-2**32-1"),
    pytest.param(_wire.frame(_wire.HEADERS, 0, 1, _wire.encode_request_headers("/m", 0, None) + b"!"),
                 SERVER, None, "trailing bytes", id="headers-trailing-bytes"),
]


@pytest.mark.parametrize("frames, receiver, setup, match", VIOLATIONS)
def test_protocol_violation_raises_and_queues_goaway(frames, receiver, setup, match):
    _violation(frames, receiver, setup, match)


def test_goaway_after_a_violation_reaches_the_peer():
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(ProtocolError) as info:
        pair.server.receive_data(_wire.frame(_wire.MESSAGE, 0, 7, b"x"))
    client_events = pair.send(SERVER)
    assert client_events == [GoAwayReceived(0, GoAwayCode.PROTOCOL_ERROR, str(info.value))]


@pytest.mark.parametrize("frames, match", [
    pytest.param(_headers(1), "frame before HELLO", id="headers-before-hello"),
    pytest.param(_wire.frame(_wire.PING, 0, 0, b"12345678"), "frame before HELLO", id="ping-before-hello"),
    pytest.param(_wire.frame(_wire.HELLO, 0, 5, b""), "HELLO on a stream", id="hello-on-stream"),
    pytest.param(_wire.frame(_wire.HELLO, 0, 0, b"\xff\xff\xff"), "not a valid handshake",
                 id="hello-not-protobuf"),
    pytest.param(_hello(max_frame_size=10), "max_frame_size 10 outside", id="hello-frame-size-too-small"),
    pytest.param(_hello(initial_stream_window=2**31), "stream window", id="hello-window-too-large"),
])
def test_bad_handshake_raises_and_queues_goaway(frames, match):
    server = Connection(SERVER)
    server.data_to_send()          # its magic
    with pytest.raises(ProtocolError, match=match):
        server.receive_data(_wire.MAGIC + frames)
    _, code, _ = _goaway_queued(server)
    assert code == GoAwayCode.PROTOCOL_ERROR


@pytest.mark.parametrize("data, hint", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2"),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "TLS"),
], ids=["http1", "http2", "tls"])
def test_wrong_preface_gets_a_goaway_with_the_reason(data, hint):
    server = Connection(SERVER)
    server.data_to_send()
    with pytest.raises(ProtocolError, match=hint):
        server.receive_data(data)
    _, code, reason = _goaway_queued(server)
    assert code == GoAwayCode.PROTOCOL_ERROR and hint in reason


def test_version_mismatch_on_the_server():
    server = Connection(SERVER)
    server.data_to_send()
    with pytest.raises(ProtocolError) as info:
        server.receive_data(_wire.MAGIC + _hello(versions=(3, 7)))
    assert info.value.code == GoAwayCode.UNSUPPORTED_VERSION
    _, code, reason = _goaway_queued(server)
    assert code == GoAwayCode.UNSUPPORTED_VERSION
    assert "[3, 7]" in reason
    # A lanerpc client reading that refusal learns the reason.
    client = Connection(CLIENT)
    events = client.receive_data(_wire.MAGIC + _wire.frame(
        _wire.GOAWAY, 0, 0, _wire.encode_goaway(0, code, reason)))
    assert events == [GoAwayReceived(0, GoAwayCode.UNSUPPORTED_VERSION, reason)]


@pytest.mark.parametrize("versions", [(3,), (1, 2), ()], ids=["unknown", "two", "none"])
def test_version_mismatch_on_the_client(versions):
    client = Connection(CLIENT)
    client.data_to_send()
    with pytest.raises(ProtocolError) as info:
        client.receive_data(_wire.MAGIC + _hello(versions=versions))
    assert info.value.code == GoAwayCode.UNSUPPORTED_VERSION
    assert _goaway_queued(client)[1] == GoAwayCode.UNSUPPORTED_VERSION


_small_metadata = st.lists(
    st.tuples(st.text("abcxyz-_.", min_size=1, max_size=8).filter(lambda k: not k.endswith("-bin")),
              st.text(max_size=12)),
    max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["request", "trailers"]),
    metadata=_small_metadata,
    lie=st.integers(-30, 40).filter(bool),
)
def test_header_frame_with_a_lying_length_is_refused(kind, metadata, lie):
    """A HEADERS or TRAILERS whose frame length is off, in either direction, by any
    amount: its block is cut short or swallows the next frame, and is refused."""
    pair = ConnectionPair()
    pair.handshake()
    if kind == "request":
        receiver, sid = SERVER, 1
        payload = _wire.encode_request_headers("/svc/M", 0, metadata)
        ftype = _wire.HEADERS
    else:
        receiver, sid = CLIENT, pair.client.start_request("/svc/M", None, None, end_stream=True)
        pair.pump()
        payload = _wire.encode_trailers(0, "done", metadata)
        ftype = _wire.TRAILERS
    length = max(0, len(payload) + lie)
    data = (_wire.frame_header(ftype, 0, sid, length) + payload
            + _wire.frame(_wire.PING, 0, 0, b"12345678") * 5)   # enough bytes for any lie
    with pytest.raises(ProtocolError):
        pair.conn[receiver].receive_data(data)
    assert _goaway_queued(pair.conn[receiver])[1] == GoAwayCode.PROTOCOL_ERROR


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([int(t) for t in _wire.FrameType]),
                          st.integers(0, 7), st.integers(0, 6), st.binary(max_size=40)),
                min_size=1, max_size=6),
       st.sampled_from([CLIENT, SERVER]))
def test_random_frames_after_the_handshake_only_raise_protocol_error(frames, receiver):
    pair = ConnectionPair()
    pair.handshake()
    pair.client.start_request("/svc/M", None, None)
    pair.pump()
    conn = pair.conn[receiver]
    try:
        for f in frames:
            conn.receive_data(_wire.frame(*f))
            conn.data_to_send()
    except ProtocolError:
        assert _goaway_queued(conn)[1] in set(GoAwayCode)


# ------------------------------------------------------------------ random valid operations

# Weighted: calls must start and messages flow for the rest to mean anything.
_OPS = (["start"] * 4 + ["csend"] * 4 + ["cend"] * 2 + ["ccancel"] + ["smeta"] + ["ssend"] * 4
        + ["send"] * 2 + ["scancel"] + ["cconsume"] * 3 + ["sconsume"] * 3 + ["ping"]
        + ["pump"] * 3 + ["step_c"] * 3 + ["step_s"] * 3 + ["goaway"])


class _Run:
    """Applies a list of valid operations to a pair and keeps a model of the calls."""

    def __init__(self, byte_at_a_time: bool = False, max_size: int = 6000) -> None:
        small = Limits(stream_window=2 * KIB, connection_window=4 * KIB, max_frame_size=KIB)
        self.pair = ConnectionPair(small, small, byte_at_a_time=byte_at_a_time)
        self.pair.handshake()
        self.max_size = max_size
        self.started: list[int] = []
        self.cancelled_live: set[int] = set()   # client cancelled it before it ended
        self.server_seen: list[int] = []
        self.server_done: set[int] = set()
        self.unconsumed = {CLIENT: collections.Counter(), SERVER: collections.Counter()}
        self.sent = {CLIENT: collections.defaultdict(list), SERVER: collections.defaultdict(list)}
        self.got = {CLIENT: collections.defaultdict(list), SERVER: collections.defaultdict(list)}
        self.ended = {CLIENT: collections.Counter(), SERVER: collections.Counter()}
        self.seen_events = {CLIENT: len(self.pair.events[CLIENT]), SERVER: len(self.pair.events[SERVER])}
        self.counter = 0

    def observe(self) -> None:
        for role in (CLIENT, SERVER):
            events = self.pair.events[role]
            for ev in events[self.seen_events[role]:]:
                if isinstance(ev, MessageReceived):
                    self.unconsumed[role][ev.stream_id] += 1
                    self.got[role][ev.stream_id].append(ev.data)
                elif isinstance(ev, StreamEnded):
                    self.ended[role][ev.stream_id] += 1
                    if role is CLIENT:
                        assert ev.stream_id in self.started
                        assert ev.stream_id not in self.cancelled_live
                    else:
                        assert ev.stream_id in self.server_seen
                elif isinstance(ev, RequestReceived):
                    assert role is SERVER and ev.stream_id not in self.server_seen
                    self.server_seen.append(ev.stream_id)
            self.seen_events[role] = len(events)

    def _payload(self, size: int) -> bytes:
        self.counter += 1
        head = f"{self.counter}:".encode()
        return head + b"." * max(0, size - len(head))

    def apply(self, op: str, n: int, size: int, flag: bool) -> None:
        pair, client, server = self.pair, self.pair.client, self.pair.server
        size %= self.max_size + 1

        def pick(candidates):
            return candidates[n % len(candidates)] if candidates else None

        open_client = [s for s in client.streams if client.streams[s].state is StreamState.OPEN]
        live_server = [s for s in server.streams if s not in self.server_done]
        if op == "start":
            if client.goaway_received is None and len(client.streams) < 12:
                sid = client.start_request(f"/svc/M{n % 3}", (n % 5) or None, [("k", str(n))],
                                           end_stream=flag)
                self.started.append(sid)
        elif op == "csend" and (sid := pick(open_client)) is not None:
            data = self._payload(size)
            self.sent[CLIENT][sid].append(data)
            client.send_message(sid, data, end_stream=flag)
        elif op == "cend" and (sid := pick(open_client)) is not None:
            client.end_input(sid)
        elif op == "ccancel" and (sid := pick(sorted(client.streams))) is not None:
            self.cancelled_live.add(sid)
            client.cancel(sid, CANCELLED, "client gave up")
        elif op == "smeta" and (sid := pick(live_server)) is not None:
            server.send_initial_metadata(sid, [("initial", str(n))])
        elif op == "ssend" and (sid := pick(live_server)) is not None:
            data = self._payload(size)
            self.sent[SERVER][sid].append(data)
            server.send_message(sid, data)
        elif op == "send" and (sid := pick(live_server)) is not None:
            self.server_done.add(sid)
            server.end_stream(sid, n % 17, f"status {n}", [("t", "1")] if flag else None)
        elif op == "scancel" and (sid := pick(live_server)) is not None:
            self.server_done.add(sid)
            server.cancel(sid, n % 17, "server gave up", not_started=flag)
        elif op in ("cconsume", "sconsume"):
            role = CLIENT if op == "cconsume" else SERVER
            waiting = sorted(s for s, k in self.unconsumed[role].items() if k)
            if (sid := pick(waiting)) is not None:
                self.unconsumed[role][sid] -= 1
                pair.conn[role].consume(sid)
        elif op == "ping":
            pair.conn[CLIENT if flag else SERVER].ping(n.to_bytes(8, "big"))
        elif op == "pump":
            pair.pump()
        elif op == "step_c":
            pair.send(CLIENT)
        elif op == "step_s":
            pair.send(SERVER)
        elif op == "goaway":
            server.goaway(GoAwayCode.NO_ERROR, "bye")
        self.observe()

    def finish(self) -> None:
        pair, client, server = self.pair, self.pair.client, self.pair.server
        for _ in range(200):
            pair.pump()
            self.observe()
            for role in (CLIENT, SERVER):
                for sid, k in self.unconsumed[role].items():
                    for _ in range(k):
                        pair.conn[role].consume(sid)
                self.unconsumed[role].clear()
            for sid in list(server.streams):
                if sid not in self.server_done:
                    self.server_done.add(sid)
                    server.end_stream(sid, OK)
            if not client.streams and not server.streams and pair.pump() == ([], []):
                break
        self.observe()
        assert client.streams == {} and server.streams == {}, "streams left over"

    def check(self) -> None:
        for sid in self.started:
            expected = 0 if sid in self.cancelled_live else 1
            assert self.ended[CLIENT][sid] == expected, (sid, self.ended[CLIENT][sid])
        for sid in self.server_seen:
            assert self.ended[SERVER][sid] <= 1
        # Messages arrive whole, in order, on their own stream (a prefix when cut short).
        for sender in (CLIENT, SERVER):
            receiver = ConnectionPair.other(sender)
            for sid, got in self.got[receiver].items():
                assert got == self.sent[sender][sid][:len(got)]


_op_lists = st.lists(
    st.tuples(st.sampled_from(_OPS), st.integers(0, 1000), st.integers(0, 10**6), st.booleans()),
    min_size=30, max_size=80,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_op_lists)
def test_random_valid_operations_never_raise_and_every_call_ends_once(ops):
    run = _Run()
    for op in [("start", 0, 0, False), ("start", 1, 0, False), *ops]:
        run.apply(*op)
    run.finish()
    run.check()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_op_lists.map(lambda ops: ops[:25]))
def test_random_operations_give_the_same_events_one_byte_at_a_time(ops):
    whole, bytewise = _Run(max_size=200), _Run(byte_at_a_time=True, max_size=200)
    for op in ops:
        whole.apply(*op)
        bytewise.apply(*op)
    assert bytewise.pair.events == whole.pair.events


# ------------------------------------------------------------------ limits a peer may break

def test_peer_that_ignores_the_window_is_refused():
    window = 4 * KIB
    server = Connection(SERVER, Limits(stream_window=window, connection_window=4 * window))
    receive(server, _wire.MAGIC + _hello() + _headers(1))
    message = _wire.frame(_wire.MESSAGE, 0, 1, b"z" * KIB)     # whole messages, never consumed
    held = 0
    with pytest.raises(ProtocolError):
        for _ in range(1000):                                   # 1 MiB against a 4 KiB window
            held += len(events_of(server.receive_data(message), MessageReceived)) * KIB
            assert held <= window + KIB
    assert _goaway_queued(server)[1] == GoAwayCode.PROTOCOL_ERROR


def _second_call_works(pair: ConnectionPair) -> None:
    sid = pair.client.start_request("/svc/M", None, None, end_stream=True)
    pair.pump()
    pair.server.end_stream(sid, OK)
    client_events, _ = pair.pump()
    assert client_events == [StreamEnded(sid, OK, "", ())]


@pytest.mark.parametrize("where", ["details", "trailing-metadata", "request-metadata"])
def test_oversized_status_or_metadata_fails_one_call_not_the_connection(where):
    pair = ConnectionPair()
    pair.handshake()
    huge = "x" * (_wire.DEFAULT_MAX_FRAME_SIZE + 1)
    if where == "request-metadata":
        try:
            sid = pair.client.start_request("/svc/M", None, [("big", huge)], end_stream=True)
        except ValueError:
            pass                     # refusing locally is fine too
        else:
            client_events, _ = pair.pump()
            assert [(e.stream_id, e.code) for e in client_events] == [(sid, RESOURCE_EXHAUSTED)]
    else:
        sid = pair.client.start_request("/svc/M", None, None, end_stream=True)
        pair.pump()
        if where == "details":
            pair.server.end_stream(sid, 13, huge)
        else:
            pair.server.end_stream(sid, OK, "", [("big", huge)])
        client_events, _ = pair.pump()
        assert [e.stream_id for e in events_of(client_events, StreamEnded)] == [sid]
    _second_call_works(pair)


def test_ping_with_a_bad_payload_is_refused_locally():
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(ValueError):
        pair.client.ping(b"abc")
    pair.pump()
    _second_call_works(pair)


# ------------------------------------------------------------------ one frame per unary leg

def test_unary_request_and_response_each_travel_in_one_frame():
    pair = ConnectionPair()
    pair.handshake()
    sid = pair.client.start_request("/svc/M", None, [("k", "v")], message=b"request")
    request = pair.take(CLIENT)
    assert [(f.type, f.flags) for f in _frames_of(request)] == [
        (_wire.HEADERS, _wire.FLAG_END_STREAM | _wire.FLAG_WITH_MESSAGE)]
    events = pair.feed(SERVER, request)
    assert [type(e) for e in events] == [RequestReceived, MessageReceived]
    assert events[0].metadata == (("k", "v"),) and events[1].data == b"request"
    assert events[1].end_stream
    pair.server.end_stream(sid, OK, "", [("t", "x")], b"response")
    response = pair.take(SERVER)
    assert [(f.type, f.flags) for f in _frames_of(response)] == [(_wire.TRAILERS, _wire.FLAG_WITH_MESSAGE)]
    events = pair.feed(CLIENT, response)
    assert [type(e) for e in events] == [MessageReceived, StreamEnded]
    assert events[0].data == b"response"
    assert (events[1].code, events[1].metadata) == (OK, (("t", "x"),))


def _frames_of(data: bytes) -> list:
    decoder = FrameDecoder(_wire.MAX_FRAME_SIZE_LIMIT, expect_magic=False)
    decoder.feed(data)
    return [WireFrame(*f) for f in decoder.frames()]


def test_unary_message_too_big_for_one_frame_goes_separately():
    pair = ConnectionPair()
    pair.handshake()
    big = b"b" * (_wire.DEFAULT_MAX_FRAME_SIZE + 10)
    sid = pair.client.start_request("/svc/M", None, None, message=big)
    _, server_events = pair.pump()
    assert b"".join(e.data for e in events_of(server_events, MessageReceived)) == big
    pair.server.end_stream(sid, OK, "", None, big)
    client_events, _ = pair.pump()
    assert b"".join(e.data for e in events_of(client_events, MessageReceived)) == big
    assert [e.code for e in events_of(client_events, StreamEnded)] == [OK]


def test_message_with_headers_is_counted_against_the_windows():
    window = 4 * KIB
    server = Connection(SERVER, Limits(stream_window=window, connection_window=window))
    receive(server, _wire.MAGIC + _hello())
    headers = _wire.encode_request_headers("/svc/M", 0, None)
    body = b"z" * (window + 1)
    frame = _wire.frame(_wire.HEADERS, _wire.FLAG_END_STREAM | _wire.FLAG_WITH_MESSAGE, 1,
                        _wire.pack_u32(len(body)) + body + headers)
    with pytest.raises(ProtocolError, match="window"):
        server.receive_data(frame)


def test_message_length_lying_beyond_the_frame_is_refused():
    server = Connection(SERVER)
    receive(server, _wire.MAGIC + _hello())
    frame = _wire.frame(_wire.HEADERS, _wire.FLAG_END_STREAM | _wire.FLAG_WITH_MESSAGE, 1,
                        _wire.pack_u32(2**32 - 1) + b"xx")
    with pytest.raises(ProtocolError, match="beyond the frame"):
        server.receive_data(frame)


@pytest.mark.parametrize("ftype", list(_wire.FrameType))
def test_every_frame_type_the_decoder_passes_has_a_reader(ftype):
    pair = ConnectionPair()
    pair.handshake()
    try:
        pair.client.receive_data(_wire.frame(ftype, 0, 0, b""))
    except ProtocolError as exc:
        assert "no reader" not in str(exc)   # a reader may refuse the empty frame
