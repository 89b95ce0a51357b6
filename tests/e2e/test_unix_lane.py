"""The unix lane on its own: target spellings, socket files, and who may connect."""

from __future__ import annotations

import os
import socket
import stat
import tempfile

import pytest

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc
from tests._support import serve
from tests.e2e._greeter import PidGreeter
from tests.e2e.conftest import PYTHON, last_json, need_root_and, run_child


def serve_unix(path: str, greeter=None, options=None):
    """A server of ``greeter`` (a fresh PidGreeter by default) on the socket file ``path``."""
    return serve(greeter or PidGreeter(), address="unix:" + path, options=options)


async def say(channel) -> str:
    stub = helloworld_pb2_grpc.GreeterStub(channel)
    return (await stub.SayHello(helloworld_pb2.HelloRequest(name="u"), timeout=5)).message


@pytest.mark.parametrize("spelling", ["unix:{abs}", "unix://{abs}", "unix:{rel}"])
async def test_target_spellings(tmp_path, monkeypatch, spelling):
    path = str(tmp_path / "greeter.sock")
    monkeypatch.chdir(tmp_path)
    async with serve_unix(path) as served:
        channel = served.channel(spelling.format(abs=path, rel="greeter.sock"), lanes="unix")
        assert await say(channel) == f"u@{os.getpid()}"
        assert channel.lane == "unix"


async def test_socket_file_is_owner_only_and_removed_on_stop(tmp_path):
    path = str(tmp_path / "s.sock")
    async with serve_unix(path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not os.path.exists(path)


async def test_stale_socket_file_does_not_stop_a_new_server(tmp_path):
    path = str(tmp_path / "s.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)       # a socket file nobody listens on: what a killed server leaves
    dead.close()
    assert os.path.exists(path)
    async with serve_unix(path) as served:
        assert await say(served.channel()) == f"u@{os.getpid()}"


async def test_a_live_servers_path_is_never_taken(tmp_path):
    path = str(tmp_path / "s.sock")
    async with serve_unix(path) as served:
        with pytest.raises(RuntimeError, match="in use"):
            async with serve_unix(path):
                pass
        assert await say(served.channel()) == f"u@{os.getpid()}"


async def test_unix_target_refused_when_lanes_exclude_unix(tmp_path):
    path = str(tmp_path / "s.sock")
    async with serve_unix(path) as served:
        with pytest.raises(rpc.AioRpcError) as info:
            await say(served.channel(lanes="tcp"))
        assert "excludes unix" in info.value.details()


@pytest.fixture
def shared_dir():
    """A directory other uids may traverse (pytest's tmp_path is owner-only)."""
    directory = tempfile.mkdtemp(prefix="lanerpc-test-")
    os.chmod(directory, 0o755)
    yield directory
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


@pytest.mark.parametrize("admitted", [True, False])
async def test_only_admitted_uids_reach_handlers(shared_dir, admitted):
    need_root_and()
    other = 65534
    path = os.path.join(shared_dir, "s.sock")
    allowed = str(other) if admitted else "12345"
    greeter = PidGreeter()
    async with serve_unix(path, greeter, options=[("lanerpc.allowed_uids", allowed)]) as served:
        rc, out, err = await run_child(
            PYTHON, "-m", "tests.e2e._as_uid_client", str(other), served.target)
        assert rc == 0, err
        result = last_json(out)
        if admitted:
            assert result["code"] == "OK"
            assert greeter.calls == 1
        else:
            assert result["code"] == "PERMISSION_DENIED"
            assert f"uid {other}" in result["details"]
            assert greeter.calls == 0
