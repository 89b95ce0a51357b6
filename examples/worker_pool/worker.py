"""A worker of the pool: serves the Worker service.

    python -m examples.worker_pool.worker                # over stdin/stdout: run by rpc.spawn
    python -m examples.worker_pool.worker --grpc         # a grpc.aio server on a free port,
                                                         # for the comparison; prints the port

The servicer is a plain grpc.aio one; only the last line of ``main`` differs between
the two ways of serving it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import grpc

import rpc
from examples.worker_pool import worker_pool_pb2, worker_pool_pb2_grpc


def digest(data: bytes, rounds: int) -> bytes:
    """The work: SHA-256, ``rounds`` times (at least once)."""
    out = hashlib.sha256(data).digest()
    for _ in range(rounds - 1):
        out = hashlib.sha256(out).digest()
    return out


class Worker(worker_pool_pb2_grpc.WorkerServicer):
    async def Work(self, request: worker_pool_pb2.Task,
                   context: grpc.aio.ServicerContext) -> worker_pool_pb2.Result:
        return worker_pool_pb2.Result(id=request.id, digest=digest(request.data, request.rounds),
                                      worker_pid=os.getpid())


async def serve_grpc() -> None:
    server = grpc.aio.server()
    worker_pool_pb2_grpc.add_WorkerServicer_to_server(Worker(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def main() -> None:
    if sys.argv[1:] == ["--grpc"]:
        asyncio.run(serve_grpc())        # stopped by its parent (SIGTERM)
        return
    server = rpc.server()
    worker_pool_pb2_grpc.add_WorkerServicer_to_server(Worker(), server)
    rpc.serve_stdio(server)              # until the parent closes the channel (or dies)


if __name__ == "__main__":
    main()
