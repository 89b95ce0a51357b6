"""The pipe lane with real processes: rpc.spawn starts a worker (tests/e2e/_pipe_worker.py)
that serves the Echo service with rpc.serve_stdio.

Each test runs on the pipe itself (the channel's lanes exclude unix, so the worker's
upgrade offer is not taken) and, where it matters, upgraded (default lanes: shm).
Every worker is ended by its pid; the tests check that nothing is left in /dev/shm or
in the runtime directory."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import msg, within, wait_until
from tests.e2e.conftest import PYTHON, ROOT, child_env

WORKER = [PYTHON, "-m", "tests.e2e._pipe_worker"]
ON_PIPE = [("lanerpc.lanes", "tcp")]      # no unix: the upgrade offer is not taken
LANES = {"pipe": ON_PIPE, "upgraded": None}


def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"      # a zombie is gone too
    except FileNotFoundError:
        return False


_workers: list[int] = []       # the pids of the workers the running test spawned


@pytest.fixture
def clean(runtime_dir: str) -> AsyncIterator[str]:
    """The runtime dir (upgrade sockets), checked empty at the end, and no /dev/shm name
    left by the test's workers (the shm lane's names carry their creator's pid)."""
    _workers.clear()
    yield runtime_dir
    assert os.listdir(runtime_dir) == []
    left = [name for name in _shm_names() for pid in _workers
            if "lanerpc-" in name and f"lanerpc-{pid & 0xFFFFFFFF:08x}" in name]
    assert not left


async def _spawn(options: list[tuple[str, str]] | None = None, *args: str,
                 **kwargs: object) -> rpc.SpawnedChannel:
    channel: rpc.SpawnedChannel = await within(rpc.spawn(
        [*WORKER, *args], options=options, env=child_env(), cwd=ROOT, **kwargs), 20)
    _workers.append(channel.pid)
    return channel


async def _end(channel: rpc.SpawnedChannel) -> None:
    """Close (ends the worker); kill by pid should that fail."""
    try:
        await within(channel.close(), 10)
    finally:
        if channel.process.returncode is None:
            channel.process.kill()
            await channel.process.wait()


@pytest.mark.parametrize("lanes", LANES, ids=list(LANES))
async def test_four_call_kinds(lanes: str, clean: str, capfd: pytest.CaptureFixture[str]) -> None:
    channel = await _spawn(LANES[lanes])
    try:
        assert channel.lane == ("pipe" if lanes == "pipe" else "shm")
        stub = echo_pb2_grpc.EchoStub(channel)
        reply = await stub.Unary(msg(b"peer"), timeout=5)
        # The handler printed to stdout on the way (fd 1 and sys.stdout): the wire held.
        peer, lane, library, pid = reply.payload.decode().split("|")
        assert (peer, library, int(pid)) == (f"pipe:{os.getpid()}", "rpc", channel.pid)
        assert lane in ("None", channel.lane)       # context.lane, where it exists
        got = [m.payload async for m in stub.ServerStream(msg(b"s"), timeout=5)]
        assert got == [b"s0", b"s1", b"s2"]
        reply = await stub.ClientStream(iter([msg(b"a"), msg(b"b"), msg(b"c")]), timeout=5)
        assert reply.payload == b"abc"
        call = stub.Bidi(timeout=5)
        for payload in (b"x", b"y" * 300_000):        # the second one spans many pipe writes
            await call.write(msg(payload))
            assert (await call.read()).payload == payload
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Unary(msg(b"fail"), timeout=5)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await _end(channel)
    assert channel.process.returncode == 0          # EOF on its stdin: a clean stop
    assert not _alive(channel.pid)
    # What the handler printed to stdout came out on the worker's stderr, which is ours.
    err = capfd.readouterr().err
    assert "worker: Unary b'peer'" in err and "worker: fd 1" in err


@pytest.mark.parametrize("lanes", LANES, ids=list(LANES))
async def test_worker_killed_mid_call_ends_calls_unavailable_at_once(lanes: str,
                                                                     clean: str) -> None:
    channel = await _spawn(LANES[lanes])
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        call = stub.Unary(msg(b"wait"), timeout=30)
        await within(call.initial_metadata())       # the handler runs
        os.kill(channel.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await within(call, 5)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - start < 1.0
        await within(channel.process.wait())
        with pytest.raises(grpc.aio.AioRpcError) as later:
            await stub.Unary(msg(b"x"), timeout=5)
        assert later.value.code() == grpc.StatusCode.UNAVAILABLE
        assert str(channel.pid) in later.value.details()
    finally:
        await _end(channel)


async def test_calls_go_over_the_pipe_when_the_local_connection_ends(clean: str) -> None:
    """The upgraded connection lost while the worker lives (cut here from our side: no
    public way to do it): the next call goes over the pipe, which was kept open."""
    channel = await _spawn()
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Unary(msg(b"x"), timeout=5)
        assert channel.lane == "shm"
        local = channel._link
        assert local is not None
        local.abort("cut by the test")
        await within(local.closed)
        assert (await stub.Unary(msg(b"y"), timeout=5)).payload == b"y"
        assert channel.lane == "pipe"
    finally:
        await _end(channel)
    assert channel.process.returncode == 0


async def test_sigterm_stops_the_worker_gracefully(clean: str) -> None:
    """serve_stdio handles SIGTERM as rpc.serve does: the running call finishes, the
    worker exits 0, and the channel's later calls fail UNAVAILABLE."""
    channel = await _spawn()
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        call = stub.Unary(msg(b"sleep:300"), timeout=10)
        await within(call.initial_metadata())
        os.kill(channel.pid, signal.SIGTERM)
        assert (await within(call)).payload == b"sleep:300"
        assert await within(channel.process.wait()) == 0
        with pytest.raises(grpc.aio.AioRpcError) as later:
            await stub.Unary(msg(b"x"), timeout=5)
        assert later.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await _end(channel)


async def test_close_ends_the_worker_and_leaves_nothing(clean: str) -> None:
    channel = await _spawn()
    assert channel.lane == "shm"
    assert os.listdir(clean)                        # the worker's upgrade directory
    await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5)
    await _end(channel)
    assert channel.process.returncode == 0
    assert not _alive(channel.pid)
    # (the clean fixture checks the runtime dir and /dev/shm)


async def test_worker_exits_when_its_parent_is_killed(clean: str) -> None:
    """A parent process spawns a worker and is SIGKILLed: the worker reads EOF and exits."""
    parent_code = (
        "import asyncio, sys, rpc\n"
        "async def main():\n"
        f"    ch = await rpc.spawn({WORKER!r})\n"
        "    print('ready', ch.pid, ch.lane, flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n")
    parent = await asyncio.create_subprocess_exec(
        PYTHON, "-c", parent_code, cwd=ROOT, env=child_env(), stdout=asyncio.subprocess.PIPE)
    worker_pid = None
    try:
        assert parent.stdout is not None
        line = (await within(parent.stdout.readline(), 20)).decode().split()
        assert line[:1] == ["ready"], line
        worker_pid = int(line[1])
        _workers.append(worker_pid)
        assert line[2] == "shm"
        assert _alive(worker_pid)
        parent.kill()
        await within(parent.wait())
        await wait_until(lambda: not _alive(worker_pid), 10)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if worker_pid is not None and _alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
    # The worker stopped by itself, cleanly: its upgrade directory is gone too.
    await wait_until(lambda: os.listdir(clean) == [], 5)


async def test_garbage_from_the_worker_fails_spawn_clearly(clean: str) -> None:
    """A program that writes anything but lanerpc to stdout: spawn raises, saying why,
    and the child is gone."""
    code = "import sys, time; sys.stdout.write('hello, I am not a worker\\n'); " \
           "sys.stdout.flush(); time.sleep(60)"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="bad preface.*wrote to stdout") as failed:
        await within(rpc.spawn([PYTHON, "-c", code], close_grace=0.5), 10)
    assert time.monotonic() - start < 5
    pid = int(str(failed.value).split("worker pid ")[1].split(":")[0])
    assert not _alive(pid)


async def test_a_worker_that_exits_at_once_fails_spawn_with_its_exit_code(clean: str) -> None:
    with pytest.raises(ConnectionError, match=r"exited \(exit code 3\) before its handshake"):
        await within(rpc.spawn([PYTHON, "-c", "import sys; sys.exit(3)"]), 10)


async def test_garbage_to_the_worker_closes_its_connection(clean: str) -> None:
    """Bytes that are not lanerpc on the worker's stdin: it closes that connection
    (its only one) with a logged reason and exits."""
    worker = await asyncio.create_subprocess_exec(
        *WORKER, cwd=ROOT, env=child_env(), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert worker.stdin is not None
        worker.stdin.write(b"\x00\xffnot lanerpc at all" * 4)
        await worker.stdin.drain()
        out, err = await within(worker.communicate(), 15)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 0
    assert b"closing connection from pipe:" in err and b"bad preface" in err, err
    assert b"worker: stopped" in err                # serve_stdio returned: a clean exit


async def test_a_worker_that_never_answers_is_killed(clean: str) -> None:
    """No handshake within start_timeout: spawn fails, the child is killed by pid even
    though it ignores its stdin closing and SIGTERM."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    with pytest.raises(ConnectionError, match="handshake within 0.5 s") as failed:
        await within(rpc.spawn([PYTHON, "-c", code], start_timeout=0.5, close_grace=0.2), 10)
    pid = int(str(failed.value).split("worker pid ")[1].split(" ")[0])
    assert not _alive(pid)


async def test_serve_stdio_refuses_options_that_would_end_its_pipe() -> None:
    server = rpc.server(options=[("grpc.max_connection_idle_ms", 1000)])
    with pytest.raises(ValueError, match="max_connection_idle_ms"):
        await rpc.serve_stdio_async(server)


def test_spawn_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        asyncio.run(rpc.spawn([]))
    with pytest.raises(ValueError):
        asyncio.run(rpc.spawn([sys.executable], close_grace=-1))
    with pytest.raises(ValueError):
        asyncio.run(rpc.spawn([sys.executable], start_timeout=0))
