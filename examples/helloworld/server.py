"""The Greeter service, served by lanerpc exactly as a grpc.aio server would serve it.

    python -m examples.helloworld.server                      # 127.0.0.1:50051
    python -m examples.helloworld.server 127.0.0.1:0 unix:/tmp/greeter.sock grpc://127.0.0.1:0

Each argument is an address to listen on (port 0 picks a free port). Once listening,
the server prints one "listening on ADDRESS" line per address, with the real port.
Same-host clients that dial the TCP port are moved to a faster lane automatically; a
``grpc://`` address serves plain gRPC clients (any language) through grpcio.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import AsyncIterator

import grpc

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    async def SayHello(
        self, request: helloworld_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> helloworld_pb2.HelloReply:
        return helloworld_pb2.HelloReply(message=f"Hello, {request.name}!")

    async def SayHelloStream(
        self, request: helloworld_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[helloworld_pb2.HelloReply]:
        for greeting in ("Hello", "Bonjour", "Hallo"):
            yield helloworld_pb2.HelloReply(message=f"{greeting}, {request.name}!")


async def serve(addresses: list[str]) -> None:
    server = rpc.server()
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    bound = []
    for address in addresses:
        port = server.add_insecure_port(address)
        if not address.startswith("unix:"):
            address = f"{address.rsplit(':', 1)[0]}:{port}"  # the real port when asked for 0
        bound.append(address)
    await server.start()
    for address in bound:  # only now: clients may connect as soon as they read this
        print(f"listening on {address}", flush=True)

    # SIGTERM (e.g. `kill PID`) stops gracefully: in-flight calls get a second to finish
    # and the server removes what it created (its same-host upgrade socket, for one).
    # Ctrl-C does the same through asyncio.run, which cancels us (see the finally).
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(server.stop(grace=1.0)))
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=1.0)


if __name__ == "__main__":
    try:
        import uvloop  # optional (pip install lanerpc[fast]): a faster event loop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(sys.argv[1:] or ["127.0.0.1:50051"]))
    except KeyboardInterrupt:
        pass
