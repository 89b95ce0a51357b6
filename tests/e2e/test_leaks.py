"""Nothing leaks: fds, threads, /dev/shm entries, upgrade sockets.

First 200 connect/call/close cycles from this process to a server process;
then 50 random SIGKILLs of server and client processes. This process (the
survivor) must end with the fds and threads it started with, and nothing new
may stay behind in /dev/shm or in the runtime directory.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import threading
import time


import rpc
from examples.echo import echo_pb2, echo_pb2_grpc
from tests._support import Echo, serve
from tests.e2e._server_proc import ServerProc

SHM = "/dev/shm"


def open_fds(pid: int | str = "self") -> list[str]:
    return os.listdir(f"/proc/{pid}/fd")


def fd_targets(pid: int | str = "self") -> dict[str, str]:
    out = {}
    for fd in open_fds(pid):
        try:
            out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def shm_entries() -> set[str]:
    try:
        return set(os.listdir(SHM))
    except FileNotFoundError:
        return set()


def _held_by_another_live_process(name: str) -> bool:
    """Whether some other live process (a concurrent test, not ours) has it open or mapped."""
    path = os.path.join(SHM, name)
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                if path in f.read():
                    return True
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    return True
        except OSError:
            continue
    return False


def leaked_shm(before: set[str]) -> list[str]:
    """New /dev/shm entries that nobody but possibly we hold: ours, leaked.
    (Other engineers' tests may run at the same time; what a live process of
    theirs holds is theirs.)"""
    return sorted(n for n in shm_entries() - before if not _held_by_another_live_process(n))


async def settle(check, timeout: float = 3.0) -> bool:
    """Closing is asynchronous (connection_lost, waiter threads ending): poll."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


def lanerpc_dirs(base: str) -> list[str]:
    return sorted(n for n in os.listdir(base) if n.startswith("lanerpc-"))


def msg(payload: bytes) -> echo_pb2.EchoMessage:
    return echo_pb2.EchoMessage(payload=payload)


async def cycle(target: str, i: int) -> None:
    """One connect, call, close. Every fourth channel stays on tcp, every fourth
    (another one) on unix, the rest move to shm; every third call is a server stream."""
    lanes = {3: "tcp", 1: "unix,tcp"}.get(i % 4)
    options = [("lanerpc.lanes", lanes)] if lanes else None
    channel = rpc.insecure_channel(target, options=options)
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        if i % 3 == 2:
            got = [m.payload async for m in stub.ServerStream(msg(b"s%d" % i), timeout=5)]
            assert got == [b"s%d%d" % (i, k) for k in range(3)]
        else:
            assert (await asyncio.wait_for(stub.Unary(msg(b"u%d" % i), timeout=5), 6)).payload == b"u%d" % i
        assert channel.lane == {3: "tcp", 1: "unix"}.get(i % 4, "shm")
    finally:
        await asyncio.wait_for(channel.close(), 5)


async def test_connect_call_close_cycles_leak_nothing(runtime_dir):
    shm_before = shm_entries()
    fds_start, threads_start = len(open_fds()), threading.active_count()
    server = ServerProc()
    upgrade_dir = None
    try:
        await server.start()
        upgrade_dir = os.path.dirname(server.info["upgrade_path"])
        assert lanerpc_dirs(runtime_dir) == [os.path.basename(upgrade_dir)]
        target = f"127.0.0.1:{server.port}"
        for i in range(4):       # warm-up: lazily made loop resources are not leaks
            await cycle(target, i)
        gc.collect()
        fds_warm, threads_warm = len(open_fds()), threading.active_count()
        targets_warm = fd_targets()
        server_fds_warm = len(open_fds(server.pid))

        started = time.monotonic()
        for i in range(200):
            await cycle(target, i)
        elapsed = time.monotonic() - started

        assert await settle(lambda: len(open_fds()) == fds_warm), (
            f"fds of this process after 200 cycles: new {set(fd_targets().items()) - set(targets_warm.items())}")
        assert await settle(lambda: threading.active_count() == threads_warm), (
            f"threads: {threads_warm} -> {[t.name for t in threading.enumerate()]}")
        # The server process closed every connection it accepted, too.
        assert await settle(lambda: len(open_fds(server.pid)) == server_fds_warm), (
            f"server fds {server_fds_warm} -> {fd_targets(server.pid)}")

        server.signal(signal.SIGTERM)      # a clean stop
        assert await server.wait(5) == 0
    finally:
        await server.stop()
    assert await settle(lambda: len(open_fds()) == fds_start), fd_targets()
    assert await settle(lambda: threading.active_count() == threads_start), threading.enumerate()
    assert not os.path.exists(upgrade_dir)
    assert lanerpc_dirs(runtime_dir) == []
    assert leaked_shm(shm_before) == []
    assert elapsed < 20


async def test_in_process_server_and_clients_leak_nothing(runtime_dir):
    """The same with the server in this process: its accepted connections,
    upgrade listener and thread pool count here too."""
    shm_before = shm_entries()
    fds_start, threads_start = len(open_fds()), threading.active_count()
    async with serve(Echo(), grace=1) as served:
        for i in range(100):
            await cycle(served.target, i)
    assert await settle(lambda: len(open_fds()) == fds_start), fd_targets()
    assert await settle(lambda: threading.active_count() == threads_start), threading.enumerate()
    assert lanerpc_dirs(runtime_dir) == []
    assert leaked_shm(shm_before) == []


class _Group:
    """One server process and the client processes that call it."""

    def __init__(self, clients: int) -> None:
        self.server: ServerProc | None = None
        self.clients: list[ServerProc] = []
        self.n_clients = clients
        self.port = 0
        self.server_pids: list[int] = []
        self.idle_server_fds = 0

    async def start(self) -> None:
        self.server = await ServerProc().start()
        self.port = self.server.port
        self.server_pids.append(self.server.pid)
        self.idle_server_fds = len(open_fds(self.server.pid))   # before any client
        for _ in range(self.n_clients):
            self.clients.append(await self._client())

    async def _client(self) -> ServerProc:
        return await ServerProc("--client", f"127.0.0.1:{self.port}").start()

    async def kill_one(self, rng: random.Random) -> str:
        victims = [self.server, *self.clients]
        victim = rng.choice(victims)
        victim.signal(signal.SIGKILL)
        assert await victim.wait(5) == -signal.SIGKILL
        await victim.stop()
        if victim is self.server:
            self.server = await ServerProc("--address", f"127.0.0.1:{self.port}").start()
            self.server_pids.append(self.server.pid)
            return "server"
        self.clients[self.clients.index(victim)] = await self._client()
        return "client"

    async def stop(self) -> None:
        for proc in (self.server, *self.clients):
            if proc is not None:
                await proc.stop()


async def test_random_sigkills_of_servers_and_clients_leak_nothing(runtime_dir):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    shm_before = shm_entries()
    fds_start, threads_start = len(open_fds()), threading.active_count()
    groups = [_Group(clients=2), _Group(clients=2)]
    killed: list[str] = []

    async def storm(group: _Group, kills: int) -> None:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.03, 0.12))   # clients mid-call
            killed.append(await group.kill_one(rng))

    started = time.monotonic()
    try:
        for group in groups:
            await group.start()
        # Bounded for a busy 2-core machine: each kill starts a new Python process.
        await asyncio.wait_for(asyncio.gather(storm(groups[0], 25), storm(groups[1], 25)), 60)
        assert len(killed) == 50
        # Clients killed mid-call: their servers close those connections.
        for group in groups:
            for client in group.clients:
                await client.stop()
            server = group.server
            assert await settle(lambda: len(open_fds(server.pid)) == group.idle_server_fds), (
                seed, group.idle_server_fds, fd_targets(server.pid))
        # The last servers serve this process after all that.
        for group in groups:
            async with rpc.insecure_channel(f"127.0.0.1:{group.port}") as channel:
                reply = await asyncio.wait_for(
                    echo_pb2_grpc.EchoStub(channel).Unary(msg(b"alive"), timeout=5), 6)
                assert reply.payload == b"alive"
    finally:
        for group in groups:
            await group.stop()
    elapsed = time.monotonic() - started
    assert "server" in killed and "client" in killed, (seed, killed)

    assert await settle(lambda: len(open_fds()) == fds_start), (seed, fd_targets())
    assert await settle(lambda: threading.active_count() == threads_start), (seed, threading.enumerate())

    # Killed servers leave their upgrade directories (nothing runs at exit on
    # SIGKILL); the next server to start sweeps every one whose server is gone, at
    # once, young as they are: their locks died with them. A server killed while it
    # made a segment leaves /dev/shm names (or sem_open's half-made temporary): the
    # next segment made on the host removes them (README, "When things go wrong").
    left = lanerpc_dirs(runtime_dir)
    assert left, "killed servers left no upgrade directory; was the upgrade on?"
    await asyncio.sleep(0.6)          # past the age of a sem_open under way
    async with serve(Echo()) as sweeper:
        assert lanerpc_dirs(runtime_dir) == [os.path.basename(os.path.dirname(sweeper.server.upgrade_path))]
        channel = sweeper.channel()
        await asyncio.wait_for(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"next"), timeout=5), 6)
        assert channel.lane == "shm"
    assert lanerpc_dirs(runtime_dir) == []
    assert leaked_shm(shm_before) == [], seed
    assert elapsed < 60, elapsed      # about 25 s on an idle 2-core machine
