"""Channel and server options: gRPC's names where gRPC has one, ``lanerpc.*`` for ours.

A ``grpc.*`` or ``lanerpc.*`` name this module does not know is logged once at WARNING
(gRPC ignores names it does not know without a word; a typo, or a gRPC feature lanerpc
lacks, should not pass unseen). :data:`IMPLEMENTED` lists the names it knows."""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
import sys
from typing import Any, Sequence

from rpc import _compression, _service_config, _wire

log = logging.getLogger("lanerpc")

VERSION = "0.1.0"             # rpc.__version__
# What a lanerpc client names itself in every connection's HELLO; a server's handlers
# see it as the calls' user-agent metadata (grpc's own: "grpc-python-asyncio/<v> ...").
USER_AGENT = f"lanerpc-python/{VERSION} ({sys.platform})"

ALL_LANES = ("shm", "unix", "tcp")
DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024
_UNLIMITED = 2**31 - 1
# gRPC servers ping a connection with calls after two hours without input (grpc-core's
# default for servers; clients don't ping unless asked).
SERVER_KEEPALIVE_TIME = 7200.0


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    max_receive_message_length: int = DEFAULT_MAX_RECEIVE
    max_send_message_length: int = _UNLIMITED
    max_metadata_size: int = _wire.DEFAULT_MAX_METADATA_SIZE
    lanes: tuple[str, ...] = ALL_LANES
    handshake_timeout: float = 5.0
    keepalive_time: float | None = None      # client: PING after this long without input
    server_keepalive_time: float | None = SERVER_KEEPALIVE_TIME   # the same, on a server
    keepalive_timeout: float = 20.0          # seconds to wait for the PING's answer
    keepalive_permit_without_calls: bool = False
    max_pings_without_data: int = 2          # client: pings in a row with no data sent; 0 = any
    min_ping_interval: float = 300.0         # server: pings closer than this are "too many"
    max_ping_strikes: int = 2                # server: strikes tolerated; 0 = any
    max_concurrent_streams: int = _wire.DEFAULT_MAX_CONCURRENT_STREAMS
    allowed_uids: frozenset[int] = frozenset()   # unix/shm: uids admitted besides our own
    shm_variant: str = "auto"    # the shm lane's kind: "auto", "memfd" or "posix" (docs/shm-lane.md)
    server_uids: frozenset[int] | None = None    # client: the only uids a unix server may run as
    upgrade_timeout: float = 1.0
    service_config: _service_config.ServiceConfig | None = None   # grpc.service_config
    service_config_error: str | None = None   # why grpc.service_config is invalid: calls fail
    enable_retries: bool = True              # grpc.enable_retries
    retry_buffer_size: int = 256 * 1024      # grpc.per_rpc_retry_buffer_size
    initial_reconnect_backoff: float = 1.0
    max_reconnect_backoff: float = 120.0
    min_connect_timeout: float = 20.0        # grpc.min_reconnect_backoff_ms: an attempt's least time
    lb_policy: str = "pick_first"            # grpc.lb_policy_name (the service config's come first)
    inhibit_health_checking: bool = False    # grpc.inhibit_health_checking: ignore healthCheckConfig
    dns_min_interval: float = 30.0           # grpc.dns_min_time_between_resolutions_ms
    so_reuseport: bool = True                # server: SO_REUSEPORT on TCP ports, as gRPC
    max_connections: int = 0                 # server: lanerpc connections at once; 0 = no limit
    max_connection_idle: float | None = None   # server: GOAWAY a connection idle this long
    max_connection_age: float | None = None    # server: GOAWAY a connection this old (±10 %)
    max_connection_age_grace: float | None = None   # server: then close it this much later
    memory_budget: int = dataclasses.field(default_factory=lambda: default_memory_budget())
    max_queued_calls: int = 1000             # server: plain handlers waiting for a pool thread
    default_compression: int = 0             # grpc.Compression's number; tcp lane only
    compression_enabled: int = 0b111         # server: bit n set = algorithm n accepted
    grpc_on_lanerpc_ports: bool = True       # server: gRPC (HTTP/2) clients welcome on tcp ports
    user_agent: str = USER_AGENT             # client: grpc.primary/secondary_user_agent around ours
    # client TLS (rpc.secure_channel with rpc.ssl_channel_credentials): the context, and
    # the name the server's certificate must carry when not the target's host (also SNI)
    tls: ssl.SSLContext | None = None
    ssl_target_name_override: str | None = None
    tls_server_name: str | None = None       # the target's host name (addresses are resolved)
    local_tcp: bool = False                  # client: local credentials, LOCAL_TCP: loopback only


def default_memory_budget() -> int:
    """A server's budget for incoming messages it holds: 256 MiB, or a quarter of the
    machine's memory when that is less."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        ram = 0
    return min(256 * 1024 * 1024, ram // 4) if ram > 0 else 256 * 1024 * 1024


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
    length = _int(value, name)
    if length < 0:
        return _UNLIMITED
    if length == 0 and name == "grpc.max_receive_message_length":
        raise ValueError(f"{name} must be positive or -1")
    return min(length, _UNLIMITED)


def _flag(value: Any, name: str) -> bool:
    """An on/off option: 0 or 1 (an int, a bool, or their text); anything else is an error
    rather than a guess."""
    text = str(int(value) if isinstance(value, bool) else value).strip()
    if text not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1; got {value!r}")
    return text == "1"


def _nonzero(value: Any, name: str) -> bool:
    """An integer option that gRPC reads as a bool: 0 is off, any other integer on (a
    Python bool is an integer to grpc, so True and False are taken as they are)."""
    return value if isinstance(value, bool) else _int(value, name) != 0


def _int(value: Any, name: str) -> int:
    """An integer option's value (an int or its decimal text); ValueError naming the
    option for anything else, rather than a bare int() error."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {value!r}") from None


def _millis_or_off(value: Any, name: str, *, zero_is_off: bool = True) -> float | None:
    """Seconds from a gRPC ``*_ms`` option, or None for "off": INT_MAX or more (gRPC's
    "unlimited") and negative values, and 0 too unless ``zero_is_off`` is False (a
    grace period of 0 means "close at once")."""
    ms = _int(value, name)
    if ms < 0 or ms >= _UNLIMITED or (ms == 0 and zero_is_off):
        return None
    return ms / 1000


SHM_VARIANTS = ("auto", "memfd", "posix")


def _shm_variant(value: Any, name: str) -> str:
    if value not in SHM_VARIANTS:
        raise ValueError(f"{name} must be one of {', '.join(SHM_VARIANTS)}; got {value!r}")
    return str(value)


def _count(value: Any, name: str) -> int:
    count = _int(value, name)
    if count < 0:
        raise ValueError(f"{name} must be 0 (no limit) or more; got {value!r}")
    return count


def parse(options: Sequence[tuple[str, Any]] | None) -> Options:
    """Options from gRPC-style (name, value) pairs. Known names with bad values raise
    ValueError; unknown ``grpc.*`` and ``lanerpc.*`` names are logged once (see the
    module's docstring); an invalid ``grpc.service_config`` is kept as an error for
    the channel's calls to report, as grpc.aio does."""
    values: dict[str, Any] = {}
    agent: dict[str, Any] = {}      # grpc.primary_user_agent, grpc.secondary_user_agent
    env_lanes = os.environ.get("LANERPC_LANES")
    if env_lanes:
        values["lanes"] = parse_lanes(env_lanes)
    env_variant = os.environ.get("LANERPC_SHM_VARIANT")
    if env_variant:
        values["shm_variant"] = _shm_variant(env_variant, "LANERPC_SHM_VARIANT")
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
            values["max_metadata_size"] = max(1024, min(_int(value, name), 2**24))
        elif name == "lanerpc.lanes":
            values["lanes"] = parse_lanes(str(value))
        elif name == "lanerpc.handshake_timeout_ms":
            values["handshake_timeout"] = max(1, _int(value, name)) / 1000
        elif name == "lanerpc.upgrade_timeout_ms":
            values["upgrade_timeout"] = max(1, _int(value, name)) / 1000
        elif name == "grpc.keepalive_time_ms":
            keepalive = _millis_or_off(value, name)
            values["keepalive_time"] = values["server_keepalive_time"] = keepalive
        elif name == "grpc.keepalive_timeout_ms":
            values["keepalive_timeout"] = max(1, _int(value, name)) / 1000
        elif name == "grpc.keepalive_permit_without_calls":
            values["keepalive_permit_without_calls"] = _nonzero(value, name)
        elif name == "grpc.http2.min_ping_interval_without_data_ms":
            values["min_ping_interval"] = max(0, _int(value, name)) / 1000
        elif name == "grpc.http2.max_pings_without_data":
            values["max_pings_without_data"] = _count(value, name)
        elif name == "grpc.http2.max_ping_strikes":
            values["max_ping_strikes"] = _count(value, name)
        elif name == "grpc.max_connection_age_ms":
            values["max_connection_age"] = _millis_or_off(value, name)
        elif name == "grpc.max_connection_age_grace_ms":
            values["max_connection_age_grace"] = _millis_or_off(value, name, zero_is_off=False)
        elif name == "grpc.so_reuseport":
            values["so_reuseport"] = _nonzero(value, name)
        elif name == "grpc.max_concurrent_streams":
            values["max_concurrent_streams"] = max(1, _int(value, name))
        elif name == "lanerpc.shm_variant":
            values["shm_variant"] = _shm_variant(value, name)
        elif name == "lanerpc.allowed_uids":
            values["allowed_uids"] = parse_uids(value, name)
        elif name == "lanerpc.server_uids":
            values["server_uids"] = parse_uids(value, name)
        elif name == "grpc.service_config":
            values.update(_parse_service_config(value))
        elif name == "grpc.enable_retries":
            values["enable_retries"] = _nonzero(value, name)
        elif name == "grpc.per_rpc_retry_buffer_size":
            values["retry_buffer_size"] = max(0, _int(value, name))
        elif name == "grpc.initial_reconnect_backoff_ms":
            values["initial_reconnect_backoff"] = max(1, _int(value, name)) / 1000
        elif name == "grpc.max_reconnect_backoff_ms":
            values["max_reconnect_backoff"] = max(1, _int(value, name)) / 1000
        elif name == "grpc.min_reconnect_backoff_ms":
            values["min_connect_timeout"] = max(1, _int(value, name)) / 1000
        elif name == "grpc.dns_min_time_between_resolutions_ms":
            values["dns_min_interval"] = max(0, _int(value, name)) / 1000
        elif name == "grpc.lb_policy_name":
            values["lb_policy"] = _lb_policy_name(value)
        elif name == "grpc.inhibit_health_checking":
            values["inhibit_health_checking"] = _flag(value, name)
        elif name in ("grpc.max_allowed_incoming_connections", "lanerpc.max_connections"):
            values["max_connections"] = max(0, _int(value, name))
        elif name == "lanerpc.memory_budget_bytes":
            budget = _int(value, name)
            if budget < 1024 * 1024:
                raise ValueError(f"{name} must be at least 1 MiB (1048576); got {value!r}")
            values["memory_budget"] = budget
        elif name == "grpc.default_compression_algorithm":
            values["default_compression"] = _compression.algorithm(value, name)
        elif name == "grpc.compression_enabled_algorithms_bitset":
            bits = _int(value, name)
            if not 0 <= bits <= 0b111:
                raise ValueError(f"{name} must be a bitset of 0 (identity), 1 (deflate) and "
                                 f"2 (gzip); got {value!r}")
            values["compression_enabled"] = bits | 1      # identity is always accepted
        elif name == "lanerpc.max_queued_calls":
            queued = _int(value, name)
            if queued < 0:
                raise ValueError(f"{name} must be 0 or more; got {value!r}")
            values["max_queued_calls"] = queued
        elif name == "lanerpc.grpc_on_lanerpc_ports":
            values["grpc_on_lanerpc_ports"] = _flag(value, name)
        elif name == "grpc.max_connection_idle_ms":
            idle_ms = _int(value, name)
            values["max_connection_idle"] = None if idle_ms <= 0 or idle_ms >= _UNLIMITED else idle_ms / 1000
        elif name == "grpc.ssl_target_name_override":
            values["ssl_target_name_override"] = str(value)
        elif name in ("grpc.primary_user_agent", "grpc.secondary_user_agent"):
            agent[name] = value
        elif name not in IMPLEMENTED:
            _warn_unknown(name)
    if any(agent.values()):
        # As grpc builds it: the primary one before the library's own name, the
        # secondary one after it.
        parts = (agent.get("grpc.primary_user_agent"), USER_AGENT,
                 agent.get("grpc.secondary_user_agent"))
        values["user_agent"] = " ".join(str(part) for part in parts if part)
    return Options(**values)


# The grpc.* and lanerpc.* names lanerpc applies (lanerpc.protocol is read where a
# channel is made, rpc.insecure_channel). Any other name under those prefixes is
# logged once by _warn_unknown.
IMPLEMENTED = frozenset({
    "grpc.max_receive_message_length", "grpc.max_send_message_length", "grpc.max_metadata_size",
    "grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.keepalive_permit_without_calls",
    "grpc.http2.min_ping_interval_without_data_ms", "grpc.so_reuseport",
    "grpc.max_concurrent_streams", "grpc.service_config", "grpc.enable_retries",
    "grpc.per_rpc_retry_buffer_size",
    "grpc.initial_reconnect_backoff_ms", "grpc.max_reconnect_backoff_ms",
    "grpc.min_reconnect_backoff_ms", "grpc.dns_min_time_between_resolutions_ms",
    "grpc.lb_policy_name", "grpc.inhibit_health_checking",
    "grpc.max_allowed_incoming_connections", "grpc.max_connection_idle_ms",
    "grpc.max_connection_age_ms", "grpc.max_connection_age_grace_ms",
    "grpc.http2.max_pings_without_data", "grpc.http2.max_ping_strikes",
    "lanerpc.lanes", "lanerpc.handshake_timeout_ms", "lanerpc.upgrade_timeout_ms",
    "lanerpc.allowed_uids", "lanerpc.server_uids", "lanerpc.shm_variant", "lanerpc.max_connections",
    "lanerpc.memory_budget_bytes", "lanerpc.max_queued_calls", "lanerpc.grpc_on_lanerpc_ports",
    "grpc.default_compression_algorithm", "grpc.compression_enabled_algorithms_bitset",
    "lanerpc.protocol", "grpc.primary_user_agent", "grpc.secondary_user_agent",
    "grpc.ssl_target_name_override",
})

_warned: set[str] = set()


def _warn_unknown(name: Any) -> None:
    """Log, once per process, a gRPC or lanerpc option name that nothing here applies:
    gRPC would ignore it silently, and a typo or a missing feature should show."""
    if not isinstance(name, str) or not name.startswith(("grpc.", "lanerpc.")):
        return      # not a name of either: an application's own key, as gRPC allows
    if name in _warned:
        return
    _warned.add(name)
    what = "an unknown lanerpc option" if name.startswith("lanerpc.") else \
        "a gRPC option lanerpc does not implement"
    log.warning("lanerpc: option %r is %s; it has no effect on lanerpc lanes", name, what)


def _lb_policy_name(value: Any) -> str:
    """``grpc.lb_policy_name``: a policy lanerpc has. As gRPC does with a name it does not
    know, an unknown one is logged at ERROR and pick_first is used."""
    if value in _service_config.LB_POLICIES:
        return str(value)
    log.error("lanerpc: LB policy %r passed through grpc.lb_policy_name does not exist "
              "(lanerpc has %s); using pick_first instead", value,
              ", ".join(_service_config.LB_POLICIES))
    return "pick_first"


def _parse_service_config(value: Any) -> dict[str, Any]:
    """The fields for a ``grpc.service_config`` value: the parsed config, or its error
    (logged here once; each call on the channel then fails INVALID_ARGUMENT with it)."""
    try:
        return {"service_config": _service_config.parse(value), "service_config_error": None}
    except _service_config.ServiceConfigError as exc:
        log.error("lanerpc: grpc.service_config is invalid; every call on a channel "
                  "made with it fails INVALID_ARGUMENT: %s", exc)
        return {"service_config": None, "service_config_error": str(exc)}
