"""Subchannels and load-balancing policies over fake connections: which address is
tried when, which connection a call gets, the channel's state, the backoff."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from rpc import _balancer
from rpc._resolver import Resolver
from rpc._target import Endpoint
from tests._support import wait_until, within

S = grpc.ChannelConnectivity


class FakeLink:
    def __init__(self, address: Endpoint, lane: str = "tcp") -> None:
        self.address = address
        self.lane = lane
        self.transport = object()
        self.conn = SimpleNamespace(closed=False)
        self.aborted = ""

    def abort(self, reason: str) -> None:
        self.aborted = reason
        self.conn.closed = True


class Backends:
    """What each address does when dialed: "ok" (connects, lane "tcp"), a lane name,
    "refuse", or "hang" (never answers). Records each attempt's time."""

    def __init__(self, **behaviour: str) -> None:
        self.behaviour = behaviour
        self.attempts: list[tuple[str, float]] = []
        self.hung: list[FakeLink] = []

    async def dial(self, address: Endpoint, make_link: Any) -> Any:
        name = address.host
        self.attempts.append((name, asyncio.get_running_loop().time()))
        what = self.behaviour.get(name, "refuse")
        if what == "refuse":
            raise ConnectionRefusedError(111, "Connection refused")
        link = FakeLink(address, "tcp" if what == "ok" else what)
        if what == "hang":
            self.hung.append(link)
            make_link(None)      # the balancer must abort what a cancelled attempt made
            await asyncio.Event().wait()
        return link

    def tried(self) -> list[str]:
        return [name for name, _ in self.attempts]


def balancer(backends: Backends, target: str, policy: str = "pick_first", *,
             backoff: _balancer.Backoff | None = None, resolver: Resolver | None = None,
             config: dict | None = None):
    states: list[S] = []
    retired: list[Any] = []
    made: list[FakeLink] = []

    def make_link(hello: Any) -> Any:
        link = FakeLink(Endpoint("tcp", host="made"))
        made.append(link)
        return link

    b = _balancer.Balancer(resolver or Resolver(target), policy, config or {},
                           dial=backends.dial, make_link=make_link,
                           backoff=backoff or _balancer.Backoff(), on_state=states.append,
                           retire=retired.append)
    b.states, b.retired, b.made = states, retired, made   # type: ignore[attr-defined]
    return b


def ipv4(*hosts: str) -> str:
    return "ipv4:" + ",".join(f"{host}:1" for host in hosts)


async def ready(b: Any, timeout: float = 5.0) -> Any:
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: b.pick() is not None, timeout)
    return b.pick()


# ------------------------------------------------------------ pick_first

async def test_pick_first_uses_the_first_address_that_connects_and_starts_idle():
    backends = Backends(**{"10.0.0.2": "ok", "10.0.0.3": "ok"})
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    assert b.state is S.IDLE and b.pick() is None and backends.attempts == []
    link = await ready(b)
    assert link.address.host == "10.0.0.2"
    assert backends.tried() == ["10.0.0.1", "10.0.0.2"]    # refused at once: the next
    assert b.states == [S.CONNECTING, S.READY]
    assert all(b.pick() is link for _ in range(5))
    b.shutdown()


async def test_pick_first_happy_eyeballs_a_silent_address_costs_250ms_not_a_stall():
    backends = Backends(**{"10.0.0.1": "hang", "10.0.0.2": "ok"})
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    link = await ready(b, timeout=2.0)
    took = loop.time() - start
    assert link.address.host == "10.0.0.2"
    assert _balancer.HAPPY_EYEBALLS_DELAY <= took < 1.0
    # The loser's attempt is cancelled and what it had made is closed.
    await wait_until(lambda: all(made.conn.closed for made in b.made))
    assert b.made and b.made[0].aborted
    b.shutdown()


async def test_pick_first_when_every_address_fails_is_transient_failure_with_each_error():
    backends = Backends()
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2"))
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: b.state is S.TRANSIENT_FAILURE)
    error, refused = b.error()
    assert "10.0.0.1:1: [Errno 111] Connection refused" in error and "10.0.0.2:1" in error
    assert not refused
    b.shutdown()


async def test_pick_first_losing_its_connection_goes_idle_and_reconnects_when_asked():
    backends = Backends(**{"10.0.0.1": "ok"})
    b = balancer(backends, ipv4("10.0.0.1"))
    link = await ready(b)
    b.link_ended(link)
    assert b.state is S.IDLE and b.pick() is None
    assert len(backends.attempts) == 1        # IDLE: nothing until a call wants it
    again = await ready(b)
    assert again is not link and len(backends.attempts) == 2
    b.shutdown()


async def test_pick_first_shuffle_address_list_shuffles():
    hosts = [f"10.0.0.{i}" for i in range(1, 9)]
    firsts = set()
    for _ in range(6):
        backends = Backends(**{host: "hang" for host in hosts})
        b = balancer(backends, ipv4(*hosts), config={"shuffleAddressList": True})
        b.exit_idle(asyncio.get_running_loop())
        await wait_until(lambda: backends.attempts != [])
        firsts.add(backends.tried()[0])
        b.shutdown()
    assert len(firsts) > 1


# ------------------------------------------------------------ backoff, connect timeout

async def test_a_subchannel_waits_gRPCs_growing_backoff_between_attempts():
    backoff = _balancer.Backoff(initial=0.05, maximum=0.2)
    backends = Backends()
    b = balancer(backends, ipv4("10.0.0.1"), backoff=backoff)
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: len(backends.attempts) >= 6)
    b.shutdown()
    times = [t for _, t in backends.attempts]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    # 0.05, then 0.08, 0.128, 0.2 (capped), each after the first with 20 % jitter.
    wanted = [0.05, 0.08, 0.128, 0.2, 0.2]
    for gap, want in zip(gaps, wanted):
        assert gap >= want * 0.8 - 0.005, (gaps, wanted)


async def test_an_attempt_is_bounded_by_the_min_connect_timeout():
    backoff = _balancer.Backoff(initial=0.01, maximum=0.01, min_connect_timeout=0.1)
    backends = Backends(**{"10.0.0.1": "hang"})
    b = balancer(backends, ipv4("10.0.0.1"), backoff=backoff)
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: b.state is S.TRANSIENT_FAILURE, 2.0)
    assert "connect timed out after 0.1s" in b.error()[0]
    b.shutdown()


def test_min_reconnect_backoff_ms_sets_the_min_connect_timeout_as_in_grpc():
    from rpc import _options
    assert _options.Options().min_connect_timeout == 20.0
    assert _options.parse([("grpc.min_reconnect_backoff_ms", 1500)]).min_connect_timeout == 1.5


# ------------------------------------------------------------ round_robin, local first

async def test_round_robin_spreads_picks_over_the_ready_subchannels_in_turn():
    backends = Backends(**{"10.0.0.1": "ok", "10.0.0.2": "ok", "10.0.0.3": "refuse"})
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2", "10.0.0.3"), "round_robin")
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: len(b.links()) == 2)
    assert b.state is S.READY
    hosts = [b.pick().address.host for _ in range(10)]
    assert hosts.count("10.0.0.1") == hosts.count("10.0.0.2") == 5
    assert all(a != c for a, c in zip(hosts, hosts[1:]))
    b.shutdown()


async def test_round_robin_state_is_ready_if_any_else_connecting_else_failure():
    backends = Backends(**{"10.0.0.1": "hang"})
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2"), "round_robin")
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: len(backends.attempts) == 2)
    assert b.state is S.CONNECTING          # one failed, one still connecting
    b.shutdown()
    backends = Backends()
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2"), "round_robin")
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: b.state is S.TRANSIENT_FAILURE)
    b.shutdown()


async def test_round_robin_reconnects_a_lost_subchannel_at_once():
    backends = Backends(**{"10.0.0.1": "ok", "10.0.0.2": "ok"})
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2"), "round_robin")
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: len(b.links()) == 2)
    lost = b.links()[0]
    b.link_ended(lost)
    assert lost not in b.links() and b.state is S.READY
    await wait_until(lambda: len(b.links()) == 2)
    assert len(backends.attempts) == 3
    b.shutdown()


async def test_local_first_prefers_local_lanes_and_spills_to_remote_ones():
    backends = Backends(**{"10.0.0.1": "ok", "10.0.0.2": "shm", "10.0.0.3": "unix"})
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2", "10.0.0.3"), "lanerpc_local_first")
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: len(b.links()) == 3)
    assert {b.pick().lane for _ in range(10)} == {"shm", "unix"}
    for link in [link for link in b.links() if link.lane != "tcp"]:
        backends.behaviour[link.address.host] = "hang"     # they don't come back soon
        b.link_ended(link)
    assert {b.pick().lane for _ in range(4)} == {"tcp"}
    b.shutdown()


# ------------------------------------------------------------ re-resolution

async def test_a_lost_connection_resolves_again_within_the_rate_limit_and_adds_new_addresses():
    records = [["10.0.0.1"]]
    asked: list[float] = []

    async def lookup(host: str, port: int):
        asked.append(asyncio.get_running_loop().time())
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (h, port)) for h in records[-1]]

    backends = Backends(**{"10.0.0.1": "ok", "10.0.0.2": "ok"})
    b = balancer(backends, "", "round_robin",
                 resolver=Resolver("backends.example:1", lookup=lookup, min_interval=0.3))
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: len(b.links()) == 1)
    records.append(["10.0.0.1", "10.0.0.2"])
    b.link_ended(b.links()[0])             # a failure: ask DNS again, not before 0.3 s
    await wait_until(lambda: len(b.links()) == 2)
    assert len(asked) == 2 and asked[1] - asked[0] >= 0.3 - 0.01
    assert sorted(link.address.host for link in b.links()) == ["10.0.0.1", "10.0.0.2"]
    b.shutdown()


async def test_a_name_that_does_not_resolve_fails_the_channel_with_the_reason():
    async def failing(host: str, port: int):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    b = balancer(Backends(), "", resolver=Resolver("nowhere.invalid:1", lookup=failing))
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: b.state is S.TRANSIENT_FAILURE)
    assert "DNS resolution failed for nowhere.invalid:1" in b.error()[0]
    b.shutdown()


def test_an_unknown_policy_name_is_refused():
    with pytest.raises(ValueError, match="unknown load-balancing policy 'bogus'"):
        balancer(Backends(), ipv4("10.0.0.1"), "bogus")


async def test_shutdown_stops_every_attempt():
    backends = Backends(**{"10.0.0.1": "hang", "10.0.0.2": "hang"})
    b = balancer(backends, ipv4("10.0.0.1", "10.0.0.2"), "round_robin")
    b.exit_idle(asyncio.get_running_loop())
    await wait_until(lambda: len(b.made) == 2)
    assert b.shutdown() == []
    await within(asyncio.sleep(0))
    await wait_until(lambda: all(made.conn.closed for made in b.made))


@pytest.mark.parametrize("policy", ["pick_first", "round_robin"])
async def test_a_name_goes_connecting_then_ready_with_no_idle_in_between(policy):
    async def lookup(host: str, port: int):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))]

    backends = Backends(**{"10.0.0.1": "ok"})
    b = balancer(backends, "", policy, resolver=Resolver("backends.example:1", lookup=lookup))
    await ready(b)
    assert b.states == [S.CONNECTING, S.READY]
    b.shutdown()
