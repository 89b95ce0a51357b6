"""The lanerpc frame codec: bytes <-> frames, bounded. No I/O, no asyncio.

The layout is written down in docs/wire-protocol.md; this module is its only
implementation. Every parse either returns a value or raises
:class:`ProtocolError`; every length is checked before anything is allocated.
"""

from __future__ import annotations

import enum
import struct
from typing import Iterable, Sequence

# Sent first by both sides; an 8-byte magic that no HTTP/1, HTTP/2 or TLS peer
# sends, so a wrong dial fails at the first byte with a clear reason.
MAGIC = b"LNRPC\r\n\x00"
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

HEADER = struct.Struct(">IBBI")   # payload length, type, flags, stream id
HEADER_SIZE = HEADER.size          # 10 bytes

# The largest frame payload any peer may announce, and the default. A header that
# announces more than the receiver's limit is refused before the payload is read.
MAX_FRAME_SIZE_LIMIT = 16 * 1024 * 1024
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024
DEFAULT_STREAM_WINDOW = 4 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 16 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_STREAMS = 1024
DEFAULT_MAX_METADATA_SIZE = 16 * 1024   # gRPC's default soft limit is 8 KiB; hard 16 KiB
# Until the peer's HELLO has been read, no frame may be longer than this: a HELLO
# is tiny (the largest, a server's with an upgrade offer and an shm offer, is under
# 1 KiB), so a peer that has not yet said who it is can't make us hold a full frame.
MAX_HANDSHAKE_FRAME_SIZE = 16 * 1024
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**32 - 1
MAX_TIMEOUT_US = 2**63 - 1


class FrameType(enum.IntEnum):
    HELLO = 0
    HEADERS = 1
    MESSAGE = 2
    TRAILERS = 3
    CANCEL = 4
    WINDOW_UPDATE = 5
    PING = 6
    GOAWAY = 7
    LANE = 8


# Flags. Their meaning depends on the frame type (docs/wire-protocol.md).
FLAG_END_STREAM = 0x01   # HEADERS, MESSAGE from the client: no more messages follow
FLAG_MORE = 0x02         # MESSAGE: more chunks of this message follow
FLAG_NO_MESSAGE = 0x04   # MESSAGE: carries no message, only END_STREAM (a bare half-close)
FLAG_WITH_MESSAGE = 0x08  # HEADERS (client) / TRAILERS (server): a whole message rides along,
                          # first in the payload as u32 length + bytes (one frame per unary leg)
# MESSAGE, and HEADERS / TRAILERS with WITH_MESSAGE: how the message is compressed, as
# (flags & ENCODING_MASK) >> ENCODING_SHIFT: 0 identity, 1 deflate, 2 gzip (3: invalid).
ENCODING_SHIFT = 4
ENCODING_MASK = 0x30
FLAG_ACK = 0x01          # PING: this is the answer
FLAG_NOT_STARTED = 0x01  # CANCEL from the server: the call never reached a handler

HELLO, HEADERS, MESSAGE, TRAILERS, CANCEL, WINDOW_UPDATE, PING, GOAWAY, LANE = (
    int(t) for t in FrameType
)
# What a LANE frame may name (client: the lane it moves to; server: the lane granted).
LANES_SWITCHABLE = ("shm", "unix")
_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


class GoAwayCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    ENHANCE_YOUR_CALM = 3      # too many pings
    UNSUPPORTED_VERSION = 4
    HANDSHAKE_TIMEOUT = 5
    PERMISSION_DENIED = 6


class ProtocolError(Exception):
    """The peer broke the wire protocol; the connection cannot go on."""

    def __init__(self, reason: str, code: GoAwayCode = GoAwayCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.code = code


# --------------------------------------------------------------------- encoding

_pack_header = HEADER.pack
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_TRAILER_HEAD = struct.Struct(">II")   # status code, details length
_REQUEST_HEAD = struct.Struct(">QH")   # timeout in µs (0 = none), method length
_GOAWAY_HEAD = struct.Struct(">II")    # last stream id, code
_CANCEL_HEAD = struct.Struct(">I")     # status code

Metadata = Sequence[tuple[str, "str | bytes"]]
DecodedMetadata = tuple[tuple[str, "str | bytes"], ...]   # what decode_metadata returns


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One whole frame, header and payload, as one bytes object (small frames)."""
    return _pack_header(len(payload), ftype, flags, stream_id) + payload


def frame_header(ftype: int, flags: int, stream_id: int, length: int) -> bytes:
    return _pack_header(length, ftype, flags, stream_id)


def encode_metadata(metadata: Metadata | None) -> bytes:
    """u16 count, then per entry: u16 key length, key, u32 value length, value.

    Keys are ASCII and lowercase (gRPC's rule); keys ending in ``-bin`` carry
    bytes, all others printable ASCII strings.
    """
    if not metadata:
        return b"\x00\x00"
    parts = [_U16.pack(len(metadata))]
    append = parts.append
    for key, value in metadata:
        kb = key.encode("ascii") if isinstance(key, str) else bytes(key)
        if isinstance(value, str):
            vb = value.encode("utf-8")
        else:
            vb = bytes(value)
        append(_U16.pack(len(kb)))
        append(kb)
        append(_U32.pack(len(vb)))
        append(vb)
    return b"".join(parts)


def decode_metadata(buf: bytes | memoryview, offset: int = 0) -> tuple[DecodedMetadata, int]:
    """Parse a metadata block at ``offset``; returns (entries, offset after it)."""
    end = len(buf)
    if offset + 2 == end and buf[offset] == 0 and buf[offset + 1] == 0:
        return (), end      # the common case: no metadata
    if offset + 2 > end:
        raise ProtocolError("metadata block truncated")
    (count,) = _U16.unpack_from(buf, offset)
    offset += 2
    out: list[tuple[str, str | bytes]] = []
    for _ in range(count):
        if offset + 2 > end:
            raise ProtocolError("metadata key length truncated")
        (klen,) = _U16.unpack_from(buf, offset)
        offset += 2
        if klen == 0 or offset + klen + 4 > end:
            raise ProtocolError("metadata key truncated or empty")
        kraw = bytes(buf[offset:offset + klen])
        offset += klen
        (vlen,) = _U32.unpack_from(buf, offset)
        offset += 4
        if offset + vlen > end:
            raise ProtocolError("metadata value length beyond the frame")
        vraw = bytes(buf[offset:offset + vlen])
        offset += vlen
        try:
            key = kraw.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("metadata key is not ASCII") from None
        if key.endswith("-bin"):
            out.append((key, vraw))
        else:
            try:
                out.append((key, vraw.decode("utf-8")))
            except UnicodeDecodeError:
                raise ProtocolError(f"metadata value of {key!r} is not text") from None
    return tuple(out), offset


def encode_request_headers(method: str, timeout_us: int, metadata: Metadata | None) -> bytes:
    return encode_request_headers_block(method, timeout_us, encode_metadata(metadata))


def encode_request_headers_block(method: str, timeout_us: int, block: bytes) -> bytes:
    mb = method.encode("utf-8")
    return _REQUEST_HEAD.pack(timeout_us, len(mb)) + mb + block


def decode_request_headers(payload: bytes) -> tuple[str, int, DecodedMetadata]:
    if len(payload) < _REQUEST_HEAD.size:
        raise ProtocolError("request headers truncated")
    timeout_us, mlen = _REQUEST_HEAD.unpack_from(payload, 0)
    start = _REQUEST_HEAD.size
    if mlen == 0 or start + mlen > len(payload):
        raise ProtocolError("request method truncated or empty")
    try:
        method = payload[start:start + mlen].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("request method is not UTF-8") from None
    if timeout_us > MAX_TIMEOUT_US:
        raise ProtocolError("request timeout out of range")
    metadata, end = decode_metadata(payload, start + mlen)
    if end != len(payload):
        raise ProtocolError("trailing bytes after request headers")
    return method, timeout_us, metadata


def split_message(payload: bytes) -> tuple[bytes, bytes]:
    """A WITH_MESSAGE payload -> (the message, the headers or trailers after it)."""
    if len(payload) < 4:
        raise ProtocolError("frame with a message too short for its length")
    (size,) = _U32.unpack_from(payload, 0)
    if size > len(payload) - 4:
        raise ProtocolError("message length beyond the frame")
    return payload[4:4 + size], payload[4 + size:]


def encode_trailers(code: int, details: str, metadata: Metadata | None) -> bytes:
    db = details.encode("utf-8") if details else b""
    return _TRAILER_HEAD.pack(code, len(db)) + db + encode_metadata(metadata)


_BARE_TRAILERS = tuple(_TRAILER_HEAD.pack(code, 0) + b"\x00\x00" for code in range(17))


def bare_trailers(code: int) -> bytes:
    """Trailers with no details and no metadata (precomputed: most calls end so)."""
    return _BARE_TRAILERS[code] if 0 <= code <= 16 else encode_trailers(code, "", None)


def decode_trailers(payload: bytes) -> tuple[int, str, DecodedMetadata]:
    if len(payload) == 10 and payload[4:] == b"\x00\x00\x00\x00\x00\x00":
        (code,) = _U32.unpack_from(payload, 0)
        if code > 16:
            raise ProtocolError(f"status code {code} out of range")
        return code, "", ()
    if len(payload) < _TRAILER_HEAD.size:
        raise ProtocolError("trailers truncated")
    code, dlen = _TRAILER_HEAD.unpack_from(payload, 0)
    start = _TRAILER_HEAD.size
    if start + dlen > len(payload):
        raise ProtocolError("trailers details beyond the frame")
    if code > 16:
        raise ProtocolError(f"status code {code} out of range")
    try:
        details = payload[start:start + dlen].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("trailers details are not UTF-8") from None
    metadata, end = decode_metadata(payload, start + dlen)
    if end != len(payload):
        raise ProtocolError("trailing bytes after trailers")
    return code, details, metadata


def encode_cancel(code: int, details: str = "") -> bytes:
    return _CANCEL_HEAD.pack(code) + details.encode("utf-8")


def decode_cancel(payload: bytes) -> tuple[int, str]:
    if len(payload) < 4:
        raise ProtocolError("cancel truncated")
    (code,) = _CANCEL_HEAD.unpack_from(payload, 0)
    if code > 16:
        raise ProtocolError(f"status code {code} out of range")
    try:
        return code, payload[4:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("cancel details are not UTF-8") from None


def encode_goaway(last_stream_id: int, code: int, reason: str) -> bytes:
    return _GOAWAY_HEAD.pack(last_stream_id, code) + reason.encode("utf-8")[:1024]


def decode_goaway(payload: bytes) -> tuple[int, int, str]:
    if len(payload) < 8:
        raise ProtocolError("goaway truncated")
    last, code = _GOAWAY_HEAD.unpack_from(payload, 0)
    return last, code, payload[8:].decode("utf-8", errors="replace")


def decode_lane(payload: bytes) -> str:
    try:
        lane = payload.decode("ascii")
    except UnicodeDecodeError:
        lane = ""
    if lane not in LANES_SWITCHABLE:
        raise ProtocolError(f"LANE frame names an unknown lane {payload[:16]!r}")
    return lane


pack_u32 = _U32.pack


def encode_window_update(increment: int) -> bytes:
    return _U32.pack(increment)


def decode_window_update(payload: bytes) -> int:
    if len(payload) != 4:
        raise ProtocolError("window update must carry 4 bytes")
    inc: int
    (inc,) = _U32.unpack(payload)
    if inc == 0 or inc > MAX_WINDOW:
        raise ProtocolError(f"window increment {inc} out of range")
    return inc


# --------------------------------------------------------------------- decoding

class FrameDecoder:
    """Splits a byte stream into frames.

    ``feed(data)`` then iterate ``frames()``: yields ``(type, flags, stream_id,
    payload)`` tuples. The magic preface is checked first. A header whose length
    exceeds ``max_frame_size`` raises before the payload is buffered, so a
    2**32-1 length costs nothing. While ``handshake_limit`` is set (the owner clears
    it once the peer's HELLO has been read), a header longer than it raises too.

    Small frames are cut out of one bytearray. A large payload still arriving
    is collected as a list of the received pieces and joined once when whole,
    so its bytes are copied once here, not once per arrival.
    """

    __slots__ = ("_buf", "_pos", "max_frame_size", "_magic_pending", "_big", "_big_chunks",
                 "_big_need", "handshake_limit")

    BIG = 64 * 1024

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, expect_magic: bool = True,
                 handshake_limit: int | None = None) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame_size = max_frame_size
        self.handshake_limit = handshake_limit
        self._magic_pending = expect_magic
        self._big: tuple[int, int, int] | None = None   # (type, flags, stream) being collected
        self._big_chunks: list[bytes | bytearray | memoryview] = []
        self._big_need = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos + sum(map(len, self._big_chunks))

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._big is not None and self._big_need:
            need = self._big_need
            if len(data) <= need:
                self._big_chunks.append(data)
                self._big_need = need - len(data)
                return
            view = memoryview(data)
            self._big_chunks.append(view[:need])
            self._big_need = 0
            data = view[need:]
        buf = self._buf
        if self._pos and self._pos == len(buf):
            buf.clear()
            self._pos = 0
        buf += data

    def frames(self) -> Iterable[tuple[int, int, int, bytes]]:
        buf = self._buf
        if self._magic_pending:
            have = len(buf) - self._pos
            n = min(have, len(MAGIC))
            if bytes(buf[self._pos:self._pos + n]) != MAGIC[:n]:
                # Describe the peer the same however its bytes were split: wait
                # while they could still become a request line we can name (a
                # peer that stops short is closed by the handshake timer).
                head = bytes(buf[self._pos:self._pos + 16])
                if any(len(head) < len(known) and known.startswith(head) for known in _NAMED_PREFACES):
                    return
                if head[:1] == b"\x00" and len(head) < _H2_FRAME_HEADER:
                    return   # could be an HTTP/2 server's first frame header
                raise ProtocolError(_describe_wrong_preface(bytes(buf[self._pos:self._pos + 24])))
            if have < len(MAGIC):
                return
            self._pos += len(MAGIC)
            self._magic_pending = False
        if self._big is not None:
            if self._big_need:
                return
            ftype, flags, sid = self._big
            payload = b"".join(self._big_chunks)
            self._big = None
            self._big_chunks = []
            yield ftype, flags, sid, payload
        pos = self._pos
        end = len(buf)
        limit = self.max_frame_size
        if self.handshake_limit is not None:
            limit = min(limit, self.handshake_limit)
        unpack = HEADER.unpack_from
        try:
            while end - pos >= HEADER_SIZE:
                length, ftype, flags, sid = unpack(buf, pos)
                if length > limit:
                    # Checked again here, off the hot path: the owner may have
                    # cleared handshake_limit since the loop began (a client that
                    # reads on past the server's HELLO).
                    early = self.handshake_limit
                    if early is not None and length > early:
                        raise ProtocolError(f"frame of {length} bytes before the handshake; "
                                            f"at most {early}")
                    limit = self.max_frame_size
                    if length > limit:
                        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {limit}")
                if ftype not in _KNOWN_TYPES:
                    raise ProtocolError(f"unknown frame type {ftype}")
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    if length >= self.BIG:
                        # Collect the rest as it arrives (see feed), starting
                        # with what is here already.
                        self._big = (ftype, flags, sid)
                        self._big_chunks = [bytes(buf[start:end])]
                        self._big_need = stop - end
                        pos = end
                        self._pos = pos
                    break
                payload = bytes(buf[start:stop])
                pos = stop
                self._pos = pos
                yield ftype, flags, sid, payload
        finally:
            # Compact once most of the buffer is consumed, so it never grows
            # beyond one frame plus what arrived with it.
            if self._pos == len(buf):
                buf.clear()
                self._pos = 0
            elif self._pos > 65536 and self._pos * 2 > len(buf):
                del buf[:self._pos]
                self._pos = 0


_HTTP1_METHODS = (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE")
_NAMED_PREFACES = (b"PRI * HTTP/2.0", b"HTTP/1.") + _HTTP1_METHODS
_H2_FRAME_HEADER = 9    # an HTTP/2 server speaks first with a SETTINGS frame


def _describe_wrong_preface(head: bytes) -> str:
    """Name the peer that sent ``head`` instead of lanerpc's magic, and what to do."""
    if head.startswith(b"PRI * HTTP/2.0"):
        return ("peer speaks HTTP/2 (a gRPC client?), not lanerpc; this port takes gRPC "
                "clients only with lanerpc.grpc_on_lanerpc_ports on (the default), a grpc:// "
                "port always (server.add_insecure_port('grpc://...'))")
    if len(head) >= _H2_FRAME_HEADER and head[3] == 0x04 and head[5:9] == b"\x00" * 4:
        return ("peer speaks HTTP/2 (a plain gRPC server?), not lanerpc; dial it as "
                "grpc://host:port or with the option ('lanerpc.protocol', 'grpc')")
    if head[:1] in (b"\x15", b"\x16"):
        return ("peer speaks TLS, not lanerpc: a TLS port is served and dialed through "
                "add_secure_port / rpc.secure_channel")
    if head[:4] in _HTTP1_METHODS:
        return "peer sent an HTTP/1 request, not lanerpc"
    if head.startswith(b"HTTP/1."):
        return "peer answered in HTTP/1, not lanerpc"
    return f"bad preface {head[:16]!r}: not a lanerpc peer"
