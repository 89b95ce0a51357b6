"""rpc.sync's channel: grpc's blocking ``grpc.Channel`` over lanerpc's async Channel.

The async :class:`rpc._channel.Channel` runs on the process's loop thread
(:mod:`rpc._sync_loop`), so a blocking channel has the same lanes, upgrade, limits and
options. A blocking call is one :class:`SyncCall`: the caller's thread serializes the
request (and later deserializes the response), hands the bytes to the loop with one
``call_soon_threadsafe``, and waits on the call's condition until the loop says it is
over. Nothing polls: every wait is ``threading.Condition.wait`` with the caller's timeout.

What grpc's ``_channel.py`` does, kept here: a call is a ``grpc.RpcError``, a
``grpc.Call`` and a ``grpc.Future`` at once (its streaming responses are its iterator);
``cancel()`` ends it at once with CANCELLED, "Locally cancelled by application!";
``close()`` ends every active call CANCELLED, "Channel closed!"; a request iterator is
consumed on a thread of its own; user callbacks never run on the caller's lock.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
from grpc import aio

from rpc import _channel, _sync_loop
from rpc._status import _Metadatum, status_code, validate_metadata
from rpc._wire import DecodedMetadata

log = logging.getLogger("lanerpc")

_C = grpc.StatusCode
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

# Streaming responses the loop reads ahead of a blocking reader: enough to keep a
# steady stream flowing without a hop per message, few enough that a reader that
# stops reading stops the stream (the stream's window then stops the server).
READ_AHEAD = 16
# Requests a request iterator's thread may run ahead of the connection.
REQUEST_BUFFER = 16

LOCALLY_CANCELLED = "Locally cancelled by application!"
CHANNEL_CLOSED = "Channel closed!"

_NOTHING: Any = object()
_FOREVER = threading.TIMEOUT_MAX


def _metadata(pairs: DecodedMetadata | aio.Metadata | None) -> tuple[_Metadatum, ...]:
    """Metadata as grpc's blocking calls give it: a tuple of (key, value) items."""
    if not pairs:
        return ()
    return tuple(_Metadatum(k, v) for k, v in pairs or ())


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


if TYPE_CHECKING:
    # grpc's stubs name what its calls are: a Call that is a Future, or one that iterates.
    class _CallBase(grpc.RpcError, grpc._CallFuture[_Resp],  # type: ignore[misc]  # the stubs' RpcError and Call differ
                    grpc._CallIterator[_Resp]):
        pass
else:
    class _CallBase(grpc.RpcError, grpc.Call, grpc.Future, Generic[_Resp]):
        pass


class SyncCall(_CallBase[_Resp]):
    """One blocking call: its outcome, its Future, and for a streaming response the
    iterator of its responses. Raised as the error of a failed call (as grpc raises
    its rendezvous), so ``except grpc.RpcError as e: e.code()`` works.

    Its fields are written under ``_lock``; the loop thread writes the outcome, any
    thread reads it. A call ended from this side (cancel, close, a request that could
    not be serialized) is over at once; the loop's call is told afterwards.

    Waiting for the end is part of every blocking call, so it is made cheap: a
    waiter without a timeout (a blocking call) registers its thread's eventfd
    (``_sync_loop.ThreadWaker``) and the ending thread writes it, as the last thing it
    does and with the GIL released; a waiter with a timeout (a future's ``result``)
    acquires ``_over``, a lock held from the start and released once at the end (and
    releases it for the next waiter). No ``threading.Condition`` for that (a lock made
    per wait, a list of waiters, the mutex taken again on waking). The condition over
    ``_lock`` is made only for what waits for something else (initial metadata,
    streamed responses).
    """

    # Defaults, set per call only when they change (fewer stores per call).
    _details = ""
    _initial: tuple[_Metadatum, ...] | None = None
    _trailing: tuple[_Metadatum, ...] = ()
    _data: bytes | None = None                 # a unary response, as received
    _response: Any = _NOTHING                  # ... and deserialized (once)
    _cancelled = False
    _ended_here = False                        # ended by this side: unread responses dropped
    _error: BaseException | None = None        # the loop could not make the call
    _aio: Any = None                           # the loop's call, once made
    _asked_initial = False
    _requests: _RequestPump | None = None
    _responses: _Responses | None = None
    _cond: threading.Condition | None = None   # made by _condition(), for a streaming one at once
    _wakers: list[_sync_loop.ThreadWaker] | None = None    # the threads waiting untimed

    def __init__(self, channel: Channel, deadline: float | None,
                 deserialize: Callable[[bytes], _Resp], streaming_response: bool) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._over = over = threading.Lock()
        over.acquire()
        self._deadline = deadline
        self._deserialize = deserialize
        self._streaming = streaming_response
        self._code: grpc.StatusCode | None = None
        self._done_callbacks: list[Callable[[Any], None]] = []
        self._rpc_callbacks: list[Callable[[], None]] = []
        if streaming_response:
            self._responses = _Responses(self._condition())

    def _condition(self) -> threading.Condition:
        """The condition over ``_lock`` (made at first use; call it without the lock)."""
        cond = self._cond
        if cond is None:
            with self._lock:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(self._lock)
        return cond

    # ------------------------------------------------------------ ending

    def _end(self, code: grpc.StatusCode, details: str, initial: tuple[_Metadatum, ...] | None,
             trailing: tuple[_Metadatum, ...], *, data: bytes | None = None,
             cancelled: bool = False, here: bool = False) -> bool:
        """Record the outcome (the first one wins); wake the waiters, run the callbacks."""
        with self._lock:
            if self._code is not None:
                return False
            self._code, self._details = code, details
            if self._initial is None:
                self._initial = initial if initial is not None else ()
            if trailing:
                self._trailing = trailing
            if data is not None:
                self._data = data
            if cancelled:
                self._cancelled = True
            if here:
                self._ended_here = True
            if self._cond is not None:
                self._cond.notify_all()
            done_callbacks, self._done_callbacks = self._done_callbacks, []
            rpc_callbacks, self._rpc_callbacks = self._rpc_callbacks, []
            wakers = self._wakers
        try:
            self._channel._forget(self)
            if self._requests is not None:
                self._requests.stop()
            for rpc_callback in rpc_callbacks:
                _sync_loop.deliver(rpc_callback)
            for done_callback in done_callbacks:
                _sync_loop.deliver(done_callback, self)
        finally:
            self._over.release()
            if wakers is not None:     # last, see the class's docstring
                for waker in wakers:
                    waker.wake()
        return True

    def _end_here(self, code: grpc.StatusCode, details: str, *, cancelled: bool = False,
                  tell_loop: bool = True) -> bool:
        """End the call from this side, at once; the loop's call is cancelled after."""
        if not self._end(code, details, None, (), cancelled=cancelled, here=True):
            return False
        if tell_loop:
            _sync_loop.call_soon(self._cancel_on_loop)
        return True

    def _cancel_on_loop(self) -> None:
        if self._aio is not None:
            self._aio.cancel()

    # ------------------------------------------------------------ on the loop

    def _started(self, call: Any) -> None:
        self._aio = call
        if self._code is not None:        # ended here before the loop made it
            call.cancel()
            return
        responses = self._responses
        if responses is None:
            # Held by the loop until it ends: a future its caller let go of (with a
            # done callback, say) still runs, as grpc's does.
            call.add_done_callback(self._on_done)
            return
        # A response stream is held weakly (its done callback, its reader): one dropped
        # unread is collected, and cancelled, as grpc's __del__ means to.
        ref = weakref.ref(self)
        call.add_done_callback(functools.partial(_call_done, ref, responses))
        call._loop.create_task(_read_ahead(ref, call, responses))

    def _failed_to_start(self, exc: BaseException) -> None:
        if isinstance(exc, aio.UsageError):      # the channel closed meanwhile
            self._end_here(_C.CANCELLED, CHANNEL_CLOSED, tell_loop=False)
            return
        self._error = exc
        self._end_here(_C.UNKNOWN, f"{exc!r}", tell_loop=False)

    def _on_done(self, call: Any) -> None:
        code = status_code(call._code or 0)
        details = call._details
        data = None
        if code is _C.OK and not self._streaming:
            try:
                data = call._result()      # bytes: the loop's call has no deserializer
            except aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
        self._end(code, details, _metadata(call._initial_md), _metadata(call._trailing_md),
                  data=data)

    def _set_initial(self, metadata: aio.Metadata) -> None:
        with self._lock:
            if self._initial is None:
                self._initial = _metadata(metadata)
                if self._cond is not None:
                    self._cond.notify_all()

    async def _await_initial(self) -> None:
        call = self._aio
        if call is None:
            return
        try:
            self._set_initial(await call.initial_metadata())
        except (aio.AioRpcError, asyncio.CancelledError):
            pass

    def _ask_initial(self) -> None:
        if self._aio is not None and self._code is None:
            self._aio._loop.create_task(self._await_initial())

    # ------------------------------------------------------------ waiting

    def _wait_with(self, waker: _sync_loop.ThreadWaker | None) -> None:
        """Wait for the end of a call made with ``waker`` registered (see _start)."""
        if waker is None:
            self._wait()
            return
        while self._code is None:     # (a wake-up left from an earlier wait: wait again)
            waker.wait()

    def _wait(self, timeout: float | None = None) -> bool:
        if self._code is None:
            _sync_loop.refuse_on_loop_thread()
            if timeout is None and _sync_loop.HAS_EVENTFD:
                waker = _sync_loop.thread_waker()
                with self._lock:
                    waiting = self._code is None
                    if waiting:
                        if self._wakers is None:
                            self._wakers = [waker]
                        else:
                            self._wakers.append(waker)
                if waiting:
                    while self._code is None:    # (a wake-up left from an earlier wait)
                        waker.wait()
            else:
                over = self._over
                if over.acquire(True, -1 if timeout is None else min(max(timeout, 0.0), _FOREVER)):
                    over.release()      # (for the next waiter)
        return self._code is not None

    def _value(self) -> _Resp:
        """The response of a call that ended OK (deserialized here, once)."""
        with self._lock:
            if self._response is _NOTHING:
                try:
                    self._response = None if self._data is None else self._deserialize(self._data)
                except Exception:
                    log.exception("lanerpc: Exception deserializing response!")
                    self._code, self._details = _C.INTERNAL, "Exception deserializing response!"
            if self._code is not _C.OK:
                raise self
            response: _Resp = self._response
            return response

    def _outcome(self) -> _Resp:
        """The response, or raise the call's error (blocking calls: once it is over)."""
        if self._error is not None:
            raise self._error
        if self._code is _C.OK:
            return self._value()
        raise self

    # ------------------------------------------------------------ grpc.Future

    def result(self, timeout: float | None = None) -> _Resp:
        if not self._wait(timeout):
            raise grpc.FutureTimeoutError()
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return self._outcome()

    def exception(self, timeout: float | None = None) -> Exception | None:
        if not self._wait(timeout):
            raise grpc.FutureTimeoutError()
        if self._cancelled:
            raise grpc.FutureCancelledError()
        if self._error is not None:
            return self._error if isinstance(self._error, Exception) else None
        return None if self._code is _C.OK else self

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        error = self.exception(timeout)
        if error is None:
            return None
        try:
            raise error
        except Exception:
            return sys.exc_info()[2]

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if self._code is None:
                self._done_callbacks.append(fn)
                return
        fn(self)

    def cancel(self) -> bool:
        return self._end_here(_C.CANCELLED, LOCALLY_CANCELLED, cancelled=True)

    def cancelled(self) -> bool:
        return self._cancelled

    def running(self) -> bool:
        return self._code is None

    def done(self) -> bool:
        return self._code is not None

    # ------------------------------------------------------------ grpc.Call

    def is_active(self) -> bool:
        return self._code is None

    def time_remaining(self) -> float | None:   # type: ignore[override]  # None: no deadline, as grpc
        if self._deadline is None:
            return None
        if self._code is _C.DEADLINE_EXCEEDED:
            return 0.0      # (the loop's clock may have called it a hair before ours)
        return max(self._deadline - time.monotonic(), 0.0)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._code is not None:
                return False
            self._rpc_callbacks.append(callback)
            return True

    def initial_metadata(self) -> tuple[_Metadatum, ...]:
        cond = self._condition()
        with cond:
            ask = self._initial is None and self._code is None and not self._asked_initial \
                and not self._streaming      # (a streaming call's reader asks anyway)
            self._asked_initial = True
        if ask:
            _sync_loop.call_soon(self._ask_initial)
        with cond:
            if self._initial is None and self._code is None:
                _sync_loop.refuse_on_loop_thread()
                cond.wait_for(lambda: self._initial is not None or self._code is not None)
            return self._initial or ()

    # (grpc's stubs say bytes values; they are str, or bytes for -bin keys, as in grpc)
    def trailing_metadata(self) -> tuple[_Metadatum, ...]:   # type: ignore[override]
        self._wait()
        return self._trailing

    def code(self) -> grpc.StatusCode:
        self._wait()
        assert self._code is not None
        return self._code

    def details(self) -> str:
        self._wait()
        return self._details

    def debug_error_string(self) -> str:
        self._wait()
        assert self._code is not None
        return f"{self._code.name}:{self._details}"

    # ------------------------------------------------------------ iterator

    def __iter__(self) -> Iterator[_Resp]:
        return self

    def __next__(self) -> _Resp:
        if not self._streaming:
            raise TypeError("this call's response is not a stream")
        responses = self._responses
        assert responses is not None
        cond = responses.cond
        messages = responses.messages
        with cond:
            while True:
                if self._ended_here:
                    raise self
                if messages:
                    data = messages.popleft()
                    waker = responses.waker
                    if waker is not None and len(messages) <= READ_AHEAD // 2:
                        responses.waker = None
                    else:
                        waker = None
                    break
                if responses.ended and self._code is not None:
                    if self._error is not None:
                        raise self._error
                    if self._code is _C.OK:
                        raise StopIteration
                    raise self
                _sync_loop.refuse_on_loop_thread()
                cond.wait()
        if waker is not None:
            _sync_loop.call_soon(_wake, waker)
        try:
            response: _Resp = self._deserialize(data)
        except Exception:
            log.exception("lanerpc: Exception deserializing response!")
            self._end_here(_C.INTERNAL, "Exception deserializing response!")
            raise self from None
        return response

    def __del__(self) -> None:
        # As grpc's: a call its caller dropped unfinished (a response stream left
        # unread, say) is cancelled, not left running.
        try:
            if self._code is None and self._aio is not None:
                _sync_loop.call_soon(self._aio.cancel)
        except Exception:   # half-made, or the interpreter is going
            pass

    # ------------------------------------------------------------ text

    def __str__(self) -> str:
        if self._code is None:
            return f"<{type(self).__name__} of in-flight RPC>"
        return (f"<{type(self).__name__} of RPC that terminated with:\n"
                f"\tstatus = {self._code}\n\tdetails = \"{self._details}\"\n>")

    __repr__ = __str__


class _Responses:
    """A streaming response's messages, read ahead on the loop for a blocking reader
    (under the call's condition). The reader task holds this and its call only weakly."""

    __slots__ = ("cond", "messages", "ended", "stopped", "waker")

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self.messages: collections.deque[bytes] = collections.deque()
        self.ended = False          # the reader has stopped: no more messages come
        self.stopped = False        # the call ended here (or was dropped): stop reading
        self.waker: asyncio.Future[None] | None = None    # the reader, parked on a full buffer


def _call_done(ref: weakref.ref[SyncCall[Any]], responses: _Responses | None, call: Any) -> None:
    """The loop's call is over: record its outcome, and let its reader go on."""
    owner = ref()
    if owner is not None:
        owner._on_done(call)
    if responses is not None:
        with responses.cond:
            if owner is None or owner._ended_here:
                responses.stopped = True
            waker, responses.waker = responses.waker, None
        if waker is not None:
            _wake(waker)


async def _read_ahead(ref: weakref.ref[SyncCall[Any]], call: Any, responses: _Responses) -> None:
    """Read a streaming response ahead of its blocking reader, at most READ_AHEAD."""
    cond = responses.cond
    messages = responses.messages
    try:
        metadata = await call.initial_metadata()
        owner = ref()
        if owner is not None:
            owner._set_initial(metadata)
            del owner
        while True:
            with cond:
                if responses.stopped:
                    return
                waker = None
                if len(messages) >= READ_AHEAD:
                    waker = responses.waker = call._loop.create_future()
            if waker is not None:
                await waker
                continue
            data = await call.read()
            if data is aio.EOF:
                return
            with cond:
                messages.append(data)
                cond.notify_all()
    except (aio.AioRpcError, asyncio.CancelledError):
        pass                           # the status comes through _call_done
    finally:
        if call.done():
            _call_done(ref, None, call)
        with cond:
            responses.ended = True
            cond.notify_all()


class _RequestPump:
    """A streaming request's iterator, consumed on a thread of its own (as grpc does:
    the iterator may block), handed to the loop's call as an async iterator of the
    serialized requests, at most REQUEST_BUFFER ahead of what the connection takes."""

    def __init__(self, call: SyncCall[Any], iterator: Any, serialize: Callable[[Any], bytes]) -> None:
        self._call = call
        self._iterator = iterator
        self._serialize = serialize
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[bytes] = collections.deque()
        self._exhausted = False
        self._stopped = False
        self._waker: asyncio.Future[None] | None = None

    def start(self) -> None:
        threading.Thread(target=self._pump, name="lanerpc-sync-requests", daemon=True).start()

    def stop(self) -> None:
        """The call is over: take no more requests."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            waker, self._waker = self._waker, None
        if waker is not None:
            _sync_loop.call_soon(_wake, waker)

    def _pump(self) -> None:
        cond = self._cond
        try:
            for request in self._iterator:
                try:
                    data = self._serialize(request)
                except Exception:
                    log.exception("lanerpc: Exception serializing request!")
                    self._call._end_here(_C.INTERNAL, "Exception serializing request!")
                    return
                with cond:
                    cond.wait_for(lambda: len(self._items) < REQUEST_BUFFER or self._stopped)
                    if self._stopped:
                        return
                    self._items.append(data)
                    waker, self._waker = self._waker, None
                if waker is not None:
                    _sync_loop.call_soon(_wake, waker)
        except Exception:
            log.exception("lanerpc: Exception iterating requests!")
            self._call._end_here(_C.UNKNOWN, "Exception iterating requests!")
            return
        finally:
            with cond:
                self._exhausted = True
                waker, self._waker = self._waker, None
            if waker is not None:
                _sync_loop.call_soon(_wake, waker)

    def __aiter__(self) -> _RequestPump:
        return self

    async def __anext__(self) -> bytes:
        cond = self._cond
        while True:
            with cond:
                if self._stopped:
                    raise StopAsyncIteration
                if self._items:
                    data = self._items.popleft()
                    cond.notify_all()
                    return data
                if self._exhausted:
                    raise StopAsyncIteration
                waker = self._waker = asyncio.get_running_loop().create_future()
            await waker


# ============================================================ multi-callables

class _MultiCallable(Generic[_Req, _Resp]):
    """What the four blocking multi-callables share: start a call on the loop."""

    _aio_class: type[Any]
    _streaming_request = False
    _streaming_response = False

    def __init__(self, channel: Channel, method: str,
                 serializer: Callable[[_Req], bytes] | None,
                 deserializer: Callable[[bytes], _Resp] | None) -> None:
        self._channel = channel
        self._method = method
        self._serialize: Callable[[Any], bytes] = serializer or _identity
        self._deserialize: Callable[[bytes], _Resp] = deserializer or _identity
        # The loop's multi-callable moves bytes; the user's codec runs in the caller's thread.
        self._aio = self._aio_class(channel._aio, method, None, None)

    def _start(self, request: Any, timeout: float | None, metadata: Any,
               credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
               compression: grpc.Compression | None,
               waker: _sync_loop.ThreadWaker | None = None) -> SyncCall[_Resp]:
        """The call, given to the loop. ``waker``: the caller's, registered before the
        loop can end the call (see :func:`_blocking_waker`)."""
        channel = self._channel
        channel._check_usable()
        checked = validate_metadata(metadata) if metadata else None
        deadline = None if timeout is None else time.monotonic() + timeout
        call: SyncCall[_Resp] = SyncCall(channel, deadline, self._deserialize,
                                         self._streaming_response)
        if waker is not None:
            call._wakers = [waker]
        payload: Any
        if self._streaming_request:
            payload = call._requests = _RequestPump(call, request, self._serialize)
        else:
            try:
                payload = self._serialize(request)
            except Exception:
                log.exception("lanerpc: Exception serializing request!")
                call._end_here(_C.INTERNAL, "Exception serializing request!", tell_loop=False)
                raise call from None
        channel._track(call)
        _sync_loop.call_soon(self._begin, call, payload, deadline, checked, credentials,
                             wait_for_ready, compression)
        if call._requests is not None:
            call._requests.start()
        return call

    def _begin(self, call: SyncCall[_Resp], payload: Any, deadline: float | None, metadata: Any,
               credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
               compression: grpc.Compression | None) -> None:
        if call._code is not None:
            return
        timeout = None if deadline is None else deadline - time.monotonic()
        try:
            aio_call = self._aio(payload, timeout=timeout, metadata=metadata,
                                 credentials=credentials, wait_for_ready=wait_for_ready,
                                 compression=compression)
        except Exception as exc:
            call._failed_to_start(exc)
            return
        call._started(aio_call)


def _identity(x: Any) -> Any:
    return x


def _blocking_waker() -> _sync_loop.ThreadWaker | None:
    """For a blocking call, before it starts: refuse it on the loop's thread; the
    caller thread's waker (None without eventfds: the call's lock then). Registered
    with the call when it is made, it leaves the caller nothing to do between giving
    the call to the loop and going to sleep, so the loop thread, woken, does not find
    the caller holding the GIL."""
    _sync_loop.refuse_on_loop_thread()
    return _sync_loop.thread_waker() if _sync_loop.HAS_EVENTFD else None


if TYPE_CHECKING:   # grpc's classes are generic in its stubs only
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.StreamStreamMultiCallable
else:
    class _UnaryUnaryBase(grpc.UnaryUnaryMultiCallable, Generic[_Req, _Resp]):
        pass
    class _UnaryStreamBase(grpc.UnaryStreamMultiCallable, Generic[_Req, _Resp]):
        pass
    class _StreamUnaryBase(grpc.StreamUnaryMultiCallable, Generic[_Req, _Resp]):
        pass
    class _StreamStreamBase(grpc.StreamStreamMultiCallable, Generic[_Req, _Resp]):
        pass


class UnaryUnaryMultiCallable(_MultiCallable[_Req, _Resp], _UnaryUnaryBase[_Req, _Resp]):
    _aio_class = _channel.UnaryUnaryMultiCallable

    def __call__(self, request: _Req, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> _Resp:
        waker = _blocking_waker()
        call = self._start(request, timeout, metadata, credentials, wait_for_ready, compression,
                           waker)
        call._wait_with(waker)
        return call._outcome()

    def with_call(self, request: _Req, timeout: float | None = None, metadata: Any = None,
                  credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> tuple[_Resp, SyncCall[_Resp]]:
        waker = _blocking_waker()
        call = self._start(request, timeout, metadata, credentials, wait_for_ready, compression,
                           waker)
        call._wait_with(waker)
        return call._outcome(), call

    def future(self, request: _Req, timeout: float | None = None, metadata: Any = None,
               credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> SyncCall[_Resp]:
        return self._start(request, timeout, metadata, credentials, wait_for_ready, compression)


class UnaryStreamMultiCallable(_MultiCallable[_Req, _Resp], _UnaryStreamBase[_Req, _Resp]):
    _aio_class = _channel.UnaryStreamMultiCallable
    _streaming_response = True

    def __call__(self, request: _Req, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> SyncCall[_Resp]:
        return self._start(request, timeout, metadata, credentials, wait_for_ready, compression)


class StreamUnaryMultiCallable(_MultiCallable[_Req, _Resp], _StreamUnaryBase[_Req, _Resp]):
    _aio_class = _channel.StreamUnaryMultiCallable
    _streaming_request = True

    def __call__(self, request_iterator: Iterator[_Req], timeout: float | None = None,
                 metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> _Resp:
        waker = _blocking_waker()
        call = self._start(request_iterator, timeout, metadata, credentials, wait_for_ready,
                           compression, waker)
        call._wait_with(waker)
        return call._outcome()

    def with_call(self, request_iterator: Iterator[_Req], timeout: float | None = None,
                  metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> tuple[_Resp, SyncCall[_Resp]]:
        waker = _blocking_waker()
        call = self._start(request_iterator, timeout, metadata, credentials, wait_for_ready,
                           compression, waker)
        call._wait_with(waker)
        return call._outcome(), call

    def future(self, request_iterator: Iterator[_Req], timeout: float | None = None,
               metadata: Any = None, credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> SyncCall[_Resp]:
        return self._start(request_iterator, timeout, metadata, credentials, wait_for_ready,
                           compression)


class StreamStreamMultiCallable(_MultiCallable[_Req, _Resp], _StreamStreamBase[_Req, _Resp]):
    _aio_class = _channel.StreamStreamMultiCallable
    _streaming_request = True
    _streaming_response = True

    def __call__(self, request_iterator: Iterator[_Req], timeout: float | None = None,
                 metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> SyncCall[_Resp]:
        return self._start(request_iterator, timeout, metadata, credentials, wait_for_ready,
                           compression)


# ============================================================ channel

class Channel(grpc.Channel):
    """A blocking channel (``grpc.Channel``) on lanerpc's lanes; ``channel.lane`` as in
    the async API. Thread safe: any number of threads may call through it at once."""

    def __init__(self, target: str, options: Any = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self._pid = os.getpid()
        self._target = target
        self._aio: _channel.Channel = _sync_loop.call(
            lambda: _channel.Channel(target, options, credentials=credentials))
        self._lock = threading.Lock()
        self._calls: weakref.WeakSet[SyncCall[Any]] = weakref.WeakSet()   # active ones
        self._closed = False
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._watching = False

    @property
    def lane(self) -> str | None:
        """The lane of the channel's connection ("tcp", "unix", "shm"), or None."""
        return self._aio.lane

    def __repr__(self) -> str:
        return f"<rpc.sync.Channel {self._target} lane={self.lane}>"

    # ------------------------------------------------------------ calls

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                "this lanerpc channel was created before os.fork(); its connections (and "
                "shared-memory rings) belong to the parent. Create a new channel in the child.")
        if self._closed:
            raise ValueError("Cannot invoke RPC on closed channel!")

    def _track(self, call: SyncCall[Any]) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                self._calls.add(call)
        if closed:
            call._end_here(_C.CANCELLED, CHANNEL_CLOSED, tell_loop=False)

    def _forget(self, call: SyncCall[Any]) -> None:
        with self._lock:
            self._calls.discard(call)

    def unary_unary(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                    response_deserializer: Callable[[bytes], Any] | None = None,
                    _registered_method: bool | None = False) -> UnaryUnaryMultiCallable[Any, Any]:
        return UnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool | None = False) -> UnaryStreamMultiCallable[Any, Any]:
        return UnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool | None = False) -> StreamUnaryMultiCallable[Any, Any]:
        return StreamUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                      response_deserializer: Callable[[bytes], Any] | None = None,
                      _registered_method: bool | None = False
                      ) -> StreamStreamMultiCallable[Any, Any]:
        return StreamStreamMultiCallable(self, method, request_serializer, response_deserializer)

    # ------------------------------------------------------------ connectivity

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """As grpc: ``callback(state)`` now and at every change, on the callbacks thread."""
        with self._lock:
            self._subscribers.append(callback)
        _sync_loop.call_soon(self._subscribed, callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def _subscribed(self, callback: Callable[[grpc.ChannelConnectivity], None],
                    try_to_connect: bool) -> None:
        state = self._aio.get_state(try_to_connect=try_to_connect and not self._closed)
        _sync_loop.deliver(callback, state)
        if not self._watching:
            self._watching = True
            asyncio.get_running_loop().create_task(self._watch(state))

    async def _watch(self, state: grpc.ChannelConnectivity) -> None:
        while state is not grpc.ChannelConnectivity.SHUTDOWN:
            try:
                await self._aio.wait_for_state_change(state)
            except aio.UsageError:     # closed
                state = grpc.ChannelConnectivity.SHUTDOWN
            else:
                state = self._aio.get_state()
            with self._lock:
                subscribers = list(self._subscribers)
            for callback in subscribers:
                _sync_loop.deliver(callback, state)

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """As grpc: every active call ends CANCELLED ("Channel closed!") at once, new
        calls raise ValueError; returns when the connections are closed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            calls, self._calls = list(self._calls), weakref.WeakSet()
        for call in calls:
            call._end_here(_C.CANCELLED, CHANNEL_CLOSED, tell_loop=False)
        if os.getpid() == self._pid:
            _sync_loop.run(self._aio.close()).result()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # As grpc's: a channel dropped without close() closes (its connections with it).
        try:
            if not self._closed and os.getpid() == self._pid and not sys.is_finalizing():
                self._closed = True
                aio_channel = self._aio
                _sync_loop.call_soon(lambda: asyncio.ensure_future(aio_channel.close()))
        except Exception:   # half-made, or the interpreter is going: nothing to close
            pass
