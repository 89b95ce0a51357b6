"""Before the peer's HELLO has been read, frames are at most MAX_HANDSHAKE_FRAME_SIZE.

A peer that hasn't said who it is can't make a connection hold a full-size frame:
the header alone is refused, whole or one byte at a time, and the largest HELLO a
lanerpc peer sends fits with room to spare.
"""

from __future__ import annotations

import pytest

from rpc import _wire
from rpc._connection import Connection, HandshakeDone, HelloReceived, Role
from rpc._proto import handshake_pb2
from rpc._wire import MAGIC, FrameDecoder, GoAwayCode, ProtocolError
from tests.wire.helpers import ConnectionPair, drain_frames

LIMIT = _wire.MAX_HANDSHAKE_FRAME_SIZE


def _hello_frame(size: int) -> bytes:
    """A valid client HELLO frame whose payload is exactly ``size`` bytes."""
    hello = handshake_pb2.Hello(versions=[1])
    base = len(hello.SerializeToString())
    # lanes is a string field: tag + varint length + text. Find the text length.
    for n in range(size, 0, -1):
        hello.lanes = "x" * n
        if len(hello.SerializeToString()) == size:
            return _wire.frame(_wire.HELLO, 0, 0, hello.SerializeToString())
    raise AssertionError(f"no HELLO of {size} bytes (base {base})")


def _feed(conn: Connection, data: bytes, byte_at_a_time: bool) -> list[object]:
    events: list[object] = []
    if byte_at_a_time:
        for i in range(len(data)):
            events += conn.receive_data(data[i:i + 1])
    else:
        events += conn.receive_data(data)
    return events


def _largest_hellos() -> tuple[bytes, bytes]:
    """The largest HELLOs lanerpc sends: a client's on the upgrade socket (lanes and a
    claim), a server's on tcp/unix (upgrade offer, claim answer, shm offer), with every
    name at the longest the system allows (sun_path 108 bytes, NAME_MAX 255)."""
    client = handshake_pb2.Hello(versions=[1], lanes="shm,unix,tcp")
    client.claim.token_id = bytes(32)
    client.claim.nonce = bytes(32)
    server = handshake_pb2.Hello(versions=[1], claim_answer=bytes(32))
    server.upgrade.unix_path = "/" * 107
    server.upgrade.token = bytes(32)
    server.shm.segment = "s" * 255
    server.shm.semaphores.extend(["a" * 255, "b" * 255])
    server.shm.ring_capacity = 2**31
    server.shm.nonce = bytes(32)
    for hello in (client, server):
        for name in ("max_frame_size", "initial_stream_window", "initial_connection_window",
                     "max_concurrent_streams", "max_metadata_size"):
            setattr(hello.settings, name, 2**32 - 1)
    return client.SerializeToString(), server.SerializeToString()


def test_the_largest_legitimate_hello_is_far_below_the_limit():
    for payload in _largest_hellos():
        assert len(payload) * 8 < LIMIT


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "byte-at-a-time"])
def test_a_long_frame_before_the_hello_is_refused_from_its_header(byte_at_a_time):
    server = Connection(Role.SERVER)
    server.data_to_send()
    header = _wire.frame_header(_wire.HELLO, 0, 0, LIMIT + 1)
    with pytest.raises(ProtocolError) as info:
        _feed(server, MAGIC + header, byte_at_a_time)
    assert str(info.value) == f"frame of {LIMIT + 1} bytes before the handshake; at most {LIMIT}"
    assert server.closed
    # Refused with only the header buffered: no room was made for the payload.
    assert server._decoder.buffered == _wire.HEADER_SIZE
    frames = drain_frames(server)
    assert frames[-1].type == _wire.GOAWAY
    _, code, reason = _wire.decode_goaway(frames[-1].payload)
    assert code == GoAwayCode.PROTOCOL_ERROR and reason == str(info.value)


@pytest.mark.parametrize("ftype", [_wire.HELLO, _wire.MESSAGE, _wire.GOAWAY])
def test_any_type_is_held_to_the_limit_on_the_client_too(ftype):
    client = Connection(Role.CLIENT)
    client.data_to_send()
    with pytest.raises(ProtocolError, match="before the handshake"):
        client.receive_data(MAGIC + _wire.frame_header(ftype, 0, 0, 2**32 - 1))


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "byte-at-a-time"])
def test_a_hello_of_exactly_the_limit_is_read(byte_at_a_time):
    server = Connection(Role.SERVER)
    server.data_to_send()
    frame = _hello_frame(LIMIT)
    events = _feed(server, MAGIC + frame, byte_at_a_time)
    assert [type(e) for e in events] == [HelloReceived]


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "byte-at-a-time"])
def test_full_size_frames_flow_after_the_handshake(byte_at_a_time):
    pair = ConnectionPair(byte_at_a_time=byte_at_a_time)
    pair.handshake()
    sid = pair.client.start_request("/svc/M", None, None)
    pair.send(Role.CLIENT)
    big = b"m" * (LIMIT * 4)     # one MESSAGE frame of 64 KiB: over the early limit
    pair.client.send_message(sid, big)
    events = pair.send(Role.CLIENT)
    assert [e.data for e in events if hasattr(e, "data")] == [big]


def test_the_decoder_lifts_the_limit_mid_read():
    """A client reads on past the server's HELLO in the same bytes: the frame behind
    it may be full-size once the HELLO is read (the owner clears the limit)."""
    decoder = FrameDecoder(handshake_limit=LIMIT)
    big = _wire.frame(_wire.MESSAGE, 0, 1, b"x" * (LIMIT * 2))
    decoder.feed(MAGIC + _hello_frame(100) + big)
    seen = []
    for f in decoder.frames():
        seen.append(f)
        decoder.handshake_limit = None
    assert [(f[0], len(f[3])) for f in seen] == [(_wire.HELLO, 100), (_wire.MESSAGE, LIMIT * 2)]


def test_a_smaller_frame_limit_still_applies_before_the_handshake():
    decoder = FrameDecoder(max_frame_size=1024, handshake_limit=LIMIT)
    decoder.feed(MAGIC + _wire.frame_header(_wire.HELLO, 0, 0, 2000))
    with pytest.raises(ProtocolError, match="exceeds the limit of 1024"):
        list(decoder.frames())


def test_an_honest_handshake_is_unchanged():
    pair = ConnectionPair(byte_at_a_time=True)
    pair.handshake()
    assert pair.client.handshake_done and pair.server.handshake_done
    assert any(isinstance(e, HandshakeDone) for e in pair.events[Role.CLIENT])
