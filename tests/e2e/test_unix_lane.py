"""The unix lane on its own: target spellings, socket files, and who may connect."""

from __future__ import annotations

import os
import socket
import stat
import tempfile

import pytest

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc
from tests.e2e._greeter import PidGreeter
from tests.e2e.conftest import PYTHON, last_json, need_root_and, run_child


async def start_unix_server(path: str, options=None):
    greeter = PidGreeter()
    server = rpc.server(options=options)
    helloworld_pb2_grpc.add_GreeterServicer_to_server(greeter, server)
    server.add_insecure_port("unix:" + path)
    await server.start()
    return server, greeter


async def say(channel) -> str:
    stub = helloworld_pb2_grpc.GreeterStub(channel)
    return (await stub.SayHello(helloworld_pb2.HelloRequest(name="u"), timeout=5)).message


@pytest.mark.parametrize("spelling", ["unix:{abs}", "unix://{abs}", "unix:{rel}"])
async def test_target_spellings(tmp_path, monkeypatch, spelling):
    path = str(tmp_path / "greeter.sock")
    monkeypatch.chdir(tmp_path)
    server, _ = await start_unix_server(path)
    try:
        target = spelling.format(abs=path, rel="greeter.sock")
        async with rpc.insecure_channel(target, options=[("lanerpc.lanes", "unix")]) as channel:
            assert await say(channel) == f"u@{os.getpid()}"
            assert channel.lane == "unix"
    finally:
        await server.stop(0)


async def test_socket_file_is_owner_only_and_removed_on_stop(tmp_path):
    path = str(tmp_path / "s.sock")
    server, _ = await start_unix_server(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        await server.stop(0)
    assert not os.path.exists(path)


async def test_stale_socket_file_does_not_stop_a_new_server(tmp_path):
    path = str(tmp_path / "s.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)       # a socket file nobody listens on: what a killed server leaves
    dead.close()
    assert os.path.exists(path)
    server, _ = await start_unix_server(path)
    try:
        async with rpc.insecure_channel("unix:" + path) as channel:
            await say(channel)
    finally:
        await server.stop(0)


async def test_a_live_servers_path_is_never_taken(tmp_path):
    path = str(tmp_path / "s.sock")
    server, _ = await start_unix_server(path)
    try:
        second = rpc.server()
        with pytest.raises(RuntimeError, match="in use"):
            second.add_insecure_port("unix:" + path)
        async with rpc.insecure_channel("unix:" + path) as channel:
            assert await say(channel) == f"u@{os.getpid()}"
    finally:
        await server.stop(0)


async def test_unix_target_refused_when_lanes_exclude_unix(tmp_path):
    path = str(tmp_path / "s.sock")
    server, _ = await start_unix_server(path)
    try:
        async with rpc.insecure_channel("unix:" + path, options=[("lanerpc.lanes", "tcp")]) as ch:
            with pytest.raises(rpc.AioRpcError) as info:
                await say(ch)
            assert "excludes unix" in info.value.details()
    finally:
        await server.stop(0)


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
    server, greeter = await start_unix_server(path, options=[("lanerpc.allowed_uids", allowed)])
    try:
        rc, out, err = await run_child(
            PYTHON, "-m", "tests.e2e._as_uid_client", str(other), "unix:" + path)
        assert rc == 0, err
        result = last_json(out)
        if admitted:
            assert result["code"] == "OK"
            assert greeter.calls == 1
        else:
            assert result["code"] == "PERMISSION_DENIED"
            assert f"uid {other}" in result["details"]
            assert greeter.calls == 0
    finally:
        await server.stop(0)
