"""A cancel storm: 10,000 calls started and cancelled as fast as possible against
a server with maximum_concurrent_rpcs=8. The limit holds (the handlers count
themselves), memory stays bounded, no per-call state is left behind, and an
honest client alongside keeps getting answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import resource
import time

import grpc
import pytest

from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, wait_until

_C = grpc.StatusCode
LIMIT = 8
CALLS = 10_000
STORMERS = 4


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _work(rng: random.Random) -> int:
    """How long a storm call's handler works, in ms (0 for most, so many are cancelled
    before, during and after their handler)."""
    return rng.choice((0, 1, 3, 10))


def _start_call(stub, i: int, rng: random.Random):
    kind = i % 4
    if kind == 0:
        return stub.Unary(msg(b"sleep:%d" % _work(rng)), timeout=10)
    if kind == 1:
        return stub.ServerStream(msg(b"stream:4:%d" % _work(rng)), timeout=10)
    if kind == 2:
        return stub.ClientStream(timeout=10)
    return stub.Bidi(timeout=10)


async def _storm(stub, n: int, rng: random.Random, codes: dict, batch: int = 16) -> None:
    """Start ``n`` calls of every kind, ``batch`` at a time (so many are in flight
    and the limit is pressed), and cancel each: at once, after one loop turn, or
    after a short random delay (so some handlers are cancelled mid-run)."""
    for first in range(0, n, batch):
        calls = [_start_call(stub, i, rng) for i in range(first, min(n, first + batch))]
        for j, call in enumerate(calls):
            if j % 4 == 3 and isinstance(call, grpc.aio.StreamStreamCall):
                try:
                    await asyncio.wait_for(call.write(msg(b"sleep:%d" % _work(rng))), 5)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    pass   # already ended (refused with RESOURCE_EXHAUSTED)
            when = rng.random()
            if when < 0.3:
                pass                                  # cancel at once
            elif when < 0.6:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(rng.uniform(0, 0.002))
            call.cancel()
        for code in await asyncio.wait_for(asyncio.gather(*(c.code() for c in calls)), 5):
            codes[code] = codes.get(code, 0) + 1


async def _honest(stub, stop: asyncio.Event, results: dict) -> None:
    while not stop.is_set():
        try:
            reply = await asyncio.wait_for(stub.Unary(msg(b"honest"), timeout=5), 6)
            assert reply.payload == b"honest"
            results["ok"] += 1
        except grpc.aio.AioRpcError as err:
            results[err.code()] = results.get(err.code(), 0) + 1
            await asyncio.sleep(0.001)


class StormResult:
    codes: dict
    servicer: Echo
    honest: dict
    storm_time: float
    running_after: int
    after_codes: list
    rss_grown: int
    maxrss_grown_kib: int


async def run_storm() -> StormResult:
    """The storm, against an in-process server; everything measured, nothing asserted."""
    result = StormResult()
    servicer = result.servicer = Echo()
    stop = asyncio.Event()
    result.honest = {"ok": 0}
    honest_task = None
    async with serve(servicer, maximum_concurrent_rpcs=LIMIT) as served:
        storm_channels = [served.channel() for _ in range(2)]
        honest_channel = served.channel()
        try:
            for channel in (*storm_channels, honest_channel):
                await asyncio.wait_for(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"warm"), timeout=5), 6)
            gc.collect()
            rss_before = rss_bytes()
            maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux

            honest_stub = echo_pb2_grpc.EchoStub(honest_channel)
            honest_task = asyncio.create_task(_honest(honest_stub, stop, result.honest))
            rng = random.Random(1234)
            result.codes = {}
            started = time.monotonic()
            stubs = [echo_pb2_grpc.EchoStub(storm_channels[i % 2]) for i in range(STORMERS)]
            await asyncio.wait_for(
                asyncio.gather(*(_storm(stub, CALLS // STORMERS, rng, result.codes) for stub in stubs)), 40)
            result.storm_time = time.monotonic() - started
            stop.set()
            await asyncio.wait_for(honest_task, 10)

            # Nothing per call is left: handlers unwound, and (calls now sent at once) slots given back.
            with contextlib.suppress(AssertionError):
                await wait_until(lambda: not servicer.running, 3)
            result.running_after = servicer.running
            after = [honest_stub.Unary(msg(b"honest"), timeout=5) for _ in range(LIMIT)]
            await asyncio.wait_for(asyncio.gather(*(c.code() for c in after)), 6)
            result.after_codes = [await c.code() for c in after]

            gc.collect()
            result.rss_grown = rss_bytes() - rss_before
            result.maxrss_grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
            return result
        finally:
            stop.set()
            if honest_task is not None and not honest_task.done():
                honest_task.cancel()


async def test_cancel_storm_never_exceeds_the_limit_and_bounds_memory(runtime_dir):
    storm = await run_storm()
    codes = storm.codes
    assert sum(codes.values()) == CALLS
    assert set(codes) <= {_C.CANCELLED, _C.OK, _C.RESOURCE_EXHAUSTED}, codes
    assert codes.get(_C.RESOURCE_EXHAUSTED, 0) > 0, codes      # the limit was pressed
    assert storm.servicer.peak <= LIMIT, f"{storm.servicer.peak} handlers ran at once; limit {LIMIT}"
    assert storm.running_after == 0
    assert storm.rss_grown < 64 * 2**20, f"RSS grew {storm.rss_grown / 2**20:.1f} MiB over {CALLS} calls"
    assert storm.maxrss_grown_kib < 128 * 2**10, f"max RSS grew {storm.maxrss_grown_kib / 2**10:.1f} MiB"
    assert storm.storm_time < 30


async def test_cancel_storm_leaves_the_server_serving_an_honest_client(runtime_dir):
    storm = await run_storm()
    codes = storm.codes
    assert codes.get(_C.CANCELLED, 0) > CALLS // 10, codes
    assert storm.servicer.cancelled_calls > 100, storm.servicer.cancelled_calls   # cancelled mid-run
    assert storm.honest["ok"] >= 20, (storm.honest, storm.storm_time)
    assert storm.after_codes == [_C.OK] * LIMIT, storm.after_codes   # all LIMIT slots free again


@pytest.mark.parametrize("limit", [1, 3])
async def test_limit_counts_running_handlers_not_cancelled_calls(limit, runtime_dir):
    """After any number of cancelled calls, exactly ``limit`` calls can run at once again."""
    servicer = Echo()
    async with serve(servicer, maximum_concurrent_rpcs=limit) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        for _ in range(300):
            call = stub.Unary(msg(b"wait"), timeout=5)
            if random.random() < 0.5:
                await asyncio.sleep(0)
            call.cancel()
        # The server frees a cancelled call's slot once it has read the CANCEL (a call
        # cancelled early never starts a handler): nothing public shows that moment, so
        # this one wait is a pause. After it, no handler may be left running.
        await asyncio.sleep(0.05)
        assert servicer.running == 0
        holders = [stub.Unary(msg(b"wait"), timeout=5) for _ in range(limit)]
        await wait_until(lambda: servicer.running == limit, 1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(stub.Unary(msg(b"one more"), timeout=5), 6)
        assert info.value.code() == _C.RESOURCE_EXHAUSTED
        servicer.release()
        await asyncio.wait_for(asyncio.gather(*holders), 5)
        assert (await asyncio.wait_for(stub.Unary(msg(b"x"), timeout=5), 6)).payload == b"x"
