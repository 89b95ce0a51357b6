"""Helpers for tests with real processes: every child is stopped by its pid."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def run_child(*argv: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run a command to completion (killed by pid if it overruns)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env=child_env())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv} did not finish within {timeout} s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"child printed no result: {stdout!r}"
    return json.loads(lines[-1])


def need_root_and(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


PYTHON = sys.executable


@pytest.fixture
def runtime_dir(monkeypatch):
    """Upgrade sockets of this test's servers (children inherit the variable) in a
    short directory of their own: a socket path has ~107 bytes, and concurrent
    tests must not see each other's directories."""
    path = tempfile.mkdtemp(prefix="lr-")
    monkeypatch.setenv("LANERPC_RUNTIME_DIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)
