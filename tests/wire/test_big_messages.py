"""Big messages on the way in: announced (protocol version 2), read straight into one
buffer of their size, bounded before anything is allocated; and the decoder's lent
receive buffer, which must give the same frames as bytes fed to it."""

from __future__ import annotations

import os
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.echo import echo_pb2
from rpc import _wire
from rpc._connection import Connection, Limits, MessageReceived, StreamEnded
from rpc._proto import handshake_pb2
from rpc._settings import MemoryBudget
from rpc._wire import FrameDecoder, ProtocolError
from tests.wire.helpers import CLIENT, SERVER, ConnectionPair, events_of, receive

KIB = 1024
MIB = 1024 * KIB
RESOURCE_EXHAUSTED = 8


def _pair(max_message: int = 16 * MIB, reads_of: int = 64 * KIB, **server) -> ConnectionPair:
    limits = Limits(max_receive_message_length=max_message, **server)
    pair = ConnectionPair(server_limits=limits, reads_of=reads_of)
    pair.handshake()
    return pair


def _flow(pair: ConnectionPair) -> tuple[list, int]:
    """Move bytes both ways until quiet, consuming every message the server gets.
    Returns the server's events, and the most memory any one delivery to the server
    allocated at its peak, summed over the deliveries (what receiving cost)."""
    events: list = []
    allocated = 0
    tracemalloc.start()
    try:
        for _ in range(1000):
            data = pair.take(CLIENT)
            if data:
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                got = pair.feed(SERVER, data)
                allocated += tracemalloc.get_traced_memory()[1] - base
                events += got
                for ev in events_of(got, MessageReceived):
                    pair.server.consume(ev.stream_id)
            back = pair.take(SERVER)
            if back:
                pair.feed(CLIENT, back)
            if not data and not back:
                return events, allocated
    finally:
        tracemalloc.stop()
    raise AssertionError("the pair did not go quiet")


def test_both_sides_speak_version_2_and_announce_big_messages():
    pair = _pair()
    assert pair.client.version == pair.server.version == 2
    big = bytes(range(256)) * (8 * MIB // 256)
    sid = pair.client.start_request("/svc/Upload", None, None)
    pair.client.send_message(sid, big, end_stream=True)
    events, allocated = _flow(pair)
    [message] = events_of(events, MessageReceived)
    assert message.data == big and message.end_stream
    # One buffer of the message's size, filled where the chunks arrived: receiving it
    # allocated about its size once (pieces then joined would be twice).
    assert type(message.data) is bytearray and len(message.data) == len(big)
    assert allocated < len(big) + 2 * MIB, allocated
    sizes = [_wire.decode_message_size(f.payload) for f in pair.taps[CLIENT].frames
             if f.type == _wire.MESSAGE and f.flags & _wire.FLAG_SIZE]
    assert sizes == [len(big)]


@pytest.mark.parametrize("reads_of", [1000, 64 * KIB, 3 * MIB])
def test_an_announced_message_arrives_whole_however_the_reads_fall(reads_of):
    pair = _pair(reads_of=reads_of)
    big = bytes(range(251)) * (3 * MIB // 251)
    sid = pair.client.start_request("/svc/Upload", None, None)
    pair.client.send_message(sid, big)
    pair.client.send_message(sid, b"small after it", end_stream=True)
    events, _ = _flow(pair)
    assert [bytes(e.data) for e in events_of(events, MessageReceived)] == [big, b"small after it"]


def test_a_version_1_peer_gets_no_announcement_and_the_same_message(monkeypatch):
    limits = Limits(max_receive_message_length=16 * MIB)
    pair = ConnectionPair(server_limits=limits, reads_of=64 * KIB)
    monkeypatch.setattr(_wire, "SUPPORTED_VERSIONS", (1,))    # a server of version 1
    pair.handshake()
    assert pair.client.version == pair.server.version == 1
    big = b"v" * (2 * MIB + 3)
    sid = pair.client.start_request("/svc/Upload", None, None)
    pair.client.send_message(sid, big, end_stream=True)
    events, _ = _flow(pair)
    assert [bytes(e.data) for e in events_of(events, MessageReceived)] == [big]
    assert not [f for f in pair.taps[CLIENT].frames if f.flags & _wire.FLAG_SIZE
                and f.type == _wire.MESSAGE]


def _size_frame(sid: int, size: int) -> bytes:
    return _wire.frame(_wire.MESSAGE, _wire.FLAG_SIZE, sid, _wire.pack_u32(size))


def _opened_server(version: int = 2, client_stream_window: int = 0, **limits) -> Connection:
    """A server with stream 1 open, its client speaking ``version`` (and taking
    ``client_stream_window`` bytes per stream, 0: the default)."""
    server = Connection(SERVER, Limits(**limits))
    hello = _wire.frame(_wire.HELLO, 0, 0, _hello_payload(version, client_stream_window))
    receive(server, _wire.MAGIC + hello)
    receive(server, _wire.frame(_wire.HEADERS, 0, 1, _wire.encode_request_headers("/s/M", 0, None)))
    server.data_to_send()
    return server


def _hello_payload(version: int, stream_window: int = 0) -> bytes:
    hello = handshake_pb2.Hello(versions=list(range(1, version + 1)))
    hello.settings.initial_stream_window = stream_window
    return hello.SerializeToString()


def test_an_announced_size_over_the_limit_is_refused_before_anything_is_allocated():
    server = _opened_server()
    tracemalloc.start()
    try:
        events = server.receive_data(_size_frame(1, 2**32 - 1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * KIB, peak
    [ended] = events_of(events, StreamEnded)
    assert ended.code == RESOURCE_EXHAUSTED
    assert ended.details == "SERVER: Received message larger than max (4294967295 vs. 4194304)"
    # Its chunks, already on their way, are dropped as they come.
    assert server.receive_data(_wire.frame(_wire.MESSAGE, _wire.FLAG_MORE, 1, b"x" * 100)) == []
    assert server.receive_data(_wire.frame(_wire.MESSAGE, 0, 1, b"x" * 100)) == []


@pytest.mark.parametrize("chunks", [
    [(b"a" * 70_000, _wire.FLAG_MORE), (b"b" * 30_001, 0)],      # more than announced
    [(b"a" * 70_000, _wire.FLAG_MORE), (b"b" * 29_999, 0)],      # ends short
    [(b"a" * 100_001, 0)],                                        # one chunk, too long
], ids=["over", "short", "whole"])
def test_chunks_that_do_not_add_up_to_the_announced_size_break_the_protocol(chunks):
    server = _opened_server()
    server.receive_data(_size_frame(1, 100_000))
    with pytest.raises(ProtocolError, match="not the 100000 bytes announced"):
        for payload, flags in chunks:
            server.receive_data(_wire.frame(_wire.MESSAGE, flags, 1, payload))


@pytest.mark.parametrize("second", [
    _size_frame(1, 10),                                        # announced twice
    _wire.frame(_wire.MESSAGE, _wire.FLAG_SIZE, 1, b"\x00\x00\x00\x00"),   # size 0 (after one)
], ids=["twice", "zero"])
def test_a_second_announcement_in_the_middle_of_a_message_breaks_the_protocol(second):
    server = _opened_server()
    server.receive_data(_size_frame(1, 100_000))
    with pytest.raises(ProtocolError):
        server.receive_data(second)


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00\x00", b"\x00\x00\x01\x00\x00"],
                         ids=["empty", "zero", "five-bytes"])
def test_a_malformed_announcement_breaks_the_protocol(payload):
    server = _opened_server()
    with pytest.raises(ProtocolError):
        server.receive_data(_wire.frame(_wire.MESSAGE, _wire.FLAG_SIZE, 1, payload))


def test_an_announcement_on_a_version_1_connection_breaks_the_protocol():
    server = _opened_server(version=1)
    with pytest.raises(ProtocolError, match="version 1"):
        server.receive_data(_size_frame(1, 100_000))


def test_an_announced_buffer_counts_against_the_budget_until_the_stream_goes():
    budget = MemoryBudget(64 * MIB)
    server = Connection(SERVER, Limits(max_receive_message_length=16 * MIB), budget=budget)
    receive(server, _wire.MAGIC + _wire.frame(_wire.HELLO, 0, 0, _hello_payload(2)))
    receive(server, _wire.frame(_wire.HEADERS, 0, 1, _wire.encode_request_headers("/s/M", 0, None)))
    server.receive_data(_size_frame(1, 8 * MIB))
    assert budget.used == 8 * MIB            # made, so counted, though nothing came yet
    server.receive_data(_wire.frame(_wire.MESSAGE, _wire.FLAG_MORE, 1, b"x" * MIB))
    assert budget.used == 8 * MIB            # a chunk in it moves from reserved to held
    server.cancel(1)
    assert budget.used == 0
    server.receive_data(_wire.frame(_wire.HEADERS, 0, 3, _wire.encode_request_headers("/s/M", 0, None)))
    server.receive_data(_size_frame(3, 5 * MIB))
    assert budget.used == 5 * MIB
    server.connection_lost()
    assert budget.used == 0 and budget.connections == 0


def test_an_announcement_without_room_for_its_buffer_is_collected_in_pieces():
    # Buffers made ahead stay within the connection's window: stream 1's takes most
    # of it, so stream 3's message is kept as its chunks come, and still arrives whole.
    server = _opened_server(max_receive_message_length=MIB, connection_window=150 * KIB)
    receive(server, _wire.frame(_wire.HEADERS, 0, 3, _wire.encode_request_headers("/s/M", 0, None)))
    server.receive_data(_size_frame(1, 100 * KIB) + _size_frame(3, 100 * KIB))
    assert server.streams[1].assembly is not None and server.streams[3].assembly is None
    events = server.receive_data(_wire.frame(_wire.MESSAGE, _wire.FLAG_MORE, 3, b"a" * 70 * KIB)
                                 + _wire.frame(_wire.MESSAGE, 0, 3, b"b" * 30 * KIB))
    assert [bytes(e.data) for e in events_of(events, MessageReceived)] == [
        b"a" * 70 * KIB + b"b" * 30 * KIB]


# ------------------------------------------------------------------ the decoder's buffer

_frames = st.lists(
    st.tuples(st.sampled_from([_wire.MESSAGE, _wire.PING, _wire.WINDOW_UPDATE]),
              st.integers(0, 3), st.integers(1, 9),
              st.one_of(st.integers(0, 300), st.integers(60_000, 200_000))),
    min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(frames=_frames, reads=st.lists(st.integers(1, 300_000), min_size=1, max_size=20))
def test_reading_into_the_lent_buffer_gives_the_frames_feeding_gives(frames, reads):
    wire = b"".join(_wire.frame(t, f, s, bytes([n % 251]) * n) for t, f, s, n in frames)
    fed = FrameDecoder(_wire.MAX_FRAME_SIZE_LIMIT, expect_magic=False)
    fed.feed(wire)
    expected = [(t, f, s, bytes(p)) for t, f, s, p in fed.frames()]
    lent = FrameDecoder(_wire.MAX_FRAME_SIZE_LIMIT, expect_magic=False)
    got = []
    view, i = memoryview(wire), 0
    while view:
        into = lent.get_buffer()
        assert len(into) > 0
        n = min(len(into), reads[i % len(reads)], len(view))
        i += 1
        into[:n] = view[:n]
        view = view[n:]
        lent.buffer_updated(n)
        got += [(t, f, s, bytes(p)) for t, f, s, p in lent.frames()]
    assert got == expected
    assert lent.buffered == 0


def test_a_big_frame_is_read_into_the_place_its_sink_gives():
    decoder = FrameDecoder(_wire.MAX_FRAME_SIZE_LIMIT, expect_magic=False)
    home = bytearray(300_000)
    payload = bytes(range(256)) * 1000
    wire = _wire.frame(_wire.MESSAGE, 0, 1, payload)
    into = decoder.get_buffer()
    into[:100] = wire[:100]
    decoder.buffer_updated(100)
    asked = []

    def sink(ftype: int, flags: int, sid: int, length: int) -> memoryview:
        asked.append((ftype, sid, length))
        return memoryview(home)[1000:1000 + length]

    assert list(decoder.frames(sink)) == []
    assert asked == [(_wire.MESSAGE, 1, len(payload))]
    rest = memoryview(wire)[100:]
    while rest:
        into = decoder.get_buffer()
        n = min(len(into), len(rest))
        into[:n] = rest[:n]
        rest = rest[n:]
        decoder.buffer_updated(n)
    [(ftype, flags, sid, got)] = list(decoder.frames(sink))
    assert got.obj is home and bytes(home[1000:1000 + len(payload)]) == payload


def test_announcements_on_a_stream_the_server_ended_are_dropped_like_its_chunks():
    # Refused at its announcement while a response still waits for window: the
    # stream is closing, and what the client sends before it learns is let go.
    server = _opened_server(client_stream_window=1024, max_receive_message_length=MIB)
    server.send_message(1, b"r" * 4096)       # over the client's window: queued
    server.receive_data(_size_frame(1, 2 * MIB))
    assert server.streams[1].closing
    assert server.receive_data(_wire.frame(_wire.MESSAGE, _wire.FLAG_MORE, 1, b"x" * 10)
                               + _wire.frame(_wire.MESSAGE, 0, 1, b"x" * 10)
                               + _size_frame(1, 2 * MIB)) == []


# ------------------------------------------------------------------ reusing the buffer

def _announced(sid: int, payload: bytes) -> bytes:
    """``payload`` as an announced message on stream ``sid``, in chunks of 512 KiB."""
    step = 512 * KIB
    starts = range(0, len(payload), step)
    return _size_frame(sid, len(payload)) + b"".join(
        _wire.frame(_wire.MESSAGE, _wire.FLAG_MORE if at + step < len(payload) else 0, sid,
                    payload[at:at + step]) for at in starts)


def _deliver(server: Connection, sid: int, wire: bytes) -> MessageReceived:
    """The message ``wire`` carries on stream ``sid``, read as a socket lane reads (into
    the memory the connection lends, 64 KiB at a time) and consumed (credited back)."""
    events: list = []
    view = memoryview(wire)
    while view:
        into = server.receive_buffer()
        n = min(len(into), 64 * KIB, len(view))
        into[:n] = view[:n]
        view = view[n:]
        events += server.received_into(n)
    del into
    [message] = events_of(events, MessageReceived)
    server.consume(sid)
    return message


def _announce_and_send(server: Connection, sid: int, payload: bytes) -> MessageReceived:
    return _deliver(server, sid, _announced(sid, payload))


def _open(server: Connection, sid: int) -> None:
    headers = _wire.encode_request_headers("/s/M", 0, None)
    receive(server, _wire.frame(_wire.HEADERS, 0, sid, headers))


def _allocated_by(step: Any) -> tuple[Any, int]:
    """What ``step()`` returns, and the most memory it held at once."""
    tracemalloc.start()
    try:
        result = step()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_buffer_nobody_holds_any_more_carries_the_next_message_of_its_size():
    server = _opened_server(max_receive_message_length=4 * MIB)
    first = os.urandom(MIB)
    assert bytes(_announce_and_send(server, 1, first).data) == first
    spare = id(server._spare)          # (an id: holding the buffer would keep it busy)
    _open(server, 3)
    second = os.urandom(MIB)
    wire = _announced(3, second)
    message, peak = _allocated_by(lambda: _deliver(server, 3, wire))
    assert message.data == second and id(message.data) == spare
    assert peak < 256 * KIB, peak      # no new buffer of the message's size
    # A smaller message (at least half its size) is read into it too, cut to size.
    _open(server, 5)
    del message
    third = os.urandom(MIB - 1000)
    message = _announce_and_send(server, 5, third)
    assert message.data == third and id(message.data) == spare and len(message.data) == len(third)


@pytest.mark.parametrize("holder", ["the buffer", "a memoryview", "a slice's memoryview"])
def test_a_buffer_someone_still_holds_is_never_written_into(holder):
    server = _opened_server(max_receive_message_length=4 * MIB)
    first = os.urandom(MIB)
    data = _announce_and_send(server, 1, first).data
    kept = {"the buffer": lambda: data, "a memoryview": lambda: memoryview(data),
            "a slice's memoryview": lambda: memoryview(data)[10:20]}[holder]()
    del data
    _open(server, 3)
    second = os.urandom(MIB)
    assert _announce_and_send(server, 3, second).data == second
    assert bytes(kept) == (first if holder != "a slice's memoryview" else first[10:20])


def test_a_buffer_protobuf_parsed_is_reused_and_the_parsed_message_keeps_its_bytes():
    # What the unary path does with a big request or response: FromString(buffer), then
    # the buffer is dropped. upb's parse copies the bytes it keeps, so the buffer may
    # carry the next message while the parsed one lives on unchanged.
    server = _opened_server(max_receive_message_length=4 * MIB)
    payloads = [os.urandom(MIB), os.urandom(MIB)]
    wires = [echo_pb2.EchoMessage(payload=p).SerializeToString() for p in payloads]
    parsed = [echo_pb2.EchoMessage.FromString(_announce_and_send(server, 1, wires[0]).data)]
    spare = id(server._spare)
    _open(server, 3)
    message = _announce_and_send(server, 3, wires[1])
    assert id(message.data) == spare
    parsed.append(echo_pb2.EchoMessage.FromString(message.data))
    assert [p.payload for p in parsed] == payloads


def test_a_bigger_message_gets_a_new_buffer_and_a_lost_connection_lets_the_spare_go():
    server = _opened_server(max_receive_message_length=4 * MIB)
    _announce_and_send(server, 1, os.urandom(MIB))
    small = id(server._spare)
    _open(server, 3)
    message = _announce_and_send(server, 3, os.urandom(2 * MIB + 1))   # over twice: no
    assert id(message.data) != small and len(server._spare) == 2 * MIB + 1
    del message
    _open(server, 5)
    message = _announce_and_send(server, 5, os.urandom(MIB))   # under half of it: new
    assert len(message.data) == MIB and len(server._spare) == MIB
    server.connection_lost()
    assert server._spare is None


def test_a_server_keeps_no_spare_larger_than_its_connections_share_of_the_budget():
    budget = MemoryBudget(8 * MIB)
    others = [Connection(SERVER, Limits(), budget=budget) for _ in range(7)]   # share: 1 MiB
    server = Connection(SERVER, Limits(max_receive_message_length=4 * MIB), budget=budget)
    receive(server, _wire.MAGIC + _wire.frame(_wire.HELLO, 0, 0, _hello_payload(2)))
    _open(server, 1)
    assert _announce_and_send(server, 1, b"x" * (2 * MIB)).data == b"x" * (2 * MIB)
    assert server._spare is None
    _open(server, 3)
    _announce_and_send(server, 3, b"y" * (MIB // 2))
    assert server._spare is not None and len(server._spare) == MIB // 2
    for other in others:
        other.connection_lost()
