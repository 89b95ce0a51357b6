"""The tasks a lanerpc call starts end with it: what the conformance cases can only see
from outside (the caller's generator closed, the call ended) checked from inside."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, wait_until, within


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


class _PassStreamUnary(aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(details, request_iterator)


async def test_cancel_ends_the_task_reading_the_request_iterator():
    async with serve(Echo(), lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        await within(stub.Unary(msg(b"warm"), timeout=5))      # connected: no connect task
        before = _other_tasks()
        waiting = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield msg(b"a")
            waiting.set()
            await asyncio.Event().wait()

        call = stub.ClientStream(requests(), timeout=5)
        await within(waiting.wait())
        call.cancel()
        await wait_until(lambda: not (_other_tasks() - before))


async def test_close_leaves_no_task_of_calls_that_waited_for_a_connection():
    async with serve(Echo(), lanes="tcp") as served:
        channel = served.channel(lanes="tcp", interceptors=[_PassStreamUnary()])
        stub = echo_pb2_grpc.EchoStub(channel)
        before = _other_tasks()
        calls = [stub.Unary(msg(b"a"), timeout=5), stub.ClientStream(timeout=5)]
        await within(channel.close())
        assert all(call.done() for call in calls)
        await wait_until(lambda: not (_other_tasks() - before))


async def test_writes_through_interceptors_leave_no_task():
    async with serve(Echo(), lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp", interceptors=[_PassStreamUnary()]))
        await within(stub.Unary(msg(b"warm"), timeout=5))
        before = _other_tasks()
        call = stub.ClientStream(timeout=5)
        for part in (b"a", b"b"):
            await within(call.write(msg(part)))
        await within(call.done_writing())
        assert (await within(call)).payload == b"ab"
        await wait_until(lambda: not (_other_tasks() - before))
