"""The shm lane through the RPC layer, on both its variants (``shm_variant``, set for
this process and its children with LANERPC_SHM_VARIANT): the posix one is used only when
/dev/shm is really shared and has room, the memfd one needs no /dev/shm at all; a peer
that scribbles over the rings harms only its own connection, and a kill leaves nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc
from rpc.transports import _spin
from tests._support import Echo, msg, serve, wait_until
from tests.e2e._greeter import PidGreeter
from tests.e2e._server_proc import ServerProc
from tests.e2e.conftest import PYTHON, ROOT, need_root_and
from tests.e2e.test_upgrade import ns_client


@pytest.fixture(autouse=True, params=["memfd", "posix"])
def shm_variant(request, monkeypatch):
    monkeypatch.setenv("LANERPC_SHM_VARIANT", request.param)
    return request.param


def _own_dev_shm(size: str | None = None) -> list[str]:
    """A command prefix: what follows runs in a new mount namespace whose /dev/shm is a
    tmpfs of its own."""
    opts = f"-o size={size} " if size else ""
    script = f"mount -t tmpfs {opts}tmpfs /dev/shm && exec \"$@\""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


async def test_client_with_its_own_dev_shm(shm_variant):
    """Same /tmp (the unix lane works) but another /dev/shm. posix: the offered segment
    is not there, so the client declines it and calls go on over unix. memfd: the
    segment comes over the socket, /dev/shm plays no part: shm."""
    need_root_and("unshare")
    async with serve(PidGreeter()) as served:
        result = await ns_client(_own_dev_shm(), served.target)
        assert result["lane"] == ("unix" if shm_variant == "posix" else "shm")


async def test_server_with_a_full_dev_shm(tmp_path, shm_variant):
    """A /dev/shm too small for a segment. posix: creating it fails cleanly (no
    SIGBUS), no offer is made, and the client stays on unix. memfd: shm all the same."""
    need_root_and("unshare")
    server = ServerProc(env={"LANERPC_RUNTIME_DIR": str(tmp_path)},
                        prefix=tuple(_own_dev_shm(size="64k")))
    try:
        await server.start()
        async with rpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for i in range(5):
                reply = await stub.Unary(msg(b"%d" % i), timeout=5)
                assert reply.payload == b"%d" % i
            assert channel.lane == ("unix" if shm_variant == "posix" else "shm")
        assert server.proc.returncode is None      # alive: no SIGBUS
    finally:
        await server.stop()


async def test_peer_scribbling_over_the_ring_loses_only_its_connection(caplog, shm_variant):
    servicer = Echo()
    async with serve(servicer) as served:
        honest, hostile = served.channel(), served.channel()
        honest_stub, hostile_stub = echo_pb2_grpc.EchoStub(honest), echo_pb2_grpc.EchoStub(hostile)
        await honest_stub.Unary(msg(b"hi"), timeout=5)
        await hostile_stub.Unary(msg(b"hi"), timeout=5)
        assert (honest.lane, hostile.lane) == ("shm", "shm")
        pending = hostile_stub.Unary(msg(b"wait"), timeout=10)
        await asyncio.wait_for(pending.initial_metadata(), 5)     # its handler runs

        # Reach into the hostile client's own segment (a peer shares it) and
        # write lies over the client->server ring's counters, then wake the server.
        transport = hostile._link.transport
        assert transport._segment.variant == shm_variant
        mapping = transport._segment._mapping
        ring_at = 512
        mapping[ring_at:ring_at + 64] = os.urandom(64)
        mapping[ring_at + 64:ring_at + 128] = os.urandom(64)
        transport._peer_bell.ring()

        with caplog.at_level(logging.WARNING, logger="lanerpc"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(pending, 5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        reasons = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("ring" in reason.lower() for reason in reasons), reasons
        await asyncio.wait_for(servicer.cancelled.wait(), 1)
        assert servicer.cancelled_calls == 1      # its handler was cancelled, nothing else
        for i in range(20):
            reply = await honest_stub.Unary(msg(b"%d" % i), timeout=5)
            assert reply.payload == b"%d" % i
        assert honest.lane == "shm"


async def test_client_killed_mid_call_cancels_its_handlers_and_leaves_nothing(tmp_path):
    """A client on shm SIGKILLed with a call running: the server cancels the
    handler within a second (the control socket's EOF) and /dev/shm is as before."""
    shm_before = set(os.listdir("/dev/shm"))
    servicer = Echo()
    async with serve(servicer) as served:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-c",
            "import asyncio, rpc, sys\n"
            "from examples.echo import echo_pb2, echo_pb2_grpc\n"
            "async def main():\n"
            f"    ch = rpc.insecure_channel('{served.target}')\n"
            "    stub = echo_pb2_grpc.EchoStub(ch)\n"
            "    await stub.Unary(echo_pb2.EchoMessage(payload=b'x'), timeout=5)\n"
            "    print(ch.lane, flush=True)\n"
            "    await stub.Unary(echo_pb2.EchoMessage(payload=b'wait'), timeout=60)\n"
            "asyncio.run(main())\n",
            stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        try:
            lane = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
            assert lane == "shm"
            await wait_until(lambda: servicer.running == 1, 10)   # the waiting call reached its handler
            proc.kill()
            await asyncio.wait_for(servicer.cancelled.wait(), 1.0)
            assert servicer.cancelled_calls == 1
        finally:
            if proc.returncode is None:
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    assert set(os.listdir("/dev/shm")) - shm_before == set()


async def test_forked_child_gets_a_clear_error_and_the_parent_goes_on():
    async with serve(PidGreeter()) as served:
        channel = served.channel()
        greeter = helloworld_pb2_grpc.GreeterStub(channel)
        await greeter.SayHello(helloworld_pb2.HelloRequest(name="a"), timeout=5)
        assert channel.lane == "shm"
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:     # the child: must refuse, not touch the parent's rings
            code = 1
            try:
                greeter.SayHello(helloworld_pb2.HelloRequest(name="child"), timeout=1)
            except RuntimeError as exc:
                code = 0 if "fork" in str(exc) else 2
            finally:
                os.write(write, bytes([code]))
                os._exit(0)
        os.close(write)
        try:
            verdict = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, os.read, read, 1), 10)
        finally:
            os.close(read)
            await asyncio.get_running_loop().run_in_executor(None, os.waitpid, pid, 0)
        assert verdict == b"\x00"
        reply = await greeter.SayHello(helloworld_pb2.HelloRequest(name="b"), timeout=5)
        assert reply.message == f"b@{os.getpid()}"
        assert channel.lane == "shm"


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_hundred_idle_shm_connections_cost_the_server_almost_no_cpu(tmp_path,
                                                                           shm_variant):
    """Idle is cheap: 100 shm connections that made one call each, then nothing, use
    under 1 % of a core in the server process (memfd: nothing runs at all, measured
    0.00 s; posix: a waiter thread per connection looks every 5 s)."""
    server = ServerProc(env={"LANERPC_RUNTIME_DIR": str(tmp_path)})
    channels = []
    try:
        await server.start()
        for _ in range(100):
            channel = rpc.insecure_channel(f"127.0.0.1:{server.port}")
            channels.append(channel)
            reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"hi"), timeout=5)
            assert reply.payload == b"hi"
            assert channel.lane == "shm"
        assert channels[0]._link.transport._segment.variant == shm_variant
        await asyncio.sleep(0.5)           # past every spin and the last wake-ups
        before, started = _cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(3)
        used = _cpu_seconds(server.pid) - before
        assert used < 0.01 * (time.monotonic() - started), used
    finally:
        for channel in channels:
            await asyncio.wait_for(channel.close(), 5)
        await server.stop()


async def test_the_answer_poll_is_off_for_a_peer_in_this_process_only(tmp_path):
    """The shm lane polls for an answer after a write, except when the peer is this very
    process (client and server on one loop or in one process: its answer needs this
    process's CPU, which the poll would hold). Against a server in another process the
    client does poll."""
    async with serve(Echo(), address=f"unix:{tmp_path}/echo.sock", lanes="shm,unix") as served:
        channel = served.channel(options=[("lanerpc.lanes", "shm,unix")])
        reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"hi"), timeout=5)
        assert reply.payload == b"hi" and channel.lane == "shm"
        (server_link,) = served.server._links
        for transport in (channel._link.transport, server_link.transport):
            assert transport.get_extra_info("lanerpc_peer").pid == os.getpid()
            assert transport._loop_spin.max_spin_ns == 0
    server = ServerProc(env={"LANERPC_RUNTIME_DIR": str(tmp_path)})
    try:
        await server.start()
        async with rpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"hi"), timeout=5)
            assert reply.payload == b"hi" and channel.lane == "shm"
            transport = channel._link.transport
            assert transport.get_extra_info("lanerpc_peer").pid == server.pid
            spins = _spin.cpus_available() >= 2
            assert (transport._loop_spin.max_spin_ns > 0) == spins
    finally:
        await server.stop()


def test_shm_variant_option_takes_the_three_names_and_refuses_others(monkeypatch):
    from rpc import _options
    monkeypatch.delenv("LANERPC_SHM_VARIANT")
    assert _options.parse([]).shm_variant == "auto"
    for name in ("auto", "memfd", "posix"):
        assert _options.parse([("lanerpc.shm_variant", name)]).shm_variant == name
    for bad in ("MEMFD", "sysv", "", 1):
        with pytest.raises(ValueError, match="lanerpc.shm_variant"):
            _options.parse([("lanerpc.shm_variant", bad)])
    monkeypatch.setenv("LANERPC_SHM_VARIANT", "nope")
    with pytest.raises(ValueError, match="LANERPC_SHM_VARIANT"):
        _options.parse([])


async def test_clients_killed_at_random_moments_of_the_setup_leave_nothing(shm_variant):
    """Clients SIGKILLed at random moments from their start (importing, dialling, in
    the HELLO, mid-switch, on shm): nothing new stays in /dev/shm, the server holds
    no fd of theirs, and it serves the next client on shm."""
    import random

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    shm_before = set(os.listdir("/dev/shm"))
    async with serve(Echo()) as served:
        fds_before = len(os.listdir("/proc/self/fd"))
        for _ in range(12):
            proc = await asyncio.create_subprocess_exec(
                PYTHON, "-c",
                "import asyncio, rpc\n"
                "from examples.echo import echo_pb2, echo_pb2_grpc\n"
                "async def main():\n"
                f"    ch = rpc.insecure_channel('{served.target}')\n"
                "    stub = echo_pb2_grpc.EchoStub(ch)\n"
                "    while True:\n"
                "        await stub.Unary(echo_pb2.EchoMessage(payload=b'x'), timeout=5)\n"
                "asyncio.run(main())\n",
                cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                await asyncio.sleep(rng.uniform(0.2, 0.9))    # imports take about 0.3 s
            finally:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
        await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before, 5)
        channel = served.channel()
        reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"next"), timeout=5)
        assert reply.payload == b"next" and channel.lane == "shm"
    await wait_until(lambda: set(os.listdir("/dev/shm")) - shm_before == set(), 5)
