"""Interceptors that wait, and what they see while they run: the current task, their
contextvars context, what they raise. lanerpc runs a chain at once, up to its first
await that waits, and the rest in a task; these cases hold it to what grpc.aio (which
runs every chain in a task of its own) shows an interceptor, on every implementation.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from tests._support import within
from tests.conformance import conformance_pb2 as pb
from tests.conformance import conformance_pb2_grpc
from tests.conformance.servicer import ConformanceServicer

RPC_TIMEOUT = 5.0

# Set by interceptors; read by their callers and the next calls.
seen_var: contextvars.ContextVar[str] = contextvars.ContextVar("seen_var", default="unset")


async def open_stub(start: Any, connect: Any, client: list[Any] | None = None,
                    server: list[Any] | None = None) -> tuple[ConformanceServicer, Any]:
    servicer = ConformanceServicer()
    served = await start(servicer, interceptors=server) if server else await start(servicer)
    channel = connect(served, interceptors=client) if client else connect(served)
    return servicer, conformance_pb2_grpc.TestServiceStub(channel)


def input_request(size: int) -> pb.StreamingInputCallRequest:
    return pb.StreamingInputCallRequest(payload=pb.Payload(body=bytes(size)))


# ------------------------------------------------------------------ client interceptors


class WaitsAround(aio.UnaryUnaryClientInterceptor):
    """Waits before it calls on, and for the call's status after, as OpenTelemetry's
    does; sets a contextvar in between and records what it sees."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def intercept_unary_unary(self, continuation, details, request):
        seen_var.set("interceptor")
        await asyncio.sleep(0)
        call = await continuation(details, request)
        self.seen.append(await call.code())
        self.seen.append(seen_var.get())
        return call


async def test_client_interceptor_that_waits_around_the_call(start, connect):
    interceptor = WaitsAround()
    _, stub = await open_stub(start, connect, client=[interceptor])
    seen_var.set("caller")
    ended = asyncio.Event()
    call = stub.UnaryCall(pb.SimpleRequest(response_size=3), timeout=RPC_TIMEOUT)
    call.add_done_callback(lambda _call: ended.set())
    assert seen_var.get() == "caller"     # the chain's context is a copy of the caller's
    assert len((await within(call)).payload.body) == 3
    assert interceptor.seen == [grpc.StatusCode.OK, "interceptor"]
    assert await within(call.code()) == grpc.StatusCode.OK
    await within(ended.wait())
    assert call.done() and seen_var.get() == "caller"


class SetsVar(aio.UnaryUnaryClientInterceptor):
    """Sets a contextvar and calls on without waiting."""

    async def intercept_unary_unary(self, continuation, details, request):
        seen_var.set("interceptor")
        return await continuation(details, request)


async def test_client_interceptor_context_is_a_copy_of_the_callers(start, connect):
    _, stub = await open_stub(start, connect, client=[SetsVar()])
    seen_var.set("caller")
    call = stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT)
    assert seen_var.get() == "caller"
    await within(call)
    assert seen_var.get() == "caller"


class TimesOut(aio.UnaryUnaryClientInterceptor):
    """Bounds the call with asyncio.timeout (which cancels its current task), once
    ``handling`` is set: the server's handler runs, so the call must be cancelled there
    (on a loaded machine a bare 50 ms could end the call before the server saw it)."""

    def __init__(self) -> None:
        self.task: Any = None
        self.handling: asyncio.Event | None = None

    async def intercept_unary_unary(self, continuation, details, request):
        self.task = asyncio.current_task()
        call = await continuation(details, request)
        if self.handling is not None:
            await asyncio.wait_for(self.handling.wait(), RPC_TIMEOUT)
        try:
            async with asyncio.timeout(0.05):
                await call
        except TimeoutError:
            call.cancel()
            raise
        return call


async def test_client_interceptor_has_its_own_current_task(start, connect):
    interceptor = TimesOut()
    servicer, stub = await open_stub(start, connect, client=[interceptor])
    interceptor.handling = servicer.sleeping
    call = stub.UnaryCall(pb.SimpleRequest(sleep_ms=3000), timeout=RPC_TIMEOUT)
    # The timeout cancels the interceptor's task, not the caller's.
    with pytest.raises(TimeoutError):
        await within(call)
    assert interceptor.task is not None and interceptor.task is not asyncio.current_task()
    assert asyncio.current_task().cancelling() == 0
    assert call.done()
    await within(servicer.ended.wait())


class Refuses(aio.UnaryUnaryClientInterceptor):
    """Raises before calling on: ``error`` (or its first step's cancel of its own task)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    async def intercept_unary_unary(self, continuation, details, request):
        if self.error is None:
            asyncio.current_task().cancel()
            await asyncio.sleep(0)
        raise self.error


@pytest.mark.parametrize("kind", ["rpc_error", "other"])
async def test_client_interceptor_raising_at_once(start, connect, kind):
    if kind == "rpc_error":
        error: Exception = aio.AioRpcError(grpc.StatusCode.PERMISSION_DENIED, aio.Metadata(),
                                           aio.Metadata(), "refused")
    else:
        error = ValueError("refused")
    servicer, stub = await open_stub(start, connect, client=[Refuses(error)])
    call = stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT)   # raises only when awaited
    with pytest.raises(type(error)):
        await within(call)
    assert call.done() and not call.cancelled()
    if kind == "rpc_error":
        assert await within(call.code()) == grpc.StatusCode.PERMISSION_DENIED
        assert await within(call.details()) == "refused"
    assert servicer.started_calls == 0


async def test_client_interceptor_cancelling_its_own_task(start, connect):
    servicer, stub = await open_stub(start, connect, client=[Refuses(None)])
    call = stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT)
    with pytest.raises(asyncio.CancelledError):
        await within(call)
    assert call.cancelled() and call.done()
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    assert servicer.started_calls == 0


# ------------------------------------------------------------------ server interceptors


class ServerWaits(aio.ServerInterceptor):
    """Waits before it looks the handler up; records its current task and contextvar."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.tasks: list[Any] = []
        self.vars: list[str] = []

    async def intercept_service(self, continuation, handler_call_details):
        self.tasks.append(asyncio.current_task())
        self.vars.append(seen_var.get())
        seen_var.set("server interceptor")
        if self.seconds:
            await asyncio.sleep(self.seconds)
        return await continuation(handler_call_details)


@pytest.mark.parametrize("seconds", [0, 0.05])
async def test_server_interceptor_that_waits_gets_the_messages_sent_meanwhile(start, connect, seconds):
    interceptor = ServerWaits(seconds)
    _, stub = await open_stub(start, connect, server=[interceptor])
    response = await within(stub.UnaryCall(pb.SimpleRequest(response_size=2), timeout=RPC_TIMEOUT))
    assert len(response.payload.body) == 2

    async def requests() -> AsyncIterator[pb.StreamingInputCallRequest]:
        for size in (1, 2, 3):
            yield input_request(size)

    response = await within(stub.StreamingInputCall(requests(), timeout=RPC_TIMEOUT))
    assert response.aggregated_payload_size == 6
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(call.write(pb.StreamingOutputCallRequest(
        response_parameters=[pb.ResponseParameters(size=4)])))
    assert len((await within(call.read())).payload.body) == 4
    await within(call.done_writing())
    assert await within(call.code()) == grpc.StatusCode.OK
    # Each ran with a current task, in a context of its own (nothing leaks to the next).
    assert all(task is not None for task in interceptor.tasks)
    assert interceptor.vars == ["unset"] * 3


class ServerRaises(aio.ServerInterceptor):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def intercept_service(self, continuation, handler_call_details):
        if self.seconds:
            await asyncio.sleep(self.seconds)
        raise ValueError("boom")


@pytest.mark.parametrize("seconds", [0, 0.05])
async def test_server_interceptor_raising_ends_the_call_unknown(start, connect, seconds):
    servicer, stub = await open_stub(start, connect, server=[ServerRaises(seconds)])
    with pytest.raises(aio.AioRpcError) as err:
        await within(stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT))
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert err.value.details() == "Unexpected <class 'ValueError'>: boom"
    assert servicer.started_calls == 0


class Order(aio.ServerInterceptor):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def intercept_service(self, continuation, handler_call_details):
        self.log.append(f"{self.name} in")
        await asyncio.sleep(0)
        handler = await continuation(handler_call_details)
        self.log.append(f"{self.name} out")
        return handler


async def test_server_interceptors_run_in_order(start, connect):
    log: list[str] = []
    _, stub = await open_stub(start, connect, server=[Order("a", log), Order("b", log)])
    await within(stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT))
    assert log == ["a in", "b in", "b out", "a out"]
