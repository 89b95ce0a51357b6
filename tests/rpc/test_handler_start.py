"""A unary coroutine handler takes its first step with no task of its own (the call's
answer goes out without one when that step finishes it) and goes on in a task when it
suspends (rpc._context: ServicerContext._start_eagerly). What a handler can see of that
is held to grpc.aio's behaviour in tests/conformance/test_handler_start.py; here, that
the task really is left out, and where it is not."""

from __future__ import annotations

import asyncio

from examples.echo import echo_pb2_grpc
from tests._support import msg, serve, within


class Kinds(echo_pb2_grpc.EchoServicer):
    def __init__(self) -> None:
        self.tasks: list[bool] = []     # per step seen: is the current task a real task?

    async def Unary(self, request, context):
        self.tasks.append(isinstance(asyncio.current_task(), asyncio.Task))
        if request.payload == b"suspend":
            await asyncio.sleep(0)
            self.tasks.append(isinstance(asyncio.current_task(), asyncio.Task))
        return request

    async def ServerStream(self, request, context):
        self.tasks.append(isinstance(asyncio.current_task(), asyncio.Task))
        yield request


async def test_a_unary_handler_that_finishes_at_once_runs_without_a_task() -> None:
    servicer = Kinds()
    async with serve(servicer) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        assert (await within(stub.Unary(msg(b"at once")))).payload == b"at once"
        assert servicer.tasks == [False]


async def test_a_unary_handler_that_suspends_goes_on_in_a_task() -> None:
    servicer = Kinds()
    async with serve(servicer) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        assert (await within(stub.Unary(msg(b"suspend")))).payload == b"suspend"
        assert servicer.tasks == [False, True]


async def test_a_streaming_handler_starts_in_a_task() -> None:
    servicer = Kinds()
    async with serve(servicer) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())

        async def payloads() -> list[bytes]:
            return [r.payload async for r in stub.ServerStream(msg(b"x"))]

        assert await within(payloads()) == [b"x"]
        assert servicer.tasks == [True]
