"""The lanerpc demo: one server, one client on this host, five ways to dial it.

    tools/demo                  (or: python -m examples.demo [--calls N])

It starts examples/helloworld/server.py in a child process, listening on 127.0.0.1
(a free port), on a Unix socket, and on a plain gRPC port (grpc://), then calls
SayHello over five channels:

1. grpc.aio dials the plain gRPC port: what the same service costs over gRPC today;
2. dial 127.0.0.1:PORT, lanes "tcp" only: lanerpc's own protocol, no upgrade;
3. dial 127.0.0.1:PORT, lanes "unix,tcp": upgraded to the Unix socket;
4. dial 127.0.0.1:PORT, default lanes: the same code, upgraded to the fastest same-host lane;
5. dial the server's unix: path, default lanes.

For each it prints the lane the channel is on (``channel.lane``; "tcp→shm" when it moved
after the first call), the median latency of N calls, and how many times faster than
grpc.aio that is. The server is stopped by pid at the end, and on Ctrl-C; its socket
directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

import grpc

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
WARMUP_CALLS = 200


async def start_server(addresses: list[str]) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Start the helloworld server; return it and the addresses it says it listens on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.helloworld.server", *addresses,
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        # Its own session: a Ctrl-C in this terminal reaches only the demo, which then
        # stops the server itself (by pid, in main's finally).
        start_new_session=True,
    )
    assert proc.stdout is not None
    listening: list[str] = []
    try:
        while len(listening) < len(addresses):
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
            if not line:
                raise RuntimeError("the server exited before listening (its error is above)")
            if line.startswith("listening on "):
                listening.append(line.removeprefix("listening on ").strip())
    except BaseException:
        await stop_server(proc)
        raise
    return proc, listening


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the server stops gracefully and cleans up), SIGKILL if it takes too long."""
    if proc.returncode is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except ProcessLookupError:
        pass
    except (asyncio.TimeoutError, asyncio.CancelledError):
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


async def try_channel(channel: Any, calls: int) -> tuple[str, float]:
    """Make calls on ``channel`` (closed after); return the lane(s) it used and the median
    latency in µs."""
    async with channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        request = helloworld_pb2.HelloRequest(name="demo")
        await stub.SayHello(request, timeout=10)
        first_lane = getattr(channel, "lane", "tcp")  # the lane of the first connection
        for _ in range(WARMUP_CALLS):  # the same-host upgrade, if any, happens meanwhile
            await stub.SayHello(request)
        times: list[float] = []
        for _ in range(calls):
            start = time.perf_counter()
            await stub.SayHello(request)
            times.append(time.perf_counter() - start)
        lane = getattr(channel, "lane", "tcp")
    shown = str(lane) if lane == first_lane else f"{first_lane}→{lane}"
    return shown, statistics.median(times) * 1e6


async def demo(calls: int) -> int:
    # Not named "lanerpc-*": lanerpc sweeps stale directories of that name from the temp dir.
    sockdir = tempfile.mkdtemp(prefix="demo-lanerpc-")
    proc = None
    try:
        proc, listening = await start_server([
            "127.0.0.1:0", f"unix:{os.path.join(sockdir, 'greeter.sock')}", "grpc://127.0.0.1:0"])
        print(f"server pid {proc.pid} listening on {', '.join(listening)}")
        tcp = next(a for a in listening if a[0].isdigit())
        unix = next(a for a in listening if a.startswith("unix:"))
        plain = next(a for a in listening if a.startswith("grpc://"))

        ways: list[tuple[str, str, Any]] = [
            # (what is dialed, who dials how, a function that opens the channel)
            (plain, "grpc.aio", lambda: grpc.aio.insecure_channel(plain.removeprefix("grpc://"))),
            (tcp, "lanes=tcp", lambda: rpc.insecure_channel(tcp, options=[("lanerpc.lanes", "tcp")])),
            (tcp, "lanes=unix,tcp",
             lambda: rpc.insecure_channel(tcp, options=[("lanerpc.lanes", "unix,tcp")])),
            (tcp, "default", lambda: rpc.insecure_channel(tcp)),
            (unix, "default", lambda: rpc.insecure_channel(unix)),
        ]

        width = max(len(target) for target, _, _ in ways) + 2
        print(f"\n{'dial':<{width}}{'client':<16}{'lane':<10}{f'p50 of {calls} calls':>18}"
              f"{'vs grpc.aio':>13}")
        failed = 0
        baseline = None
        for target, client, open_channel in ways:
            try:
                lane, p50 = await try_channel(open_channel(), calls)
            except grpc.RpcError as exc:  # show it and go on with the next way
                failed += 1
                print(f"{target:<{width}}{client:<16}failed: {exc.code().name}: {exc.details()}")
                continue
            baseline = baseline or p50
            ratio = "" if p50 is baseline else f"{baseline / p50:.1f}x faster"
            print(f"{target:<{width}}{client:<16}{lane:<10}{p50:>15,.0f} µs{ratio:>13}", flush=True)
        return 1 if failed else 0
    finally:
        if proc is not None:
            await stop_server(proc)
        shutil.rmtree(sockdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000,
                        help="timed calls per channel (default 1000)")
    args = parser.parse_args()
    try:
        import uvloop  # the same loop as the server uses when it is installed
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        return run(demo(args.calls))
    except KeyboardInterrupt:
        print("\ninterrupted; server stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
