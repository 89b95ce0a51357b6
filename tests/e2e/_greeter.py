"""A Greeter whose answers name the serving process: tests see which server answered."""

from __future__ import annotations

import os

from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc


class PidGreeter(helloworld_pb2_grpc.GreeterServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def SayHello(self, request, context):
        self.calls += 1
        return helloworld_pb2.HelloReply(message=f"{request.name}@{os.getpid()}")

    async def SayHelloStream(self, request, context):
        for i in range(3):
            self.calls += 1
            yield helloworld_pb2.HelloReply(message=f"{request.name}{i}@{os.getpid()}")
