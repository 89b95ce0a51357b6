"""``lanerpc ps`` end to end: servers in subprocesses, the command in another."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rpc
import rpc._stats
from rpc import _lanes, _ps
from examples.echo import echo_pb2_grpc
from tests._support import msg, wait_until, within

ROOT = Path(__file__).resolve().parent.parent.parent
SERVER = Path(__file__).resolve().parent / "_channelz_server.py"


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime directory of the test's own, for the servers and the command alike."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("LANERPC_RUNTIME_DIR", str(directory))
    return directory


class Servers:
    """Server processes, each stopped by its pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen([sys.executable, str(SERVER), *args], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()         # the port, once it listens (it exits otherwise)
        assert line.strip().isdigit(), f"server did not start: {line!r}"
        # It printed its port before serving: wait for its file (written once it serves).
        deadline = time.monotonic() + 10
        while proc.pid not in {info.pid for info in _ps.live_servers()}:
            assert time.monotonic() < deadline and proc.poll() is None, "no status file"
            time.sleep(0.02)
        return proc, int(line)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def servers():
    made = Servers()
    try:
        yield made
    finally:
        made.stop_all()


def ps(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "rpc", "ps", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def listed() -> dict[int, dict]:
    return {entry["pid"]: entry for entry in json.loads(ps("--json").stdout)}


async def test_ps_lists_both_servers_and_forgets_a_killed_one(runtime_dir, servers):
    first, first_port = servers.start()
    second, second_port = servers.start()

    table = ps().stdout
    for proc, port in ((first, first_port), (second, second_port)):
        line = next(line for line in table.splitlines() if line.startswith(f"{proc.pid} "))
        assert f"127.0.0.1:{port}" in line and "shm,unix,tcp" in line
    entries = listed()       # (other servers of this user, elsewhere, may be listed too)
    assert {first.pid, second.pid} <= set(entries)
    assert entries[first.pid]["addresses"] == [f"127.0.0.1:{first_port}"]

    # Calls show up per lane within about a second (the file is refreshed while they change).
    channel = rpc.insecure_channel(f"127.0.0.1:{first_port}")
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(3):
            await within(stub.Unary(msg(b"x"), timeout=5))
        assert channel.lane == "shm"
        deadline = time.monotonic() + 5
        while listed()[first.pid]["calls_by_lane"].get("shm") != 3:
            assert time.monotonic() < deadline, listed()
            await asyncio.sleep(0.2)
        assert listed()[first.pid]["connections_open"] == {"shm": 1}
        assert "shm 1/1" in ps().stdout
    finally:
        await within(channel.close())

    os.kill(second.pid, signal.SIGKILL)
    second.wait(10)
    entries = listed()
    assert first.pid in entries and second.pid not in entries
    assert f"\n{second.pid} " not in ps().stdout

    os.kill(first.pid, signal.SIGTERM)       # rpc.serve's graceful stop removes its file
    assert first.wait(10) == 0
    assert first.pid not in listed()
    # What is left is the killed server's (the next server's sweep removes it).
    left = [json.loads(path.read_text())["pid"]
            for path in runtime_dir.glob(f"{_lanes._DIR_PREFIX}*/{_ps.FILE_NAME}")]
    assert left == [second.pid]


def test_no_servers_is_said_plainly(runtime_dir):
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(runtime_dir)          # every place ps looks: empty
    proc = ps(env=env)
    assert proc.stdout == "no lanerpc servers of yours are running on this host\n"
    assert json.loads(ps("--json", env=env).stdout) == []


async def test_an_idle_server_does_not_rewrite_its_file(runtime_dir, servers):
    proc, _ = servers.start()
    [path] = runtime_dir.glob(f"{_lanes._DIR_PREFIX}*/{_ps.FILE_NAME}")
    written = path.stat().st_mtime_ns
    await asyncio.sleep(1.5)
    assert path.stat().st_mtime_ns == written


async def test_the_file_follows_every_round_of_changes(tmp_path, monkeypatch):
    # The counters tell the file of their first change only, until it has read them:
    # a change after a refresh must arm the next one.
    monkeypatch.setattr(_ps, "REFRESH_SECONDS", 0.01)
    stats = rpc._stats.Stats()
    status = _ps.StatusFile(str(tmp_path), ["127.0.0.1:1"], ["tcp"], stats,
                            asyncio.get_running_loop())
    path = Path(status.path)

    def calls() -> int:
        return json.loads(path.read_bytes()).get("calls_by_lane", {}).get("unix", 0)

    try:
        for expected in (2, 3, 4):
            stats.call_ended("unix", 0)
            if expected == 2:
                stats.call_ended("unix", 0)   # two changes, one refresh
            await wait_until(lambda: calls() == expected, timeout=5)
    finally:
        status.close()
    assert not path.exists()


@pytest.mark.parametrize("content", [
    b"not json",
    b"{}",
    b'{"version": 1, "pid": "1", "addresses": [], "lanes": [], "started": 1}',
    b'{"version": 1, "pid": 1, "addresses": "127.0.0.1:1", "lanes": [], "started": 1}',
    b'{"version": 1, "pid": 1, "addresses": ["\\u0000"], "lanes": [], "started": 1}',
    b'{"version": 1, "pid": 1, "addresses": [], "lanes": [], "started": 1, "calls_by_lane": {"shm": -1}}',
    b"[" * 100_000,
    b'{"version": 1, "pid": 1, "addresses": ["' + b"x" * 70_000 + b'"], "lanes": [], "started": 1}',
])
def test_files_out_of_shape_are_skipped(tmp_path, content):
    path = tmp_path / _ps.FILE_NAME
    path.write_bytes(content)
    assert _ps.read_file(str(path)) is None


def test_a_symlinked_file_is_not_followed(tmp_path):
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"version": 1, "pid": os.getpid(), "addresses": [], "lanes": [],
                                "started": 1}))
    assert _ps.read_file(str(real)) is not None
    link = tmp_path / _ps.FILE_NAME
    link.symlink_to(real)
    assert _ps.read_file(str(link)) is None


def test_a_live_directory_with_a_bad_file_is_not_listed(runtime_dir):
    private = _lanes._PrivateDir.make()      # its lock held by this process, as a server's
    try:
        Path(private.directory, _ps.FILE_NAME).write_bytes(b"\xff garbage")
        assert _ps.live_servers([str(runtime_dir)]) == []
        Path(private.directory, _ps.FILE_NAME).write_text(json.dumps(
            {"version": 1, "pid": os.getpid(), "addresses": ["unix:/x"], "lanes": ["unix"],
             "started": time.time()}))
        [info] = _ps.live_servers([str(runtime_dir)])
        assert info.pid == os.getpid() and info.addresses == ("unix:/x",)
    finally:
        private.close()
    assert _ps.live_servers([str(runtime_dir)]) == []
