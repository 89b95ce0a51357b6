"""The lanerpc frame codec: bytes <-> frames, bounded. No I/O, no asyncio.

The layout is written down in docs/wire-protocol.md; this module is its only
implementation. Every parse either returns a value or raises
:class:`ProtocolError`; every length is checked before anything is allocated.
"""

from __future__ import annotations

import enum
import struct
from typing import Callable, Iterator, Sequence

try:
    import cython  # type: ignore[import-untyped]
    # True in the compiled build: there, a few hot spots read bytes in place
    # through C pointers (typed in _wire.pxd); the source runs the plain-Python way.
    _TYPED: bool = cython.compiled
except ImportError:       # Cython is not installed: this runs as plain Python
    _TYPED = False

# True when this module runs as the extension setup.py compiles from this source
# (rpc._compiled says which runs, and how to force the source).
COMPILED: bool = not __file__.endswith(".py")

# Sent first by both sides; an 8-byte magic that no HTTP/1, HTTP/2 or TLS peer
# sends, so a wrong dial fails at the first byte with a clear reason.
MAGIC = b"LNRPC\r\n\x00"
# Version 2 adds MESSAGE's SIZE flag (a big message's length, announced before its
# chunks); a version 1 peer never sees it.
PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

HEADER = struct.Struct(">IBBI")   # payload length, type, flags, stream id
HEADER_SIZE = HEADER.size          # 10 bytes
HEADER_AND_SIZE = struct.Struct(">IBBII")   # and a WITH_MESSAGE payload's message length

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
FLAG_SIZE = 0x40         # MESSAGE (version 2): the payload is the u32 length of the message whose
                         # chunks follow; no message bytes, counts against no window
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
# The types are 0..LANE with no gap: a decoder checks a type with one comparison.
_LAST_TYPE = int(max(FrameType))
assert sorted(FrameType) == list(range(_LAST_TYPE + 1))


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
_unpack_header = HEADER.unpack_from
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_TRAILER_HEAD = struct.Struct(">II")   # status code, details length
_REQUEST_HEAD = struct.Struct(">QH")   # timeout in µs (0 = none), method length
_GOAWAY_HEAD = struct.Struct(">II")    # last stream id, code
_CANCEL_HEAD = struct.Struct(">I")     # status code

# A frame's payload, or a message: bytes when cut out of the receive buffer, a
# bytearray (or a view of one) when read straight into memory of its own.
Buffer = bytes | bytearray | memoryview

# A message sent in chunks is announced (FLAG_SIZE) from this size on: the peer then
# reads it into one buffer of its size. Smaller ones are not worth a frame more.
ANNOUNCE_FROM = 64 * 1024

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


def decode_metadata(buf: Buffer, offset: int = 0) -> tuple[DecodedMetadata, int]:
    """Parse a metadata block at ``offset``; returns (entries, offset after it)."""
    end = len(buf)
    if offset + 2 == end and buf[offset] == 0 and buf[offset + 1] == 0:
        return (), end      # the common case: no metadata
    if offset + 2 > end:
        raise ProtocolError("metadata block truncated")
    if _TYPED and type(buf) is not memoryview:
        return _decode_metadata_in_place(buf, offset, end)
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


def _decode_metadata_in_place(buf: bytes | bytearray, offset: int, end: int
                              ) -> tuple[DecodedMetadata, int]:
    """decode_metadata's work in the compiled build: lengths read and keys and values
    cut straight from the bytes (C pointers, typed in _wire.pxd); the same checks."""
    at = buf
    count = (at[offset] << 8) | at[offset + 1]
    offset += 2
    out: list[tuple[str, str | bytes]] = []
    for _ in range(count):
        if offset + 2 > end:
            raise ProtocolError("metadata key length truncated")
        klen = (at[offset] << 8) | at[offset + 1]
        offset += 2
        if klen == 0 or offset + klen + 4 > end:
            raise ProtocolError("metadata key truncated or empty")
        kraw = at[offset:offset + klen]
        offset += klen
        vlen = at[offset]
        vlen = (vlen << 8) | at[offset + 1]
        vlen = (vlen << 8) | at[offset + 2]
        vlen = (vlen << 8) | at[offset + 3]
        offset += 4
        if offset + vlen > end:
            raise ProtocolError("metadata value length beyond the frame")
        vraw = at[offset:offset + vlen]
        offset += vlen
        try:
            key = kraw.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("metadata key is not ASCII") from None
        if key.endswith("-bin"):
            out.append((key, bytes(vraw)))     # (bytes already when compiled: no copy)
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


def decode_request_headers(payload: bytes | bytearray) -> tuple[str, int, DecodedMetadata]:
    if len(payload) < 10:
        raise ProtocolError("request headers truncated")
    start = 10
    if _TYPED:
        at = payload
        timeout_us = 0
        for i in range(8):
            timeout_us = (timeout_us << 8) | at[i]
        mlen = (at[8] << 8) | at[9]
        if mlen == 0 or start + mlen > len(payload):
            raise ProtocolError("request method truncated or empty")
        method_bytes = at[start:start + mlen]
    else:
        timeout_us, mlen = _REQUEST_HEAD.unpack_from(payload, 0)
        if mlen == 0 or start + mlen > len(payload):
            raise ProtocolError("request method truncated or empty")
        method_bytes = payload[start:start + mlen]
    try:
        method = method_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("request method is not UTF-8") from None
    if timeout_us > MAX_TIMEOUT_US:
        raise ProtocolError("request timeout out of range")
    metadata, end = decode_metadata(payload, start + mlen)
    if end != len(payload):
        raise ProtocolError("trailing bytes after request headers")
    return method, timeout_us, metadata


def split_message(payload: Buffer) -> tuple[Buffer, bytes]:
    """A WITH_MESSAGE payload -> (the message, the headers or trailers after it).
    The message of a big frame (not bytes: read into memory of its own) is a view
    of it, not a copy."""
    if len(payload) < 4:
        raise ProtocolError("frame with a message too short for its length")
    if type(payload) is bytes:
        if _TYPED:
            at = payload
            size = at[0]
            size = (size << 8) | at[1]
            size = (size << 8) | at[2]
            size = (size << 8) | at[3]
            if size > len(payload) - 4:
                raise ProtocolError("message length beyond the frame")
            return at[4:4 + size], at[4 + size:len(payload)]
        (size,) = _U32.unpack_from(payload, 0)
        if size > len(payload) - 4:
            raise ProtocolError("message length beyond the frame")
        return payload[4:4 + size], payload[4 + size:]
    (size,) = _U32.unpack_from(payload, 0)
    if size > len(payload) - 4:
        raise ProtocolError("message length beyond the frame")
    view = memoryview(payload)
    return view[4:4 + size], bytes(view[4 + size:])


def decode_message_size(payload: Buffer) -> int:
    """A SIZE announcement's payload: the message's length, at least 1."""
    if len(payload) != 4:
        raise ProtocolError("a message size announcement must carry 4 bytes")
    size: int
    (size,) = _U32.unpack_from(payload, 0)
    if size == 0:
        raise ProtocolError("an announced message size must be at least 1")
    return size


def encode_trailers(code: int, details: str, metadata: Metadata | None) -> bytes:
    db = details.encode("utf-8") if details else b""
    return _TRAILER_HEAD.pack(code, len(db)) + db + encode_metadata(metadata)


_BARE_TRAILERS = tuple(_TRAILER_HEAD.pack(code, 0) + b"\x00\x00" for code in range(17))


def bare_trailers(code: int) -> bytes:
    """Trailers with no details and no metadata (precomputed: most calls end so)."""
    return _BARE_TRAILERS[code] if 0 <= code <= 16 else encode_trailers(code, "", None)


def decode_trailers(payload: bytes | bytearray) -> tuple[int, str, DecodedMetadata]:
    if _TYPED and len(payload) == 10 and type(payload) is bytes:
        at = payload
        if (at[4] | at[5] | at[6] | at[7] | at[8] | at[9]) == 0:
            if at[0] | at[1] | at[2] or at[3] > 16:
                raise ProtocolError(f"status code {_U32.unpack_from(payload, 0)[0]} out of range")
            return at[3], "", ()
    elif len(payload) == 10 and payload[4:] == b"\x00\x00\x00\x00\x00\x00":
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


def decode_cancel(payload: bytes | bytearray) -> tuple[int, str]:
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


def decode_goaway(payload: bytes | bytearray) -> tuple[int, int, str]:
    if len(payload) < 8:
        raise ProtocolError("goaway truncated")
    last, code = _GOAWAY_HEAD.unpack_from(payload, 0)
    return last, code, payload[8:].decode("utf-8", errors="replace")


def decode_lane(payload: bytes | bytearray) -> str:
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


def decode_window_update(payload: bytes | bytearray) -> int:
    if len(payload) != 4:
        raise ProtocolError("window update must carry 4 bytes")
    inc: int
    (inc,) = _U32.unpack(payload)
    if inc == 0 or inc > MAX_WINDOW:
        raise ProtocolError(f"window increment {inc} out of range")
    return inc


# --------------------------------------------------------------------- decoding

# Where a big frame's payload goes: given the header (type, flags, stream id, length)
# of a frame about to be read straight into memory, a writable view of exactly
# ``length`` bytes (the frame's place in a message being assembled), or None for a
# buffer of its own. It may raise ProtocolError.
FrameSink = Callable[[int, int, int, int], "memoryview | None"]


class FrameDecoder:
    """Splits a byte stream into frames.

    Bytes come in one of two ways: the owner reads straight into the buffer
    :meth:`get_buffer` lends and reports how many arrived with
    :meth:`buffer_updated` (an ``asyncio.BufferedProtocol``: the kernel writes
    into our memory, no bytes object per read), or :meth:`feed` copies them in.
    Then iterate :meth:`frames` (given the owner's ``sink``, below): it yields
    ``(type, flags, stream_id, payload)``.
    The magic preface is checked first. A header whose length exceeds
    ``max_frame_size`` raises before the payload is buffered, so a 2**32-1 length
    costs nothing. While ``handshake_limit`` is set (the owner clears it once the
    peer's HELLO has been read), a header longer than it raises too.

    Small frames are cut out of one receive buffer, reused from read to read
    (their payloads are ``bytes``). A frame of at least ``DIRECT`` bytes that is
    not all here yet is read straight into the memory it ends up in: the view
    ``sink`` returns for it (its place in the message being assembled), else a
    bytearray of its length, which is the payload then. Either way its bytes are
    copied once, by the kernel, and never joined from pieces.
    """

    __slots__ = ("_buf", "_view", "_pos", "_end", "_offered", "_filled_all", "max_frame_size",
                 "_magic_pending", "_big_header", "_big_target", "_big_payload", "_big_filled",
                 "handshake_limit", "frame_type", "frame_flags", "frame_stream")

    DIRECT = 64 * 1024
    # The receive buffer starts small (an idle connection holds little) and doubles,
    # up to _BUSY, while reads keep filling all of it; frames under DIRECT always fit.
    _START = 16 * 1024
    _BUSY = 256 * 1024

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, expect_magic: bool = True,
                 handshake_limit: int | None = None) -> None:
        self._buf = bytearray(self._START)
        self._view = memoryview(self._buf)
        self._pos = 0             # the first byte not parsed yet
        self._end = 0             # the end of what arrived
        self._offered = 0         # the size of the space get_buffer lent last
        self._filled_all = False  # and the read filled all of it
        self.max_frame_size = max_frame_size
        self.handshake_limit = handshake_limit
        self._magic_pending = expect_magic
        # A big frame being read straight into _big_target: its header, the payload
        # yielded for it (the target, or the bytearray the target views), bytes in.
        self._big_header = (0, 0, 0)
        self._big_target: memoryview | None = None
        self._big_payload: bytearray | memoryview | None = None
        self._big_filled = 0
        # The header of the frame next_frame returned last.
        self.frame_type = 0
        self.frame_flags = 0
        self.frame_stream = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as frames."""
        return self._end - self._pos + self._big_filled

    # ------------------------------------------------------------ bytes in

    def get_buffer(self) -> memoryview:
        """Where the next bytes may be written: the rest of a big frame, else the
        free end of the receive buffer (never empty)."""
        target = self._big_target
        if target is not None and self._big_filled < len(target):
            view = target[self._big_filled:]
        else:
            if self._end == len(self._buf):
                self._make_room(0)
            view = self._view[self._end:]
        self._offered = len(view)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last :meth:`get_buffer`."""
        if self._big_target is not None and self._big_filled < len(self._big_target):
            self._big_filled += nbytes
        else:
            self._end += nbytes
            self._filled_all = nbytes >= self._offered

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in (for a transport that hands bytes over)."""
        view = memoryview(data)
        target = self._big_target
        if target is not None:
            filled = self._big_filled
            n = min(len(target) - filled, len(view))
            if n:
                target[filled:filled + n] = view[:n]
                self._big_filled = filled + n
                view = view[n:]
        size = len(view)
        if size:
            if self._end + size > len(self._buf):
                self._make_room(size)
            self._view[self._end:self._end + size] = view
            self._end += size

    def scratch(self) -> memoryview:
        """A buffer to read into and ignore (once the connection is over)."""
        return self._view

    def _make_room(self, need: int) -> None:
        """At least ``need`` free bytes (at least one) after the unparsed ones: move
        them to the front, or into a bigger buffer when they don't fit or the last
        read filled all the space it was lent (more was waiting). The buffer is never
        resized in place: a reader may still hold a view of it."""
        pos, end = self._pos, self._end
        have = end - pos
        size = len(self._buf)
        want = have + max(need, 1)
        if want > size or (self._filled_all and size < self._BUSY):
            buf = bytearray(max(want, min(size * 2, self._BUSY)))
            buf[:have] = self._view[pos:end]
            self._buf = buf
            self._view = memoryview(buf)
        elif pos:
            # (A partial frame: small. Copied out first where the two places overlap.)
            self._view[:have] = self._view[pos:end] if have <= pos else bytes(self._view[pos:end])
        self._pos, self._end = 0, have

    # ------------------------------------------------------------ frames out

    def frames(self, sink: FrameSink | None = None
               ) -> Iterator[tuple[int, int, int, bytes | bytearray | memoryview]]:
        """The whole frames buffered, as ``(type, flags, stream_id, payload)``."""
        while True:
            payload = self.next_frame(sink)
            if payload is None:
                return
            yield self.frame_type, self.frame_flags, self.frame_stream, payload

    def next_frame(self, sink: FrameSink | None = None) -> bytes | bytearray | memoryview | None:
        """The payload of the next whole frame, its header in :attr:`frame_type`,
        :attr:`frame_flags` and :attr:`frame_stream`; None when no whole frame is
        buffered (a big one may have begun to be read into its place: ``sink``).
        The loop a connection runs per read: no generator, no tuple per frame."""
        if self._magic_pending and not self._magic_read():
            return None
        if self._big_target is not None:
            return self._big_frame()
        pos = self._pos
        end = self._end
        if end - pos < HEADER_SIZE:
            if pos == end and pos:
                self._pos = self._end = 0
            return None
        buf = self._buf
        if _TYPED:
            # Compiled: the header's fields read in place (no struct call, no tuple).
            at = buf
            length = at[pos]
            length = (length << 8) | at[pos + 1]
            length = (length << 8) | at[pos + 2]
            length = (length << 8) | at[pos + 3]
            ftype = at[pos + 4]
            flags = at[pos + 5]
            sid = at[pos + 6]
            sid = (sid << 8) | at[pos + 7]
            sid = (sid << 8) | at[pos + 8]
            sid = (sid << 8) | at[pos + 9]
        else:
            length, ftype, flags, sid = _unpack_header(buf, pos)
        limit = self.max_frame_size
        early = self.handshake_limit
        if early is not None and early < limit:
            limit = early
        if length > limit:
            if early is not None and length > early:
                raise ProtocolError(f"frame of {length} bytes before the handshake; "
                                    f"at most {early}")
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {limit}")
        if ftype > _LAST_TYPE:
            raise ProtocolError(f"unknown frame type {ftype}")
        start = pos + HEADER_SIZE
        stop = start + length
        if stop > end:
            if length >= self.DIRECT:
                self._read_direct(ftype, flags, sid, length, start, sink)
            return None
        payload: bytes | bytearray
        if _TYPED:
            payload = at[start:stop]        # one bytes object, copied from the buffer
        else:
            payload = bytes(self._view[start:stop])
        self.frame_type = ftype
        self.frame_flags = flags
        self.frame_stream = sid
        if stop == end:
            # All parsed: the next read starts at the front again.
            self._pos = self._end = 0
            if len(buf) > self._BUSY:      # grown by a big feed: let it go
                self._buf = bytearray(self._START)
                self._view = memoryview(self._buf)
        else:
            self._pos = stop
        return payload

    def _magic_read(self) -> bool:
        """Whether the peer's magic preface has been read (checked as it arrives)."""
        buf = self._buf
        have = self._end - self._pos
        n = min(have, len(MAGIC))
        if bytes(buf[self._pos:self._pos + n]) != MAGIC[:n]:
            # Describe the peer the same however its bytes were split: wait
            # while they could still become a request line we can name (a
            # peer that stops short is closed by the handshake timer).
            head = bytes(buf[self._pos:min(self._pos + 16, self._end)])
            if any(len(head) < len(known) and known.startswith(head) for known in _NAMED_PREFACES):
                return False
            if head[:1] == b"\x00" and len(head) < _H2_FRAME_HEADER:
                return False   # could be an HTTP/2 server's first frame header
            raise ProtocolError(_describe_wrong_preface(
                bytes(buf[self._pos:min(self._pos + 24, self._end)])))
        if have < len(MAGIC):
            return False
        self._pos += len(MAGIC)
        self._magic_pending = False
        return True

    def _big_frame(self) -> bytearray | memoryview | None:
        """The big frame being read into its own memory, once all of it is in."""
        target = self._big_target
        assert target is not None and self._big_payload is not None
        if self._big_filled < len(target):
            return None
        self.frame_type, self.frame_flags, self.frame_stream = self._big_header
        big = self._big_payload
        self._big_target = self._big_payload = None
        self._big_filled = 0
        return big

    def _read_direct(self, ftype: int, flags: int, sid: int, length: int, start: int,
                     sink: FrameSink | None) -> None:
        """The frame at ``start`` is big and not all here: from now on its payload
        is read straight into its own memory, starting with the part already here."""
        target = sink(ftype, flags, sid, length) if sink is not None else None
        payload: bytearray | memoryview
        if target is None:
            payload = bytearray(length)
            target = memoryview(payload)
        else:
            if len(target) != length:
                raise ValueError("a frame sink must give exactly the frame's length")
            payload = target
        have = self._end - start
        target[:have] = self._view[start:self._end]
        self._big_header = (ftype, flags, sid)
        self._big_target = target
        self._big_payload = payload
        self._big_filled = have
        self._pos = self._end = 0


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
