"""Building the errors users see: grpc.aio.AioRpcError with grpc.StatusCode."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc import aio

MetadataPairs = Iterable[tuple[str, "str | bytes"]]   # aio.Metadata is one too

CODES = {code.value[0]: code for code in grpc.StatusCode}
EMPTY_METADATA = aio.Metadata()


def status_code(value: int) -> grpc.StatusCode:
    return CODES.get(value, grpc.StatusCode.UNKNOWN)


def to_metadata(pairs: MetadataPairs | None) -> aio.Metadata:
    if not pairs:
        return aio.Metadata()
    if isinstance(pairs, aio.Metadata):
        return pairs
    return aio.Metadata(*pairs)


def rpc_error(code: grpc.StatusCode, details: str, initial: MetadataPairs | None = None,
              trailing: MetadataPairs | None = None) -> aio.AioRpcError:
    return aio.AioRpcError(
        code,
        to_metadata(initial),
        to_metadata(trailing),
        details=details,
        debug_error_string=f"lanerpc: {code.name}: {details}",
    )


def validate_metadata(metadata: MetadataPairs | None) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata as sent by a user: checked against gRPC's key rules."""
    if metadata is None:
        return ()
    items = tuple(metadata)
    if any(isinstance(v, (bytes, bytearray)) and not k.endswith("-bin")
           for k, v in items if isinstance(k, str)):
        # grpc accepts ASCII bytes for text keys; so do we, as text.
        items = tuple((k, _ascii(k, v)) if isinstance(v, (bytes, bytearray)) and
                      isinstance(k, str) and not k.endswith("-bin") else (k, v)
                      for k, v in items)
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"metadata entries must be (key, value) pairs; got {item!r}")
        key, value = item
        if not isinstance(key, str) or not key or key != key.lower() or not _KEY_OK(key):
            raise ValueError(f"metadata key {key!r} is invalid: lowercase a-z 0-9 - _ . only")
        if key.endswith("-bin"):
            if not isinstance(value, (bytes, bytearray)):
                raise TypeError(f"metadata key {key!r} ends in -bin: its value must be bytes")
        elif not isinstance(value, str):
            raise TypeError(f"metadata value for {key!r} must be str (bytes only for -bin keys)")
        elif not value.isprintable() and value:
            raise ValueError(f"metadata value for {key!r} must be printable ASCII")
    return items


def _ascii(key: str, value: bytes | bytearray) -> str:
    try:
        return bytes(value).decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"metadata value for {key!r} must be ASCII (use a -bin key for bytes)") from None


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def _KEY_OK(key: str) -> bool:
    return all(c in _KEY_CHARS for c in key)
