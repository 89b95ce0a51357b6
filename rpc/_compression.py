"""Message compression as gRPC does it: gzip and deflate, chosen per call, flagged per
message (docs/wire-protocol.md: the ENCODING bits of MESSAGE, and of HEADERS/TRAILERS
that carry a message). The numbers are ``grpc.Compression``'s: 0 identity, 1 deflate,
2 gzip.

Messages are compressed by the sender's call layer and decompressed only when the
application takes them (``rpc._stream``): what waits in a queue is the compressed bytes
the connection window already bounds, and decompression stops at the receive limit, so
a small message that inflates to gigabytes ends its call, nothing more."""

from __future__ import annotations

import zlib
from typing import Any

IDENTITY, DEFLATE, GZIP = 0, 1, 2
NAMES = {IDENTITY: "identity", DEFLATE: "deflate", GZIP: "gzip"}
_WBITS = {DEFLATE: zlib.MAX_WBITS, GZIP: zlib.MAX_WBITS | 16}   # zlib- and gzip-wrapped


# The metadata key grpc.aio turns a call's ``compression=`` into (so interceptors see it);
# lanerpc reads it off the call's metadata the same way and does not send it.
REQUEST_KEY = "grpc-internal-encoding-request"
_BY_NAME = {name: number for number, name in NAMES.items()}


def by_name(name: str | bytes) -> int:
    """The algorithm a metadata value names (``gzip``...); ValueError for another."""
    text = name.decode() if isinstance(name, bytes) else name
    try:
        return _BY_NAME[text]
    except KeyError:
        raise ValueError(f"{REQUEST_KEY}: unknown compression {text!r} (identity, deflate "
                         f"or gzip)") from None


class DecompressionError(Exception):
    """A message that can't be taken: ``code`` (a status number) and ``details``."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Compressed:
    """A received message still compressed, as it waits to be taken."""

    __slots__ = ("data", "encoding")

    def __init__(self, data: bytes, encoding: int) -> None:
        self.data = data
        self.encoding = encoding


def algorithm(compression: Any, where: str) -> int:
    """The algorithm number of a ``grpc.Compression`` (or its int); ValueError otherwise."""
    if compression is None:
        return IDENTITY
    value = getattr(compression, "value", compression)
    if isinstance(value, bool) or not isinstance(value, int) or value not in NAMES:
        raise ValueError(f"{where}: {compression!r} is not a grpc.Compression "
                         f"(NoCompression, Deflate or Gzip)")
    return value


def with_request_key(metadata: Any, compression: Any) -> tuple[tuple[str, str], ...]:
    """A call's metadata with its ``compression=`` added, as grpc.aio adds it."""
    number = algorithm(compression, "compression")
    return (*tuple(metadata or ()), (REQUEST_KEY, NAMES[number]))


def as_option(options: Any, compression: Any) -> Any:
    """Options with ``compression=`` as ``grpc.default_compression_algorithm``, as
    grpc.aio passes a channel's or server's ``compression=``."""
    if compression is None:
        return options
    number = algorithm(compression, "compression")
    return (*tuple(options or ()), ("grpc.default_compression_algorithm", number))


def compress(data: bytes, encoding: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
    return compressor.compress(data) + compressor.flush()


def decompress(data: bytes, encoding: int, limit: int, side: str) -> bytes:
    """``data`` inflated; DecompressionError (RESOURCE_EXHAUSTED) past ``limit`` bytes,
    (INTERNAL) when it is not valid for its algorithm."""
    decompressor = zlib.decompressobj(_WBITS[encoding])
    try:
        out = decompressor.decompress(data, limit + 1)
        if len(out) > limit:
            raise DecompressionError(8, f"{side}: Received message larger than max after "
                                        f"decompression (over {limit})")
        if decompressor.unconsumed_tail or decompressor.unused_data or not decompressor.eof:
            raise zlib.error("truncated or trailing data")
    except zlib.error as exc:
        raise DecompressionError(13, f"{side}: Failed to decompress a {NAMES[encoding]} "
                                     f"message: {exc}") from None
    return out
