"""Channel and server options: gRPC's names where gRPC has one, ``lanerpc.*`` for ours."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Sequence

from rpc import _wire

VERSION = "0.1.0"             # rpc.__version__
# What a lanerpc client names itself in every connection's HELLO; a server's handlers
# see it as the calls' user-agent metadata (grpc's own: "grpc-python-asyncio/<v> ...").
USER_AGENT = f"lanerpc-python/{VERSION} ({sys.platform})"

ALL_LANES = ("shm", "unix", "tcp")
DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024
_UNLIMITED = 2**31 - 1


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    max_receive_message_length: int = DEFAULT_MAX_RECEIVE
    max_send_message_length: int = _UNLIMITED
    max_metadata_size: int = _wire.DEFAULT_MAX_METADATA_SIZE
    lanes: tuple[str, ...] = ALL_LANES
    handshake_timeout: float = 5.0
    keepalive_time: float | None = None      # seconds between PINGs on an idle connection
    keepalive_timeout: float = 20.0          # seconds to wait for the PING's answer
    keepalive_permit_without_calls: bool = False
    min_ping_interval: float = 300.0         # server: pings closer than this are "too many"
    max_concurrent_streams: int = _wire.DEFAULT_MAX_CONCURRENT_STREAMS
    allowed_uids: frozenset[int] = frozenset()   # unix/shm: uids admitted besides our own
    server_uids: frozenset[int] | None = None    # client: the only uids a unix server may run as
    upgrade_timeout: float = 1.0
    retry_policy: dict[str, Any] | None = None   # grpc.service_config's retryPolicy
    initial_reconnect_backoff: float = 1.0
    max_reconnect_backoff: float = 120.0
    so_reuseport: bool = True                # server: SO_REUSEPORT on TCP ports, as gRPC
    max_connections: int = 0                 # server: lanerpc connections at once; 0 = no limit
    max_connection_idle: float | None = None   # server: GOAWAY a connection idle this long
    user_agent: str = USER_AGENT             # client: grpc.primary/secondary_user_agent around ours


def parse_lanes(text: str) -> tuple[str, ...]:
    lanes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [lane for lane in lanes if lane not in ALL_LANES]
    if unknown or not lanes:
        raise ValueError(
            f"lanerpc.lanes must list some of {', '.join(ALL_LANES)}; got {text!r}")
    return lanes


def parse_uids(value: Any, name: str) -> frozenset[int]:
    """Uids from ``"0,1000"``, a list, tuple or set of ints, or one int; ValueError for
    anything else."""
    bad = ValueError(f"{name} must be uids (integers >= 0), comma-separated or a list/tuple "
                     f"of ints; got {value!r}")
    if isinstance(value, str):
        parts: list[Any] = [part.strip() for part in value.split(",")]
        if not value.strip() or any(not (part.isascii() and part.isdigit()) for part in parts):
            raise bad
        uids = [int(part) for part in parts]
    elif isinstance(value, (int, list, tuple, set, frozenset)):
        value = [value] if isinstance(value, int) else value
        if not value or any(isinstance(u, bool) or not isinstance(u, int) or u < 0 for u in value):
            raise bad
        uids = list(value)
    else:
        raise bad
    return frozenset(uids)


def _length(value: Any, name: str) -> int:
    length = int(value)
    if length < 0:
        return _UNLIMITED
    if length == 0 and name == "grpc.max_receive_message_length":
        raise ValueError(f"{name} must be positive or -1")
    return min(length, _UNLIMITED)


def parse(options: Sequence[tuple[str, Any]] | None) -> Options:
    """Options from gRPC-style (name, value) pairs. Unknown names are ignored,
    as gRPC does; known names with bad values raise ValueError."""
    values: dict[str, Any] = {}
    env_lanes = os.environ.get("LANERPC_LANES")
    if env_lanes:
        values["lanes"] = parse_lanes(env_lanes)
    import json
    for item in options or ():
        try:
            name, value = item
        except (TypeError, ValueError):
            raise ValueError(f"options must be (name, value) pairs; got {item!r}") from None
        if name == "grpc.max_receive_message_length":
            values["max_receive_message_length"] = _length(value, name)
        elif name == "grpc.max_send_message_length":
            values["max_send_message_length"] = _length(value, name)
        elif name == "grpc.max_metadata_size":
            values["max_metadata_size"] = max(1024, min(int(value), 2**24))
        elif name == "lanerpc.lanes":
            values["lanes"] = parse_lanes(str(value))
        elif name == "lanerpc.handshake_timeout_ms":
            values["handshake_timeout"] = max(1, int(value)) / 1000
        elif name == "lanerpc.upgrade_timeout_ms":
            values["upgrade_timeout"] = max(1, int(value)) / 1000
        elif name == "grpc.keepalive_time_ms":
            values["keepalive_time"] = None if int(value) <= 0 else int(value) / 1000
        elif name == "grpc.keepalive_timeout_ms":
            values["keepalive_timeout"] = max(1, int(value)) / 1000
        elif name == "grpc.keepalive_permit_without_calls":
            values["keepalive_permit_without_calls"] = bool(int(value))
        elif name == "grpc.http2.min_ping_interval_without_data_ms":
            values["min_ping_interval"] = max(0, int(value)) / 1000
        elif name == "grpc.so_reuseport":
            values["so_reuseport"] = bool(int(value))
        elif name == "grpc.max_concurrent_streams":
            values["max_concurrent_streams"] = max(1, int(value))
        elif name == "lanerpc.allowed_uids":
            values["allowed_uids"] = parse_uids(value, name)
        elif name == "lanerpc.server_uids":
            values["server_uids"] = parse_uids(value, name)
        elif name == "grpc.service_config":
            values["retry_policy"] = _retry_policy(json.loads(value) if isinstance(value, str) else value)
        elif name == "grpc.initial_reconnect_backoff_ms":
            values["initial_reconnect_backoff"] = max(1, int(value)) / 1000
        elif name == "grpc.max_reconnect_backoff_ms":
            values["max_reconnect_backoff"] = max(1, int(value)) / 1000
        elif name in ("grpc.max_allowed_incoming_connections", "lanerpc.max_connections"):
            values["max_connections"] = max(0, int(value))
        elif name == "grpc.max_connection_idle_ms":
            idle_ms = int(value)
            values["max_connection_idle"] = None if idle_ms <= 0 or idle_ms >= _UNLIMITED else idle_ms / 1000
    agent = _user_agent(options or ())
    if agent != USER_AGENT:
        values["user_agent"] = agent
    return Options(**values)


def _user_agent(options: Sequence[tuple[str, Any]]) -> str:
    """As grpc builds it: ``grpc.primary_user_agent`` before the library's own name,
    ``grpc.secondary_user_agent`` after it."""
    parts = dict(item for item in options if isinstance(item, tuple) and len(item) == 2
                 and item[0] in ("grpc.primary_user_agent", "grpc.secondary_user_agent"))
    primary = parts.get("grpc.primary_user_agent")
    secondary = parts.get("grpc.secondary_user_agent")
    return " ".join(str(part) for part in (primary, USER_AGENT, secondary) if part)


def _retry_policy(config: dict[str, Any]) -> dict[str, Any] | None:
    for method_config in config.get("methodConfig", ()):
        policy: dict[str, Any] | None = method_config.get("retryPolicy")
        if policy:
            return policy
    return None
