"""The shm lane through the RPC layer: used only when /dev/shm is really shared and
has room, and a peer that scribbles over the rings harms only its own connection."""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
import pytest

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc
from tests.e2e._server_proc import ServerProc
from tests.e2e.conftest import PYTHON, last_json, need_root_and, run_child
from tests.e2e.test_upgrade import start_server


def _own_dev_shm(*argv: str, size: str | None = None) -> list[str]:
    """argv in a new mount namespace whose /dev/shm is a tmpfs of its own."""
    opts = f"-o size={size} " if size else ""
    script = f"mount -t tmpfs {opts}tmpfs /dev/shm && exec \"$@\""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


async def test_client_with_its_own_dev_shm_stays_on_unix():
    """Same /tmp (the unix lane works) but another /dev/shm: the offered segment
    is not there, so the client declines it and calls go on over unix."""
    need_root_and("unshare")
    server, port, greeter = await start_server()
    try:
        rc, out, err = await run_child(*_own_dev_shm(
            PYTHON, "-m", "tests.e2e._ns_client", f"127.0.0.1:{port}", "--calls", "10"))
        assert rc == 0, err
        result = last_json(out)
        assert result["errors"] == []
        assert result["replies"] == [f"{i}@{os.getpid()}" for i in range(10)]
        assert result["lane"] == "unix"
    finally:
        await server.stop(0)


async def test_server_with_a_full_dev_shm_offers_no_shm(tmp_path):
    """A /dev/shm too small for a segment: creating it fails cleanly (no SIGBUS),
    no offer is made, and the client stays on unix."""
    need_root_and("unshare")
    server = ServerProc(env={"LANERPC_RUNTIME_DIR": str(tmp_path)},
                        prefix=tuple(_own_dev_shm(size="64k")))
    try:
        await server.start()
        async with rpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for i in range(5):
                reply = await stub.Unary(echo_pb2.EchoMessage(payload=b"%d" % i), timeout=5)
                assert reply.payload == b"%d" % i
            assert channel.lane == "unix"
        assert server.proc.returncode is None      # alive: no SIGBUS
    finally:
        await server.stop()


class SlowEcho(echo_pb2_grpc.EchoServicer):
    def __init__(self) -> None:
        self.cancelled = 0

    async def Unary(self, request, context):
        if request.payload == b"wait":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return request


async def test_peer_scribbling_over_the_ring_loses_only_its_connection(caplog):
    servicer = SlowEcho()
    server = rpc.server()
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        async with rpc.insecure_channel(target) as honest, rpc.insecure_channel(target) as hostile:
            honest_stub, hostile_stub = echo_pb2_grpc.EchoStub(honest), echo_pb2_grpc.EchoStub(hostile)
            await honest_stub.Unary(echo_pb2.EchoMessage(payload=b"hi"), timeout=5)
            await hostile_stub.Unary(echo_pb2.EchoMessage(payload=b"hi"), timeout=5)
            assert (honest.lane, hostile.lane) == ("shm", "shm")
            pending = hostile_stub.Unary(echo_pb2.EchoMessage(payload=b"wait"), timeout=10)
            await asyncio.sleep(0.1)

            # Reach into the hostile client's own segment (a peer shares it) and
            # write lies over the client->server ring's counters, then wake the server.
            transport = hostile._link.transport
            mapping = transport._segment._mapping
            ring_at = 512
            mapping[ring_at:ring_at + 64] = os.urandom(64)
            mapping[ring_at + 64:ring_at + 128] = os.urandom(64)
            transport._peer_bell.release()

            with caplog.at_level(logging.WARNING, logger="lanerpc"):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(pending, 5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            reasons = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert any("ring" in reason.lower() for reason in reasons), reasons
            for _ in range(50):
                if servicer.cancelled:
                    break
                await asyncio.sleep(0.02)
            assert servicer.cancelled == 1      # its handler was cancelled, nothing else
            for i in range(20):
                reply = await honest_stub.Unary(echo_pb2.EchoMessage(payload=b"%d" % i), timeout=5)
                assert reply.payload == b"%d" % i
            assert honest.lane == "shm"
    finally:
        await server.stop(0)


async def test_client_killed_mid_call_cancels_its_handlers_and_leaves_nothing(tmp_path):
    """A client on shm SIGKILLed with a call running: the server cancels the
    handler within a second (the control socket's EOF) and /dev/shm is as before."""
    shm_before = set(os.listdir("/dev/shm"))
    servicer = SlowEcho()
    server = rpc.server()
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-c",
            "import asyncio, rpc, sys\n"
            "from examples.echo import echo_pb2, echo_pb2_grpc\n"
            "async def main():\n"
            f"    ch = rpc.insecure_channel('127.0.0.1:{port}')\n"
            "    stub = echo_pb2_grpc.EchoStub(ch)\n"
            "    await stub.Unary(echo_pb2.EchoMessage(payload=b'x'), timeout=5)\n"
            "    print(ch.lane, flush=True)\n"
            "    await stub.Unary(echo_pb2.EchoMessage(payload=b'wait'), timeout=60)\n"
            "asyncio.run(main())\n",
            stdout=asyncio.subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))))
        try:
            lane = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
            assert lane == "shm"
            await asyncio.sleep(0.2)           # the waiting call reached its handler
            proc.kill()
            started = asyncio.get_running_loop().time()
            while not servicer.cancelled and asyncio.get_running_loop().time() - started < 1.0:
                await asyncio.sleep(0.01)
            assert servicer.cancelled == 1
        finally:
            if proc.returncode is None:
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    finally:
        await server.stop(0)
    assert set(os.listdir("/dev/shm")) - shm_before == set()


async def test_forked_child_gets_a_clear_error_and_the_parent_goes_on():
    server, port, _ = await start_server()
    try:
        async with rpc.insecure_channel(f"127.0.0.1:{port}") as channel:
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
    finally:
        await server.stop(0)
