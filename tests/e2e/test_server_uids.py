"""lanerpc.server_uids: a client checks the uid of a unix server (SO_PEERCRED) as soon
as its socket connects, before a byte leaves, and drops one the option does not list.

The impostors are real sockets: a raw asyncio server of our own uid (with the option
listing another uid), and a listener run as another uid by a child process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

import rpc
from rpc import _options
from tests._support import Echo, SETUP_TIMEOUT, msg, serve, within
from examples.echo import echo_pb2_grpc
from tests.e2e.conftest import PYTHON, ROOT, child_env

OTHER_UID = 4321 if os.geteuid() != 4321 else 4322


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A private directory for socket paths (short: a path has ~107 bytes)."""
    directory = tempfile.mkdtemp(prefix="lru-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class Impostor:
    """A raw unix server that records every byte it is sent and every connection."""

    def __init__(self) -> None:
        self.received = b""
        self.connections = 0
        self.closed = 0
        self.server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += data
        finally:
            self.closed += 1
            writer.close()

    async def start(self, path: str) -> Impostor:
        self.server = await within(asyncio.start_unix_server(self._handle, path))
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await within(self.server.wait_closed())


@pytest.fixture
async def impostor(sock_dir: str) -> AsyncIterator[tuple[Impostor, str]]:
    path = os.path.join(sock_dir, "s.sock")
    server = await Impostor().start(path)
    try:
        yield server, path
    finally:
        await server.stop()


async def _unary(channel: Any, payload: bytes = b"hi") -> bytes:
    reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(payload), timeout=SETUP_TIMEOUT)
    return bytes(reply.payload)


@pytest.mark.parametrize("value", [str(OTHER_UID), [OTHER_UID], (OTHER_UID, OTHER_UID + 1)])
async def test_unlisted_uid_on_a_unix_target_is_unavailable_and_sent_nothing(impostor, value):
    server, path = impostor
    async with rpc.insecure_channel(f"unix:{path}",
                                    options=[("lanerpc.server_uids", value)]) as channel:
        with pytest.raises(rpc.AioRpcError) as caught:
            await within(_unary(channel))
    err = caught.value
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    details = err.details() or ""
    assert path in details and f"uid {os.geteuid()}" in details, details
    assert "lanerpc.server_uids" in details and str(OTHER_UID) in details, details
    # The impostor saw the connection (the check needs it) and its end, but no byte.
    await within(_until(lambda: server.connections >= 1 and server.closed == server.connections))
    assert server.received == b""


async def _until(predicate, every: float = 0.005) -> None:
    while not predicate():
        await asyncio.sleep(every)


@pytest.mark.parametrize("lanes", ["unix", "shm,unix"])
async def test_listed_uid_on_a_unix_target_works(sock_dir, lanes):
    path = os.path.join(sock_dir, "e.sock")
    async with serve(Echo(), address=f"unix:{path}") as served:
        listed = f"{OTHER_UID}, {os.geteuid()}"
        channel = served.channel(lanes=lanes, options=[("lanerpc.server_uids", listed)])
        assert await within(_unary(channel)) == b"hi"
        assert channel.lane == lanes.split(",")[0]


async def test_upgrade_to_an_unlisted_uid_is_not_taken(runtime_dir, caplog):
    """On a host:port target the check applies to the upgrade socket: an unlisted
    server uid keeps the channel on tcp (logged at DEBUG); the call succeeds."""
    async with serve(Echo()) as served:
        assert served.server.upgrade_path is not None
        with caplog.at_level(logging.DEBUG, logger="lanerpc"):
            channel = served.channel(options=[("lanerpc.server_uids", str(OTHER_UID))])
            assert await within(_unary(channel)) == b"hi"
        assert channel.lane == "tcp"
        assert any("lanerpc.server_uids" in r.getMessage() and "staying on tcp" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        listed = served.channel(options=[("lanerpc.server_uids", str(os.geteuid()))])
        assert await within(_unary(listed)) == b"hi"
        assert listed.lane == "shm"


async def test_unset_option_changes_nothing(sock_dir, runtime_dir):
    assert _options.parse(()).server_uids is None
    path = os.path.join(sock_dir, "e.sock")
    async with serve(Echo(), address=["127.0.0.1:0", f"unix:{path}"]) as served:
        for target in served.targets:
            plain = served.channel(target)
            listed = served.channel(target, options=[("lanerpc.server_uids", os.geteuid())])
            assert await within(_unary(plain)) == await within(_unary(listed)) == b"hi"
            assert plain.lane == listed.lane == "shm"


@pytest.mark.parametrize("value", ["", "x", "1,,2", "-1", "1.5", [], ["1"], [True], [-3], 2.0, None])
def test_bad_server_uids_are_a_clear_error(value):
    with pytest.raises(ValueError, match="lanerpc.server_uids must be uids"):
        rpc.insecure_channel("unix:/nonexistent", options=[("lanerpc.server_uids", value)])


_LISTENER = """
import json, os, socket, sys
uid, path = int(sys.argv[1]), sys.argv[2]
os.setgid(uid)
os.setuid(uid)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(path)
sock.listen(8)
print(json.dumps({"ready": True, "uid": os.geteuid()}), flush=True)
conn, _ = sock.accept()
conn.settimeout(10)
received = b""
while True:
    data = conn.recv(65536)
    if not data:
        break
    received += data
print(json.dumps({"received": received.hex()}), flush=True)
"""


async def test_listener_of_another_uid_is_refused_before_any_byte(sock_dir):
    """The real threat: another uid took the path first (root here, so a child
    drops to another uid and listens there)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a listener as another uid")
    os.chown(sock_dir, OTHER_UID, OTHER_UID)
    path = os.path.join(sock_dir, "taken.sock")
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-c", _LISTENER, str(OTHER_UID), path, stdout=asyncio.subprocess.PIPE,
        cwd=ROOT, env=child_env())
    try:
        assert proc.stdout is not None
        ready = json.loads(await within(proc.stdout.readline()))
        assert ready == {"ready": True, "uid": OTHER_UID}
        async with rpc.insecure_channel(
                f"unix:{path}", options=[("lanerpc.server_uids", str(os.geteuid()))]) as channel:
            with pytest.raises(rpc.AioRpcError) as caught:
                await within(_unary(channel))
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert f"uid {OTHER_UID}" in (caught.value.details() or "")
        report = json.loads(await within(proc.stdout.readline()))
        assert report == {"received": ""}
        assert await within(proc.wait()) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await within(proc.wait())


@pytest.mark.parametrize("target", ["grpc://unix:/nonexistent.sock", "unix:/nonexistent.sock"])
def test_plain_grpc_channel_to_a_unix_target_refuses_the_option(target):
    """grpcio does not check it: better a clear error than a check silently dropped."""
    options = [("lanerpc.server_uids", "0"), ("lanerpc.protocol", "grpc")]
    with pytest.raises(ValueError, match="lanerpc.server_uids is checked by lanerpc channels only"):
        rpc.insecure_channel(target, options=options)
