"""The compiled codec decodes exactly as its source does.

A few hot spots of rpc._wire read bytes through a C pointer when compiled and through
``struct`` as plain Python. Here the compiled module and its ``.py`` source, loaded
beside it as a module of its own, are fed the same bytes (well-formed, cut short,
altered, random; as bytes and as bytearray): both give the same values, or both refuse
with the same reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpc import _wire

pytestmark = pytest.mark.skipif(
    not _wire.COMPILED, reason="the codec runs as its source here (not built, or LANERPC_PURE_PYTHON)")


def _load_source() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rpc._wire_source_for_tests", Path(_wire.__file__).with_name("_wire.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_source = _load_source() if _wire.COMPILED else _wire


def _outcome(decode: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "value", decode(*args)
    except Exception as exc:    # the two modules' ProtocolErrors are different classes
        return type(exc).__name__, str(exc)


def _same(name: str, *args: Any) -> None:
    compiled = _outcome(getattr(_wire, name), *args)
    source = _outcome(getattr(_source, name), *args)
    assert compiled == source, (name, args)
    assert compiled[0] in ("value", "ProtocolError"), compiled


_entry = st.one_of(
    st.tuples(st.text("abcxyz-_.0189", min_size=1, max_size=12).filter(lambda k: not k.endswith("-bin")),
              st.text(max_size=20)),
    st.tuples(st.text("abc-", max_size=8).map(lambda k: k + "-bin"), st.binary(max_size=20)),
)
_metadata = st.lists(_entry, max_size=5).map(tuple)


@st.composite
def _altered(draw: st.DrawFn, good: bytes) -> bytes:
    """``good`` as it is, cut short, with a byte changed, or with bytes after it."""
    how = draw(st.sampled_from(["as is", "cut", "changed", "longer"]))
    if how == "cut" and good:
        return good[:draw(st.integers(0, len(good) - 1))]
    if how == "changed" and good:
        at = draw(st.integers(0, len(good) - 1))
        return good[:at] + bytes([draw(st.integers(0, 255))]) + good[at + 1:]
    if how == "longer":
        return good + draw(st.binary(min_size=1, max_size=6))
    return good


@st.composite
def _payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["metadata", "request", "trailers", "message", "random"]))
    if kind == "metadata":
        good = _wire.encode_metadata(draw(_metadata))
    elif kind == "request":
        good = _wire.encode_request_headers(draw(st.text(max_size=20)),
                                            draw(st.integers(0, 2**64 - 1)), draw(_metadata))
    elif kind == "trailers":
        good = _wire.encode_trailers(draw(st.integers(0, 20)), draw(st.text(max_size=20)),
                                     draw(_metadata))
    elif kind == "message":
        message = draw(st.binary(max_size=30))
        good = _wire.pack_u32(len(message)) + message + draw(st.binary(max_size=10))
    else:
        good = draw(st.binary(max_size=60))
    return draw(_altered(good))


@settings(max_examples=400)
@given(_payloads(), st.booleans())
def test_payload_decoders_agree_with_the_source(payload: bytes, as_bytearray: bool) -> None:
    data: bytes | bytearray = bytearray(payload) if as_bytearray else payload
    _same("decode_metadata", data)
    _same("decode_metadata", data, min(2, len(data)))
    _same("decode_request_headers", data)
    _same("decode_trailers", data)
    _same("split_message", data)


def _frames_of(module: ModuleType, data: bytes, cuts: list[int]) -> list[Any]:
    """What a decoder of ``module`` makes of ``data`` fed in pieces: the frames (header
    and payload, as next_frame gives them), then how it ended."""
    decoder = module.FrameDecoder(_wire.MAX_FRAME_SIZE_LIMIT, handshake_limit=64)
    got: list[Any] = []
    at = 0
    try:
        for cut in [*sorted(cuts), len(data)]:
            decoder.feed(data[at:cut])
            at = cut
            while (payload := decoder.next_frame()) is not None:
                got.append((decoder.frame_type, decoder.frame_flags, decoder.frame_stream,
                            bytes(payload)))
                if decoder.frame_type == _wire.HELLO:
                    decoder.handshake_limit = None
    except Exception as exc:
        got.append((type(exc).__name__, str(exc)))
    got.append(decoder.buffered)
    return got


_frame = st.tuples(st.integers(0, 10), st.integers(0, 255), st.integers(0, 2**32 - 1),
                   st.binary(max_size=80))


@settings(max_examples=300)
@given(st.lists(_frame, max_size=5), st.data())
def test_the_frame_decoder_agrees_with_the_source(frames: list[tuple[int, int, int, bytes]],
                                                  data: st.DataObject) -> None:
    stream = _wire.MAGIC + b"".join(
        _wire.HEADER.pack(len(payload), ftype, flags, sid) + payload
        for ftype, flags, sid, payload in frames)
    stream = data.draw(_altered(stream))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=4))
    assert _frames_of(_wire, stream, cuts) == _frames_of(_source, stream, cuts)
