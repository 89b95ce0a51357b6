"""Client and server interceptors, run the way grpc.aio runs them, at less cost.

A call made through client interceptors runs the chain at once, in the
caller's turn of the loop (grpc.aio starts a task for it, to run on a later
turn): most interceptors reach their continuation without waiting for
anything, so the request goes out at once, and a chain that ends without
waiting needs no task at all. A chain that waits goes on in a task from
where it stopped (:func:`first_step`). Either way the chain runs in a copy of
the caller's contextvars context, with a stand-in as the current task while
it runs in the caller's turn, as it would in a task of its own. The object
the caller holds (an ``Intercepted*Call``) answers from what the chain
produced once it is over: the call the last continuation made, a call an
interceptor made, or what grpc.aio wraps an interceptor's plain answer in (a
unary response, or a response iterator in place of the call's own).

Streaming requests: when the caller passes no request iterator, the chain is
given one fed by a queue that ``write()`` and ``done_writing()`` fill. So the
caller's writes reach the server whatever the interceptors do with the
iterator (pass it on, wrap it, replace it), as in grpc.aio.

A server's interceptors (:class:`ServerChain`) choose a call's handler the
same way: at once when they do not wait, else in a task from where they stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

# The stand-in current task of a first step (the server's eager handler start uses it too).
from rpc._context import _FirstStep, _Rest, _enter_task, _leave_task

# grpc.aio's words, so that code matching on them behaves the same.
API_STYLE_ERROR = "The iterator and read/write APIs may not be mixed on a single RPC."
FINISHED = "RPC already finished."
HALF_CLOSED = 'RPC is half closed after calling "done_writing".'
LOCALLY_CANCELLED = "Locally cancelled by application!"

# Makes the call at the end of the chain, from the details the chain ends with.
Invoke = Callable[[aio.ClientCallDetails, Any], Any]
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


def as_metadata(metadata: Any) -> aio.Metadata:
    """A call's metadata as interceptors see it: always an ``aio.Metadata``
    (empty when the call has none), so ``Metadata(*details.metadata, ...)`` works."""
    if not metadata:
        return aio.Metadata()
    if isinstance(metadata, aio.Metadata):
        return metadata
    return aio.Metadata(*metadata)


def intercept(kind: str, interceptors: list[aio.ClientInterceptor], invoke: Invoke,
              details: aio.ClientCallDetails, request: Any,
              running: set[InterceptedCall]) -> InterceptedCall:
    """Run ``interceptors`` (of ``kind``, "unary_unary", ...) around the call that
    ``invoke`` makes; ``request`` is the request, or for a streaming request the
    caller's request iterator (None: the caller writes). The intercepted call is
    in ``running`` while its chain goes on in a task (the channel's, for close():
    the calls the chain made, the channel holds itself)."""
    return _CALL_CLASSES[kind](interceptors, invoke, details, request, running)


# ============================================================ a chain's first step, now


def first_step(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
               context: contextvars.Context) -> tuple[asyncio.Task[Any] | None, Any]:
    """Run ``coro`` (an interceptor chain) now, in ``context``, up to its first
    await that waits: ``(None, value)`` when it ended there (no task was made,
    scheduled, switched to or cleaned up after), else ``(task, None)``, the task
    that runs the rest of it from where it stopped, in the same context. What it
    raised in that step is raised here (CancelledError if it asked its current
    task to cancel and then ended, as a task then ends cancelled).

    Meanwhile a stand-in is the current task (for asyncio.timeout, TaskGroup,
    current_task), the caller's own task, if any, put back after: what is asked
    of the stand-in reaches the task once there is one (a cancel asked before, too)."""
    caller = asyncio.current_task(loop)
    if caller is not None:
        _leave_task(loop, caller)
    step = _FirstStep()
    _enter_task(loop, step)
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as stop:
        if step.cancels:
            raise asyncio.CancelledError() from None
        return None, stop.value
    finally:
        _leave_task(loop, step)
        step.finished = True
        if caller is not None:
            _enter_task(loop, caller)
    return step.hand_over(loop, _Rest(coro, yielded), context), None


# ============================================================ the server's chain


if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _Lookup = Callable[[str, Any], "_Handler | None"]


class ServerChain:
    """A server's interceptors around its handler look-up, as grpc.aio runs them:
    the first one's ``intercept_service`` gets a continuation that runs the next
    one, the last one's a continuation that looks the handler up. The
    continuations are made once, here, not per call."""

    def __init__(self, interceptors: Iterable[aio.ServerInterceptor], lookup: _Lookup) -> None:
        self._interceptors = tuple(interceptors)
        self._lookup = lookup
        count = len(self._interceptors)
        # _continuations[i]: what interceptor i calls to go on (to i + 1, or the look-up).
        self._continuations: tuple[Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]], ...] = \
            tuple(functools.partial(self._from, index) for index in range(1, count + 1))

    def find_handler(self, details: grpc.HandlerCallDetails) -> Coroutine[Any, Any, _Handler | None]:
        """The handler the interceptors choose for the call ``details`` describes."""
        return self._from(0, details)

    async def _from(self, index: int, details: grpc.HandlerCallDetails) -> _Handler | None:
        if index == len(self._interceptors):
            return self._lookup(details.method, details.invocation_metadata)
        return await self._interceptors[index].intercept_service(
            self._continuations[index], details)


# ============================================================ what the chain may produce


class AnsweredCall(aio.UnaryUnaryCall[Any, Any]):
    """A unary interceptor that answered with a plain response: the outer
    interceptors and the caller still get a finished call to await."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        # As grpc.aio's answered call: there is no RPC to watch.
        raise NotImplementedError()

    def time_remaining(self) -> float | None:
        return None

    async def initial_metadata(self) -> aio.Metadata:
        return aio.Metadata()

    async def trailing_metadata(self) -> aio.Metadata:
        return aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    async def debug_error_string(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        return None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response
        yield  # never reached: it makes this a generator, as __await__ must be


class ResponseIteratorCall(aio.UnaryStreamCall[Any, Any], aio.StreamStreamCall[Any, Any]):
    """A streaming-response interceptor that returned an iterator of its own
    (wrapping the call's responses, say): the responses come from that
    iterator, everything else (status, metadata, cancel) from the call."""

    def __init__(self, call: Any, responses: Any) -> None:
        self._call = call
        self._responses = responses
        self._iterator: AsyncIterator[Any] | None = None

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(callback)

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> aio.Metadata:
        return await self._call.initial_metadata()  # type: ignore[no-any-return]

    async def trailing_metadata(self) -> aio.Metadata:
        return await self._call.trailing_metadata()  # type: ignore[no-any-return]

    async def code(self) -> grpc.StatusCode:
        return await self._call.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._call.details()  # type: ignore[no-any-return]

    async def debug_error_string(self) -> str:
        return await self._call.debug_error_string()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._iterator is None:
            self._iterator = self._responses.__aiter__()
        return self._iterator

    async def read(self) -> Any:
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return aio.EOF

    async def write(self, request: Any) -> None:
        await self._call.write(request)

    async def done_writing(self) -> None:
        await self._call.done_writing()


# ============================================================ the intercepted calls


class InterceptedCall:
    """What the four intercepted call kinds share: the chain's outcome, and the
    status, metadata, cancellation and callbacks answered from its result."""

    _method_name = "intercept_unary_unary"
    _stream_response = False
    _wraps_answers = False      # unary-unary: a plain response becomes an AnsweredCall
    _call_type: type[Any] = aio.UnaryUnaryCall

    _task: asyncio.Future[Any]

    # State most calls never change stays on the class: a call stores what differs.
    _final: Any = None                   # the call the chain's end made
    _last: Any = None                    # the call last returned up the chain
    _running: set[InterceptedCall] | None = None    # the channel's, while the chain's task runs
    _pending_callbacks: list[Callable[[Any], None]] | None = None   # until the chain is over
    _responses: AsyncIterator[Any] | None = None
    _queue: asyncio.Queue[Any] | None = None
    _ended: asyncio.Future[None] | None = None
    _writes_done = False

    def __init__(self, interceptors: list[aio.ClientInterceptor], invoke: Invoke,
                 details: aio.ClientCallDetails, request: Any,
                 running: set[InterceptedCall]) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._interceptors = interceptors
        self._invoke = invoke
        request = self._requests(request)
        # The chain runs now (see first_step); _task is its outcome: the task that
        # runs the rest of it, or a future done already when it ended at once.
        chain: asyncio.Future[Any]
        try:
            task, call = first_step(loop, self._run(0, details, request),
                                    contextvars.copy_context())
        except asyncio.CancelledError:
            chain = loop.create_future()
            chain.cancel()
        except Exception as exc:
            chain = loop.create_future()
            chain.set_exception(exc)
        else:
            if task is not None:
                self._task = task
                self._running = running
                running.add(self)
                task.add_done_callback(self._chain_done)
                return
            chain = loop.create_future()
            chain.set_result(call)
        self._task = chain
        self._chain_done(chain)

    @property
    def lane(self) -> str | None:
        """The lane of the call the chain made (None until it made one, or when an
        interceptor answered without calling on)."""
        lane = getattr(self._final, "lane", None)
        return lane if isinstance(lane, str) else None

    # ------------------------------------------------------------ the chain

    async def _run(self, index: int, details: aio.ClientCallDetails, request: Any) -> Any:
        if index == len(self._interceptors):
            call = self._final = self._invoke(details, request)
            if self._queue is not None:
                call.add_done_callback(self._final_ended)
            self._last = call
            return call
        continuation: _Continuation = functools.partial(self._run, index + 1)
        result = await getattr(self._interceptors[index], self._method_name)(
            continuation, details, request)
        return self._adopt(result)

    def _adopt(self, result: Any) -> Any:
        """What an interceptor returned, as the call the next one out gets."""
        if self._stream_response:
            if not isinstance(result, self._call_type):
                result = ResponseIteratorCall(self._last, result)
            self._last = result
            return result
        if result is self._final:      # (the usual case: no isinstance check of an ABC)
            return result
        if self._wraps_answers and not isinstance(result, aio.UnaryUnaryCall):
            return AnsweredCall(result)
        return result

    def _requests(self, request: Any) -> Any:
        """The request (or request iterator) the chain starts with."""
        return request

    def _set_ended(self, _call: Any = None) -> None:
        """The RPC is over (or will never start): pending writes give up."""
        ended = self._ended
        if ended is not None and not ended.done():
            ended.set_result(None)

    def _final_ended(self, call: Any) -> None:
        # (An interceptor that made the call again ends with the later call.)
        if call is self._final:
            self._set_ended()

    def _chain_done(self, chain: asyncio.Future[Any]) -> None:
        if self._running is not None:
            self._running.discard(self)
            self._running = None
        if chain.cancelled() or chain.exception() is not None or self._final is None:
            self._set_ended()
        callbacks = self._pending_callbacks
        if callbacks:
            self._pending_callbacks = None
            for callback in callbacks:
                self._add_done_callback(callback)

    async def _call(self) -> Any:
        """The chain's call. Waiting for it is shielded: a caller that gives up
        waiting (its task cancelled) does not cancel the chain, and so the RPC."""
        return await asyncio.shield(self._task)

    def _chain_cancelled(self) -> bool:
        return self._task.cancelled()

    # ------------------------------------------------------------ grpc.aio.Call

    def cancel(self) -> bool:
        task = self._task
        if task.cancelled():
            return False
        if not task.done():
            return task.cancel()
        if task.exception() is not None:
            return False
        return bool(task.result().cancel())

    def cancelled(self) -> bool:
        task = self._task
        if task.cancelled():
            return True
        if not task.done():
            return False
        exc = task.exception()
        if exc is not None:
            return isinstance(exc, aio.AioRpcError) and exc.code() is grpc.StatusCode.CANCELLED
        return bool(task.result().cancelled())

    def done(self) -> bool:
        task = self._task
        if not task.done():
            return False
        if task.cancelled() or task.exception() is not None:
            return True
        return bool(task.result().done())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if not self._task.done():
            if self._pending_callbacks is None:
                self._pending_callbacks = []
            self._pending_callbacks.append(callback)
        else:
            self._add_done_callback(callback)

    def _add_done_callback(self, callback: Callable[[Any], None]) -> None:
        task = self._task
        if task.cancelled() or task.exception() is not None or task.result().done():
            callback(self)
        else:
            task.result().add_done_callback(lambda _call: callback(self))

    def time_remaining(self) -> float | None:
        call = self._final
        return call.time_remaining() if call is not None else None

    async def _ask(self, name: str, on_error: Callable[[aio.AioRpcError], Any],
                   on_cancelled: Any) -> Any:
        """``await call.<name>()`` once the chain is done; what the chain's
        error or cancellation says instead when it ended without a call."""
        try:
            call = await self._call()
        except aio.AioRpcError as err:
            return on_error(err)
        except asyncio.CancelledError:
            if self._chain_cancelled():
                return on_cancelled
            raise
        return await getattr(call, name)()

    # A chain cancelled before it made a call has no metadata: empty, as a
    # cancelled call's is (grpc.aio says None here).
    async def initial_metadata(self) -> aio.Metadata:
        return await self._ask(  # type: ignore[no-any-return]
            "initial_metadata", aio.AioRpcError.initial_metadata, aio.Metadata())

    async def trailing_metadata(self) -> aio.Metadata:
        return await self._ask(  # type: ignore[no-any-return]
            "trailing_metadata", aio.AioRpcError.trailing_metadata, aio.Metadata())

    async def code(self) -> grpc.StatusCode:
        return await self._ask(  # type: ignore[no-any-return]
            "code", aio.AioRpcError.code, grpc.StatusCode.CANCELLED)

    async def details(self) -> str:
        return await self._ask(  # type: ignore[no-any-return]
            "details", aio.AioRpcError.details, LOCALLY_CANCELLED)

    async def debug_error_string(self) -> str:
        return await self._ask(  # type: ignore[no-any-return]
            "debug_error_string", aio.AioRpcError.debug_error_string, "")

    async def wait_for_connection(self) -> None:
        call = await self._task
        await call.wait_for_connection()


class _UnaryResponse(InterceptedCall):
    """Awaiting the call: the chain's call's response."""

    def __await__(self) -> Generator[Any, None, Any]:
        call = yield from self._task.__await__()
        return (yield from call.__await__())


class _StreamResponse(InterceptedCall):
    """``async for`` and ``read()`` share one iterator over the chain's call
    (as in grpc.aio, mixing them on an intercepted call is allowed)."""

    _stream_response = True

    async def _all_responses(self) -> AsyncIterator[Any]:
        call = await self._task
        async for response in call:
            yield response

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._responses is None:
            self._responses = self._all_responses()
        return self._responses

    async def read(self) -> Any:
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return aio.EOF


class _StreamRequest(InterceptedCall):
    """write() and done_writing(): the write queue's end."""

    def _requests(self, request: Any) -> Any:
        """With no request iterator from the caller, the chain gets one that
        yields what write() puts in the queue, until done_writing()."""
        if request is not None:
            return request
        self._queue = asyncio.Queue(maxsize=1)
        self._ended = self._loop.create_future()
        return self._queued_requests(self._queue)

    @staticmethod
    async def _queued_requests(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        while True:
            request = await queue.get()
            if request is _DONE_WRITING:
                return
            yield request

    def _is_over(self) -> bool:
        return self._ended is not None and self._ended.done()

    async def _put(self, item: Any) -> None:
        """Queue ``item`` for the chain's iterator, unless the RPC ends first."""
        assert self._queue is not None and self._ended is not None
        if not self._queue.full():
            self._queue.put_nowait(item)    # the usual case: no task, no wait
            return
        put = self._loop.create_task(self._queue.put(item))
        try:
            await asyncio.wait((put, self._ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()

    async def write(self, request: Any) -> None:
        if self._queue is None:
            raise aio.UsageError(API_STYLE_ERROR)
        if self._is_over():
            raise asyncio.InvalidStateError(FINISHED)
        if self._writes_done:
            raise asyncio.InvalidStateError(HALF_CLOSED)
        await self._put(request)
        if self._is_over():
            raise asyncio.InvalidStateError(FINISHED)

    async def done_writing(self) -> None:
        if self._queue is None:
            raise aio.UsageError(API_STYLE_ERROR)
        task = self._task
        if task.cancelled():
            raise asyncio.InvalidStateError(FINISHED)
        error = task.exception() if task.done() else None
        if isinstance(error, aio.AioRpcError):
            raise error
        if self._writes_done:
            return
        self._writes_done = True
        if not self._is_over():
            await self._put(_DONE_WRITING)


_DONE_WRITING = object()


class InterceptedUnaryUnaryCall(_UnaryResponse, aio.UnaryUnaryCall[Any, Any]):
    _wraps_answers = True


class InterceptedUnaryStreamCall(_StreamResponse, aio.UnaryStreamCall[Any, Any]):
    _method_name = "intercept_unary_stream"
    _call_type = aio.UnaryStreamCall


class InterceptedStreamUnaryCall(_UnaryResponse, _StreamRequest, aio.StreamUnaryCall[Any, Any]):
    _method_name = "intercept_stream_unary"


class InterceptedStreamStreamCall(_StreamResponse, _StreamRequest, aio.StreamStreamCall[Any, Any]):
    _method_name = "intercept_stream_stream"
    _call_type = aio.StreamStreamCall


_CALL_CLASSES: dict[str, type[InterceptedCall]] = {
    "unary_unary": InterceptedUnaryUnaryCall,
    "unary_stream": InterceptedUnaryStreamCall,
    "stream_unary": InterceptedStreamUnaryCall,
    "stream_stream": InterceptedStreamStreamCall,
}
