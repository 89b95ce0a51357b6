"""``python -m examples.worker_pool``: spawn N workers, fan tasks out to them, and compare.

1. lanerpc: ``rpc.spawn`` starts each worker and returns a channel to it over the
   worker's stdin/stdout; on one host the channel then moves to shared memory (the
   pipe stays open as the worker's lifeline). Tasks go to the workers in turn, a
   bounded number in flight per worker.
2. grpc.aio: the same workers' servicer in N grpc.aio servers (child processes on
   free ports), called through N grpc.aio channels, the same way.

Both pools run side by side, the rounds taken in turn (so both see the same machine);
every result is checked (its digest, and that the worker which answered is one of
ours); the median speeds are printed with their ratio. ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

import rpc
from examples.worker_pool import worker_pool_pb2, worker_pool_pb2_grpc
from examples.worker_pool.worker import digest

WORKER = [sys.executable, "-m", "examples.worker_pool.worker"]


async def fan_out(stubs: Sequence[worker_pool_pb2_grpc.WorkerStub], tasks: int, size: int,
                  rounds: int, in_flight: int) -> tuple[float, Counter[int]]:
    """Run ``tasks`` tasks over the workers (task i to worker i mod N, at most
    ``in_flight`` waiting per worker); returns the seconds taken and tasks per worker pid."""
    data = os.urandom(size)
    expected = digest(data, rounds)
    done: Counter[int] = Counter()

    async def one_worker(stub: worker_pool_pb2_grpc.WorkerStub, ids: range) -> None:
        queue = iter(ids)

        async def lane() -> None:
            for task_id in queue:      # the lanes of one worker share its queue
                result = await stub.Work(worker_pool_pb2.Task(id=task_id, data=data,
                                                              rounds=rounds), timeout=30)
                if result.id != task_id or result.digest != expected:
                    raise RuntimeError(f"task {task_id}: wrong result from pid {result.worker_pid}")
                done[result.worker_pid] += 1

        await asyncio.gather(*(lane() for _ in range(in_flight)))

    start = time.perf_counter()
    await asyncio.gather(*(one_worker(stub, range(i, tasks, len(stubs)))
                           for i, stub in enumerate(stubs)))
    return time.perf_counter() - start, done


@contextlib.asynccontextmanager
async def lanerpc_pool(workers: int) -> AsyncIterator[tuple[list[Any], set[int]]]:
    """N workers started with rpc.spawn: their stubs and pids."""
    channels: list[rpc.SpawnedChannel] = []
    try:
        for _ in range(workers):
            channels.append(await rpc.spawn(WORKER))
        for channel in channels:
            print(f"lanerpc worker pid {channel.pid}: lane {channel.lane}")
        yield ([worker_pool_pb2_grpc.WorkerStub(channel) for channel in channels],
               {channel.pid for channel in channels})
    finally:
        for channel in channels:         # each close ends its worker (EOF, then wait)
            await channel.close()


@contextlib.asynccontextmanager
async def grpc_pool(workers: int) -> AsyncIterator[tuple[list[Any], set[int]]]:
    """N grpc.aio servers (the same servicer) on free ports, a grpc.aio channel to each."""
    servers: list[asyncio.subprocess.Process] = []
    channels: list[Any] = []
    try:
        for _ in range(workers):
            server = await asyncio.create_subprocess_exec(*WORKER, "--grpc",
                                                          stdout=asyncio.subprocess.PIPE)
            servers.append(server)
            assert server.stdout is not None
            port = int(await asyncio.wait_for(server.stdout.readline(), 30))
            channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        for server in servers:
            print(f"grpc.aio worker pid {server.pid}: tcp")
        yield ([worker_pool_pb2_grpc.WorkerStub(channel) for channel in channels],
               {server.pid for server in servers})
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:           # stopped by pid
            if server.returncode is None:
                server.terminate()
                try:
                    await asyncio.wait_for(server.wait(), 10)
                except asyncio.TimeoutError:
                    server.kill()
                    await server.wait()


def _check(name: str, done: Counter[int], pids: set[int], tasks: int) -> None:
    if sum(done.values()) != tasks or not set(done) <= pids:
        raise RuntimeError(f"{name}: {sum(done.values())} of {tasks} results, from {set(done)}")
    spread = ", ".join(f"pid {pid}: {n}" for pid, n in sorted(done.items()))
    print(f"{name}: all {tasks} results checked ({spread})")


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.worker_pool",
                                     description="Fan tasks out to spawned workers over "
                                                 "lanerpc and to as many grpc.aio servers, "
                                                 "and compare.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per round")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds, lanerpc and grpc.aio in turn (the median is shown)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per task")
    parser.add_argument("--rounds", type=int, default=1, help="SHA-256 rounds per task")
    parser.add_argument("--in-flight", type=int, default=8, help="calls waiting per worker")
    args = parser.parse_args(argv)
    if min(args.workers, args.tasks, args.repeat, args.size, args.rounds, args.in_flight) < 1:
        parser.error("every number must be at least 1")
    print(f"{args.workers} workers; {args.repeat} rounds of {args.tasks} tasks of {args.size} "
          f"bytes, {args.rounds} SHA-256 round(s) each, {args.in_flight} in flight per worker")
    async with lanerpc_pool(args.workers) as ours, grpc_pool(args.workers) as theirs:
        pools = {"lanerpc": ours, "grpc.aio": theirs}
        rates: dict[str, list[float]] = {name: [] for name in pools}
        done: dict[str, Counter[int]] = {name: Counter() for name in pools}
        for name, (stubs, _) in pools.items():        # warm up
            await fan_out(stubs, args.workers * 20, args.size, args.rounds, args.in_flight)
        # In turn, so both see the same machine (others' load drifts over seconds).
        for round_number in range(1, args.repeat + 1):
            line = []
            for name, (stubs, _) in pools.items():
                seconds, by_pid = await fan_out(stubs, args.tasks, args.size, args.rounds,
                                                args.in_flight)
                rates[name].append(args.tasks / seconds)
                done[name].update(by_pid)
                line.append(f"{name} {args.tasks / seconds:.0f} tasks/s")
            print(f"round {round_number}: " + ", ".join(line))
        for name, (_, pids) in pools.items():
            _check(name, done[name], pids, args.tasks * args.repeat)
    ours_rate, theirs_rate = (statistics.median(rates[name]) for name in pools)
    print(f"lanerpc:  {ours_rate:9.0f} tasks/s (median)")
    print(f"grpc.aio: {theirs_rate:9.0f} tasks/s (median)")
    print(f"lanerpc is {ours_rate / theirs_rate:.1f}x grpc.aio")


if __name__ == "__main__":
    asyncio.run(main())
