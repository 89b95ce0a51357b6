"""Subchannels and load-balancing policies: which connection a client call goes on.

A channel has one :class:`Subchannel` per address its target resolves to. Each makes
its own connection (so each picks its own lane: a server on this host is reached over
shm or unix, a remote one over tcp) and, when connecting fails, waits gRPC's
connection backoff before it may try again (doc/connection-backoff.md: 1 s, times 1.6
with 20 % jitter, at most 120 s; each attempt may take ``max(20 s, backoff)``).

A policy decides which subchannels connect and which carries each call, as gRPC's do:

- ``pick_first`` (the default): the addresses in order, one connection for all calls.
  "Happy eyeballs": when an attempt has not succeeded after 250 ms the next address is
  tried too, and the first to connect wins (the others are closed), so an address that
  never answers can't stall the channel.
- ``round_robin``: a connection to every address; calls go to the READY ones in turn.
- ``lanerpc_local_first``: as round_robin, but only over connections on a local lane
  (shm, unix) while any is READY; remote ones carry calls only when none is.

Client-side health checking (gRFC A17), when the service config's ``healthCheckConfig``
names a service: each connected subchannel of round_robin or lanerpc_local_first keeps a
``grpc.health.v1.Health/Watch`` stream open on its own connection and is READY for the
policy only while the latest answer is SERVING (CONNECTING until the first answer,
TRANSIENT_FAILURE on any other). pick_first does not health-check, as in gRPC.

This module does no dialing of its own: the channel hands it a ``dial`` function (which
runs rpc._lanes.connect) and the factory for its links.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from grpc import aio

from rpc._backoff import Backoff
from rpc._link import Link
from rpc._resolver import ResolutionError, Resolver
from rpc._service_config import LB_POLICIES
from rpc._target import Endpoint

log = logging.getLogger("lanerpc")

_S = grpc.ChannelConnectivity
IDLE, CONNECTING, READY = _S.IDLE, _S.CONNECTING, _S.READY
TRANSIENT_FAILURE, SHUTDOWN = _S.TRANSIENT_FAILURE, _S.SHUTDOWN

HAPPY_EYEBALLS_DELAY = 0.25     # gRFC A61: start the next address's attempt after this
_LOCAL_LANES = ("shm", "unix")

LinkFactory = Callable[[Any], Link]
Dial = Callable[[Endpoint, LinkFactory], Awaitable[Link]]

HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
SERVING_STATUS = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
SERVING = 1


class WatchCall(Protocol):
    """A ``Health/Watch`` call on one connection: its responses' bytes, in order;
    iterating raises ``aio.AioRpcError`` when it ends with a status other than OK."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def cancel(self) -> bool: ...


OpenWatch = Callable[[Link, bytes], WatchCall]


def _no_watch(link: Link, request: bytes) -> WatchCall:
    raise ConnectionError("channel closed")


# Between Watch attempts that heard nothing: gRPC's defaults, whatever the channel's
# reconnect options say (grpc-core's health client does not read them either).
HEALTH_BACKOFF = Backoff()


# ============================================================ health messages
# grpc.health.v1's two messages, by hand: a field each, so the channel needs no protobuf
# import (nor grpcio-health-checking) for them.

def health_request(service: str) -> bytes:
    """``HealthCheckRequest{service}``: field 1, length-delimited (empty: no bytes)."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def serving_status(message: bytes) -> int:
    """``HealthCheckResponse.status`` (field 1, an enum; 0 when absent). Other fields
    are skipped, as protobuf does; a message that does not parse raises ValueError."""
    status, pos = 0, 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(message, pos)
            if field == 1:
                status = value
        elif wire_type == 2:
            size, pos = _read_varint(message, pos)
            pos += size
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"wire type {wire_type}")
        if pos > len(message):
            raise ValueError("truncated")
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _status_name(status: int) -> str:
    return SERVING_STATUS[status] if 0 <= status < len(SERVING_STATUS) else str(status)


class Subchannel:
    """One address and at most one connection to it, with its own backoff."""

    def __init__(self, address: Endpoint, balancer: "Balancer") -> None:
        self.address = address
        self.state = IDLE
        self.link: Link | None = None
        self.error = ""
        self.refused = False
        self._balancer = balancer
        self._task: asyncio.Task[None] | None = None
        self._failures = 0                         # attempts failed in a row
        self._wait = balancer.backoff.initial      # the next attempt's, jittered
        self._shut = False
        self._made: list[Link] = []                # what the attempt under way has made
        self._health: asyncio.Task[None] | None = None   # the Watch loop, when checking
        self._watch: WatchCall | None = None             # its call under way

    def connect(self) -> None:
        """Start an attempt if idle (not while one runs or a backoff is waited).
        CONNECTING from now: the policy reads the state as soon as this returns."""
        if self.state is IDLE and not self._shut and self._task is None:
            self.state = CONNECTING
            self._task = self._balancer.loop.create_task(self._attempt())

    def cancel_attempt(self) -> None:
        """Stop an attempt in progress (happy eyeballs' losers); the backoff stays."""
        if self.state is CONNECTING and self._task is not None:
            self._task.cancel()
            self._task = None
            _abort(self._made, None, "another address connected first")
            self._made = []
            self.state = IDLE

    def shutdown(self) -> Link | None:
        """Stop for good; returns the connection, if any, for the channel to retire."""
        self._shut = True
        self._stop_health()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        _abort(self._made, self.link, "channel closed")
        self._made = []
        link, self.link = self.link, None
        self.state = SHUTDOWN
        return link

    def disconnected(self) -> None:
        """Its connection ended (or drains after GOAWAY): idle, ready to connect again.
        Its Watch is cancelled (A17: no need to wait for its status)."""
        self._stop_health()
        self.link = None
        self.error = ""         # (a health error: the connection itself had none)
        if not self._shut:
            self._set(IDLE)

    async def _attempt(self) -> None:
        loop = self._balancer.loop
        backoff = self._balancer.backoff
        start = loop.time()
        deadline = start + self._wait
        timeout = max(self._wait, backoff.min_connect_timeout)
        made: list[Link] = []
        self._made = made

        def make_link(hello: Any) -> Link:
            link = self._balancer.make_link(hello)
            made.append(link)
            return link

        try:
            link = await asyncio.wait_for(self._balancer.dial(self.address, make_link), timeout)
        except asyncio.CancelledError:
            _abort(made, None, "connection attempt cancelled")
            raise
        except asyncio.TimeoutError:
            self._failed(made, f"{self.address}: connect timed out after {timeout:g}s", False)
        except (OSError, ConnectionError) as exc:
            refused = isinstance(exc, PermissionError) and "refused" in str(exc)
            self._failed(made, f"{self.address}: {exc or type(exc).__name__}", refused)
        except Exception as exc:   # a bug, not the network: still fail, loudly
            log.exception("lanerpc: connecting to %s raised", self.address)
            self._failed(made, f"{self.address}: {type(exc).__name__}: {exc}", False)
        else:
            _abort(made, link, "superseded")
            self._made = []     # (held, closed links would wait for the gc in a cycle)
            self._failures = 0
            self._wait = backoff.initial
            self.link = link
            self.error = ""
            self._task = None
            service = self._balancer.health_service
            if service is None:
                self._set(READY)
            else:               # A17: CONNECTING until the first health answer
                self._health = self._balancer.loop.create_task(self._health_task(link, service))
                self._set(CONNECTING)
            return
        # Failed: wait out the backoff from the attempt's start, then may try again.
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        self._failures += 1
        self._wait = backoff.jittered(backoff.delay(self._failures))
        self._task = None
        self._set(IDLE)

    # ------------------------------------------------------------ health (gRFC A17)

    async def _health_task(self, link: Link, service: str) -> None:
        try:
            await self._watch_health(link, service)
        except Exception:   # a bug, not the server: loud, and the backend stays usable
            log.exception("lanerpc: health checking %s raised; taken as healthy", self.address)
            if self.link is link:
                self._health_answer(SERVING)

    async def _watch_health(self, link: Link, service: str) -> None:
        """Keep a Watch open on ``link`` and follow its answers. A Watch that ends
        UNIMPLEMENTED means the server has no health service: healthy, not asked
        again. One that ends otherwise makes the subchannel TRANSIENT_FAILURE and is
        made again: at once if it had answered, else after a backoff."""
        request = health_request(service)
        unheard = 0             # Watches in a row that ended without an answer
        while True:
            code, details, heard = await self._one_watch(link, request)
            if self.link is not link:
                return
            if code is grpc.StatusCode.UNIMPLEMENTED:
                log.warning("lanerpc: %s has no health service (Health/Watch is "
                            "UNIMPLEMENTED); health checks off for this connection",
                            self.address)
                self._health_answer(SERVING)
                return
            self._unhealthy(f"health-checking stream ended: {code.name}: {details}")
            if heard:
                unheard = 0
            else:
                await asyncio.sleep(HEALTH_BACKOFF.jittered(HEALTH_BACKOFF.delay(unheard)))
                unheard += 1
            if self.link is not link:
                return
            self._set(CONNECTING)

    async def _one_watch(self, link: Link, request: bytes) -> tuple[grpc.StatusCode, str, bool]:
        """One Watch call, followed until it ends: its status, and whether it answered."""
        heard = False
        call = self._watch = self._balancer.open_watch(link, request)
        try:
            async for message in call:
                if self.link is not link:
                    break
                heard = True
                try:
                    status = serving_status(message)
                except ValueError as exc:   # (not an answer: the next Watch waits a backoff)
                    call.cancel()
                    return grpc.StatusCode.INTERNAL, f"bad health response: {exc}", False
                self._health_answer(status)
        except aio.AioRpcError as err:
            return err.code(), err.details() or "", heard
        finally:
            self._watch = None
        return grpc.StatusCode.OK, "the server ended the Watch", heard

    def _health_answer(self, status: int) -> None:
        if status == SERVING:
            self.error = ""
            if self.state is not READY:
                self._set(READY)
        else:
            self._unhealthy(f"backend unhealthy: {_status_name(status)}")

    def _unhealthy(self, why: str) -> None:
        self.error = f"{self.address}: {why}"
        if self.state is not TRANSIENT_FAILURE:
            self._set(TRANSIENT_FAILURE)

    def _stop_health(self) -> None:
        task, self._health = self._health, None
        if task is not None:
            task.cancel()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()

    def _failed(self, made: list[Link], error: str, refused: bool) -> None:
        _abort(made, None, "connection attempt failed")
        self._made = []
        self.error = error
        self.refused = refused
        log.debug("lanerpc: connecting to %s failed: %s", self.address, error)
        self._set(TRANSIENT_FAILURE)

    def _set(self, state: grpc.ChannelConnectivity) -> None:
        if self._shut:
            return
        self.state = state
        self._balancer.subchannel_changed(self)


def _abort(made: list[Link], keep: Link | None, reason: str) -> None:
    """Close every connection an attempt made but did not hand over."""
    for link in made:
        if link is not keep and link.transport is not None and not link.conn.closed:
            link.abort(reason)


# ============================================================ policies

class Policy:
    """What every policy does with its subchannels; subclasses choose and pick."""

    health_checks = True    # gRFC A17: pick_first inhibits health checking

    def __init__(self, balancer: "Balancer") -> None:
        self.balancer = balancer
        self.subchannels: list[Subchannel] = []

    def update(self, addresses: list[Endpoint]) -> None:
        """New addresses from the resolver: keep the subchannels of those still there."""
        old = {sc.address: sc for sc in self.subchannels}
        self.subchannels = [old.pop(address) if address in old
                            else Subchannel(address, self.balancer) for address in addresses]
        for sc in old.values():
            self.balancer.retire(sc.shutdown())
        self.addresses_changed()

    def addresses_changed(self) -> None:
        raise NotImplementedError

    def exit_idle(self) -> None:
        raise NotImplementedError

    def changed(self, sc: Subchannel) -> None:
        raise NotImplementedError

    def pick(self) -> Link | None:
        raise NotImplementedError

    def peek(self) -> Link | None:
        return self.pick()

    def stop(self) -> None:
        """Drop every subchannel (shut down already) and link: nothing is kept."""
        self.subchannels = []

    def errors(self) -> tuple[str, bool]:
        """The subchannels' last errors, and whether every one was a refusal."""
        failed = [sc for sc in self.subchannels if sc.error]
        return ("; ".join(sc.error for sc in failed),
                bool(failed) and all(sc.refused for sc in failed))


class PickFirst(Policy):
    """One connection: the first address to connect, trying them in order with
    happy eyeballs; on losing it, IDLE until a call wants it again."""

    health_checks = False

    def __init__(self, balancer: "Balancer", shuffle: bool = False) -> None:
        super().__init__(balancer)
        self.shuffle = shuffle
        self.selected: Subchannel | None = None
        self._passing = False       # a pass over the addresses is under way
        self._next = 0              # the next address the pass tries
        self._timer: asyncio.TimerHandle | None = None
        self._sticky = False        # every address failed: TF until one connects

    def update(self, addresses: list[Endpoint]) -> None:
        if self.shuffle:
            addresses = random.sample(addresses, len(addresses))
        super().update(addresses)

    def addresses_changed(self) -> None:
        if self.selected is not None and self.selected not in self.subchannels:
            self.selected = None
        if self.selected is None and self.balancer.state is not IDLE:
            self._start_pass()      # (while IDLE, the next call connects)

    def exit_idle(self) -> None:
        if self.selected is None and not self._passing and not self._sticky:
            self._start_pass()

    def _start_pass(self) -> None:
        self._passing = True
        self._next = 0
        if not self._sticky:
            self.balancer.set_state(CONNECTING)
        self._advance()

    def _advance(self) -> None:
        """Start the next address's attempt; after the last, fail if none is left."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        subs = self.subchannels
        while self._next < len(subs):
            sc = subs[self._next]
            self._next += 1
            if sc.state is IDLE:
                sc.connect()
            if sc.state is CONNECTING:
                self._timer = self.balancer.loop.call_later(HAPPY_EYEBALLS_DELAY, self._advance)
                return
        if not any(sc.state is CONNECTING for sc in subs):
            self._fail()

    def _fail(self) -> None:
        self._passing = False
        self._sticky = True
        self.balancer.set_state(TRANSIENT_FAILURE)
        self.balancer.request_resolution()
        for sc in self.subchannels:     # each tries again once its backoff is over
            sc.connect()

    def _select(self, sc: Subchannel) -> None:
        self.selected = sc
        self._passing = self._sticky = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for other in self.subchannels:
            if other is not sc:
                other.cancel_attempt()
        self.balancer.set_state(READY)

    def changed(self, sc: Subchannel) -> None:
        if sc.state is READY:
            if self.selected is None:
                self._select(sc)
            elif sc is not self.selected:     # a late winner: not needed
                link, sc.link = sc.link, None
                sc.state = IDLE
                self.balancer.retire(link)
        elif sc is self.selected:
            if sc.state is IDLE:              # its connection ended
                self.selected = None
                self.balancer.set_state(IDLE)
                self.balancer.request_resolution()
        elif sc.state is TRANSIENT_FAILURE and self._passing:
            self._advance()                   # failed fast: don't wait for the timer
        elif sc.state is IDLE and self._sticky:
            sc.connect()

    def stop(self) -> None:
        super().stop()
        self.selected = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pick(self) -> Link | None:
        sc = self.selected
        return sc.link if sc is not None else None


class RoundRobin(Policy):
    """A connection to every address, kept up; calls spread over the READY ones."""

    def __init__(self, balancer: "Balancer") -> None:
        super().__init__(balancer)
        self._ready: list[Link] = []
        self._turn = 0
        self._active = False

    def addresses_changed(self) -> None:
        self._refresh()
        if self._active:
            self.exit_idle()

    def exit_idle(self) -> None:
        self._active = True
        for sc in self.subchannels:
            sc.connect()
        self._refresh()

    def changed(self, sc: Subchannel) -> None:
        if sc.state is IDLE:
            if sc.error == "":      # a connection ended (not a backoff's end)
                self.balancer.request_resolution()
            sc.connect()
        elif sc.state is TRANSIENT_FAILURE:
            self.balancer.request_resolution()
        self._refresh()

    def _ready_links(self) -> list[Link]:
        return [sc.link for sc in self.subchannels if sc.state is READY and sc.link is not None]

    def _refresh(self) -> None:
        self._ready = self._ready_links()
        states = [sc.state for sc in self.subchannels]
        if self._ready:
            state = READY
        elif not self._active:
            return                        # IDLE until a call wants a connection
        elif self.balancer.state is TRANSIENT_FAILURE:
            state = TRANSIENT_FAILURE     # sticky until one is READY, as gRPC's
        elif any(s is CONNECTING or s is IDLE for s in states):
            state = CONNECTING
        else:
            state = TRANSIENT_FAILURE
        self.balancer.set_state(state)

    def stop(self) -> None:
        super().stop()
        self._ready = []

    def pick(self) -> Link | None:
        ready = self._ready
        if not ready:
            return None
        self._turn += 1
        return ready[self._turn % len(ready)]

    def peek(self) -> Link | None:
        ready = self._ready
        return ready[(self._turn + 1) % len(ready)] if ready else None


class LocalFirst(RoundRobin):
    """Round robin over the READY connections on a local lane (shm, unix); over the
    remote ones only while no local one is READY."""

    def _ready_links(self) -> list[Link]:
        ready = super()._ready_links()
        local = [link for link in ready if link.lane in _LOCAL_LANES]
        return local or ready


def make_policy(name: str, balancer: "Balancer", config: dict[str, Any]) -> Policy:
    """The policy ``name``: one of rpc._service_config.LB_POLICIES, the names the
    options and the service config accept."""
    if name == "pick_first":
        return PickFirst(balancer, shuffle=bool(config.get("shuffleAddressList", False)))
    if name == "round_robin":
        return RoundRobin(balancer)
    if name == "lanerpc_local_first":
        return LocalFirst(balancer)
    raise ValueError(f"unknown load-balancing policy {name!r}; lanerpc has {', '.join(LB_POLICIES)}")


# ============================================================ the balancer

async def _closed_dial(address: Endpoint, make_link: LinkFactory) -> Link:
    raise ConnectionError("channel closed")


def _closed_link(hello: Any) -> Link:
    raise ConnectionError("channel closed")


def _ignore(_: Any) -> None:
    pass


class Balancer:
    """A channel's resolver, subchannels and policy. The channel asks it for a link
    (:meth:`pick`), to connect (:meth:`exit_idle`), and tells it of links that end;
    it tells the channel its state and hands back links to retire."""

    def __init__(self, resolver: Resolver, policy: str, config: dict[str, Any], *,
                 dial: Dial, make_link: LinkFactory, backoff: Backoff,
                 on_state: Callable[[grpc.ChannelConnectivity], None],
                 retire: Callable[[Link], None], health_service: str | None = None,
                 open_watch: OpenWatch = _no_watch) -> None:
        self.resolver = resolver
        self.backoff = backoff
        self.dial = dial
        self.make_link = make_link
        self.state = IDLE
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by exit_idle
        self._on_state = on_state
        self._retire = retire
        self._resolved = False
        self._resolve_error = ""
        self._resolving: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._shut = False
        self.policy = make_policy(policy, self, config)
        # The service whose health each subchannel watches; None: no health checks.
        self.health_service = health_service if self.policy.health_checks else None
        self.open_watch = open_watch

    # ------------------------------------------------------------ the channel's side

    def pick(self) -> Link | None:
        return self.policy.pick()

    def peek(self) -> Link | None:
        """The link the next pick would give, without moving the turn."""
        return self.policy.peek()

    def exit_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect as the policy does (resolving the target first if not yet done)."""
        if self._shut:
            return
        self.loop = loop
        if not self._resolved:
            static = self.resolver.static()
            if static is not None:
                self._resolved = True
                self.policy.update(static)
            else:
                if self.state is IDLE:
                    self.set_state(CONNECTING)
                self._start_resolving()
                return
        self.policy.exit_idle()

    def changed(self) -> asyncio.Future[None]:
        """A future set at the next change of state or of the links to pick from."""
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def error(self) -> tuple[str, bool]:
        """Why the channel can't connect, and whether every server refused it."""
        if not self._resolved and self._resolve_error:
            return self._resolve_error, False
        return self.policy.errors()

    def links(self) -> list[Link]:
        return [sc.link for sc in self.policy.subchannels if sc.link is not None]

    def link_ended(self, link: Link) -> None:
        """A link ended or drains (GOAWAY): its subchannel goes IDLE; ask DNS again."""
        for sc in self.policy.subchannels:
            if sc.link is link:
                sc.disconnected()
                self.request_resolution()
                return

    def shutdown(self) -> list[Link]:
        """Stop everything; returns the links still open, for the channel to close."""
        self._shut = True
        if self._resolving is not None:
            self._resolving.cancel()
            self._resolving = None
        links = [link for sc in self.policy.subchannels
                 if (link := sc.shutdown()) is not None]
        self.policy.stop()
        self._wake()
        # The channel's callbacks go too: no cycle keeps a closed channel for the gc.
        self.dial, self.make_link, self.open_watch = _closed_dial, _closed_link, _no_watch
        self._on_state, self._retire = _ignore, _ignore
        return links

    # ------------------------------------------------------------ the policy's side

    def set_state(self, state: grpc.ChannelConnectivity) -> None:
        if state is not self.state and not self._shut:
            self.state = state
            self._on_state(state)
        self._wake()

    def subchannel_changed(self, sc: Subchannel) -> None:
        if not self._shut:
            self.policy.changed(sc)
            self._wake()

    def retire(self, link: Link | None) -> None:
        if link is not None:
            self._retire(link)

    def request_resolution(self) -> None:
        """Resolve again (a subchannel failed or got GOAWAY), no sooner than the
        resolver's minimum interval since the last lookup."""
        if self.resolver.dynamic and not self._shut:
            self._start_resolving()

    # ------------------------------------------------------------ resolving

    def _start_resolving(self) -> None:
        if self._resolving is None or self._resolving.done():
            self._resolving = self.loop.create_task(self._resolve())

    async def _resolve(self) -> None:
        while not self._shut:
            delay = self.resolver.delay(self.loop.time())
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                addresses = await self.resolver.resolve(self.loop.time())
            except ResolutionError as exc:
                log.debug("lanerpc: %s", exc)
                if self._resolved:
                    return          # keep the addresses we have
                self._resolve_error = str(exc)
                self.set_state(TRANSIENT_FAILURE)
                continue            # try again after the resolver's backoff
            self._resolving = None
            first = not self._resolved
            self._resolved = True
            self.policy.update(addresses)
            if first:
                self.policy.exit_idle()
            self._wake()
            return

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
