"""gRPC's service config (the ``grpc.service_config`` channel option), as grpc.aio applies it.

What a channel takes from it, per method (``methodConfig`` entries matched by ``name``:
``{service, method}`` before ``{service}`` before the default ``{}``):

- ``timeout``: the call's deadline is the earlier of this and the call's own timeout;
- ``waitForReady``: used when the call does not say;
- ``maxRequestMessageBytes`` / ``maxResponseMessageBytes``: the smaller of these and the
  channel's own limits apply to the call;
- ``retryPolicy``: a call that ends with a retryable status before anything of its
  response reached the application is made again (gRFC A6), with backoff, up to
  ``maxAttempts`` (at most 5), within its deadline;

and ``retryThrottling``, the load-balancing policy (``loadBalancingConfig``: the first
entry naming a policy lanerpc has; else the deprecated ``loadBalancingPolicy``) and
``healthCheckConfig.serviceName`` (client-side health checking, gRFC A17: see
rpc._balancer) for the whole channel. ``hedgingPolicy`` is not implemented (grpc.aio's
core ignores it too): a warning says so.

A malformed config does not raise when the channel is made: as in grpc.aio, every call
on that channel fails ``INVALID_ARGUMENT`` naming each error (and it is logged once).
This module does no I/O; the channel asks it what to do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
from typing import Any, Mapping

import grpc

from rpc._backoff import grown

log = logging.getLogger("lanerpc")

MAX_ATTEMPTS_CAP = 5                   # gRFC A6: larger maxAttempts are clamped to this
PUSHBACK_KEY = "grpc-retry-pushback-ms"
PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts"
_DURATION = re.compile(r"(\d+)(\.\d{1,9})?s")
_MAX_DURATION_SECONDS = 315_576_000_000
_CODES_BY_NAME = {code.name: code.value[0] for code in grpc.StatusCode}
# The load-balancing policies lanerpc has: the one list of their names (rpc._options
# and this module accept these; rpc._balancer.make_policy makes each).
LB_POLICIES = ("pick_first", "round_robin", "lanerpc_local_first")


class ServiceConfigError(ValueError):
    """A ``grpc.service_config`` that is not valid JSON or breaks the schema. The
    message lists every error found, each with the field it is about."""


# ============================================================ parsed config

@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retryPolicy``: how many attempts, how long between them, on which codes."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    multiplier: float
    codes: frozenset[int]

    def backoff(self, attempts: int) -> float:
        """Seconds to wait before attempt ``attempts + 1``: uniformly random up to
        the grown delay (gRFC A6's full jitter; see rpc._backoff)."""
        bound = grown(self.initial_backoff, self.multiplier, self.max_backoff, attempts - 1)
        return random.uniform(0, bound)


@dataclasses.dataclass(frozen=True, slots=True)
class MethodConfig:
    """What one ``methodConfig`` entry sets; None where it says nothing."""

    timeout: float | None = None
    wait_for_ready: bool | None = None
    max_request_bytes: int | None = None
    max_response_bytes: int | None = None
    retry: RetryPolicy | None = None

    def deadline_timeout(self, timeout: float | None) -> float | None:
        """The call's timeout: the earlier of its own and this config's."""
        if self.timeout is None:
            return timeout
        return self.timeout if timeout is None else min(timeout, self.timeout)

    def send_limit(self, channel_limit: int) -> int:
        """The largest request message this method may send."""
        limit = self.max_request_bytes
        return channel_limit if limit is None else min(limit, channel_limit)


NO_CONFIG = MethodConfig()


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A parsed service config: method configs by ``(service, method)`` name, where
    ``("", "")`` is the default and ``(service, "")`` covers a whole service."""

    methods: Mapping[tuple[str, str], MethodConfig]
    throttling: tuple[int, float] | None = None     # (maxTokens, tokenRatio)
    lb_policy: tuple[str, dict[str, Any]] | None = None   # (name, its config)
    health_service: str | None = None   # healthCheckConfig.serviceName; None: no checks

    def lookup(self, path: str) -> MethodConfig:
        """The config for a call to ``path`` (``/package.Service/Method``)."""
        service, _, method = path.lstrip("/").rpartition("/")
        methods = self.methods
        return (methods.get((service, method)) or methods.get((service, ""))
                or methods.get(("", "")) or NO_CONFIG)


class RetryThrottle:
    """``retryThrottling``: a channel's token bucket (gRFC A6). Each failed attempt
    with a retryable code takes a token (grpc.aio 1.85 gives none back for a
    success, whatever ``tokenRatio`` says: lanerpc matches it); retries stop while
    the bucket is at or below half. Kept in thousandths, as
    the ratio has at most three decimals."""

    def __init__(self, max_tokens: int, ratio: float) -> None:
        self._max = max_tokens * 1000
        self._ratio = int(round(ratio * 1000))   # validated and kept; see the docstring
        self._tokens = self._max

    def record_failure(self) -> bool:
        """Take a token for a failed attempt; True while retries are still allowed."""
        self._tokens = max(0, self._tokens - 1000)
        return self._tokens > self._max // 2


class Retries:
    """A channel's retry decisions: its service config's policies and throttle, and
    ``grpc.enable_retries``. The calls ask it; it keeps the throttle's count."""

    def __init__(self, config: ServiceConfig | None, enabled: bool) -> None:
        self.config = config
        self.enabled = enabled
        throttling = config.throttling if config is not None and enabled else None
        self.throttle = RetryThrottle(*throttling) if throttling else None

    def method(self, path: str) -> MethodConfig:
        config = self.config
        return NO_CONFIG if config is None else config.lookup(path)

    def replay_buffer(self, method: MethodConfig, options: Any) -> ReplayBuffer | None:
        """A buffer for a streaming request's messages, if the method may be retried."""
        if method.retry is None or not self.enabled:
            return None
        return ReplayBuffer(options.retry_buffer_size)

    def delay(self, method: MethodConfig, code: int, trailing: Any, attempts: int, *,
              committed: bool, not_started: bool) -> float | None:
        """Seconds to wait before trying a call again that ended with ``code``
        after ``attempts`` attempts, or None: do not. A call whose response
        (its headers or a message) reached the application is committed and
        never tried again. A call the server never started is tried once more
        at once, policy or none (gRPC's transparent retry)."""
        throttle = self.throttle
        policy = method.retry if self.enabled else None
        if policy is not None and code in policy.codes:
            if throttle is not None and not throttle.record_failure():
                return None
            if committed or attempts >= policy.max_attempts:
                return None
            pushback = _pushback(trailing)
            if pushback is None:
                return policy.backoff(attempts)
            return pushback if pushback >= 0 else None
        if not_started and not committed and attempts == 1:
            return 0.0
        return None


class ReplayBuffer:
    """A streaming request's messages, kept so that a retry can send them again. Past
    ``limit`` bytes (``grpc.per_rpc_retry_buffer_size``, 256 KiB as in gRPC) the
    messages are dropped and the call can no longer be retried (it is committed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.messages: list[bytes] = []
        self.size = 0
        self.overflowed = False

    def keep(self, data: bytes) -> None:
        if self.overflowed:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflowed = True
            self.messages.clear()
        else:
            self.messages.append(data)

    def resend(self, conn: Any, stream_id: int, *, end: bool) -> None:
        """Queue every kept message on a new attempt's stream (the connection holds
        what its window can't take yet), then its half-close if the caller had."""
        for data in self.messages:
            conn.send_message(stream_id, data)
        if end:
            conn.end_input(stream_id)


def with_previous_attempts(metadata: tuple[tuple[str, str | bytes], ...],
                           attempts: int) -> tuple[tuple[str, str | bytes], ...]:
    """A retry's request metadata: the call's, with ``grpc-previous-rpc-attempts``
    telling the server how many attempts came before (gRFC A6's header)."""
    kept = tuple(item for item in metadata if item[0] != PREVIOUS_ATTEMPTS_KEY)
    return kept + ((PREVIOUS_ATTEMPTS_KEY, str(attempts)),)


def _pushback(trailing: Any) -> float | None:
    """The server's ``grpc-retry-pushback-ms`` in seconds; -1 when present but not a
    non-negative integer (gRFC A6: then the call is not retried); None if absent."""
    for key, value in trailing or ():
        if key == PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            return int(text) / 1000 if text.isascii() and text.isdigit() else -1.0
    return None


# ============================================================ parsing

def parse(value: Any) -> ServiceConfig:
    """A ``grpc.service_config`` option's value (a JSON string, or the decoded
    object) checked against the schema. Raises ServiceConfigError listing every
    error, in the words ``field:<path> error:<what>``."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ServiceConfigError(f"JSON parsing failed: {exc}") from None
    errors: list[str] = []
    config = _Parser(errors).service_config(value)
    if errors:
        raise ServiceConfigError(
            "errors validating service config: [" + "; ".join(errors) + "]")
    return config


class _Parser:
    """One pass over a decoded config, collecting errors instead of stopping at the
    first (so one message names them all, as gRPC's does)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def error(self, field: str, what: str) -> None:
        self.errors.append(f"field:{field} error:{what}")

    def service_config(self, value: Any) -> ServiceConfig:
        if not isinstance(value, dict):
            self.error("", "is not an object")
            return ServiceConfig({})
        methods: dict[tuple[str, str], MethodConfig] = {}
        entries = value.get("methodConfig", [])
        if not isinstance(entries, list):
            self.error("methodConfig", "is not an array")
            entries = []
        for i, entry in enumerate(entries):
            self.method_config(f"methodConfig[{i}]", entry, methods)
        throttling = None
        if "retryThrottling" in value:
            throttling = self.throttling("retryThrottling", value["retryThrottling"])
        lb_policy = None
        if "loadBalancingConfig" in value:
            lb_policy = self.lb_config("loadBalancingConfig", value["loadBalancingConfig"])
        elif "loadBalancingPolicy" in value:
            lb_policy = self.lb_policy_name("loadBalancingPolicy", value["loadBalancingPolicy"])
        health = None
        if "healthCheckConfig" in value:
            health = self.health_check("healthCheckConfig", value["healthCheckConfig"])
        return ServiceConfig(methods, throttling, lb_policy, health)

    def health_check(self, field: str, value: Any) -> str | None:
        """``healthCheckConfig``: the service name to watch. As in gRPC, a config
        without ``serviceName`` turns nothing on; ``""`` is the whole server."""
        if not isinstance(value, dict):
            self.error(field, "is not an object")
            return None
        name = value.get("serviceName")
        if name is not None and not isinstance(name, str):
            self.error(f"{field}.serviceName", "is not a string")
            return None
        return name

    def lb_config(self, field: str, value: Any) -> tuple[str, dict[str, Any]] | None:
        """``loadBalancingConfig``: the first ``{name: config}`` whose policy lanerpc has
        (gRPC's rule); none known is an error naming them."""
        if not isinstance(value, list):
            self.error(field, "type should be array")
            return None
        names: list[str] = []
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or len(entry) != 1:
                self.error(f"{field}[{i}]", "each element must be an object with one key")
                return None
            name, config = next(iter(entry.items()))
            if name in LB_POLICIES:
                if names:
                    _warn_once(f"lanerpc: loadBalancingConfig names policies lanerpc does not "
                               f"have ({', '.join(names)}); using {name}")
                return name, self.lb_policy_config(field, name, config)
            names.append(str(name))
        self.error(field, "No known policies in list: " + " ".join(names))
        return None

    def lb_policy_config(self, field: str, name: str, config: Any) -> dict[str, Any]:
        if not isinstance(config, dict):
            self.error(field, f"errors validating {name} LB policy config: [field: "
                       f"error:is not an object]")
            return {}
        shuffle = config.get("shuffleAddressList")
        if name == "pick_first" and shuffle is not None and not isinstance(shuffle, bool):
            self.error(field, f"errors validating {name} LB policy config: "
                       f"[field:shuffleAddressList error:is not a boolean]")
        return dict(config)

    def lb_policy_name(self, field: str, value: Any) -> tuple[str, dict[str, Any]] | None:
        """The deprecated ``loadBalancingPolicy``: a policy's name, in any case."""
        if not isinstance(value, str):
            self.error(field, "type should be string")
            return None
        name = value.lower()
        if name not in LB_POLICIES:
            self.error(field, f'unknown LB policy "{name}"')
            return None
        return name, {}

    def method_config(self, field: str, entry: Any,
                      methods: dict[tuple[str, str], MethodConfig]) -> None:
        if not isinstance(entry, dict):
            self.error(field, "is not an object")
            return
        config = MethodConfig(
            timeout=self.duration(f"{field}.timeout", entry.get("timeout"), positive=False),
            wait_for_ready=self.boolean(f"{field}.waitForReady", entry.get("waitForReady")),
            max_request_bytes=self.count(f"{field}.maxRequestMessageBytes",
                                         entry.get("maxRequestMessageBytes")),
            max_response_bytes=self.count(f"{field}.maxResponseMessageBytes",
                                          entry.get("maxResponseMessageBytes")),
            retry=self.retry_policy(f"{field}.retryPolicy", entry.get("retryPolicy")))
        if "hedgingPolicy" in entry:
            _warn_once("lanerpc: grpc.service_config's hedgingPolicy is not implemented "
                       "(grpc.aio ignores it too): calls are not hedged")
        for key in self.names(f"{field}.name", entry.get("name", [])):
            if key in methods:
                self.error(f"{field}.name", "duplicate default method config" if key == ("", "")
                           else f"multiple method configs for path /{key[0]}/{key[1]}")
            methods[key] = config

    def names(self, field: str, names: Any) -> list[tuple[str, str]]:
        if not isinstance(names, list):
            self.error(field, "is not an array")
            return []
        keys = []
        for i, name in enumerate(names):
            service, method = ((name.get("service", ""), name.get("method", ""))
                               if isinstance(name, dict) else (None, None))
            if not isinstance(service, str) or not isinstance(method, str):
                self.error(f"{field}[{i}]", "service and method must be strings in an object")
            elif method and not service:
                self.error(f"{field}[{i}]", "method name populated without service name")
            else:
                keys.append((service, method))
        return keys

    def retry_policy(self, field: str, policy: Any) -> RetryPolicy | None:
        if policy is None:
            return None
        if not isinstance(policy, dict):
            self.error(field, "is not an object")
            return None
        attempts = self.count(f"{field}.maxAttempts", policy.get("maxAttempts"), required=True)
        initial = self.duration(f"{field}.initialBackoff", policy.get("initialBackoff"),
                                required=True)
        maximum = self.duration(f"{field}.maxBackoff", policy.get("maxBackoff"), required=True)
        multiplier = self.number(f"{field}.backoffMultiplier", policy.get("backoffMultiplier"))
        codes = self.status_codes(f"{field}.retryableStatusCodes",
                                  policy.get("retryableStatusCodes"))
        if attempts is not None and attempts < 2:
            self.error(f"{field}.maxAttempts", "must be at least 2")
        if "perAttemptRecvTimeout" in policy:
            _warn_once("lanerpc: retryPolicy.perAttemptRecvTimeout is not implemented: "
                       "each attempt runs until the call's deadline")
        if attempts is None or attempts < 2 or initial is None or maximum is None \
                or multiplier is None or not codes:
            return None
        if attempts > MAX_ATTEMPTS_CAP:
            _warn_once(f"lanerpc: service config: retryPolicy.maxAttempts {attempts} "
                       f"clamped at {MAX_ATTEMPTS_CAP}")
        return RetryPolicy(min(attempts, MAX_ATTEMPTS_CAP), initial, maximum, multiplier, codes)

    def throttling(self, field: str, value: Any) -> tuple[int, float] | None:
        if not isinstance(value, dict):
            self.error(field, "is not an object")
            return None
        tokens = self.count(f"{field}.maxTokens", value.get("maxTokens"), required=True)
        ratio = self.number(f"{field}.tokenRatio", value.get("tokenRatio"))
        if tokens is not None and not 0 < tokens <= 1000:
            self.error(f"{field}.maxTokens", "must be greater than 0 and at most 1000")
            tokens = None
        if tokens is None or ratio is None:
            return None
        return tokens, ratio

    # ------------------------------------------------------------ scalars

    def duration(self, field: str, value: Any, *, required: bool = False,
                 positive: bool = True) -> float | None:
        """A protobuf JSON duration: ``"1.5s"``, ``"0.000001s"``."""
        if value is None:
            if required:
                self.error(field, "field not present")
            return None
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            self.error(field, f"not a duration like \"1.5s\": {value!r}")
            return None
        seconds = int(match.group(1)) + float(match.group(2) or 0)
        if seconds > _MAX_DURATION_SECONDS:
            self.error(field, f"seconds must be in the range [0, {_MAX_DURATION_SECONDS}]")
            return None
        if positive and seconds <= 0:
            self.error(field, "must be greater than 0")
            return None
        return seconds

    def count(self, field: str, value: Any, *, required: bool = False) -> int | None:
        """A protobuf JSON integer >= 0: a JSON integer or a string of digits."""
        if value is None:
            if required:
                self.error(field, "field not present")
            return None
        if isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        self.error(field, f"not a non-negative integer: {value!r}")
        return None

    def number(self, field: str, value: Any) -> float | None:
        """A positive JSON number (or its string), such as backoffMultiplier."""
        if value is None:
            self.error(field, "field not present")
            return None
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not number > 0 or number == float("inf"):
            self.error(field, f"must be a number greater than 0: {value!r}")
            return None
        return number

    def boolean(self, field: str, value: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        self.error(field, "is not a boolean")
        return None

    def status_codes(self, field: str, value: Any) -> frozenset[int]:
        """Status code names (``"UNAVAILABLE"``): gRPC takes only their upper-case
        names here, not numbers."""
        if not isinstance(value, list) or not value:
            self.error(field, "must be a non-empty array")
            return frozenset()
        codes = set()
        for i, name in enumerate(value):
            if not isinstance(name, str):
                self.error(f"{field}[{i}]", f"is not a string: {name!r}")
            elif name not in _CODES_BY_NAME:
                self.error(f"{field}[{i}]", f"not a status code name: {name!r}")
            else:
                codes.add(_CODES_BY_NAME[name])
        return frozenset(codes)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a warning the first time it comes up in this process: a config that a
    long-lived process makes channels with warns once, not per channel."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)
