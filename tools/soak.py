"""A long run of mixed calls on every lanerpc lane, watching for leaks.

    tools/soak                 # 10 minutes
    tools/soak --minutes 1 --json soak.json

One server process (the bench's Echo server: a TCP port and a Unix socket) and this
process as the client. Round after round, on each lane (tcp; unix; 127.0.0.1 upgraded to
shm), a fresh channel makes a mix of calls: unary, server and client streaming, bidi,
calls cancelled mid-way and calls that run out of deadline, then closes. Every few
seconds both processes' RSS, open fds and threads are sampled.

At the end it prints, for each process, the RSS slope over calls (a least-squares line
through the samples after the first fifth of the run, in kB per 10k calls) and the fds and
threads at the first and last sample. Exit status 1 when a slope is over ``--max-slope``
(1 kB per 10k calls by default) or fds or threads grew; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import grpc  # noqa: E402

import rpc  # noqa: E402
from examples.echo import echo_pb2, echo_pb2_grpc  # noqa: E402

Msg = echo_pb2.EchoMessage
SAMPLE_EVERY = 5.0          # seconds between samples
CALL_TIMEOUT = 10.0


@dataclass
class Sample:
    t: float
    calls: int
    server_rss_kb: int
    server_fds: int
    server_threads: int
    client_rss_kb: int
    client_fds: int
    client_threads: int


def _proc(pid: int) -> tuple[int, int, int]:
    rss = threads = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def _slope_kb_per_10k(samples: list[Sample], field: str) -> float:
    """Least-squares slope of ``field`` (kB) over calls, scaled to 10k calls."""
    xs = [s.calls for s in samples]
    ys = [getattr(s, field) for s in samples]
    n = len(xs)
    if n < 3 or max(xs) == min(xs):
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return sxy / sxx * 10_000


async def _round(target: str, lanes: str | None) -> int:
    """One channel's worth of mixed calls; returns how many calls it made."""
    options = [] if lanes is None else [("lanerpc.lanes", lanes)]
    calls = 0
    async with rpc.insecure_channel(target, options=options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(50):
            await stub.Unary(Msg(payload=b"u" * 100), timeout=CALL_TIMEOUT)
            calls += 1
        big = await stub.Unary(Msg(payload=b"b" * 200_000), timeout=CALL_TIMEOUT)
        assert len(big.payload) == 200_000
        calls += 1
        async for _ in stub.ServerStream(Msg(payload=b"s"), timeout=CALL_TIMEOUT):
            pass
        calls += 1
        await stub.ClientStream(iter([Msg(payload=b"c")] * 20), timeout=CALL_TIMEOUT)
        calls += 1
        bidi = stub.Bidi(timeout=CALL_TIMEOUT)
        for _ in range(20):
            await bidi.write(Msg(payload=b"d"))
            await bidi.read()
        await bidi.done_writing()
        await bidi.read()
        calls += 1
        # A call cancelled while the server waits for more of it.
        cancelled = stub.Bidi(timeout=CALL_TIMEOUT)
        await cancelled.write(Msg(payload=b"x"))
        await cancelled.read()
        cancelled.cancel()
        calls += 1
        # A call that runs out of deadline while the server waits for its input.
        late = stub.ClientStream(timeout=0.01)
        try:
            await late
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
        calls += 1
    return calls


async def _soak(minutes: float, ready: dict[str, Any], server_pid: int) -> list[Sample]:
    lanes = [
        (f"127.0.0.1:{ready['port']}", "tcp"),
        (f"unix:{ready['unix_path']}", "unix"),
        (f"127.0.0.1:{ready['port']}", None),        # upgraded to shm
    ]
    samples: list[Sample] = []
    calls = 0
    start = time.monotonic()
    end = start + minutes * 60
    next_sample = start
    while True:
        now = time.monotonic()
        if now >= next_sample or now >= end:
            # Between rounds no channel is open; let closing finish (an shm waiter
            # thread ends right after its connection) before counting.
            await asyncio.sleep(0.2)
            server = _proc(server_pid)
            client = _proc(os.getpid())
            samples.append(Sample(round(now - start, 1), calls, *server, *client))
            next_sample = now + SAMPLE_EVERY
            print(f"  {now - start:6.0f} s  {calls:>9,} calls  server {server[0] / 1024:6.1f} MB "
                  f"{server[1]} fds {server[2]} threads  client {client[0] / 1024:6.1f} MB "
                  f"{client[1]} fds {client[2]} threads", flush=True)
        if now >= end:
            return samples
        for target, lane in lanes:
            calls += await _round(target, lane)


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-slope", type=float, default=1.0,
                        help="kB of RSS per 10k calls allowed (default 1)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lanerpc-soak-") as directory:
        spec = {"server": "rpc._bench._rpc:serve_lanerpc",
                "args": {"unix_path": os.path.join(directory, "echo.sock")}}
        server = subprocess.Popen(
            [sys.executable, "-m", "rpc._bench._server", json.dumps(spec)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            ready = json.loads(server.stdout.readline() or '{"error": "no answer"}')
            if "error" in ready:
                print(f"server did not start: {ready['error']}", file=sys.stderr)
                return 2
            print(f"soak: {args.minutes:g} min, server pid {server.pid}, tcp port "
                  f"{ready['port']}, every {SAMPLE_EVERY:g} s:", flush=True)
            try:
                import uvloop
                samples = uvloop.run(_soak(args.minutes, ready, server.pid))
            except ImportError:
                samples = asyncio.run(_soak(args.minutes, ready, server.pid))
        finally:
            if server.stdin is not None:
                server.stdin.close()        # the server stops when its stdin closes
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)

    settled = samples[len(samples) // 5:]
    first, last = settled[0], settled[-1]
    result = {
        "minutes": args.minutes,
        "calls": last.calls,
        "server_rss_slope_kb_per_10k_calls": round(_slope_kb_per_10k(settled, "server_rss_kb"), 3),
        "client_rss_slope_kb_per_10k_calls": round(_slope_kb_per_10k(settled, "client_rss_kb"), 3),
        "server_fds": [first.server_fds, last.server_fds],
        "server_threads": [first.server_threads, last.server_threads],
        "client_fds": [first.client_fds, last.client_fds],
        "client_threads": [first.client_threads, last.client_threads],
        "samples": [asdict(s) for s in samples],
    }
    print(f"\n{last.calls:,} calls in {args.minutes:g} min")
    for side in ("server", "client"):
        print(f"{side}: RSS slope {result[f'{side}_rss_slope_kb_per_10k_calls']:+.2f} kB per 10k "
              f"calls; fds {result[f'{side}_fds'][0]} -> {result[f'{side}_fds'][1]}; threads "
              f"{result[f'{side}_threads'][0]} -> {result[f'{side}_threads'][1]}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    leaked = any(result[f"{side}_rss_slope_kb_per_10k_calls"] > args.max_slope  # type: ignore[operator]
                 or result[f"{side}_fds"][1] > result[f"{side}_fds"][0]  # type: ignore[index]
                 or result[f"{side}_threads"][1] > result[f"{side}_threads"][0]  # type: ignore[index]
                 for side in ("server", "client"))
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
