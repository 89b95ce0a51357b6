"""Run inside another namespace by tests/e2e/test_upgrade.py: makes calls to a
target and prints what it saw as one JSON line.

usage: python -m tests.e2e._ns_client TARGET [--decoy PATH --decoy-kind lanerpc|silent]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc
from tests.e2e._greeter import PidGreeter


async def _silent_decoy(path: str) -> asyncio.AbstractServer:
    async def swallow(reader, writer):
        await reader.read(65536)   # accept, read, never answer
        await asyncio.sleep(30)
    return await asyncio.start_unix_server(swallow, path)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--decoy")
    parser.add_argument("--decoy-kind", default="lanerpc")
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    decoy = None
    decoy_calls = None
    if args.decoy:
        os.makedirs(os.path.dirname(args.decoy), mode=0o700, exist_ok=True)
        if args.decoy_kind == "lanerpc":
            greeter = PidGreeter()
            decoy = rpc.server()
            helloworld_pb2_grpc.add_GreeterServicer_to_server(greeter, decoy)
            decoy.add_insecure_port("unix:" + args.decoy)
            await decoy.start()
            decoy_calls = greeter
        else:
            decoy = await _silent_decoy(args.decoy)
    replies, errors = [], []
    async with rpc.insecure_channel(args.target, options=[("lanerpc.upgrade_timeout_ms", 500)]) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for i in range(args.calls):
            try:
                reply = await stub.SayHello(helloworld_pb2.HelloRequest(name=str(i)), timeout=5)
                replies.append(reply.message)
            except rpc.AioRpcError as err:
                errors.append(f"{err.code().name}: {err.details()}")
        lane = channel.lane
    if decoy is not None:
        if isinstance(decoy, rpc.Server):
            await decoy.stop(0)
        else:
            decoy.close()
    print(json.dumps({
        "lane": lane, "replies": replies, "errors": errors, "pid": os.getpid(),
        "decoy_calls": decoy_calls.calls if decoy_calls else 0,
        "hostname": socket.gethostname(),
    }), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
