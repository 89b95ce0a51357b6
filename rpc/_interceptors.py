"""Client interceptors with grpc.aio's interfaces.

``intercept`` runs the chain in one task and returns a call object that
forwards to whatever the chain produced: the call made by the last
continuation, or a plain response (a unary interceptor may answer itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable
from typing import Any, TypeVar, cast

import grpc
from grpc import aio

_T = TypeVar("_T")
_Continuation = Callable[[aio.ClientCallDetails, Any], Coroutine[Any, Any, Any]]

_KINDS = {
    "unary_unary": (aio.UnaryUnaryClientInterceptor, "intercept_unary_unary"),
    "unary_stream": (aio.UnaryStreamClientInterceptor, "intercept_unary_stream"),
    "stream_unary": (aio.StreamUnaryClientInterceptor, "intercept_stream_unary"),
    "stream_stream": (aio.StreamStreamClientInterceptor, "intercept_stream_stream"),
}


def sort_interceptors(
        interceptors: Iterable[aio.ClientInterceptor] | None) -> dict[str, list[aio.ClientInterceptor]]:
    by_kind: dict[str, list[aio.ClientInterceptor]] = {}
    for interceptor in interceptors or ():
        matched = False
        for kind, (cls, _) in _KINDS.items():
            if isinstance(interceptor, cls):
                by_kind.setdefault(kind, []).append(interceptor)
                matched = True
        if not matched:
            raise ValueError(
                f"interceptor {interceptor!r} must implement one of grpc.aio's client "
                "interceptor classes")
    return by_kind


def intercept(multicallable: Any, kind: str, interceptors: list[aio.ClientInterceptor], request: Any,
              timeout: float | None, metadata: Any, wait_for_ready: bool | None) -> "InterceptedCall":
    """Run ``interceptors`` (of ``kind``, "unary_unary", ...) around a call of
    ``multicallable``, whose ``_invoke`` makes the call at the end of the chain."""
    details = aio.ClientCallDetails(
        method=multicallable._method.encode(), timeout=timeout,   # bytes, as grpc.aio passes it
        metadata=aio.Metadata(*metadata) if metadata and not isinstance(metadata, aio.Metadata)
        else metadata,
        credentials=None, wait_for_ready=wait_for_ready)
    method_name = _KINDS[kind][1]

    def continuation_at(index: int) -> _Continuation:
        async def continuation(call_details: aio.ClientCallDetails, req: Any) -> Any:
            if index == len(interceptors):
                method = call_details.method
                if isinstance(method, bytes):
                    method = method.decode()
                target = multicallable
                if method != target._method:
                    target = type(target)(target._channel, method, target._serializer,
                                          target._deserializer)
                return target._invoke(
                    req, call_details.timeout, call_details.metadata, call_details.wait_for_ready)
            return await getattr(interceptors[index], method_name)(
                continuation_at(index + 1), call_details, req)
        return continuation

    loop = asyncio.get_running_loop()
    task = loop.create_task(continuation_at(0)(details, request))
    return InterceptedCall(task, streaming_response=kind in ("unary_stream", "stream_stream"))


class InterceptedCall(aio.UnaryUnaryCall[Any, Any], aio.UnaryStreamCall[Any, Any],
                      aio.StreamUnaryCall[Any, Any], aio.StreamStreamCall[Any, Any]):
    """The call returned when interceptors are installed."""

    def __init__(self, task: asyncio.Task[Any], streaming_response: bool) -> None:
        self._task = task
        self._streaming = streaming_response

    async def _inner(self) -> Any:
        return await self._task

    async def _call(self) -> Any:
        result = await self._inner()
        return result if isinstance(result, aio.Call) else None

    def __await__(self) -> Generator[Any, None, Any]:
        result = yield from self._task.__await__()
        if isinstance(result, aio.Call):
            # Every aio call object is awaitable; aio.Call does not say so.
            return (yield from result.__await__())  # type: ignore[attr-defined]
        return result

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        result = await self._inner()
        async for item in result:
            yield item

    async def read(self) -> Any:
        result = await self._inner()
        return await result.read()

    async def write(self, request: Any) -> None:
        call = await self._call()
        await call.write(request)

    async def done_writing(self) -> None:
        call = await self._call()
        await call.done_writing()

    def cancel(self) -> bool:
        if not self._task.done():
            return self._task.cancel()
        result = self._task.result() if not self._task.cancelled() and not self._task.exception() else None
        return result.cancel() if isinstance(result, aio.Call) else False

    def cancelled(self) -> bool:
        if self._task.cancelled():
            return True
        call = self._done_call()
        return call.cancelled() if call else False

    def _done_call(self) -> aio.Call | None:
        if self._task.done() and not self._task.cancelled() and self._task.exception() is None:
            result = self._task.result()
            if isinstance(result, aio.Call):
                return result
        return None

    def done(self) -> bool:
        if not self._task.done():
            return False
        call = self._done_call()
        return call.done() if call else True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        def relay(_task: asyncio.Task[Any]) -> None:
            call = self._done_call()
            if call is not None:
                call.add_done_callback(lambda _c: callback(self))
            else:
                callback(self)
        self._task.add_done_callback(relay)

    def time_remaining(self) -> float | None:
        call = self._done_call()
        return call.time_remaining() if call else None

    async def _status(self, name: str, default: _T) -> _T:
        try:
            call = await self._call()
        except aio.AioRpcError as err:
            return cast(_T, getattr(err, name)())
        if call is None:
            return default
        return cast(_T, await getattr(call, name)())

    async def initial_metadata(self) -> aio.Metadata:
        return await self._status("initial_metadata", aio.Metadata())

    async def trailing_metadata(self) -> aio.Metadata:
        return await self._status("trailing_metadata", aio.Metadata())

    async def code(self) -> grpc.StatusCode:
        return await self._status("code", grpc.StatusCode.OK)

    async def details(self) -> str:
        return await self._status("details", "")

    async def wait_for_connection(self) -> None:
        call = await self._call()
        if call is not None:
            await call.wait_for_connection()
