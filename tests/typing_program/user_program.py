"""A user's program, as ``mypy --strict`` sees it (tests/test_typing.py runs it).

It serves the helloworld example and calls it through its generated stub and through a
channel's multi-callable. Each ``reveal_type`` is named by the comment after it, which is
how the test finds what mypy revealed there. It is never run, only type-checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    async def SayHello(
        self, request: helloworld_pb2.HelloRequest,
        context: grpc.aio.ServicerContext[helloworld_pb2.HelloRequest, helloworld_pb2.HelloReply],
    ) -> helloworld_pb2.HelloReply:
        return helloworld_pb2.HelloReply(message=f"Hello, {request.name}!")

    async def SayHelloStream(
        self, request: helloworld_pb2.HelloRequest,
        context: grpc.aio.ServicerContext[helloworld_pb2.HelloRequest, helloworld_pb2.HelloReply],
    ) -> AsyncIterator[helloworld_pb2.HelloReply]:
        yield helloworld_pb2.HelloReply(message=f"Hello, {request.name}!")


async def main() -> str:
    server = rpc.server()
    reveal_type(server)  # reveal: server
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    reveal_type(port)  # reveal: port
    await server.start()

    channel = rpc.insecure_channel(f"127.0.0.1:{port}")
    reveal_type(channel)  # reveal: channel
    reveal_type(channel.lane)  # reveal: lane
    request = helloworld_pb2.HelloRequest(name="you")

    stub = helloworld_pb2_grpc.GreeterStub(channel)
    call = stub.SayHello(request)
    reveal_type(call)  # reveal: stub call
    reply = await call
    reveal_type(reply)  # reveal: stub reply

    say_hello = channel.unary_unary(
        "/helloworld.Greeter/SayHello",
        request_serializer=helloworld_pb2.HelloRequest.SerializeToString,
        response_deserializer=helloworld_pb2.HelloReply.FromString,
    )
    direct = say_hello(request)
    reveal_type(direct)  # reveal: channel call
    direct_reply = await direct
    reveal_type(direct_reply)  # reveal: channel reply

    async with rpc.insecure_channel(f"127.0.0.1:{port}") as entered:
        reveal_type(entered)  # reveal: async with channel

    secure = rpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials())
    reveal_type(secure)  # reveal: secure channel
    reveal_type(helloworld_pb2_grpc.GreeterStub(secure).SayHello(request))  # reveal: secure stub call
    await secure.close()

    await channel.close()
    await server.stop(None)
    return reply.message + direct_reply.message
