"""The same-host upgrade from tcp to unix: proven, never guessed.

Namespaces simulate what users deploy: a client in a container with its own
/tmp and /dev/shm (must stay on tcp), a client in another network namespace
on the same filesystem (is the same host: must be upgraded), a decoy at the
advertised path (must never be used).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile

import pytest

import rpc
from rpc import _lanes
from examples.echo import echo_pb2, echo_pb2_grpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc
from tests._support import serve
from tests.e2e._greeter import PidGreeter
from tests.e2e._server_proc import ServerProc
from tests.e2e.conftest import PYTHON, last_json, need_root_and, run_child



async def say(channel, name: str = "x") -> str:
    stub = helloworld_pb2_grpc.GreeterStub(channel)
    reply = await stub.SayHello(helloworld_pb2.HelloRequest(name=name), timeout=5)
    return reply.message


@pytest.mark.parametrize("lanes,lane", [("unix,tcp", "unix"), (None, "shm")])
async def test_loopback_client_is_moved_to_a_local_lane(lanes, lane):
    async with serve(PidGreeter()) as served:
        channel = served.channel(lanes=lanes)
        assert channel.lane is None
        assert await say(channel) == f"x@{os.getpid()}"
        assert channel.lane == lane
        results = await asyncio.gather(*(say(channel, str(i)) for i in range(50)))
        assert results == [f"{i}@{os.getpid()}" for i in range(50)]
        assert channel.lane == lane
        await served.close_channels()
        assert served.server.stats.connections_total[lane] == 1


async def test_localhost_name_is_moved_to_unix():
    async with serve(PidGreeter(), address="localhost:0") as served:
        assert served.target.startswith("localhost:")
        channel = served.channel()
        await say(channel)
        assert channel.lane == "shm"


@pytest.mark.parametrize("side", ["client", "server"])
async def test_lanes_tcp_turns_the_upgrade_off(side):
    tcp = "tcp"
    async with serve(PidGreeter(), lanes=tcp if side == "server" else None) as served:
        if side == "server":
            assert served.server.upgrade_path is None
        channel = served.channel(lanes=tcp if side == "client" else None)
        await say(channel)
        assert channel.lane == "tcp"


async def test_environment_variable_sets_lanes(monkeypatch):
    async with serve(PidGreeter()) as served:
        for lanes, lane in (("tcp", "tcp"), ("unix,tcp", "unix")):
            monkeypatch.setenv("LANERPC_LANES", lanes)
            channel = served.channel()
            await say(channel)
            assert channel.lane == lane


def test_bad_lanes_option_is_a_clear_error():
    with pytest.raises(ValueError, match="lanerpc.lanes"):
        rpc.insecure_channel("127.0.0.1:1", options=[("lanerpc.lanes", "carrier-pigeon")])


async def test_upgrade_socket_is_private_and_removed_on_stop():
    async with serve(PidGreeter()) as served:
        path = served.server.upgrade_path
        assert path is not None
        directory = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert not os.path.exists(path)
    assert not os.path.exists(directory)


async def test_a_second_server_gets_its_own_upgrade_socket():
    async with serve(PidGreeter()) as first, serve(PidGreeter()) as second:
        assert first.server.upgrade_path != second.server.upgrade_path
        a, b = first.channel(), second.channel()
        await say(a)
        await say(b)
        assert (a.lane, b.lane) == ("shm", "shm")


async def test_stale_upgrade_directory_of_a_killed_server_is_swept(tmp_path, monkeypatch):
    """A server killed with SIGKILL leaves its directory; the next server removes it."""
    monkeypatch.setenv("LANERPC_RUNTIME_DIR", str(tmp_path))
    code = (
        "import asyncio, os, rpc\n"
        "async def main():\n"
        "    s = rpc.server(); s.add_insecure_port('127.0.0.1:0'); await s.start()\n"
        "    print(s.upgrade_path, flush=True); await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    proc = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "LANERPC_RUNTIME_DIR": str(tmp_path)})
    try:
        stale_path = proc.stdout.readline().strip()
        assert os.path.exists(stale_path)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    stale_dir = os.path.dirname(stale_path)
    os.utime(stale_dir, (0, 0))     # older than the sweep's grace period
    async with serve(PidGreeter()) as served:
        assert not os.path.exists(stale_dir)
        assert os.path.dirname(served.server.upgrade_path) != stale_dir


async def test_directory_of_a_server_killed_just_now_is_swept_at_once(runtime_dir):
    """Its lock died with it: a server restarted at once in the same runtime dir
    removes the directory, young as it is."""
    async with ServerProc("--address", "127.0.0.1:0") as killed:
        old_dir = os.path.dirname(killed.info["upgrade_path"])
        assert sorted(os.listdir(old_dir)) == ["lock", "server.json", "up.sock"]
        killed.signal(signal.SIGKILL)
        assert await killed.wait(10) == -signal.SIGKILL
    assert os.path.exists(old_dir)
    async with serve(PidGreeter()) as served:
        assert not os.path.exists(old_dir)
        assert os.listdir(runtime_dir) == [os.path.basename(os.path.dirname(served.server.upgrade_path))]
    assert os.listdir(runtime_dir) == []


async def test_directory_of_a_live_server_is_never_swept(runtime_dir):
    """Held locks, in another process and in this one, whatever the directories' age."""
    async with ServerProc("--address", "127.0.0.1:0") as other, serve(PidGreeter()) as ours:
        live = [os.path.dirname(other.info["upgrade_path"]),
                os.path.dirname(ours.server.upgrade_path)]
        for directory in live:
            os.utime(directory, (0, 0))
        assert _lanes.sweep_stale(runtime_dir) == 0
        async with serve(PidGreeter()):
            assert all(os.path.exists(directory) for directory in live)
        channel = ours.keep(rpc.insecure_channel(f"127.0.0.1:{other.port}"))
        stub = echo_pb2_grpc.EchoStub(channel)
        reply = await asyncio.wait_for(stub.Unary(echo_pb2.EchoMessage(payload=b"x"), timeout=5), 6)
        assert reply.payload == b"x"
        assert channel.lane == "shm"      # the other server's upgrade socket still works


def test_directory_without_a_lock_file_keeps_the_age_rule(tmp_path):
    """What an older version leaves: swept only once a few seconds old and dead."""
    directory = tmp_path / "lanerpc-up-old"
    directory.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(directory / "up.sock"))
    sock.close()                         # the file stays; nothing accepts on it
    assert _lanes.sweep_stale(str(tmp_path)) == 0
    assert directory.exists()
    os.utime(directory, (0, 0))
    assert _lanes.sweep_stale(str(tmp_path)) == 1
    assert not directory.exists()


# ------------------------------------------------------------------ namespaces

@pytest.fixture
def private_runtime_dir(monkeypatch):
    """The server's runtime dir (where its upgrade socket lives), which the
    namespaced client sees replaced by an empty tmpfs: what a container with its
    own /tmp sees. (Not all of /tmp: the checkout and .venv may live there.)"""
    directory = tempfile.mkdtemp(prefix="lrns-")
    monkeypatch.setenv("LANERPC_RUNTIME_DIR", directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _private_tmp(runtime_dir: str) -> list[str]:
    """A command prefix: what follows runs in a new mount namespace with its own runtime
    dir and /dev/shm."""
    script = (f"mount -t tmpfs tmpfs {runtime_dir} && mount -t tmpfs tmpfs /dev/shm && "
              "exec \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


async def ns_client(prefix: list[str], target: str, *args: str) -> dict:
    """Run tests/e2e/_ns_client.py (ten calls to ``target``) behind the command
    ``prefix``; check it got ten answers from this process, without an error; return
    its result."""
    rc, out, err = await run_child(*prefix, PYTHON, "-m", "tests.e2e._ns_client", target,
                                   "--calls", "10", *args)
    assert rc == 0, err
    result = last_json(out)
    assert result["errors"] == []
    assert result["replies"] == [f"{i}@{os.getpid()}" for i in range(10)]
    return result


async def test_client_in_private_mount_namespace_stays_on_tcp(private_runtime_dir):
    need_root_and("unshare")
    greeter = PidGreeter()
    async with serve(greeter) as served:
        result = await ns_client(_private_tmp(private_runtime_dir), served.target)
        assert result["lane"] == "tcp"
        assert greeter.calls == 10


@pytest.mark.parametrize("kind", ["lanerpc", "silent"])
async def test_decoy_at_the_advertised_path_is_never_used(kind, private_runtime_dir):
    """Another process listening at the advertised path, unable to answer the
    challenge (a lanerpc server of its own, or one that never answers)."""
    need_root_and("unshare")
    greeter = PidGreeter()
    async with serve(greeter) as served:
        result = await ns_client(_private_tmp(private_runtime_dir), served.target,
                                 "--decoy", served.server.upgrade_path, "--decoy-kind", kind)
        assert result["lane"] == "tcp"
        assert result["decoy_calls"] == 0
        assert greeter.calls == 10


class _NetNamespace:
    """A network namespace joined to this one by a veth pair."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"lanerpc-{tag}"
        self.host_if, self.ns_if = f"lrh{tag}", f"lrn{tag}"
        octet = int(tag[:2], 16) % 250 + 1
        self.host_ip, self.ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    def __enter__(self) -> "_NetNamespace":
        self._ip("netns", "add", self.name)
        try:
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._ip("link", "set", self.ns_if, "netns", self.name)
            self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            self._ip("-n", self.name, "link", "set", self.ns_if, "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


async def test_client_in_another_network_namespace_same_filesystem_is_upgraded():
    need_root_and("ip")
    try:
        netns = _NetNamespace().__enter__()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"can't make a network namespace here: {exc}")
    try:
        async with serve(PidGreeter(), address="0.0.0.0:0") as served:
            result = await ns_client(["ip", "netns", "exec", netns.name], f"{netns.host_ip}:{served.port}")
            assert result["lane"] == "shm"       # same /dev/shm too: the fastest lane
            assert served.server.stats.connections_total["shm"] == 1
    finally:
        netns.__exit__()


async def test_sweep_leaves_other_directories_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LANERPC_RUNTIME_DIR", str(tmp_path))
    keep = [tmp_path / "lanerpc-other", tmp_path / "lanerpc-up-nosocket"]
    for directory in keep:
        directory.mkdir()
        (directory / "data").write_text("not ours to remove")
        os.utime(directory, (0, 0))
    async with serve(PidGreeter()):
        assert all((directory / "data").exists() for directory in keep)
