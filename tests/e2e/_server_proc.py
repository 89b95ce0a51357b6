"""A server process for lifecycle tests: Echo served through ``rpc.serve()``.

    python -m tests.e2e._server_proc --address 127.0.0.1:0 [--lanes tcp] [--grace 10]
        [--option grpc.http2.min_ping_interval_without_data_ms=100] [--counter-file F]
        [--max-rpcs N]

prints one JSON line ``{"ready": true, "port": ..., "pid": ..., "upgrade_path": ...}``
on stdout once it accepts connections, then serves until a signal stops it
(SIGTERM/SIGINT drain, a second one stops at once, SIGUSR1 logs stats on stderr).

The servicer is the tests' shared Echo (tests/_support.py): what it does by payload
(``b"sleep:500"``, ``b"count:60000"``, ``b"peer"``, ``b"stream:N:MS"``, ``b"noread"``...)
is written there. A handler that takes a while sends initial metadata first, so a
client can await ``call.initial_metadata()`` to know the handler is running.

With ``--client TARGET`` it is instead a client that calls TARGET in a loop
forever (for the kill tests), printing ``{"ready": true, "pid": ...}`` first.

Importable too: :class:`ServerProc` starts this script from a test and stops it
by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import rpc  # noqa: E402
from examples.echo import echo_pb2, echo_pb2_grpc  # noqa: E402
from tests._support import Echo  # noqa: E402

def _parse_option(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    try:
        return name, int(value)
    except ValueError:
        return name, value


def _server_main(args: argparse.Namespace) -> None:
    options = [_parse_option(o) for o in args.option]
    if args.lanes:
        options.append(("lanerpc.lanes", args.lanes))
    server = rpc.server(options=options, maximum_concurrent_rpcs=args.max_rpcs)
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(counter_file=args.counter_file), server)
    port = server.add_insecure_port(args.address)
    start = server.start

    async def start_and_announce() -> None:
        await start()
        print(json.dumps({"ready": True, "port": port, "pid": os.getpid(),
                          "upgrade_path": server.upgrade_path}), flush=True)

    server.start = start_and_announce   # rpc.serve starts the server; announce once it listens
    rpc.serve(server, grace=args.grace)


async def _client_loop(target: str) -> None:
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    payloads = [b"x", b"sleep:20"]
    i = 0
    while True:
        channel = rpc.insecure_channel(target)
        try:
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(20):
                i += 1
                try:
                    await stub.Unary(echo_pb2.EchoMessage(payload=payloads[i % 2]), timeout=2)
                    async for _ in stub.ServerStream(echo_pb2.EchoMessage(payload=b"y"), timeout=2):
                        pass
                except rpc.AioRpcError:
                    await asyncio.sleep(0.05)
        finally:
            await channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default="127.0.0.1:0")
    parser.add_argument("--lanes", default=None, help='"tcp", "unix,tcp", ...; default: the library default')
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--option", action="append", default=[], help="name=value, repeatable")
    parser.add_argument("--counter-file", default=None)
    parser.add_argument("--max-rpcs", type=int, default=None)
    parser.add_argument("--client", default=None, help="run as a calling client of this target")
    args = parser.parse_args(argv)
    if args.client:
        asyncio.run(_client_loop(args.client))
    else:
        _server_main(args)


# ------------------------------------------------------------------ for tests

class ServerProc:
    """This script as a child process, stopped by its pid (SIGCONT + SIGKILL) in ``stop``."""

    module = "tests.e2e._server_proc"    # a subclass may run another such script

    def __init__(self, *args: str, env: dict | None = None, stderr_path: str | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        self.args = args
        self.prefix = prefix     # e.g. an unshare command that execs the server (same pid)
        self.env = env
        self.stderr_path = stderr_path
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict = {}
        self._stderr = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return self.info["port"]

    async def start(self, timeout: float = 10.0) -> "ServerProc":
        from tests.e2e.conftest import child_env
        env = child_env()
        env.update(self.env or {})
        self._stderr = open(self.stderr_path, "ab") if self.stderr_path else asyncio.subprocess.DEVNULL
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix, sys.executable, "-m", self.module, *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=self._stderr, cwd=_ROOT, env=env)
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise AssertionError(f"server process {self.args} exited before it was ready "
                                     f"(rc {await asyncio.wait_for(self.proc.wait(), 5)})")
            self.info = json.loads(line)
        except BaseException:
            await self.stop()
            raise
        return self

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    async def wait(self, timeout: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        """SIGCONT + SIGKILL by pid unless it already exited; reap it; close our pipe ends."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                pass
        if proc.stdout is not None:
            # Drain what is left so the pipe transport closes and its fd is released.
            try:
                await asyncio.wait_for(proc.stdout.read(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()
        if self._stderr not in (None, asyncio.subprocess.DEVNULL):
            self._stderr.close()
            self._stderr = None

    async def __aenter__(self) -> "ServerProc":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


if __name__ == "__main__":
    main()
