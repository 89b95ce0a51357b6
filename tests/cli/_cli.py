"""Running the ``lanerpc`` command from a test: ``python -m rpc`` in a subprocess (the
checkout's rpc, run from the repository's root), bounded and stopped by its pid.

``await cli(...)`` runs a client subcommand while the test's own loop serves; ``Served``
from ``tests._support`` gives a server whose reflection and health a registering
function turns on (:func:`with_reflection`, :func:`with_health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from examples.echo import echo_pb2

ROOT = Path(__file__).resolve().parent.parent.parent
CLI_TIMEOUT = 30.0        # a command's run; its Python start-up alone takes about a second
ECHO = echo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str


async def cli(*args: str, stdin: bytes | None = None, stdin_open: bool = False,
              timeout: float = CLI_TIMEOUT) -> Result:
    """Run ``lanerpc ARGS`` to its end; stdin is ``stdin`` (or /dev/null), and with
    ``stdin_open`` a pipe left open after it (closed once the command has ended)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rpc", *args, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        if stdin_open:
            assert process.stdin is not None and process.stdout is not None \
                and process.stderr is not None and stdin is not None
            process.stdin.write(stdin)
            out, err = await asyncio.wait_for(
                asyncio.gather(process.stdout.read(), process.stderr.read()), timeout)
            await asyncio.wait_for(process.wait(), timeout)
        else:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err, result.err


def with_reflection(server: Any) -> None:
    """Registering function for ``serve()``: reflection over the Echo service."""
    reflection.enable_server_reflection((ECHO, reflection.SERVICE_NAME), server)


def with_health(servicer: health.aio.HealthServicer) -> Any:
    """Registering function for ``serve()``: ``servicer`` as the health service."""
    return lambda server: health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


@contextlib.asynccontextmanager
async def background(*args: str, stdin_pipe: bool = False) -> AsyncIterator[asyncio.subprocess.Process]:
    """``lanerpc ARGS`` running (``serve``, or a ``call`` fed through a stdin pipe), stdout
    and stderr piped; killed by its pid on the way out if it still runs."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rpc", *args, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield process
    finally:
        if process.stdin is not None:
            process.stdin.close()
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), CLI_TIMEOUT)


async def listening(process: asyncio.subprocess.Process, count: int,
                    timeout: float = CLI_TIMEOUT) -> list[str]:
    """The addresses of the first ``count`` "listening on ADDRESS" lines a serve prints."""
    assert process.stdout is not None
    addresses = []
    while len(addresses) < count:
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
        if not line:
            assert process.stderr is not None
            err = await asyncio.wait_for(process.stderr.read(), timeout)
            raise AssertionError(f"serve ended before listening: {err.decode()}")
        text = line.decode().strip()
        assert text.startswith("listening on "), text
        addresses.append(text.removeprefix("listening on "))
    return addresses


async def stop(process: asyncio.subprocess.Process, *, terminate: bool = True,
               timeout: float = CLI_TIMEOUT) -> tuple[int, str]:
    """SIGTERM ``process`` (unless the test has: ``terminate=False``) and wait for its
    end; its exit code and what it wrote on stderr."""
    if terminate:
        os.kill(process.pid, signal.SIGTERM)
    assert process.stderr is not None
    err = await asyncio.wait_for(process.stderr.read(), timeout)
    code = await asyncio.wait_for(process.wait(), timeout)
    return code, err.decode()


def lines(text: str) -> Sequence[str]:
    return text.splitlines()
