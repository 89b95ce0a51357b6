"""Lifecycle with real processes: kill -9, SIGTERM drain, SIGSTOP + keepalive,
ping policy, Server.stop(grace), channel connectivity, and which calls are retried.

Server processes are ``tests/e2e/_server_proc.py`` (Echo through ``rpc.serve()``);
every one is stopped by its pid (SIGCONT + SIGKILL) in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time

import grpc
import pytest

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc
from tests._support import Echo, assert_pending, serve, wait_until, within
from tests.e2e._server_proc import ServerProc

_C = grpc.StatusCode
READY = grpc.ChannelConnectivity.READY
IDLE = grpc.ChannelConnectivity.IDLE
TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE

RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "lanerpc.echo.Echo"}],
    "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    },
}]})


def msg(payload: bytes) -> echo_pb2.EchoMessage:
    return echo_pb2.EchoMessage(payload=payload)


async def code_of(call, seconds: float) -> grpc.StatusCode:
    return await within(call.code(), seconds)


def lane_args(lanes: str | None) -> list[str]:
    return ["--lanes", lanes] if lanes else []


def expected_lane(lanes: str | None) -> str:
    """The lane a default-lanes client ends on, given the server's lanes option."""
    return {"tcp": "tcp", "unix,tcp": "unix"}.get(lanes or "", "shm")


async def stop_all(*procs) -> None:
    for proc in procs:
        if proc is not None:
            await proc.stop()


# ============================================================ 1. SIGKILL with every kind pending

async def _writer(call, payload: bytes, every: float):
    """Write until the call ends; return what ended the writing: the call's error for a
    write in flight when it ended, InvalidStateError for one made after (as grpc.aio)."""
    try:
        while True:
            await call.write(msg(payload))
            await asyncio.sleep(every)
    except Exception as exc:   # noqa: BLE001 - the test inspects it
        return exc


async def _reader(call):
    try:
        async for _ in call:
            pass
    except Exception as exc:   # noqa: BLE001
        return exc
    return None


@pytest.mark.parametrize("lanes", ["tcp", "unix,tcp", None], ids=["tcp", "unix", "shm"])
async def test_sigkill_ends_all_pending_calls_and_a_restart_serves_the_same_channel(lanes, runtime_dir):
    server = ServerProc(*lane_args(lanes))
    restarted = None
    channel = None
    tasks: list[asyncio.Task] = []
    shm_before = set(os.listdir("/dev/shm"))
    try:
        await server.start()
        port = server.port
        channel = rpc.insecure_channel(f"127.0.0.1:{port}")
        stub = echo_pb2_grpc.EchoStub(channel)
        await within(stub.Unary(msg(b"warm"), timeout=5), 6)
        assert channel.lane == expected_lane(lanes)

        unary = [stub.Unary(msg(b"sleep:60000"), timeout=30) for _ in range(5)]
        server_streams = [stub.ServerStream(msg(b"stream:100000:50"), timeout=30) for _ in range(5)]
        client_streams = [stub.ClientStream(timeout=30) for _ in range(5)]
        bidis = [stub.Bidi(timeout=30) for _ in range(5)]
        calls = unary + server_streams + client_streams + bidis
        assert len(calls) == 20
        # Every handler is running (each sends initial metadata first).
        await within(asyncio.gather(*(c.initial_metadata() for c in calls)), 5)
        for bidi in bidis:
            await within(bidi.write(msg(b"b")), 2)
            assert (await within(bidi.read(), 2)).payload == b"b"
        writers = [asyncio.create_task(_writer(c, b"mid-write", 0.01))
                   for c in client_streams + bidis]
        readers = [asyncio.create_task(_reader(c)) for c in server_streams]
        awaiters = [asyncio.create_task(_reader_unary(c)) for c in unary]
        tasks = writers + readers + awaiters
        await assert_pending(0.1, *tasks)   # streams flowing, writes in progress
        assert not any(c.done() for c in calls)

        killed_at = time.monotonic()
        server.signal(signal.SIGKILL)
        codes = await within(asyncio.gather(*(c.code() for c in calls)), 1.0)
        elapsed = time.monotonic() - killed_at
        assert codes == [_C.UNAVAILABLE] * 20, codes
        assert elapsed < 1.0
        # What the application saw: every reader and awaiter got AioRpcError UNAVAILABLE;
        # every writer too, or InvalidStateError for a write after the call had ended.
        ended = await within(asyncio.gather(*tasks), 1.0)
        for task, exc in zip(tasks, ended, strict=True):
            if task in writers and isinstance(exc, asyncio.InvalidStateError):
                continue
            assert isinstance(exc, grpc.aio.AioRpcError), repr(exc)
            assert exc.code() == _C.UNAVAILABLE
        await server.wait(5)
        # Names are unlinked once both sides hold them: a kill leaves nothing behind.
        assert set(os.listdir("/dev/shm")) - shm_before == set()

        restarted = ServerProc("--address", f"127.0.0.1:{port}", *lane_args(lanes))
        await restarted.start()
        assert restarted.port == port
        reply = await within(stub.Unary(msg(b"peer"), timeout=5), 6)
        assert reply.payload.decode().endswith(f"|{restarted.pid}")
        assert channel.lane == expected_lane(lanes)
    finally:
        for task in tasks:
            task.cancel()
        if channel is not None:
            await channel.close()
        await stop_all(server, restarted)


async def _reader_unary(call):
    try:
        await call
    except Exception as exc:   # noqa: BLE001
        return exc
    return None


# ============================================================ 2. SIGTERM through rpc.serve

async def test_sigterm_lets_the_running_call_finish_refuses_new_ones_and_exits_0(runtime_dir):
    grace = 5.0
    server = ServerProc("--grace", str(grace))
    channel = other = None
    try:
        await server.start()
        target = f"127.0.0.1:{server.port}"
        channel = rpc.insecure_channel(target)
        stub = echo_pb2_grpc.EchoStub(channel)
        await within(stub.Unary(msg(b"warm"), timeout=5), 6)
        running = stub.Unary(msg(b"sleep:500"), timeout=10)
        await within(running.initial_metadata(), 5)

        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        # The GOAWAY reaches the channel: its connection no longer takes calls.
        await within(channel.wait_for_state_change(READY), 2)

        # Started after the signal: refused, on the same channel and on a new one.
        with pytest.raises(grpc.aio.AioRpcError) as same:
            await within(stub.Unary(msg(b"late"), timeout=5), 6)
        assert same.value.code() == _C.UNAVAILABLE
        other = rpc.insecure_channel(target)
        with pytest.raises(grpc.aio.AioRpcError) as new:
            await within(echo_pb2_grpc.EchoStub(other).Unary(msg(b"late"), timeout=5), 6)
        assert new.value.code() == _C.UNAVAILABLE

        reply = await within(running, 5)
        assert reply.payload == b"sleep:500"
        rc = await server.wait(grace + 1)
        assert rc == 0
        assert time.monotonic() - signalled < grace
    finally:
        for ch in (channel, other):
            if ch is not None:
                await ch.close()
        await server.stop()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_a_second_signal_stops_at_once(second, runtime_dir):
    server = ServerProc("--grace", "30")
    channel = None
    try:
        await server.start()
        channel = rpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = echo_pb2_grpc.EchoStub(channel)
        long_call = stub.Unary(msg(b"sleep:60000"), timeout=60)
        await within(long_call.initial_metadata(), 5)
        server.signal(signal.SIGTERM)
        await within(channel.wait_for_state_change(READY), 2)   # draining now
        ending = asyncio.ensure_future(long_call.code())
        exiting = asyncio.ensure_future(server.proc.wait())
        await assert_pending(0.2, ending, exiting)   # the drain waits for the call

        signalled = time.monotonic()
        server.signal(second)
        rc = await within(exiting, 5)
        assert rc == 0
        assert time.monotonic() - signalled < 2.0
        code = await within(ending, 2)
        assert code != _C.OK
        assert code in (_C.UNAVAILABLE, _C.CANCELLED)
    finally:
        if channel is not None:
            await channel.close()
        await server.stop()


# ============================================================ 3. client streaming and a dying server

@pytest.mark.parametrize("blocked", [False, True], ids=["writing", "blocked-on-flow-control"])
async def test_client_streaming_call_ends_when_the_server_dies(blocked, runtime_dir):
    server = ServerProc()
    channel = None
    pending: asyncio.Future | None = None
    try:
        await server.start()
        channel = rpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = echo_pb2_grpc.EchoStub(channel)
        call = stub.ClientStream(timeout=30)
        await within(call.initial_metadata(), 5)
        if blocked:
            await within(call.write(msg(b"noread")), 2)    # the handler stops reading
            big = msg(b"x" * 65536)
            for _ in range(4000):
                pending = asyncio.ensure_future(call.write(big))
                done, _ = await asyncio.wait({pending}, timeout=0.3)
                if not done:
                    break
                pending.result()
            else:
                pytest.fail("writes never blocked although the server reads nothing")
        else:
            pending = asyncio.ensure_future(_writer(call, b"m", 0.005))
            await assert_pending(0.1, pending)

        killed_at = time.monotonic()
        server.signal(signal.SIGKILL)
        if blocked:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await within(pending, 1.0)
            error = info.value
        else:
            error = await within(pending, 1.0)
            assert isinstance(error, (grpc.aio.AioRpcError, asyncio.InvalidStateError)), repr(error)
        if isinstance(error, grpc.aio.AioRpcError):   # (else a write after the end: the call says)
            assert error.code() == _C.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as awaited:
            await within(call, 1.0)
        assert awaited.value.code() == _C.UNAVAILABLE
        assert time.monotonic() - killed_at < 1.0
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
        if channel is not None:
            await channel.close()
        await server.stop()


# ============================================================ 4. SIGSTOP and keepalive

async def _stats_line(path: str, after: int, timeout: float) -> dict:
    """The first SIGUSR1 stats snapshot the server wrote to its stderr past byte ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            f.seek(after)
            for line in f.read().decode(errors="replace").splitlines():
                marker = "lanerpc stats: "
                if marker in line:
                    return json.loads(line.split(marker, 1)[1])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no stats line in {path}")


@pytest.mark.parametrize("lanes", ["tcp", "unix,tcp", None], ids=["tcp", "unix", "shm"])
async def test_frozen_server_is_detected_by_keepalive_and_the_next_call_reconnects(
        lanes, runtime_dir, tmp_path):
    stderr_path = str(tmp_path / "server.err")
    server = ServerProc(*lane_args(lanes),
                        "--option", "grpc.http2.min_ping_interval_without_data_ms=100",
                        stderr_path=stderr_path)
    channel = None
    try:
        await server.start()
        channel = rpc.insecure_channel(f"127.0.0.1:{server.port}", options=[
            ("grpc.keepalive_time_ms", 500), ("grpc.keepalive_timeout_ms", 500)])
        stub = echo_pb2_grpc.EchoStub(channel)
        first_peer = (await within(stub.Unary(msg(b"peer"), timeout=5), 6)).payload
        pending = stub.Unary(msg(b"sleep:60000"), timeout=30)
        await within(pending.initial_metadata(), 5)

        stopped_at = time.monotonic()
        server.signal(signal.SIGSTOP)
        code = await code_of(pending, 2.5)
        assert code == _C.UNAVAILABLE
        assert time.monotonic() - stopped_at < 2.5
        server.signal(signal.SIGCONT)

        second_peer = (await within(stub.Unary(msg(b"peer"), timeout=5), 6)).payload
        assert second_peer.endswith(b"|%d" % server.pid)
        assert channel.lane == expected_lane(lanes)
        if lanes == "tcp":
            assert second_peer != first_peer       # another client port: a new connection

        offset = os.path.getsize(stderr_path)
        server.signal(signal.SIGUSR1)
        stats = await _stats_line(stderr_path, offset, 3)
        # Two connections seen by the server, one of them still open.
        if lanes == "tcp":
            assert stats["connections_total"] == {"tcp": 2}
            assert stats["connections_open"] == {"tcp": 1}
        else:   # each one dialled on tcp, then moved to unix (and on to shm)
            lane = expected_lane(lanes)
            expected_total = {"tcp": 2, "unix": 2} | ({"shm": 2} if lane == "shm" else {})
            assert stats["connections_total"] == expected_total
            assert stats["connections_open"] == {lane: 1}
    finally:
        if channel is not None:
            await channel.close()
        await server.stop()    # SIGCONT + SIGKILL, by pid


# ============================================================ 5. pinging too often

async def test_client_that_pings_too_often_gets_goaway_and_still_gets_answers(runtime_dir, caplog):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    async with serve(Echo()) as served:    # default ping policy
        server = served.server
        # As with gRPC, a client sends two PINGs in a row at most unless
        # grpc.http2.max_pings_without_data says otherwise (0: no limit).
        channel = served.channel(options=[
            ("grpc.keepalive_time_ms", 50), ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)])
        stub = echo_pb2_grpc.EchoStub(channel)
        assert (await within(stub.Unary(msg(b"a"), timeout=5), 6)).payload == b"a"
        await wait_until(lambda: any("ping too often" in r.getMessage() for r in caplog.records), 3)
        warning = next(r for r in caplog.records if "ping too often" in r.getMessage())
        assert warning.name == "lanerpc"
        assert warning.levelno == logging.WARNING
        total_before = sum(server.stats.connections_total.values())
        for i in range(3):
            reply = await within(stub.Unary(msg(b"after%d" % i), timeout=5), 6)
            assert reply.payload == b"after%d" % i
        assert sum(server.stats.connections_total.values()) > total_before   # a new connection


# ============================================================ 6. Server.stop(grace) in-process

async def test_stop_refuses_new_calls_at_once(runtime_dir):
    async with serve(Echo()) as served:
        channel = served.channel()
        stub = echo_pb2_grpc.EchoStub(channel)
        running = stub.Unary(msg(b"sleep:400"), timeout=10)
        await within(running.initial_metadata(), 5)
        stopping = asyncio.create_task(served.server.stop(5))
        await within(channel.wait_for_state_change(READY), 2)
        for ch in (channel, served.channel()):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await within(echo_pb2_grpc.EchoStub(ch).Unary(msg(b"new"), timeout=5), 6)
            assert info.value.code() == _C.UNAVAILABLE
            assert time.monotonic() - started < 0.5
        assert (await within(running, 5)).payload == b"sleep:400"   # within grace: completes
        await within(stopping, 5)


async def test_calls_running_at_the_end_of_the_grace_are_aborted(runtime_dir):
    servicer = Echo()
    async with serve(servicer) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        calls = [stub.Unary(msg(b"sleep:60000"), timeout=30) for _ in range(3)]
        await within(asyncio.gather(*(c.initial_metadata() for c in calls)), 5)
        started = time.monotonic()
        await within(served.server.stop(0.3), 3)
        stopped_in = time.monotonic() - started
        assert 0.25 <= stopped_in < 1.5
        codes = await within(asyncio.gather(*(c.code() for c in calls)), 1)
        assert all(code not in (_C.OK, _C.DEADLINE_EXCEEDED) for code in codes), codes
        assert servicer.cancelled_calls == 3


async def test_stop_twice_and_concurrently_is_fine(runtime_dir):
    async with serve(Echo()) as served:
        server = served.server
        await within(echo_pb2_grpc.EchoStub(served.channel()).Unary(msg(b"x"), timeout=5), 6)
        await within(asyncio.gather(server.stop(0.2), server.stop(0.2)), 3)
        await within(server.stop(0), 2)
        await within(server.stop(None), 2)
        assert await within(server.wait_for_termination(), 1) is True
    never_started = rpc.server()
    never_started.add_insecure_port("127.0.0.1:0")
    await within(never_started.stop(0), 1)
    await within(never_started.stop(0), 1)


async def test_the_smaller_grace_wins(runtime_dir):
    servicer = Echo()
    async with serve(servicer) as served:
        channel = served.channel()
        call = echo_pb2_grpc.EchoStub(channel).Unary(msg(b"sleep:60000"), timeout=30)
        await within(call.initial_metadata(), 5)
        long_stop = asyncio.create_task(served.server.stop(10))
        await within(channel.wait_for_state_change(READY), 2)    # the stop is under way
        assert not long_stop.done()
        started = time.monotonic()
        await within(served.server.stop(0), 2)
        await within(long_stop, 1.5)          # stop(10) ends with it, not 10 s later
        assert time.monotonic() - started < 1.5
        assert await code_of(call, 1) != _C.OK
        assert servicer.cancelled_calls == 1


async def test_wait_for_termination_returns_after_stop(runtime_dir):
    async with serve(Echo()) as served:
        server = served.server
        assert await within(server.wait_for_termination(timeout=0.1), 1) is False
        waiter = asyncio.create_task(server.wait_for_termination())
        await assert_pending(0.05, waiter)
        await within(server.stop(0), 2)
        assert await within(waiter, 1) is True
        assert await within(server.wait_for_termination(timeout=0.1), 1) is True


# ============================================================ 7. channel connectivity

async def test_channel_state_through_a_server_death_and_restart(runtime_dir):
    server = ServerProc()
    restarted = None
    channel = None
    ready_task = None
    try:
        await server.start()
        port = server.port
        channel = rpc.insecure_channel(f"127.0.0.1:{port}")
        stub = echo_pb2_grpc.EchoStub(channel)
        assert channel.get_state() == IDLE
        await within(stub.Unary(msg(b"x"), timeout=5), 6)
        assert channel.get_state() == READY

        server.signal(signal.SIGKILL)
        await within(channel.wait_for_state_change(READY), 1)
        assert channel.get_state() in (IDLE, TRANSIENT_FAILURE)
        await server.wait(5)

        ready_task = asyncio.create_task(channel.channel_ready())
        await assert_pending(0.3, ready_task)          # nothing to be ready with
        assert channel.get_state() != READY

        restarted = ServerProc("--address", f"127.0.0.1:{port}")
        await restarted.start()
        await within(ready_task, 6)            # the reconnect backoff, then ready
        assert channel.get_state() == READY
        reply = await within(stub.Unary(msg(b"peer"), timeout=5), 6)
        assert reply.payload.endswith(b"|%d" % restarted.pid)
    finally:
        if ready_task is not None and not ready_task.done():
            ready_task.cancel()
        if channel is not None:
            await channel.close()
        await stop_all(server, restarted)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_wait_for_ready_waits_for_a_late_server_and_without_it_fails_at_once(runtime_dir):
    target = f"127.0.0.1:{free_port()}"
    async with rpc.insecure_channel(target) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5), 6)
        assert info.value.code() == _C.UNAVAILABLE
        assert time.monotonic() - started < 0.5     # well before its 5 s deadline

    async with rpc.insecure_channel(target) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        started = time.monotonic()
        call = stub.Unary(msg(b"patient"), timeout=8, wait_for_ready=True)
        ending = asyncio.ensure_future(call.code())
        await assert_pending(0.3, ending)
        async with serve(Echo(), address=target):
            reply = await within(call, 8)
            assert reply.payload == b"patient"
            assert await within(ending, 1) == _C.OK
            assert time.monotonic() - started >= 0.3


# ============================================================ 8. what is retried

async def test_call_refused_by_a_draining_server_is_retried_on_the_next_server_at_that_address(runtime_dir):
    first_servicer, next_servicer = Echo(), Echo()
    async with serve(first_servicer) as first:
        stub = echo_pb2_grpc.EchoStub(first.channel(options=[("grpc.service_config", RETRY_CONFIG)]))
        await within(stub.Unary(msg(b"warm"), timeout=5), 6)
        draining_call = stub.Unary(msg(b"sleep:300"), timeout=10)   # keeps `first` draining
        await within(draining_call.initial_metadata(), 5)
        runs_before = first_servicer.started_calls

        call = stub.Unary(msg(b"retry-me"), timeout=5)   # opened on first's connection...
        stopping = asyncio.create_task(first.server.stop(5))    # ...which starts stopping before reading it
        await asyncio.sleep(0)     # request sent; first's listener closed, GOAWAY sent
        async with serve(next_servicer, address=first.target, lanes="tcp") as following:
            assert following.port == first.port
            reply = await within(call, 6)
            assert reply.payload == b"retry-me"
            assert first_servicer.started_calls == runs_before      # never ran on the draining server
            assert next_servicer.started_calls == 1
            assert (await within(draining_call, 5)).payload == b"sleep:300"
            await within(stopping, 5)


def open_call(stub, kind: str, payload: bytes):
    if kind == "client_stream":
        return stub.ClientStream(timeout=5)       # no message written: the handler would wait
    return stub.Unary(msg(payload), timeout=5)


@pytest.mark.parametrize("kind", [
    "client_stream",
    "unary",
])
async def test_call_refused_by_a_stopping_server_is_unavailable_and_never_started(kind, runtime_dir):
    servicer = Echo()
    async with serve(servicer) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        await within(stub.Unary(msg(b"warm"), timeout=5), 6)
        runs = servicer.started_calls
        stopping = asyncio.create_task(served.server.stop(2))
        await asyncio.sleep(0)      # stop() has begun: GOAWAY written, the listeners closed
        # Whichever comes first (the server refusing the request, the client reading
        # the GOAWAY, or a new connection refused), the handler never runs.
        call = open_call(stub, kind, b"refused")
        assert await code_of(call, 3) == _C.UNAVAILABLE
        assert call.never_started is True
        assert servicer.started_calls == runs
        await within(stopping, 3)


@pytest.mark.parametrize("kind", [
    "client_stream",
    "unary",
])
async def test_call_opened_as_the_server_stops_is_either_refused_or_run(kind, runtime_dir):
    # The request is on its way when stop() is called: the server may read it before
    # stop() begins (on shm a loop spin after the server's last answer reads it in the
    # turn it is written) and run it within the grace, as grpc.aio would; or after,
    # and refuse it. Each outcome must say which it was.
    servicer = Echo()
    async with serve(servicer) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        await within(stub.Unary(msg(b"warm"), timeout=5), 6)
        runs = servicer.started_calls
        call = open_call(stub, kind, b"raced")
        stopping = asyncio.create_task(served.server.stop(0.5))
        code = await code_of(call, 3)
        await within(stopping, 3)
        if servicer.started_calls == runs:
            assert code == _C.UNAVAILABLE
            assert call.never_started is True
        else:
            assert servicer.started_calls == runs + 1
            assert call.never_started is False       # it ran: never offered for a retry
            if kind == "unary":
                assert code == _C.OK                # answered within the grace
                assert (await within(call, 1)).payload == b"raced"
            else:
                assert code == _C.UNAVAILABLE       # still waiting for its input at the grace's end


async def test_call_that_may_have_run_is_never_retried(runtime_dir, tmp_path):
    counter = str(tmp_path / "runs")
    server = ServerProc("--counter-file", counter)
    restarted = None
    channel = None
    try:
        await server.start()
        port = server.port
        channel = rpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.service_config", RETRY_CONFIG)])
        stub = echo_pb2_grpc.EchoStub(channel)
        call = stub.Unary(msg(b"count:60000"), timeout=10)
        await within(call.initial_metadata(), 5)     # the handler has counted its run
        server.signal(signal.SIGKILL)
        await server.wait(5)
        # A server at the same address, so a retry would have somewhere to go.
        restarted = ServerProc("--address", f"127.0.0.1:{port}", "--counter-file", counter)
        await restarted.start()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await within(call, 3)
        assert info.value.code() == _C.UNAVAILABLE
        assert call.never_started is False
        # The channel works. A (wrong) retry would have been sent before the call
        # failed, so ahead of this call on the connection: it would be counted by now.
        reply = await within(stub.Unary(msg(b"after"), timeout=5), 6)
        assert reply.payload == b"after"
        with open(counter) as f:
            runs = f.read().split()
        assert runs == [str(server.pid)]
    finally:
        if channel is not None:
            await channel.close()
        await stop_all(server, restarted)
