"""Several backends behind one channel: round_robin, and a backend killed mid-run.

    python -m examples.backends            # three backends on this host
    python -m examples.backends --count 5

Starts COUNT backend processes (each a Greeter on 127.0.0.1 with a free port, answering
with its pid and the lane the call came on), then one client channel to all of them, the
way a Kubernetes headless Service's DNS name or an ``ipv4:`` list gives several addresses:

    target:  ipv4:127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
    config:  {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [retry UNAVAILABLE]}

Once each backend has answered a first call, it makes 30 calls and prints how they
spread, SIGKILLs one backend, makes 30 more (the dead one's share goes to the others; a
call caught in flight on it is retried), and stops every backend by its pid. Each backend is on this host, so each connection upgrades to
shared memory by itself; across machines the same code stays on TCP per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys

import grpc

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "helloworld.Greeter"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})


class Backend(helloworld_pb2_grpc.GreeterServicer):
    """Answers with this process's pid and the lane the call came on."""

    async def SayHello(self, request: helloworld_pb2.HelloRequest,
                       context: grpc.aio.ServicerContext) -> helloworld_pb2.HelloReply:
        lane = dict(context.auth_context()).get("lanerpc_lane", [b"?"])[0].decode()
        return helloworld_pb2.HelloReply(message=f"{os.getpid()} {lane}")


async def _backend() -> None:
    server = rpc.server()
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Backend(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1.0)


async def _start_backends(count: int) -> list[tuple[asyncio.subprocess.Process, int]]:
    backends = []
    for _ in range(count):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "examples.backends", "--serve", stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        backends.append((proc, int(line)))
    return backends


async def _calls(stub: helloworld_pb2_grpc.GreeterStub, n: int) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    for i in range(n):
        try:
            reply = await stub.SayHello(helloworld_pb2.HelloRequest(name=str(i)), timeout=5)
            seen[reply.message] += 1
        except grpc.aio.AioRpcError as error:
            seen[f"failed: {error.code().name}"] += 1
    return seen


async def _until_each_answers(stub: helloworld_pb2_grpc.GreeterStub, count: int,
                              timeout: float = 10.0) -> None:
    """The channel is ready once one backend is (as in gRPC), and round_robin picks
    among the backends connected so far: call until each of ``count`` has answered
    (at most ``timeout`` seconds), so that the calls after spread over all of them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    answered: set[str] = set()
    while len(answered) < count and loop.time() < deadline:
        reply = await stub.SayHello(helloworld_pb2.HelloRequest(name="hello"), timeout=5)
        answered.add(reply.message.partition(" ")[0])
        if len(answered) < count:
            await asyncio.sleep(0.005)


def _show(title: str, seen: collections.Counter[str]) -> None:
    print(title)
    for answer, n in sorted(seen.items()):
        pid, _, lane = answer.partition(" ")
        print(f"  backend pid {pid:>7}  lane {lane or '-':5}  {n:3d} calls")


async def _main(count: int) -> None:
    backends = await _start_backends(count)
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in backends)
        print(f"{count} backends; channel target {target}, policy round_robin\n")
        async with rpc.insecure_channel(target, options=[
                ("grpc.service_config", SERVICE_CONFIG)]) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            await channel.channel_ready()
            await _until_each_answers(stub, count)
            _show("30 calls:", await _calls(stub, 30))
            victim, _ = backends[1]
            victim.kill()
            await victim.wait()
            print(f"\nbackend pid {victim.pid} killed (SIGKILL)\n")
            _show("30 more calls:", await _calls(stub, 30))
    finally:
        for proc, _ in backends:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in backends:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count < 2:
        parser.error("--count must be at least 2 (one of them is killed)")
    asyncio.run(_backend() if args.serve else _main(args.count))


if __name__ == "__main__":
    main()
