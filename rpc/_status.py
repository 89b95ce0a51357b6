"""Building the errors users see: grpc.aio.AioRpcError with grpc.StatusCode."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import grpc
from grpc import aio

MetadataPairs = Iterable[tuple[str, "str | bytes"]]   # aio.Metadata is one too

CODES = {code.value[0]: code for code in grpc.StatusCode}
EMPTY_METADATA = aio.Metadata()


def status_code(value: int) -> grpc.StatusCode:
    return CODES.get(value, grpc.StatusCode.UNKNOWN)


_LAST_INT_CODE = grpc.StatusCode.DATA_LOSS.value[0]


def wire_code(code: Any) -> int:
    """The status a server sends for what a handler gave ``set_code``/``abort``.

    As grpc.aio: a ``grpc.StatusCode``, or a plain int (gRPC's interop server passes
    ints). An int outside 0..DATA_LOSS (15) becomes UNKNOWN, UNAUTHENTICATED (16)
    included, exactly as grpc.aio maps it; anything else unreadable is UNKNOWN too."""
    if isinstance(code, int):
        return code if 0 <= code <= _LAST_INT_CODE else grpc.StatusCode.UNKNOWN.value[0]
    try:
        value = code.value[0]
    except (AttributeError, KeyError, IndexError, TypeError):
        return grpc.StatusCode.UNKNOWN.value[0]
    return value if isinstance(value, int) else grpc.StatusCode.UNKNOWN.value[0]


class _Metadatum(NamedTuple):
    """One item of a server call's invocation metadata, as grpc.aio's server gives it:
    a ``(key, value)`` tuple (it unpacks and compares like one) that also has ``.key``
    and ``.value``, which some server interceptors (OpenTelemetry's) read."""

    key: str
    value: str | bytes


_METADATA_SHAPE = "Tuple[Tuple[str, Union[str, bytes]]...]"


def check_trailing_shape(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    """grpc.aio's check on trailing metadata a handler sets: an iterable (not a dict,
    not None) of 2-tuples ``(str, str | bytes)``; TypeError, worded as grpc.aio's,
    otherwise. Returns the items; the key and value rules are :func:`validate_metadata`'s."""
    if not hasattr(metadata, "__iter__") or isinstance(metadata, dict):
        raise _bad_shape(metadata)
    items = tuple(metadata)
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str) \
                or not isinstance(item[1], (str, bytes)):
            raise _bad_shape(metadata)
    return items


def _bad_shape(metadata: Any) -> TypeError:
    return TypeError(f"Invalid trailing metadata type, expected {_METADATA_SHAPE}: {metadata}")


def invocation_items(head: tuple[_Metadatum, ...],
                     metadata: Iterable[tuple[str, str | bytes]]) -> tuple[_Metadatum, ...]:
    """A server call's invocation metadata as grpc.aio gives it: ``head`` (the
    connection's ``user-agent``) first, then the call's own items. A ``user-agent``
    the call sent itself is dropped when the connection named one, as gRPC does
    (its transport sets the header, a call's metadata can't)."""
    if head:
        return head + tuple(_Metadatum(k, v) for k, v in metadata if k != "user-agent")
    return tuple(_Metadatum(k, v) for k, v in metadata)


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
