"""One call on the server: the ServicerContext a handler receives, and running
the handler (coroutine, async generator, or a plain function/generator on the
thread pool, as grpc.aio does) in the call's one task.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import inspect
import logging
from typing import (Any, Callable, Coroutine, Generator, Iterable, Mapping, NoReturn, Protocol,
                    Sequence, Tuple, TypeVar, Union)

import grpc
from grpc import aio

from rpc import _connection as c
from rpc import _metrics
from rpc._compression import NAMES, Compressed, DecompressionError, algorithm
from rpc._options import Options
from rpc._stats import Stats
from rpc._credentials import identity_key
from rpc._lanes import auth_properties
from rpc._status import (_Metadatum, check_trailing_shape, invocation_items, validate_metadata,
                         wire_code)
from rpc._stream import Stream, StreamLink, too_large
from rpc._wire import DecodedMetadata
from rpc.transports import PeerInfo

log = logging.getLogger("lanerpc")

_C = grpc.StatusCode
_OK = 0
_EOF = aio.EOF

T = TypeVar("T")
MetadataType = Union[aio.Metadata, Sequence[Tuple[str, Union[str, bytes]]]]


# What a call uses of its server and its connection: rpc._server's Server and
# ServerLink, which import this module.

class Server(Protocol):
    _executor: concurrent.futures.Executor | None
    _options: Options
    _stats: Stats
    _thread_calls: int            # plain handlers started on the pool, not yet returned
    _thread_capacity: int         # how many of those may be at once (threads + queue)
    _thread_context: type[Any]    # what a plain handler gets as its context (given this call)

    def _call_finished(self, call: ServicerContext) -> None:
        """The call is over: forget it."""

    def _handler_context(self) -> contextvars.Context:
        """The contextvars context a new call's handler starts in."""


class ServerLink(StreamLink, Protocol):
    loop: asyncio.AbstractEventLoop
    lane: str | None
    peer: PeerInfo | None
    dialled_as: str | None        # the tcp peer address of a connection upgraded from tcp
    tls: dict[str, list[bytes]] | None   # a TLS connection's peer properties (rpc._credentials)
    invocation_head: tuple[_Metadatum, ...]   # the client's user-agent, from its HELLO

    def call_ended(self) -> None:
        """A call on this connection is over (it may now be idle)."""


class _Abort(aio.AbortError):
    pass


_COROUTINE, _ASYNCGEN, _PLAIN = "coroutine", "async generator", "plain"
_kinds: dict[Callable[..., Any], str] = {}


def _kind(fn: Callable[..., Any]) -> str:
    """What a handler function is, remembered: inspect's checks cost microseconds."""
    kind = _kinds.get(fn)
    if kind is None:
        if inspect.iscoroutinefunction(fn):
            kind = _COROUTINE
        elif inspect.isasyncgenfunction(fn):
            kind = _ASYNCGEN
        else:
            kind = _PLAIN
        if len(_kinds) >= 4096:     # handlers made per call must not grow this forever
            _kinds.clear()
        _kinds[fn] = kind
    return kind


class _FirstStep:
    """The current task while a unary handler takes its first step with none
    (ServicerContext._start_eagerly), and what the call holds as its task until it has
    one. Asked to cancel meanwhile, it counts, and the task is cancelled as often when
    made; once made, everything asked of the stand-in is asked of the task."""

    # Class defaults and no __init__: one is made per unary call.
    finished = False
    cancels = 0
    task: asyncio.Task[None] | None = None

    def done(self) -> bool:
        return self.finished if self.task is None else self.task.done()

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        if self.finished:
            return False
        self.cancels += 1
        return True

    def cancelling(self) -> int:
        return self.cancels if self.task is None else self.task.cancelling()

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        self.cancels = max(self.cancels - 1, 0)
        return self.cancels

    def hand_over(self, loop: asyncio.AbstractEventLoop, rest: Coroutine[Any, Any, Any],
                  context: contextvars.Context) -> asyncio.Task[Any]:
        """The task that runs ``rest`` (what the first step left) in ``context``; from
        now on the stand-in is that task, and a cancel asked of it meanwhile is asked
        of the task."""
        task = loop.create_task(rest, context=context)
        self.task = task
        for _ in range(self.cancels):
            task.cancel()
        return task

    def cancelled(self) -> bool:
        return self.task is not None and self.task.cancelled()

    def __getattr__(self, name: str) -> Any:
        if self.task is None:
            raise AttributeError(f"{name}: the handler's first step runs without a task")
        return getattr(self.task, name)


# The current task as asyncio keeps it (private, but the only way to show a stand-in to
# asyncio.current_task on Python 3.11, which has no eager tasks).
_enter_task: Callable[[asyncio.AbstractEventLoop, Any], None] = asyncio.tasks._enter_task
_leave_task: Callable[[asyncio.AbstractEventLoop, Any], None] = asyncio.tasks._leave_task


class _Rest(collections.abc.Coroutine[Any, Any, Any]):
    """The rest of coroutine ``coro``, which ran up to yielding ``yielded`` (a future
    it waits for, or None) outside any task: a task that runs this runs ``coro`` as if
    it had from the start. The task's first step gets ``yielded`` back; a cancellation
    thrown in before that step lands in ``coro`` where it waits, as it would have in a
    task of its own. (A handler's first step here, an interceptor chain's in
    :mod:`rpc._interceptors`.)"""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded: Any = yielded

    def send(self, value: Any) -> Any:
        yielded = self._yielded
        if yielded is not _RESUMED:
            self._yielded = _RESUMED
            return yielded
        return self._step(self._coro.send, value)

    def throw(self, *exc: Any) -> Any:
        self._yielded = _RESUMED
        return self._step(self._coro.throw, *exc)

    def _step(self, advance: Callable[..., Any], *args: Any) -> Any:
        return advance(*args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("a task runs this; it is not awaited")


class _Resumed(_Rest):
    """The rest of a unary handler's coroutine (:class:`_Rest`), and then the end of
    ``call`` as :meth:`ServicerContext._run` would end it."""

    __slots__ = ("_call",)

    def __init__(self, call: ServicerContext, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        super().__init__(coro, yielded)
        self._call = call

    def _step(self, advance: Callable[..., Any], *args: Any) -> Any:
        """Advance the handler; when it is over, end the call (StopIteration: this
        coroutine is over too)."""
        call = self._call
        try:
            try:
                return advance(*args)
            except StopIteration as stop:
                call._answer(stop.value)
        except BaseException as exc:
            if not call._ended_by(exc):
                raise
        raise StopIteration


_RESUMED = object()


class ServicerContext(Stream, aio.ServicerContext[Any, Any]):
    """One call on the server; what a grpc.aio handler receives as ``context``.
    Its stream's IO (sending, receiving, the write policy) is :class:`Stream`'s."""

    # Per-call state that most calls never change lives on the class: a call
    # sets only what differs (fewer stores per call on the hot path).
    _link: ServerLink
    _deadline: float | None = None
    _task: asyncio.Task[None] | _FirstStep | None = None
    _code: int | None = None            # set_code / abort: the status sent
    _py_code: Any = None                # ... and what the handler gave, as code() returns it
    _aborted = False
    _invocation: tuple[_Metadatum, ...] | None = None
    _details: str | None = None
    _trailing: DecodedMetadata = ()
    _initial: DecodedMetadata | None = None
    _initial_sent = False
    _ended = False                      # status sent or stream gone
    _cancelled = False
    _callbacks: tuple[()] | list[Callable[[ServicerContext], None]] = ()
    _timer: asyncio.TimerHandle | None = None
    _counted = False
    _tally: _metrics.CallTally | None = None   # when rpc.enable_metrics() is on

    # The handler's functions are Any where they are called: grpc types them for
    # its sync API (a grpc.ServicerContext, plain returns).
    def __init__(self, server: Server, link: ServerLink, sid: int, method: str,
                 timeout: float | None, metadata: DecodedMetadata,
                 handler: grpc.RpcMethodHandler[Any, Any]) -> None:
        self._server = server
        self._link = link
        self._loop = link.loop
        self._sid = sid
        self._method = method
        self._handler = handler
        recorder = _metrics.recorder
        if recorder is not None:
            self._tally = tally = recorder.server_call(method)
            self._handler = _metrics.CountingHandler(handler, tally)  # type: ignore[assignment]
        self._metadata = metadata
        self._received: collections.deque[bytes | Compressed] = collections.deque()
        default = server._options.default_compression
        if default:
            self._encoding = default            # the server's compression= (tcp lane only)
        if timeout is not None:
            # The timer is armed by whoever made the call, before the loop runs again
            # (_arm_deadline): most unary calls are over by then and need none.
            self._deadline = self._loop.time() + timeout

    # ------------------------------------------------------------ events

    def _on_message(self, data: bytes, end: bool) -> None:
        if end:
            self._recv_ended = True
            if self._task is None and not self._received and not self._handler.request_streaming:
                # The whole request of a unary call (the usual case): start it now.
                # No reader can wait on a unary request; nothing to wake.
                self._received.append(data)
                self._start()
                return
        self._deliver(data)
        if self._task is None and not self._handler.request_streaming:
            if end:
                self._start()
            elif len(self._received) > 1:
                # A unary request must be followed by END_STREAM; a second
                # message is a client bug.
                self._end_with(_C.INTERNAL.value[0], "more than one request message for a unary method")

    def _on_end_of_input(self) -> None:
        self._recv_ended = True
        if self._task is None and not self._handler.request_streaming:
            if self._received:
                self._start()
            else:
                self._end_with(_C.INTERNAL.value[0], "unary method called without a request message")
            return
        self._wake_reader()

    def _on_stream_ended(self, code: int, details: str, by_peer: bool) -> None:
        """The peer cancelled, the connection died, or we ended it for a limit."""
        self._ended = True
        self._recv_ended = True
        self._cancelled = by_peer or code != _OK
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if self._tally is not None:
            self._tally.ended(code if code != _OK or not by_peer else _C.CANCELLED.value[0],
                              self._link.lane, self._received)
        if task is not None and not task.done():
            task.cancel()
        elif task is None:
            self._complete()
            self._server._call_finished(self)
        self._release_waiters()

    def _arm_deadline(self) -> None:
        """Start the deadline's timer (ServerLink.arm_deadlines: once, for a call with
        a deadline that is not over yet). It fires at the deadline the call arrived
        with, however late it is armed."""
        assert self._deadline is not None
        self._timer = self._loop.call_at(self._deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if not self._ended:
            self._end_with(_C.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
            self._cancelled = True
            if self._task is not None and not self._task.done():
                self._task.cancel()

    # ------------------------------------------------------------ running

    def _start(self) -> None:
        handler = self._handler
        if not handler.request_streaming and not handler.response_streaming:
            fn: Any = handler.unary_unary
            if _kind(fn) is _COROUTINE and self._start_eagerly(fn):
                return
        self._task = task = self._loop.create_task(self._run(),
                                                   context=self._server._handler_context())
        # Cleanup in a done callback, not in _run's finally: a task cancelled
        # before its first step never enters _run at all.
        task.add_done_callback(self._task_done)

    def _start_eagerly(self, fn: Any) -> bool:
        """Run the first step of ``fn``, a unary coroutine handler, now, with no task:
        most finish in it (no await that suspends), and their answer goes out with no
        task made, scheduled, switched to and cleaned up after (2-3.5 µs a call), and
        no coroutine of ours around theirs. One that suspends goes on in a task from
        where it stopped (:class:`_Resumed`), in the same contextvars context.
        Meanwhile a stand-in is the current task (for asyncio.timeout, TaskGroup,
        current_task); what is asked of it reaches the task once there is one. False
        when a task is running already (the caller was not a protocol's callback): no
        eager start."""
        loop = self._loop
        step = _FirstStep()
        try:
            _enter_task(loop, step)
        except RuntimeError:
            return False
        self._task = step
        context = self._server._handler_context()
        try:
            resumed = context.run(self._first_step, fn)
        except BaseException:      # an exit (SystemExit, KeyboardInterrupt): goes on up
            _leave_task(loop, step)
            step.finished = True
            self._task_done(step)
            raise
        _leave_task(loop, step)
        if resumed is None:
            step.finished = True
            self._task_done(step)
            return True
        self._task = task = step.hand_over(loop, resumed, context)
        task.add_done_callback(self._task_done)
        return True

    def _first_step(self, fn: Any) -> _Resumed | None:
        """The first step of a unary coroutine handler (in its contextvars context):
        None when the call ended in it, else the rest of it, for a task to run."""
        try:
            coro = fn(self._decode(self._take()), self)
            try:
                yielded = coro.send(None)
            except StopIteration as stop:
                self._answer(stop.value)
                return None
            return _Resumed(self, coro, yielded)
        except BaseException as exc:
            if not self._ended_by(exc):
                raise
            return None

    def _task_done(self, task: asyncio.Task[None] | _FirstStep) -> None:
        if not self._ended:
            self._end_with(_C.CANCELLED.value[0], "Cancelled by the server")
        if self._callbacks:
            self._complete()
        self._server._call_finished(self)

    async def _run(self) -> None:
        handler = self._handler
        try:
            if handler.request_streaming:
                request = self._request_iterator()
            else:
                request = self._decode(self._take())
            if handler.response_streaming:
                await self._run_streaming(handler, request)
                self._end_ok()
            else:
                fn: Any = handler.stream_unary if handler.request_streaming else handler.unary_unary
                if _kind(fn) is _COROUTINE:
                    response = await fn(request, self)
                else:
                    response = await self._start_in_thread(fn, request)
                self._answer(response)
        except BaseException as exc:
            if not self._ended_by(exc):
                raise

    def _answer(self, response: Any) -> None:
        """A unary-response handler returned ``response``: send it, then the status,
        or only the status the handler set instead."""
        code = self._code
        if code is not None and code != _OK:
            self._end_with(code, self._details or "", self._trailing)
            return
        if response is None:
            # grpc.aio: a handler that returns nothing without a status is a bug.
            self._end_with(_C.UNKNOWN.value[0] if code is None else code,
                           self._details or "Handler returned no response", self._trailing)
            return
        serializer = self._handler.response_serializer
        try:
            data = serializer(response) if serializer is not None else response
        except Exception as exc:
            raise _ResponseError(f"Failed to serialize response message: {exc}") from None
        if self._ended:
            return
        if not self._initial_sent:
            if self._initial:
                self._send_initial()
                if self._ended:
                    return
            else:
                self._initial_sent = True     # (none to send: the response implies it)
        limit = self._server._options.max_send_message_length
        if len(data) > limit:
            self._end_with(_C.RESOURCE_EXHAUSTED.value[0], too_large(len(data), limit))
            return
        code = self._code
        self._end_with(_OK if code is None else code, self._details or "", self._trailing, data)

    def _ended_by(self, exc: BaseException) -> bool:
        """The handler raised ``exc`` (called where it is caught): end the call as
        grpc.aio does. False for what no handler should stop (SystemExit,
        KeyboardInterrupt, ...), which the caller raises on."""
        if isinstance(exc, asyncio.CancelledError):
            if not self._ended:
                self._end_with(_C.CANCELLED.value[0], "Cancelled by the server")
        elif isinstance(exc, aio.AbortError):
            self._end_with(self._code if self._code is not None else _C.UNKNOWN.value[0],
                           self._details or "", self._trailing)
        elif isinstance(exc, _ResponseError):
            self._end_with(_C.INTERNAL.value[0], str(exc))
        elif isinstance(exc, Exception):
            # As grpc.aio: a code set before the exception stays, the details
            # name the exception.
            if self._code is None or self._code == _OK:
                log.exception("lanerpc: handler of %s raised", self._method)
            code = self._code if self._code is not None and self._code != _OK else _C.UNKNOWN.value[0]
            self._end_with(code, f"Unexpected {type(exc)}: {exc}", self._trailing)
        else:
            return False
        return True

    async def _run_streaming(self, handler: grpc.RpcMethodHandler[Any, Any], request: Any) -> None:
        fn: Any = handler.stream_stream if handler.request_streaming else handler.unary_stream
        kind = _kind(fn)
        if kind is _ASYNCGEN:
            agen = fn(request, self)
            send, response_bytes = self._send, self._response_bytes
            try:
                async for response in agen:
                    await send(response_bytes(response))     # write(response), less a coroutine
            finally:
                await agen.aclose()
        elif kind is _COROUTINE:
            result = await fn(request, self)
            if result is not None and hasattr(result, "__aiter__"):
                async for response in result:
                    await self.write(response)
        else:
            # A plain function or generator: run on the thread pool, as grpc.aio does.
            result = await self._start_in_thread(fn, request)
            if result is not None and hasattr(result, "__next__"):
                sentinel = object()
                while True:
                    response = await self._in_thread(next, result, sentinel)
                    if response is sentinel:
                        break
                    await self.write(response)

    async def _start_in_thread(self, fn: Callable[..., Any], request: Any) -> Any:
        """Run a plain handler on the thread pool. The calls waiting there for a thread
        are bounded (``lanerpc.max_queued_calls``): past that the call ends
        RESOURCE_EXHAUSTED before its handler runs, instead of waiting in a queue that
        only grows while the server is overloaded."""
        server = self._server
        if server._thread_calls >= server._thread_capacity:
            await self.abort(_C.RESOURCE_EXHAUSTED,
                             "server overloaded: too many calls waiting for a handler thread")
        server._thread_calls += 1
        try:
            return await self._in_thread(fn, request, self._server._thread_context(self))
        finally:
            server._thread_calls -= 1

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._loop.run_in_executor(self._server._executor, fn, *args)

    def _request_iterator(self) -> _RequestIterator | _BlockingRequestIterator:
        handler = self._handler
        fn: Any = handler.stream_stream if handler.response_streaming else handler.stream_unary
        if _kind(fn) is not _PLAIN:
            return _RequestIterator(self)
        return _BlockingRequestIterator(self, self._loop)

    def _message_deserializer(self) -> object:
        return self._handler.request_deserializer

    def _decode(self, data: bytes) -> Any:
        deserializer = self._handler.request_deserializer
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as exc:
            raise _ResponseError(f"Failed to deserialize request message: {exc}") from None

    def _send_initial(self) -> None:
        # Empty initial metadata needs no frame: the first MESSAGE (or the
        # TRAILERS) implies it. Set metadata goes out in a HEADERS frame.
        if not self._initial_sent:
            self._initial_sent = True
            if self._initial:
                try:
                    self._send_initial_metadata(self._initial)
                except c.MetadataTooLarge as exc:
                    self._end_with(_C.RESOURCE_EXHAUSTED.value[0], str(exc))

    def _end_ok(self) -> None:
        code = self._code if self._code is not None else _OK
        self._end_with(code, self._details or "", self._trailing)

    def _end_with(self, code: int, details: str, trailing: DecodedMetadata = (),
                  message: bytes | None = None) -> None:
        """Send the final status (after ``message``, a unary response) and end the call."""
        if self._ended:
            return
        self._ended = True
        self._recv_ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        link = self._link
        encoding = 0
        if message is not None and self._encoding:
            message, encoding = self._outgoing(message, link)
        link.end_stream(self._sid, code, details, trailing, message, encoding)
        link.calls.pop(self._sid, None)
        self._server._stats.call_ended(link.lane or "?", code, link)
        if self._tally is not None:
            self._tally.ended(code, link.lane, self._received)

    def _complete(self) -> None:
        """Run the done callbacks in order. As grpc.aio: the first one that raises is
        logged and ends the round, the callbacks after it are not run."""
        callbacks, self._callbacks = self._callbacks, ()
        try:
            for cb in callbacks:
                cb(self)
        except Exception:
            log.exception("lanerpc: done callback of %s raised; the callbacks after it "
                          "were not run", self._method)

    # ------------------------------------------------------------ reading/writing

    async def read(self) -> Any:
        if not self._handler.request_streaming:
            raise RuntimeError("read() is for methods with a streaming request")
        if self._aborted:
            raise _Abort()
        if self._received:                # no need to wait (nor a coroutine for it)
            return self._decode(self._take())
        data = await self._receive()
        if data is None:
            return _EOF
        return self._decode(data)

    async def write(self, message: Any) -> None:
        await self._send(self._response_bytes(message))

    def _response_bytes(self, message: Any) -> bytes:
        """``message`` as write() sends it, after write()'s checks; the initial
        metadata goes first. Raises what write() raises for a call that can't."""
        if self._aborted:
            raise _Abort()
        if self._ended:
            if self._cancelled:
                raise asyncio.CancelledError()
            raise asyncio.InvalidStateError("the RPC has already finished")
        serializer = self._handler.response_serializer
        data: bytes = serializer(message) if serializer is not None else message
        limit = self._server._options.max_send_message_length
        if len(data) > limit:
            self._end_with(_C.RESOURCE_EXHAUSTED.value[0], too_large(len(data), limit))
            raise asyncio.CancelledError()
        if not self._initial_sent:
            self._send_initial()
            if self._ended:
                raise asyncio.CancelledError()
        return data

    async def send_initial_metadata(self, initial_metadata: MetadataType) -> None:
        self._raise_if_aborted()
        if self._initial_sent:
            raise aio.UsageError("initial metadata has already been sent")
        self._initial = validate_metadata(initial_metadata)
        if not self._ended:
            self._initial_sent = True
            try:
                self._send_initial_metadata(self._initial)
            except c.MetadataTooLarge as exc:
                self._end_with(_C.RESOURCE_EXHAUSTED.value[0], str(exc))
                raise asyncio.CancelledError() from None
            self._link.flush_soon()     # no response may follow soon

    # ------------------------------------------------------------ status

    async def abort(self, code: grpc.StatusCode | int, details: str = "",
                    trailing_metadata: MetadataType = ()) -> NoReturn:
        """End the call with a non-OK status, sent at once (as grpc.aio: a handler
        that catches the AbortError cannot delay or change it), and raise out of the
        handler. ``code`` may be a plain int, as grpc.aio allows. Empty ``details``
        or ``trailing_metadata`` keep what set_details / set_trailing_metadata gave.
        A second abort raises UsageError and the first status stands."""
        self._record_abort(code, details, trailing_metadata)
        self._end_with(self._code if self._code is not None else _C.UNKNOWN.value[0],
                       self._details or "", self._trailing)
        raise _Abort()

    def _record_abort(self, code: grpc.StatusCode | int, details: str,
                      trailing_metadata: MetadataType) -> None:
        if self._aborted:
            raise aio.UsageError("Abort already called!")
        value = wire_code(code)
        if value == _OK:
            # grpc.aio asserts on this and leaves the call hanging; a clear error is better.
            raise ValueError("abort() needs a non-OK status code")
        if not (isinstance(trailing_metadata, tuple) and not trailing_metadata and self._trailing):
            self._trailing = validate_metadata(check_trailing_shape(trailing_metadata))
        if details or not self._details:
            self._details = details
        self._aborted = True
        self._code, self._py_code = value, code

    def _raise_if_aborted(self) -> None:
        """As grpc.aio: after abort(), reading, writing or sending metadata raises the
        AbortError again, so a handler that swallowed it still stops."""
        if self._aborted:
            raise _Abort()

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode | int) -> None:
        """The status the call ends with; a plain int is taken as grpc.aio takes it
        (see :func:`rpc._status.wire_code`)."""
        self._code, self._py_code = wire_code(code), code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, trailing_metadata: MetadataType) -> None:
        """As grpc.aio, only pairs are taken: a dict or None raises TypeError."""
        self._trailing = validate_metadata(check_trailing_shape(trailing_metadata))

    # grpc's stubs say Metadata; grpc.aio, like lanerpc, returns the tuple of pairs.
    def trailing_metadata(self) -> DecodedMetadata:   # type: ignore[override]
        return self._trailing

    # What set_code / abort were given, as given (an int stays an int), as grpc.aio.
    def code(self) -> Any:
        return self._py_code

    def details(self) -> str | None:   # type: ignore[override]  # None: not set yet
        return self._details

    # grpc.aio's: a tuple of (key, value) items that also have .key and .value, the
    # client's user-agent first.
    def invocation_metadata(self) -> tuple[_Metadatum, ...]:   # type: ignore[override]
        items = self._invocation
        if items is None:
            items = self._invocation = invocation_items(self._link.invocation_head, self._metadata)
        return items

    def time_remaining(self) -> float | None:   # type: ignore[override]  # None: no deadline
        if self._deadline is None:
            return None
        return max(self._deadline - self._loop.time(), 0.0)

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._ended and (self._task is None or self._task.done())

    def add_done_callback(self, callback: Callable[[ServicerContext], None]) -> None:
        if self.done():
            callback(self)
        elif isinstance(self._callbacks, list):
            self._callbacks.append(callback)
        else:
            self._callbacks = [callback]

    def peer(self) -> str:
        """gRPC's spelling of the client's address. A client that dialled TCP and was
        moved to a local lane is reported by the address of that TCP connection
        (``ipv4:127.0.0.1:<port>``), as grpc would; the lane is in auth_context()."""
        link = self._link
        if link.dialled_as is not None:
            return link.dialled_as
        peer = link.peer
        if peer is None:
            return "unknown"
        if peer.lane in ("unix", "shm"):
            # grpc names a Unix socket peer by the client's own socket name, which a
            # client that never bound its socket (every lanerpc client) doesn't have.
            return "unix:"
        return peer.address

    # On TLS, what grpc's ssl credentials give: the verified client certificate's
    # SANs, else its common name (None without a client certificate). On the local
    # lanes, what grpc's local credentials give: the transport security type, "local".
    def peer_identities(self) -> Iterable[bytes] | None:
        key = self.peer_identity_key()
        return self.auth_context().get(key) if key is not None else None

    def peer_identity_key(self) -> str | None:
        tls = self._link.tls
        if tls is not None:
            return identity_key(tls)
        return "transport_security_type" if self._is_local() else None

    def _is_local(self) -> bool:
        peer = self._link.peer
        return peer is not None and peer.uid is not None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        """grpc's keys (``transport_security_type``, ``security_level``) as grpc's
        insecure or local credentials set them, plus lanerpc's: the lane, and on the
        local lanes the client's pid, uid and gid (SO_PEERCRED). See README."""
        return auth_properties(self._link.peer, self._link.lane, self._link.tls)

    def set_compression(self, compression: grpc.Compression) -> None:
        """Compress this call's responses with ``compression``, on every lane (asked
        for this call: unlike the server's default, not only on tcp)."""
        self._encoding = algorithm(compression, "set_compression")
        self._encoding_everywhere = True

    def disable_next_message_compression(self) -> None:
        self._skip_next_compression = True

    # ------------------------------------------------------------ decompression

    _side = "SERVER"

    def _receive_limit(self) -> int:
        return self._server._options.max_receive_message_length

    def _inflate(self, message: Compressed) -> bytes:
        if not self._server._options.compression_enabled >> message.encoding & 1:
            # As grpc: a request compressed with an algorithm the server turned off.
            raise self._decompression_failed(DecompressionError(
                _C.UNIMPLEMENTED.value[0],
                f"Compression algorithm '{NAMES[message.encoding]}' is disabled."))
        return super()._inflate(message)

    def _decompression_failed(self, exc: DecompressionError) -> BaseException:
        """The request can't be taken: the call ends with ``exc``'s status at once, and
        the handler (if running) is stopped as by abort()."""
        if not self._aborted:
            self._aborted = True
            self._code, self._py_code, self._details = exc.code, exc.code, exc.details
            self._end_with(exc.code, exc.details, ())
        return _Abort()

    @property
    def lane(self) -> str | None:
        """The lane this call arrived on."""
        return self._link.lane


class _ResponseError(Exception):
    pass


class _ThreadContext:
    """The context a plain (threaded) handler gets, as in grpc.aio: the same
    object, but ``abort`` raises at once instead of being awaited, and the
    coroutine methods block the handler's thread until the loop has run them."""

    def __init__(self, context: ServicerContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._context._loop).result()

    def abort(self, code: grpc.StatusCode | int, details: str = "",
              trailing_metadata: MetadataType = ()) -> NoReturn:
        # On the loop, as grpc.aio does: the status goes out before this thread goes on.
        self._run(self._context.abort(code, details, trailing_metadata))

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self.abort(status.code, status.details, status.trailing_metadata)

    def send_initial_metadata(self, initial_metadata: MetadataType) -> None:
        self._run(self._context.send_initial_metadata(initial_metadata))

    def read(self) -> Any:
        return self._run(self._context.read())

    def write(self, message: Any) -> None:
        self._run(self._context.write(message))


class _PendingCall:
    """Stands in for a call while server interceptors choose its handler."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes | None, bool]] = []
        self.ended = False

    def _on_message(self, data: bytes, end: bool) -> None:
        self.items.append((data, end))

    def _on_end_of_input(self) -> None:
        self.items.append((None, True))

    def _on_stream_ended(self, code: int, details: str, by_peer: bool) -> None:
        self.ended = True

    def _on_writable(self) -> None:
        pass


class _RequestIterator:
    """The ``request_iterator`` an async stream-request handler receives."""

    def __init__(self, context: ServicerContext) -> None:
        self._context = context

    def __aiter__(self) -> _RequestIterator:
        return self

    async def __anext__(self) -> Any:
        context = self._context
        if context._received and not context._aborted:
            # A request is here: read()'s answer, without a coroutine for read().
            return context._decode(context._take())
        message = await context.read()
        if message is _EOF:
            raise StopAsyncIteration
        return message


class _BlockingRequestIterator:
    """The ``request_iterator`` of a plain (threaded) stream-request handler."""

    def __init__(self, context: ServicerContext, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    def __iter__(self) -> _BlockingRequestIterator:
        return self

    def __next__(self) -> Any:
        future = asyncio.run_coroutine_threadsafe(self._context.read(), self._loop)
        message = future.result()
        if message is _EOF:
            raise StopIteration
        return message
