"""``lanerpc stats`` and the channelz a lanerpc server answers with its own counters."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc_channelz.v1 import channelz, channelz_pb2, channelz_pb2_grpc

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, within

ROOT = Path(__file__).resolve().parent.parent.parent
SERVER = Path(__file__).resolve().parent / "_channelz_server.py"


def stats(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rpc", "stats", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def server_process():
    """A lanerpc server with channelz in a process of its own; stopped by pid."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> int:
        proc = subprocess.Popen([sys.executable, str(SERVER), *args], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"server did not start: {line!r}"
        return int(line)

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


async def _calls(target: str, lanes: str | None, ok: int, failed: int) -> None:
    options = [("lanerpc.lanes", lanes)] if lanes else []
    async with rpc.insecure_channel(target, options=options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(ok):
            await within(stub.Unary(msg(b"x"), timeout=5))
        for _ in range(failed):
            with pytest.raises(grpc.aio.AioRpcError):
                await within(stub.Unary(msg(b"fail"), timeout=5))
        expected = "tcp" if lanes == "tcp" else "shm"
        assert channel.lane == expected


async def test_stats_shows_calls_per_lane_of_a_running_server(server_process):
    port = server_process("--channelz")
    target = f"127.0.0.1:{port}"
    await _calls(target, "tcp", ok=4, failed=1)
    await _calls(target, None, ok=3, failed=0)

    # The command dials tcp and moves to shm; its answer can come over shm before the
    # server has seen the tcp connection it left close: ask again until it has.
    for _ in range(20):
        proc = stats(target, "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        [server] = report["servers"]
        if len(server["connections"]) == 1:
            break
        await asyncio.sleep(0.1)
    lanerpc = server["lanerpc"]
    assert lanerpc["calls_by_lane"]["tcp"] == 5
    assert lanerpc["calls_by_lane"]["shm"] == 3      # (the command's own calls are running)
    assert lanerpc["errors_by_code"] == {"FAILED_PRECONDITION": 1}
    assert lanerpc["connections_total"]["tcp"] >= 2 and lanerpc["bytes_in"] > 0
    assert server["calls_failed"] == 1 and server["calls_succeeded"] >= 7
    # The command's own connection (the earlier ones are closed), on shm.
    [own] = server["connections"]
    assert own["lane"] == "shm" and own["peer"].startswith("ipv4:127.0.0.1:")
    assert report["lane"] == "shm"

    for _ in range(20):   # (as above)
        table = stats(target)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        by_lane = {line.split()[0]: line.split()[1:] for line in lines
                   if line.split()[:1] in (["tcp"], ["shm"], ["unix"])}
        if by_lane["tcp"][0].startswith("0/"):
            break
        await asyncio.sleep(0.1)
    # Every connection to a tcp port starts on tcp: total counts the upgraded ones too.
    assert by_lane["tcp"][0].startswith("0/") and by_lane["tcp"][1] == "5", table.stdout
    assert by_lane["shm"][0].startswith("1/") and int(by_lane["shm"][1]) >= 3, table.stdout
    assert "errors: FAILED_PRECONDITION 1" in table.stdout


async def test_a_server_without_channelz_is_named_as_such(server_process):
    port = server_process()
    proc = stats(f"127.0.0.1:{port}")
    assert proc.returncode == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "does not serve channelz" in proc.stderr and "add_channelz_servicer" in proc.stderr


def test_no_server_is_unavailable():
    proc = stats("127.0.0.1:1", "--timeout", "2")
    assert proc.returncode in (grpc.StatusCode.UNAVAILABLE.value[0],
                               grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    assert "lanerpc stats: 127.0.0.1:1:" in proc.stderr


# ------------------------------------------------------------ the channelz mapping, in process


def _with_channelz(server) -> None:
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    channelz.add_channelz_servicer(server)


async def test_channelz_messages_carry_the_lanes():
    async with serve(_with_channelz) as served:
        tcp = served.channel(lanes="tcp")
        shm = served.channel()
        for channel in (tcp, shm):
            await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))
        stub = channelz_pb2_grpc.ChannelzStub(shm)
        servers = await within(stub.GetServers(channelz_pb2.GetServersRequest()))
        [server] = servers.server
        assert servers.end and server.ref.name == "lanerpc"
        assert server.data.calls_succeeded == 2
        sockets = await within(stub.GetServerSockets(channelz_pb2.GetServerSocketsRequest(
            server_id=server.ref.server_id)))
        assert sockets.end and len(sockets.socket_ref) == 2
        lanes = {}
        for ref in sockets.socket_ref:
            found = (await within(stub.GetSocket(channelz_pb2.GetSocketRequest(
                socket_id=ref.socket_id)))).socket
            lane = wrappers_pb2.StringValue()
            assert found.security.other.name == "lanerpc_lane"
            assert found.security.other.value.Unpack(lane)
            assert ref.name.startswith(lane.value + " ")
            assert found.remote.tcpip_address.port > 0
            lanes[lane.value] = found.data.streams_succeeded
        # (the channelz calls go over the shm connection too, and are counted there)
        assert lanes["tcp"] == 1 and lanes["shm"] >= 3 and set(lanes) == {"tcp", "shm"}
        # Paging: from the second id on, one at a time.
        second = max(ref.socket_id for ref in sockets.socket_ref)
        paged = await within(stub.GetServerSockets(channelz_pb2.GetServerSocketsRequest(
            server_id=server.ref.server_id, start_socket_id=second, max_results=1)))
        assert [r.socket_id for r in paged.socket_ref] == [second] and paged.end
        for call in (stub.GetServer(channelz_pb2.GetServerRequest(server_id=99)),
                     stub.GetSocket(channelz_pb2.GetSocketRequest(socket_id=999)),
                     stub.GetChannel(channelz_pb2.GetChannelRequest(channel_id=1))):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await within(call)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND


class OwnChannelz(channelz_pb2_grpc.ChannelzServicer):
    async def GetServers(self, request, context):
        return channelz_pb2.GetServersResponse(
            server=[channelz_pb2.Server(ref=channelz_pb2.ServerRef(server_id=7, name="mine"))])


async def test_a_channelz_servicer_of_the_users_own_is_left_alone():
    def register(server) -> None:
        channelz_pb2_grpc.add_ChannelzServicer_to_server(OwnChannelz(), server)

    async with serve(register) as served:
        stub = channelz_pb2_grpc.ChannelzStub(served.channel())
        servers = await within(stub.GetServers(channelz_pb2.GetServersRequest()))
        assert [s.ref.name for s in servers.server] == ["mine"]
