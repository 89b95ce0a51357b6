"""How a unary handler starts, as grpc.aio runs it: in a task of its own from its first
line. lanerpc runs a unary handler's first step without a task and makes one only when
the handler suspends (rpc._context: ServicerContext._start_eagerly); these cases hold
that to grpc.aio's behaviour on what a handler can see of its task at its start: the
current task, asyncio.timeout and TaskGroup, cancelling itself, contextvars, and
exceptions raised before and after its first suspension."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import grpc
import pytest
from grpc import aio

from examples.echo import echo_pb2_grpc
from tests._support import msg

TIMEOUT = 5
_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("handler_start", default="unset")


class Starts(echo_pb2_grpc.EchoServicer):
    """Unary does what its payload names; what it saw goes into ``seen``."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    async def Unary(self, request, context):
        action = request.payload.decode()
        if action.startswith("end-"):             # end-<how>-<when>: see ends()
            _, how, when = action.split("-", 2)
            return await self.ends(context, how, suspend=when == "after-await")
        return await getattr(self, "do_" + action.replace("-", "_"))(request, context)

    async def ends(self, context, how: str, suspend: bool):
        """End the call ``how``, in the handler's first step or after it suspended."""
        if suspend:
            await asyncio.sleep(0)
        if how == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "gone",
                                trailing_metadata=(("why", "abort"),))
        if how == "status":
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details("not now")
            context.set_trailing_metadata((("why", "status"),))
            return None
        if how == "nothing":
            return None
        return msg(b"answer")

    async def do_sync(self, request, context):
        self.seen["task"] = asyncio.current_task() is not None
        return msg(b"done")

    async def do_task(self, request, context):
        first = asyncio.current_task()
        await asyncio.sleep(0)
        self.seen["task"] = (first is not None, asyncio.current_task() is not None)
        return msg(b"done")

    async def do_timeout_unused(self, request, context):
        async with asyncio.timeout(TIMEOUT):
            await asyncio.sleep(0.001)
        return msg(b"in time")

    async def do_timeout_expires(self, request, context):
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(TIMEOUT)
        except TimeoutError:
            return msg(b"timed out")
        return msg(b"not timed out")

    async def do_taskgroup(self, request, context):
        async def fail() -> None:
            await asyncio.sleep(0.001)
            raise ValueError("child")

        async def wait() -> None:
            await asyncio.sleep(TIMEOUT)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(fail())
                group.create_task(wait())
        except ExceptionGroup as group_error:
            return msg(b"child failed" if group_error.subgroup(ValueError) else b"other")
        return msg(b"no failure")

    async def do_cancel_self_later(self, request, context):
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.05, task.cancel)
        return await self.do_cancel_self(request, context)

    async def do_cancel_self_now(self, request, context):
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return await self.do_cancel_self(request, context)

    async def do_cancel_self(self, request, context):
        try:
            await asyncio.sleep(TIMEOUT)
        except asyncio.CancelledError:
            self.seen["cancelled"] = True
            raise
        return msg(b"not cancelled")

    async def do_contextvar(self, request, context):
        before = _VAR.get()
        _VAR.set("set by the handler")
        await asyncio.sleep(0)
        self.seen["contextvar"] = (before, _VAR.get())
        return msg(b"done")

    async def do_raise_at_once(self, request, context):
        raise RuntimeError("at once")

    async def do_raise_after_await(self, request, context):
        await asyncio.sleep(0)
        raise RuntimeError("after an await")


async def starts(start, connect) -> tuple[Starts, Any]:
    servicer = Starts()
    served = await start(servicer)
    return servicer, echo_pb2_grpc.EchoStub(connect(served))


async def unary(stub: Any, action: str) -> bytes:
    response = await stub.Unary(msg(action.encode()), timeout=TIMEOUT)
    return bytes(response.payload)


async def test_a_handler_that_never_suspends_has_a_current_task(start, connect):
    servicer, stub = await starts(start, connect)
    assert await unary(stub, "sync") == b"done"
    assert servicer.seen["task"] is True


async def test_a_handler_has_a_current_task_before_and_after_it_suspends(start, connect):
    servicer, stub = await starts(start, connect)
    assert await unary(stub, "task") == b"done"
    assert servicer.seen["task"] == (True, True)


async def test_asyncio_timeout_at_a_handlers_start(start, connect):
    _, stub = await starts(start, connect)
    assert await unary(stub, "timeout-unused") == b"in time"
    assert await unary(stub, "timeout-expires") == b"timed out"


async def test_a_task_group_at_a_handlers_start(start, connect):
    _, stub = await starts(start, connect)
    assert await unary(stub, "taskgroup") == b"child failed"


@pytest.mark.parametrize("when", ["later", "now"])
async def test_a_handler_that_cancels_its_own_task(start, connect, when):
    # What the client gets differs (grpc.aio sends no status: the call runs into its
    # deadline; lanerpc ends it CANCELLED); where the handler sees it does not.
    servicer, stub = await starts(start, connect)
    with pytest.raises(aio.AioRpcError):
        await stub.Unary(msg(f"cancel-self-{when}".encode()), timeout=1)
    assert servicer.seen["cancelled"] is True


async def test_contextvars_set_at_the_start_stay_with_the_call(start, connect):
    servicer, stub = await starts(start, connect)
    for _ in range(2):        # the second call does not see what the first one set
        assert await unary(stub, "contextvar") == b"done"
        assert servicer.seen["contextvar"] == ("unset", "set by the handler")
    assert _VAR.get() == "unset"


@pytest.mark.parametrize("action", ["raise-at-once", "raise-after-await"])
async def test_an_exception_before_or_after_the_first_suspension(start, connect, action):
    _, stub = await starts(start, connect)
    with pytest.raises(aio.AioRpcError) as info:
        await unary(stub, action)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "RuntimeError" in info.value.details()


@pytest.mark.parametrize("when", ["at-once", "after-await"])
@pytest.mark.parametrize("how, code, details, why", [
    ("answer", grpc.StatusCode.OK, "", None),
    ("abort", grpc.StatusCode.NOT_FOUND, "gone", "abort"),
    ("status", grpc.StatusCode.FAILED_PRECONDITION, "not now", "status"),
    ("nothing", grpc.StatusCode.UNKNOWN, None, None),
])
async def test_how_a_handler_ends_before_or_after_its_first_suspension(start, connect, how, code,
                                                                       details, why, when):
    # The first step's end and a resumed task's end are two paths in lanerpc
    # (_first_step, _Resumed); the status, details and trailing metadata are the same.
    _, stub = await starts(start, connect)
    call = stub.Unary(msg(f"end-{how}-{when}".encode()), timeout=TIMEOUT)
    if code == grpc.StatusCode.OK:
        assert (await call).payload == b"answer"
    else:
        with pytest.raises(aio.AioRpcError) as info:
            await call
        assert info.value.code() == code
        if details is not None:
            assert info.value.details() == details
    assert await call.code() == code
    trailing = dict(await call.trailing_metadata() or ())
    assert trailing.get("why") == why
