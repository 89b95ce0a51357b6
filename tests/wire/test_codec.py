"""The frame codec (rpc._wire): round trips, byte-at-a-time decoding, and hostile input.

Every parse either returns a value or raises ProtocolError, whatever the input;
lengths are refused before anything is allocated.
"""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpc import _wire
from rpc._wire import (
    HEADER_SIZE,
    MAGIC,
    FrameDecoder,
    FrameType,
    ProtocolError,
    decode_cancel,
    decode_goaway,
    decode_metadata,
    decode_request_headers,
    decode_trailers,
    decode_window_update,
    encode_cancel,
    encode_goaway,
    encode_metadata,
    encode_request_headers,
    encode_trailers,
    encode_window_update,
)

# ------------------------------------------------------------------ strategies

_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_."
_text_keys = st.text(_KEY_ALPHABET, min_size=1, max_size=40).filter(lambda k: not k.endswith("-bin"))
_bin_keys = st.text(_KEY_ALPHABET, min_size=0, max_size=36).map(lambda k: k + "-bin")

_entry = st.one_of(
    st.tuples(_text_keys, st.text(max_size=60)),
    st.tuples(_bin_keys, st.binary(max_size=60)),
)
metadata_st = st.lists(_entry, max_size=12).map(tuple)
status_codes = st.integers(min_value=0, max_value=16)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
frame_st = st.tuples(
    st.sampled_from([int(t) for t in FrameType]),
    st.integers(min_value=0, max_value=255),
    u32,
    st.binary(max_size=300),
)

_DECODERS = [decode_metadata, decode_request_headers, decode_trailers, decode_cancel,
             decode_goaway, decode_window_update]


def _all_frames(decoder: FrameDecoder) -> list[tuple[int, int, int, bytes]]:
    return list(decoder.frames())


def _stream(frames) -> bytes:
    return MAGIC + b"".join(_wire.frame(*f) for f in frames)


# ------------------------------------------------------------------ round trips

@given(metadata_st)
def test_metadata_round_trip(metadata):
    encoded = encode_metadata(metadata)
    decoded, end = decode_metadata(encoded)
    assert decoded == metadata
    assert end == len(encoded)
    for key, value in decoded:
        assert isinstance(value, bytes if key.endswith("-bin") else str)


@given(metadata_st, st.binary(max_size=20), st.binary(max_size=20))
def test_metadata_decodes_at_an_offset_and_reports_where_it_ends(metadata, before, after):
    encoded = encode_metadata(metadata)
    decoded, end = decode_metadata(before + encoded + after, len(before))
    assert decoded == metadata
    assert end == len(before) + len(encoded)


def test_empty_metadata_is_two_zero_bytes():
    assert encode_metadata(None) == encode_metadata(()) == b"\x00\x00"
    assert decode_metadata(b"\x00\x00") == ((), 2)


@given(
    st.text(min_size=1, max_size=80),
    st.integers(min_value=0, max_value=_wire.MAX_TIMEOUT_US),
    metadata_st,
)
def test_request_headers_round_trip(method, timeout_us, metadata):
    assert decode_request_headers(encode_request_headers(method, timeout_us, metadata)) == (
        method, timeout_us, metadata)


@given(status_codes, st.text(max_size=200), metadata_st)
def test_trailers_round_trip(code, details, metadata):
    assert decode_trailers(encode_trailers(code, details, metadata)) == (code, details, metadata)


@given(status_codes, st.text(max_size=200))
def test_cancel_round_trip(code, details):
    assert decode_cancel(encode_cancel(code, details)) == (code, details)


@given(u32, u32, st.text(max_size=300))
def test_goaway_round_trip(last_stream_id, code, reason):
    last, got_code, got_reason = decode_goaway(encode_goaway(last_stream_id, code, reason))
    assert (last, got_code) == (last_stream_id, code)
    if len(reason.encode()) <= 1024:
        assert got_reason == reason
    else:
        # The reason is cut to 1 KiB; a character cut in half decodes as U+FFFD.
        kept = got_reason.rstrip("\ufffd")
        assert reason.startswith(kept)
        assert 1024 - 3 <= len(kept.encode()) <= 1024


@given(st.integers(min_value=1, max_value=_wire.MAX_WINDOW))
def test_window_update_round_trip(increment):
    assert decode_window_update(encode_window_update(increment)) == increment


@pytest.mark.parametrize("increment", [0, _wire.MAX_WINDOW + 1, 2**32 - 1])
def test_window_update_out_of_range_is_refused(increment):
    with pytest.raises(ProtocolError, match="out of range"):
        decode_window_update(encode_window_update(increment))


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x01", b"\x00\x00\x00\x01\x00"])
def test_window_update_must_be_four_bytes(payload):
    with pytest.raises(ProtocolError):
        decode_window_update(payload)


@pytest.mark.parametrize("code", [17, 255, 2**32 - 1])
def test_status_codes_above_16_are_refused(code):
    with pytest.raises(ProtocolError, match="out of range"):
        decode_trailers(encode_trailers(code, "", None))
    with pytest.raises(ProtocolError, match="out of range"):
        decode_cancel(encode_cancel(code))


# ------------------------------------------------------------------ FrameDecoder

@given(st.lists(frame_st, max_size=8))
def test_frame_round_trip(frames):
    decoder = FrameDecoder()
    decoder.feed(_stream(frames))
    assert _all_frames(decoder) == frames
    assert decoder.buffered == 0


@given(st.lists(frame_st, max_size=6))
def test_decoder_fed_one_byte_at_a_time_gives_the_same_frames(frames):
    data = _stream(frames)
    whole = FrameDecoder()
    whole.feed(data)
    expected = _all_frames(whole)

    decoder = FrameDecoder()
    got = []
    for i in range(len(data)):
        decoder.feed(data[i:i + 1])
        got.extend(decoder.frames())
    assert got == expected == frames
    assert decoder.buffered == 0


@given(st.lists(frame_st, max_size=6), st.data())
def test_decoder_gives_the_same_frames_however_the_bytes_are_split(frames, data):
    stream = _stream(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    got = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:stop])
        got.extend(decoder.frames())
    assert got == frames


@given(st.lists(frame_st, min_size=1, max_size=4), st.data())
def test_truncated_frame_yields_only_the_complete_frames(frames, data):
    stream = _stream(frames)
    cut = data.draw(st.integers(len(MAGIC), len(stream) - 1))
    decoder = FrameDecoder()
    decoder.feed(stream[:cut])
    got = _all_frames(decoder)
    # Exactly the frames that fit entirely before the cut, and the rest waits.
    expected, offset = [], len(MAGIC)
    for f in frames:
        offset += HEADER_SIZE + len(f[3])
        if offset <= cut:
            expected.append(f)
    assert got == expected
    assert decoder.buffered == cut - len(MAGIC) - sum(HEADER_SIZE + len(f[3]) for f in expected)
    decoder.feed(stream[cut:])
    assert _all_frames(decoder) == frames[len(expected):]


# ------------------------------------------------------------------ hostile input

@settings(max_examples=300)
@given(st.binary(max_size=400), st.booleans())
def test_garbage_is_frames_or_protocol_error(data, after_magic):
    decoder = FrameDecoder()
    decoder.feed(MAGIC + data if after_magic else data)
    try:
        for ftype, flags, sid, payload in decoder.frames():
            assert ftype in set(FrameType)
            assert 0 <= flags <= 255 and 0 <= sid <= 2**32 - 1
            assert len(payload) <= decoder.max_frame_size
    except ProtocolError:
        pass
    assert decoder.buffered <= len(data) + len(MAGIC)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=8))
def test_payload_decoders_return_or_raise_protocol_error(payload, offset):
    for decode in _DECODERS:
        try:
            if decode is decode_metadata:
                decode(payload, offset)
            else:
                decode(payload)
        except ProtocolError:
            pass


@given(
    st.sampled_from(["headers", "trailers", "metadata"]),
    st.text(min_size=1, max_size=20),
    metadata_st,
    st.data(),
)
def test_every_truncation_of_a_header_block_is_refused(kind, text, metadata, data):
    if kind == "headers":
        encoded, decode = encode_request_headers(text, 0, metadata), decode_request_headers
    elif kind == "trailers":
        encoded, decode = encode_trailers(3, text, metadata), decode_trailers
    else:
        encoded, decode = encode_metadata(metadata), lambda b: decode_metadata(b)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(ProtocolError):
        decode(encoded[:cut])


@given(st.text(min_size=1, max_size=20), metadata_st, st.binary(min_size=1, max_size=10))
def test_trailing_bytes_after_a_header_block_are_refused(text, metadata, extra):
    with pytest.raises(ProtocolError, match="trailing bytes"):
        decode_request_headers(encode_request_headers(text, 0, metadata) + extra)
    with pytest.raises(ProtocolError, match="trailing bytes"):
        decode_trailers(encode_trailers(0, text, metadata) + extra)


def _entry_bytes(key: bytes, value: bytes, *, klen: int | None = None, vlen: int | None = None) -> bytes:
    return (struct.pack(">H", len(key) if klen is None else klen) + key
            + struct.pack(">I", len(value) if vlen is None else vlen) + value)


@pytest.mark.parametrize("block", [
    pytest.param(b"\x00\x02" + _entry_bytes(b"a", b"1"), id="count-lies"),
    pytest.param(b"\x00\x01" + _entry_bytes(b"a", b"1", vlen=2**32 - 1), id="value-length-lies"),
    pytest.param(b"\x00\x01" + _entry_bytes(b"a", b"1", vlen=2), id="value-length-off-by-one"),
    pytest.param(b"\x00\x01" + _entry_bytes(b"a", b"1", klen=60000), id="key-length-lies"),
    pytest.param(b"\x00\x01" + _entry_bytes(b"", b"1"), id="empty-key"),
    pytest.param(b"\x00\x01" + _entry_bytes("é".encode(), b"1"), id="non-ascii-key"),
    pytest.param(b"\x00\x01" + _entry_bytes(b"a", b"\xff\xfe"), id="text-value-not-utf8"),
    pytest.param(b"\x00", id="count-truncated"),
])
def test_lying_metadata_is_refused(block):
    with pytest.raises(ProtocolError):
        decode_metadata(block)


def test_lying_lengths_in_request_and_trailers_are_refused():
    good = encode_request_headers("/a/b", 0, None)
    with pytest.raises(ProtocolError):   # method length beyond the payload
        decode_request_headers(struct.pack(">QH", 0, 2000) + good[10:])
    with pytest.raises(ProtocolError):   # empty method
        decode_request_headers(struct.pack(">QH", 0, 0) + b"\x00\x00")
    with pytest.raises(ProtocolError):   # timeout beyond 2**63 - 1 µs
        decode_request_headers(struct.pack(">QH", 2**64 - 1, 4) + b"/a/b\x00\x00")
    with pytest.raises(ProtocolError):   # details length beyond the payload
        decode_trailers(struct.pack(">II", 0, 2**32 - 1) + b"\x00\x00")
    with pytest.raises(ProtocolError):   # details not UTF-8
        decode_trailers(struct.pack(">II", 0, 2) + b"\xff\xfe\x00\x00")


@pytest.mark.parametrize("length", [2**32 - 1, _wire.DEFAULT_MAX_FRAME_SIZE + 1])
def test_oversized_length_is_refused_from_the_header_alone(length):
    decoder = FrameDecoder()
    decoder.feed(MAGIC)
    header = _wire.frame_header(_wire.MESSAGE, 0, 1, length)
    decoder.feed(header[:-1])
    assert _all_frames(decoder) == []          # nine bytes: not yet a header
    decoder.feed(header[-1:])
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        _all_frames(decoder)
    # Refused with nothing but the header buffered: no room was made for the payload.
    assert decoder.buffered == HEADER_SIZE


def test_length_at_the_limit_is_accepted_and_buffered_as_it_arrives():
    limit = 4096
    decoder = FrameDecoder(max_frame_size=limit)
    decoder.feed(MAGIC + _wire.frame_header(_wire.MESSAGE, 0, 1, limit) + b"x" * 100)
    assert _all_frames(decoder) == []
    assert decoder.buffered == HEADER_SIZE + 100
    decoder.feed(b"x" * (limit - 100))
    assert _all_frames(decoder) == [(_wire.MESSAGE, 0, 1, b"x" * limit)]


@pytest.mark.parametrize("ftype", [9, 10, 100, 255])
def test_unknown_frame_type_is_refused(ftype):
    decoder = FrameDecoder()
    decoder.feed(MAGIC + _wire.frame(ftype, 0, 0, b""))
    with pytest.raises(ProtocolError, match="unknown frame type"):
        _all_frames(decoder)


def test_decoder_without_magic_starts_at_the_first_frame():
    decoder = FrameDecoder(expect_magic=False)
    decoder.feed(_wire.frame(_wire.PING, 0, 0, b"12345678"))
    assert _all_frames(decoder) == [(_wire.PING, 0, 0, b"12345678")]


# ------------------------------------------------------------------ wrong preface

_HTTP1 = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
_HTTP2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_TLS = bytes.fromhex("160301020001") + b"\x00" * 60   # a ClientHello record header
# What a plain gRPC server sends first: an HTTP/2 SETTINGS frame (captured from grpcio).
_H2_SETTINGS = bytes.fromhex("000018040000000000000400400000000500400000000600004000fe0300000001")


@pytest.mark.parametrize("data, hint", [
    pytest.param(_HTTP1, "HTTP/1", id="http1-get"),
    pytest.param(b"POST /helloworld.Greeter/SayHello HTTP/1.1\r\n\r\n", "HTTP/1", id="http1-post"),
    pytest.param(_HTTP2, "HTTP/2", id="http2-preface"),
    pytest.param(_TLS, "TLS", id="tls-client-hello"),
    pytest.param(_TLS[:1], "TLS", id="tls-first-byte-only"),
    pytest.param(_H2_SETTINGS, "grpc://", id="http2-server-settings"),
    pytest.param(b"HTTP/1.1 400 Bad Request\r\n\r\n", "answered in HTTP/1", id="http1-response"),
    pytest.param(b"\x15\x03\x03\x00\x02\x02\x46", "TLS", id="tls-alert"),
    pytest.param(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "not a lanerpc peer", id="zeros"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", "not a lanerpc peer", id="ssh"),
    pytest.param(b"LNRPC\r\n\x01", "not a lanerpc peer", id="magic-wrong-last-byte"),
])
def test_wrong_preface_is_refused_with_a_helpful_reason(data, hint):
    decoder = FrameDecoder()
    decoder.feed(data)
    with pytest.raises(ProtocolError, match=re.escape(hint)):
        _all_frames(decoder)


def test_partial_magic_waits_for_more():
    decoder = FrameDecoder()
    for i in range(len(MAGIC)):
        decoder.feed(MAGIC[i:i + 1])
        assert _all_frames(decoder) == []
    decoder.feed(_wire.frame(_wire.PING, 0, 0, b"abcdefgh"))
    assert _all_frames(decoder) == [(_wire.PING, 0, 0, b"abcdefgh")]


@pytest.mark.parametrize("data, hint", [(_HTTP1, "HTTP/1"), (_HTTP2, "HTTP/2"),
                                        (_H2_SETTINGS, "grpc://")],
                         ids=["http1", "http2", "http2-server"])
def test_wrong_preface_reason_does_not_depend_on_how_bytes_are_split(data, hint):
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        for i in range(len(data)):
            decoder.feed(data[i:i + 1])
            _all_frames(decoder)
    assert hint in str(info.value)
