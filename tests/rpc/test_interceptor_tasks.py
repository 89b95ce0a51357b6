"""What interceptors cost in tasks: a chain that never waits (a pass-through, one that
adds metadata, OpenTelemetry's server interceptor) runs in the caller's turn and makes
no task, on either side; one that waits goes on in a task that ends with it, and
close() cancels a call whose interceptors still run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
from grpc import aio

from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, wait_until, within


@contextlib.contextmanager
def tasks_made() -> Iterator[list[Any]]:
    """The coroutines of the tasks the running loop makes meanwhile."""
    loop = asyncio.get_running_loop()
    made: list[Any] = []
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield made
    finally:
        loop.set_task_factory(previous)


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


class PassUnary(aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(details, request)


class PassServer(aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        return await continuation(handler_call_details)


class WaitsFirst(aio.UnaryUnaryClientInterceptor):
    """Waits for ``go`` before it calls on."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.waiting = asyncio.Event()

    async def intercept_unary_unary(self, continuation, details, request):
        self.waiting.set()
        await self.go.wait()
        return await continuation(details, request)


async def _tasks_per_call(stub: Any) -> list[Any]:
    await within(stub.Unary(msg(b"warm"), timeout=5))
    with tasks_made() as made:
        for _ in range(3):
            assert (await within(stub.Unary(msg(b"x"), timeout=5))).payload == b"x"
    return made


async def test_chains_that_never_wait_make_no_task():
    async with serve(Echo(), lanes="unix,tcp") as plain_served:
        plain = await _tasks_per_call(echo_pb2_grpc.EchoStub(plain_served.channel(lanes="unix,tcp")))
    async with serve(Echo(), lanes="unix,tcp", interceptors=[PassServer(), PassServer()]) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="unix,tcp",
                                                     interceptors=[PassUnary(), PassUnary()]))
        intercepted = await _tasks_per_call(stub)
    assert [type(coro) for coro in intercepted] == [type(coro) for coro in plain]


async def test_a_chain_that_waits_goes_on_in_a_task_that_ends_with_it():
    interceptor = WaitsFirst()
    async with serve(Echo(), lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp", interceptors=[interceptor]))
        before = _other_tasks()
        call = stub.Unary(msg(b"later"), timeout=5)
        await within(interceptor.waiting.wait())
        assert not call.done()
        interceptor.go.set()
        assert (await within(call)).payload == b"later"
        assert await within(call.code()) == grpc.StatusCode.OK
        await wait_until(lambda: not (_other_tasks() - before))


async def test_close_cancels_a_call_whose_interceptor_still_waits():
    interceptor = WaitsFirst()
    servicer = Echo()
    async with serve(servicer, lanes="tcp") as served:
        channel = served.channel(lanes="tcp", interceptors=[interceptor])
        stub = echo_pb2_grpc.EchoStub(channel)
        interceptor.go.set()
        await within(stub.Unary(msg(b"warm"), timeout=5))     # connected: no connect task
        interceptor.go.clear()
        before = _other_tasks()
        call = stub.Unary(msg(b"never"), timeout=5)
        await within(interceptor.waiting.wait())
        await within(channel.close())
        assert call.cancelled() and call.done()
        assert await within(call.code()) == grpc.StatusCode.CANCELLED
        assert servicer.started_calls == 1      # the warm-up only
        await wait_until(lambda: not (_other_tasks() - before))
