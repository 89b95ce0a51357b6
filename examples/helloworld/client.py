"""Calls the Greeter with lanerpc exactly as a grpc.aio client would.

    python -m examples.helloworld.client                      # 127.0.0.1:50051
    python -m examples.helloworld.client unix:/tmp/greeter.sock

It prints the replies and the lane the channel ended up on.
"""

from __future__ import annotations

import asyncio
import sys

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc


async def main(target: str) -> None:
    async with rpc.insecure_channel(target) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)

        reply = await stub.SayHello(helloworld_pb2.HelloRequest(name="you"))
        print(reply.message)

        async for reply in stub.SayHelloStream(helloworld_pb2.HelloRequest(name="you")):
            print(reply.message)

        # Not part of grpc.aio: which lane carries this channel ("tcp", "unix", "shm").
        print(f"lane: {channel.lane}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
