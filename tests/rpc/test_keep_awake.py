"""The socket lanes' keep-awake: after the write of a lone unary call the loop keeps
polling for the answer for a few tens of microseconds instead of sleeping, and stops
doing so by itself when answers do not come that fast."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from examples.echo import echo_pb2_grpc
from rpc import _link
from rpc._link import Link
from rpc.transports import _spin
from tests._support import Echo, msg, serve, wait_until

# Captured before the autouse fixture below replaces it.
_REAL_PEER_CHECK = _link._peer_is_this_process

# The budget is widened from its default (tens of µs) so that what is tested is the
# mechanism, not whether this machine answers within it while other tests run.
BUDGET_US = 5_000.0


@pytest.fixture(autouse=True)
def wide_budget(monkeypatch):
    monkeypatch.setattr(Link, "_AWAKE_US", BUDGET_US)
    monkeypatch.setattr(_spin, "cpus_available", lambda: 2)   # one CPU: never spins
    # Never preempted: a wait that ends in a read is a catch, however loaded the
    # machine running the tests is (the preempted case has a test of its own).
    monkeypatch.setattr(_link, "_involuntary_switches", lambda: 0)
    # Client and server are this one process here, which a link normally never stays
    # awake for (the answer needs this process): the mechanism is tested as between two.
    monkeypatch.setattr(_link, "_peer_is_this_process", lambda peer: False)


UNIX_ONLY = [("lanerpc.lanes", "unix")]   # not switched on to shm, which polls its own way


def serve_unix(tmp_path, delay: float = 0.0):
    """A unix-lane server whose Echo answers after ``delay`` seconds."""
    return serve(Echo(delay), address=f"unix:{tmp_path}/echo.sock", options=UNIX_ONLY)


async def calls(stub, n: int) -> None:
    for i in range(n):
        reply = await stub.Unary(msg(b"%d" % i), timeout=5)
        assert reply.payload == b"%d" % i


async def test_quick_answers_are_caught_awake(tmp_path):
    async with serve_unix(tmp_path) as served:
        channel = served.channel(options=UNIX_ONLY)
        await calls(echo_pb2_grpc.EchoStub(channel), 50)
        assert channel.lane == "unix"
        awake = channel._link._awake
        # Client and server share this loop, so the answer comes while the
        # client polls: keep-awake pays and stays on.
        assert awake.spins >= 45
        assert awake.catches >= awake.spins - 2
        assert awake.skipped == 0


async def test_a_server_answering_at_once_counts_its_catches(tmp_path):
    """A server's response goes out while it is still awake from its last one (that
    wait caught the request being answered): the catch must count, or the server
    records only its misses and stops polling for good."""
    async with serve_unix(tmp_path) as served:
        channel = served.channel(options=UNIX_ONLY)
        await calls(echo_pb2_grpc.EchoStub(channel), 50)
        (server_link,) = served.server._links
        awake = server_link._awake
        assert awake.catches >= 45
        assert awake.catches >= awake.spins - 2
        assert awake.skipped == 0


async def thirty_calls_back_off(tmp_path, delay: float = 0.0) -> None:
    """30 calls to a server answering after ``delay``: the client's keep-awake caught
    none, and after a few misses it only probes now and then."""
    async with serve_unix(tmp_path, delay) as served:
        channel = served.channel(options=UNIX_ONLY)
        await calls(echo_pb2_grpc.EchoStub(channel), 30)
        awake = channel._link._awake
        assert awake.catches == 0
        assert awake.spins < 12
        assert awake.skipped > 18


async def test_a_read_after_being_preempted_is_no_catch(tmp_path, monkeypatch):
    """A thread preempted while it waited (by the peer it waits for, on a CPU they
    share) did not gain by spinning, whatever came then: it backs off."""
    switches = iter(range(1_000_000))
    monkeypatch.setattr(_link, "_involuntary_switches", lambda: next(switches))
    await thirty_calls_back_off(tmp_path)


async def test_no_side_stays_awake_for_a_peer_in_this_process(tmp_path, monkeypatch):
    """Client and server in one process: the answer needs this process's CPU, so
    neither link spins for it (the shm lane's poll neither: tests/e2e/test_shm_lane.py)."""
    monkeypatch.setattr(_link, "_peer_is_this_process", _REAL_PEER_CHECK)
    async with serve_unix(tmp_path) as served:
        channel = served.channel(options=UNIX_ONLY)
        await calls(echo_pb2_grpc.EchoStub(channel), 10)
        (server_link,) = served.server._links
        assert channel._link.peer.pid == server_link.peer.pid == os.getpid()
        assert channel._link._awake is None and server_link._awake is None
        assert channel._link._awake_until == server_link._awake_until == 0


async def test_slow_answers_turn_it_off(tmp_path):
    # A 20 ms handler is never caught within the budget.
    await thirty_calls_back_off(tmp_path, delay=0.02)


async def test_nothing_spins_once_the_calls_are_done(tmp_path):
    async with serve_unix(tmp_path) as served:
        channel = served.channel(options=UNIX_ONLY)
        await calls(echo_pb2_grpc.EchoStub(channel), 5)
        (server_link,) = served.server._links
        # Both ends stop polling within the budget (twice over, for the loop's turns).
        await wait_until(lambda: channel._link._awake_until == server_link._awake_until == 0.0,
                         timeout=2 * BUDGET_US / 1e6)
        ready = len(asyncio.get_running_loop()._ready)  # type: ignore[attr-defined]
        assert ready == 0


async def test_many_calls_at_once_do_not_spin(tmp_path):
    async with serve_unix(tmp_path) as served:
        channel = served.channel(options=UNIX_ONLY)
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Unary(msg(), timeout=5)   # connected
        # (its wait's catch, if any, is recorded at the next lone write)
        before = channel._link._awake.spins + channel._link._awake_caught
        await asyncio.gather(*(stub.Unary(msg(), timeout=5) for _ in range(32)))
        # Only a call that finds no other in flight keeps the loop awake.
        assert channel._link._awake.spins - before <= 1


def test_budget_is_kept_on_uvloop(tmp_path, monkeypatch):
    """uvloop's loop.time() ticks in milliseconds: the keep-awake must use a finer
    clock, or a 50 us budget stretches to up to a millisecond of spinning."""
    uvloop = pytest.importorskip("uvloop")
    import statistics
    import time

    monkeypatch.setattr(Link, "_AWAKE_US", 50.0)

    async def main():
        durations = []
        # An Echo that answers after a minute: never within the budget.
        async with serve(Echo(delay=60), address=f"unix:{tmp_path}/silent.sock",
                         options=UNIX_ONLY) as served:
            channel = served.channel(options=UNIX_ONLY)
            await asyncio.wait_for(channel.channel_ready(), 5)
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(9):
                link = channel._link
                link._awake = type(link._awake)(50.0)    # never backed off
                spins = link._awake.spins
                call = stub.Unary(msg(), timeout=5)
                for _ in range(1000):                    # until the call opens
                    if link._awake_until:
                        break
                    await asyncio.sleep(0)
                start = time.perf_counter()
                assert link._awake_until
                while link._awake_until:
                    await asyncio.sleep(0)
                durations.append(time.perf_counter() - start)
                assert link._awake.spins == spins + 1 and link._awake.catches == 0
                call.cancel()
                assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.CANCELLED
        return durations

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        durations = runner.run(main())
    assert statistics.median(durations) < 0.0003, durations
