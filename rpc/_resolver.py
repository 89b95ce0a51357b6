"""Name resolution: a target's addresses, looked up without blocking the event loop.

A ``dns:///name:port`` or plain ``host:port`` target resolves to every A/AAAA record
of the name (through ``loop.getaddrinfo``, the system's resolver, in a worker thread);
``ipv4:``/``ipv6:`` lists, IP literals and ``unix:`` paths are their own addresses.
As in gRPC, a channel asks again when a connection fails or a server sends GOAWAY,
never more often than ``grpc.dns_min_time_between_resolutions_ms`` (30 s): a name's
new addresses are picked up while the channel runs, without flooding the DNS server.
A lookup that fails is tried again after a backoff (1 s growing 1.6 times to 120 s).

``dns://authority/name`` (a DNS server named in the target) is refused: lanerpc asks
the system's resolver, and sending the query elsewhere is not something it can do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from rpc._backoff import Backoff
from rpc._target import Endpoint, parse_target

DEFAULT_MIN_INTERVAL = 30.0     # gRPC's min time between DNS resolutions
# After a failed lookup: gRPC's connection backoff, without its jitter.
_FAILED_LOOKUP_BACKOFF = Backoff()

# (host, port) -> getaddrinfo's list; injectable so tests can serve records.
Lookup = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]


class ResolutionError(ConnectionError):
    """The name has no address now (the lookup failed or found nothing)."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def _check_authority(target: str) -> None:
    """Refuse ``dns://authority/...``: the query would have to go to that server."""
    if target[:4].lower() != "dns:" or not target[4:].startswith("//"):
        return
    authority = target[6:].partition("/")[0]
    if authority:
        raise ValueError(
            f"target {target!r} names a DNS server ({authority!r}); lanerpc resolves names "
            f"with the system's resolver: use dns:///name:port")


async def _system_lookup(host: str, port: int) -> list[tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class Resolver:
    """A target's addresses, with gRPC's limits on how often they are looked up."""

    def __init__(self, target: str, *, min_interval: float = DEFAULT_MIN_INTERVAL,
                 lookup: Lookup | None = None) -> None:
        _check_authority(target)
        endpoints = parse_target(target)
        self.target = target
        self.min_interval = min_interval
        self._lookup = lookup or _system_lookup
        self._name: Endpoint | None = None
        self._static: list[Endpoint] = endpoints
        if (len(endpoints) == 1 and endpoints[0].lane == "tcp"
                and not target.lower().startswith(("ipv4:", "ipv6:"))
                and not _is_ip(endpoints[0].host)):
            self._name = endpoints[0]
        self._last: float | None = None     # when the last lookup started
        self._failures = 0
        self._retry_at = 0.0                # after a failed lookup: not before this

    @property
    def dynamic(self) -> bool:
        """Whether resolving again can give other addresses (a DNS name)."""
        return self._name is not None

    def static(self) -> list[Endpoint] | None:
        """The addresses when no lookup is needed, else None."""
        return None if self._name is not None else list(self._static)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next lookup may start (0: now)."""
        if self._last is None:
            return 0.0
        if self._failures:
            return max(0.0, self._retry_at - now)
        return max(0.0, self._last + self.min_interval - now)

    async def resolve(self, now: float) -> list[Endpoint]:
        """The target's addresses now, in the resolver's order, without duplicates.
        Raises ResolutionError when there are none."""
        name = self._name
        if name is None:
            self._last = now
            return list(self._static)
        self._last = now
        try:
            infos = await self._lookup(name.host, name.port)
        except (OSError, UnicodeError) as exc:
            self._failed(now)
            raise ResolutionError(
                f"DNS resolution failed for {name}: {exc or type(exc).__name__}") from None
        found: list[Endpoint] = []
        for info in infos:
            address = Endpoint("tcp", host=str(info[4][0]), port=name.port)
            if address not in found:
                found.append(address)
        if not found:
            self._failed(now)
            raise ResolutionError(f"DNS resolution failed for {name}: no addresses")
        self._failures = 0
        return found

    def _failed(self, now: float) -> None:
        self._retry_at = now + _FAILED_LOOKUP_BACKOFF.delay(self._failures)
        self._failures += 1
