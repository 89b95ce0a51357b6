"""rpc.sync's loop thread and what it must never do: keep a process from exiting,
survive a fork into the child, or be blocked by a blocking call made on it. Also
what rpc.sync refuses, and where a grpc:// target goes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import rpc.sync
from examples.echo import echo_pb2, echo_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent.parent
TIMEOUT = 5.0

PRELUDE = textwrap.dedent("""
    import os, sys
    from concurrent import futures
    import rpc.sync
    from examples.echo import echo_pb2, echo_pb2_grpc

    class Echo(echo_pb2_grpc.EchoServicer):
        def Unary(self, request, context):
            return echo_pb2.EchoMessage(payload=b"%d" % os.getpid())

        def ServerStream(self, request, context):
            while context.is_active():
                yield request

    def call(channel):
        stub = echo_pb2_grpc.EchoStub(channel)
        return stub.Unary(echo_pb2.EchoMessage(), timeout=5).payload.decode()

    server = rpc.sync.server(futures.ThreadPoolExecutor(2))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = rpc.sync.insecure_channel(f"127.0.0.1:{port}")
""")


def _run(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_a_process_exits_with_channels_and_servers_left_open():
    """Nothing closed, nothing stopped, a response stream left running: the loop
    thread does not keep the process alive, and the server still running is stopped
    at exit (its upgrade socket's directory removed), its handler cancelled cleanly."""
    done = _run("""
        assert call(channel) == str(os.getpid())
        stream = echo_pb2_grpc.EchoStub(channel).ServerStream(echo_pb2.EchoMessage())
        next(stream)
        print(server.upgrade_path, channel.lane)
    """)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    upgrade_path, lane = done.stdout.split()
    assert lane == "shm"
    assert not os.path.exists(os.path.dirname(upgrade_path))


def test_a_forked_child_gets_a_clear_error_and_can_make_its_own_channel():
    done = _run("""
        assert call(channel) == str(os.getpid())
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            verdict = b"?"
            try:
                try:
                    call(channel)
                except RuntimeError as exc:
                    fresh = rpc.sync.insecure_channel(f"127.0.0.1:{port}")
                    ok = "fork" in str(exc) and call(fresh) == str(os.getppid())
                    fresh.close()
                    verdict = b"y" if ok else b"n"
            finally:
                os.write(write, verdict)
                os._exit(0)
        os.close(write)
        verdict = os.read(read, 1)
        os.waitpid(pid, 0)
        assert call(channel) == str(os.getpid())     # the parent goes on
        channel.close()
        assert server.stop(1).wait(5)
        print(verdict.decode())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "y"


class AsyncHandlerCallingBlocking(echo_pb2_grpc.EchoServicer):
    """An async handler on a blocking server runs on the loop: a blocking call there
    would wait for itself."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def Unary(self, request, context):
        channel = rpc.sync.insecure_channel(self.target) if request.payload == b"new" else self.channel
        echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoMessage(), timeout=1)
        return request


def test_a_blocking_call_on_the_loop_thread_is_refused():
    pool = futures.ThreadPoolExecutor(2)
    server = rpc.sync.server(pool)
    port = server.add_insecure_port("127.0.0.1:0")
    servicer = AsyncHandlerCallingBlocking(f"127.0.0.1:{port}")
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    server.start()
    try:
        with rpc.sync.insecure_channel(f"127.0.0.1:{port}") as channel:
            servicer.channel = channel
            stub = echo_pb2_grpc.EchoStub(channel)
            for payload in (b"new", b"shared"):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Unary(echo_pb2.EchoMessage(payload=payload), timeout=TIMEOUT)
                assert info.value.code() is grpc.StatusCode.UNKNOWN
                assert "event loop" in info.value.details()
    finally:
        assert server.stop(0).wait(TIMEOUT)
        pool.shutdown(wait=False)


def test_a_server_interceptor_must_be_one():
    with pytest.raises(TypeError, match="grpc.ServerInterceptor"):
        rpc.sync.server(futures.ThreadPoolExecutor(1), interceptors=[object()])


def test_a_grpc_target_gives_grpcs_own_blocking_channel():
    channel = rpc.sync.insecure_channel("grpc://127.0.0.1:1")
    try:
        assert isinstance(channel, grpc.Channel)
        assert not isinstance(channel, rpc.sync.Channel)
    finally:
        channel.close()
    with pytest.raises(ValueError, match="server_uids"):
        rpc.sync.insecure_channel("grpc://unix:/nowhere", options=[("lanerpc.server_uids", "0")])
