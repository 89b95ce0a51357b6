"""The server side: Server, the per-call ServicerContext, and running handlers.

One task per call runs the user's handler (coroutine, async generator, or a
plain function/generator on the thread pool, as grpc.aio does). Everything else
(dispatch, status, flow control) happens in the connection's callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
import os
import socket
from typing import Any

import grpc
from grpc import aio

from rpc import _connection as c
from rpc import _grpc, _lanes, _options, _ports
from rpc._link import Link
from rpc._status import status_code, validate_metadata
from rpc._wire import GoAwayCode

log = logging.getLogger("lanerpc")

_C = grpc.StatusCode
_OK = 0
_EOF = aio.EOF


class _Abort(aio.AbortError):
    pass


_COROUTINE, _ASYNCGEN, _PLAIN = "coroutine", "async generator", "plain"
_kinds: dict = {}


def _kind(fn) -> str:
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


# ============================================================ connection

class ServerLink(Link):
    role = c.Role.SERVER

    def __init__(self, server: "Server", options, negotiator: _lanes.Negotiator) -> None:
        super().__init__(options)
        self.server = server
        self.negotiator = negotiator
        self.calls: dict = {}
        self.ping_strikes = 0
        self.last_ping = -1e9

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.server._links.add(self)
        self.server._stats.connection_opened(self)
        peer = self.peer
        if peer is not None and peer.lane == "unix":
            if not self.negotiator.admits(peer.uid):
                # Refused before the handshake: no call from this peer reaches a handler.
                self.refused = True
                reason = f"uid {peer.uid} is not admitted on this server's local lanes"
                log.warning("lanerpc: refusing unix connection (pid %s): %s", peer.pid, reason)
                self.close_reason = reason
                self.conn.refuse(GoAwayCode.PERMISSION_DENIED, reason)
                self.flush()
                # Half-close and keep reading until the peer hangs up: closing
                # with its HELLO unread would reset the socket before it reads why.
                if transport.can_write_eof():
                    transport.write_eof()
                    self.loop.call_later(2.0, transport.abort)
                else:
                    transport.close()

    def _switched(self, old_lane: str) -> None:
        stats = self.server._stats
        stats.connections[old_lane] -= 1
        stats.connections[self.lane or "?"] += 1
        stats.connections_total[self.lane or "?"] += 1

    def _dispatch(self, events: list[c.Event]) -> None:
        if self.refused:
            return
        calls = self.calls
        for ev in events:
            t = type(ev)
            if t is c.MessageReceived:
                call = calls.get(ev.stream_id)
                if call is not None:
                    call._on_message(ev.data, ev.end_stream)
            elif t is c.RequestReceived:
                self.server._on_request(self, ev)
            elif t is c.EndOfInput:
                call = calls.get(ev.stream_id)
                if call is not None:
                    call._on_end_of_input()
            elif t is c.StreamEnded:
                call = calls.pop(ev.stream_id, None)
                if call is not None:
                    call._on_stream_ended(ev.code, ev.details, ev.by_peer)
            elif t is c.StreamWritable:
                call = calls.get(ev.stream_id)
                if call is not None:
                    call._on_writable()
            elif t is c.HelloReceived:
                # Our HELLO carries what the lanes offer this client; then read on.
                self.conn.accept(self.negotiator.hello(self, ev.hello))
                self.handshake_complete()
                self._dispatch(self.conn.receive_data(b""))
            elif t is c.PingReceived:
                self._on_ping()
            elif t is c.PingAcked:
                self.keepalive_acked(ev.payload)
            elif t is c.LaneChange:
                self.negotiator.lane_change(self, ev.lane)
            elif t is c.GoAwayReceived:
                pass

    _MAX_PING_STRIKES = 2

    def _on_ping(self) -> None:
        """gRPC's ping policy: pings closer than min_ping_interval while we sent
        no data are strikes; past the limit, GOAWAY too_many_pings."""
        now = self.loop.time()
        if now - self.last_ping < self.options.min_ping_interval:
            self.ping_strikes += 1
            if self.ping_strikes > self._MAX_PING_STRIKES:
                log.warning("lanerpc: closing connection from %s: too many pings",
                            self.peer.address if self.peer else "?")
                self.conn.goaway(GoAwayCode.ENHANCE_YOUR_CALM, "too_many_pings")
                self.close("too many pings")
        self.last_ping = now

    def _lost(self, reason: str) -> None:
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call._on_stream_ended(_C.CANCELLED.value[0], reason, True)
        self.server._links.discard(self)
        self.server._stats.connection_closed(self)
        self.negotiator.close()


# ============================================================ context

class ServicerContext(aio.ServicerContext):
    """One call on the server; what a grpc.aio handler receives as ``context``."""

    # Per-call state that most calls never change lives on the class: a call
    # sets only what differs (fewer stores per call on the hot path).
    _deadline: float | None = None
    _input_done = False
    _reader: asyncio.Future | None = None
    _writable: asyncio.Future | None = None
    _task: asyncio.Task | None = None
    _code: int | None = None            # set_code / abort
    _details: str | None = None
    _trailing: tuple = ()
    _initial: tuple | None = None
    _initial_sent = False
    _ended = False                      # status sent or stream gone
    _cancelled = False
    _callbacks: tuple | list = ()
    _timer: asyncio.TimerHandle | None = None
    _counted = False

    def __init__(self, server: "Server", link: ServerLink, sid: int, method: str,
                 timeout: float | None, metadata: tuple, handler) -> None:
        self._server = server
        self._link = link
        self._loop = link.loop
        self._sid = sid
        self._method = method
        self._handler = handler
        self._metadata = metadata
        self._requests: collections.deque = collections.deque()
        if timeout is not None:
            self._deadline = self._loop.time() + timeout
            self._timer = self._loop.call_later(timeout, self._on_deadline)

    # ------------------------------------------------------------ events

    def _on_message(self, data: bytes, end: bool) -> None:
        self._requests.append(data)
        if end:
            self._input_done = True
        if self._task is None:
            if not self._handler.request_streaming:
                if not end:
                    # A unary request must be followed by END_STREAM; a second
                    # message is a client bug.
                    if len(self._requests) > 1:
                        self._end_with(_C.INTERNAL.value[0], "more than one request message for a unary method")
                    return
                self._start()
            return
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _on_end_of_input(self) -> None:
        self._input_done = True
        if self._task is None and not self._handler.request_streaming:
            if self._requests:
                self._start()
            else:
                self._end_with(_C.INTERNAL.value[0], "unary method called without a request message")
            return
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _on_stream_ended(self, code: int, details: str, by_peer: bool) -> None:
        """The peer cancelled, the connection died, or we ended it for a limit."""
        self._ended = True
        self._cancelled = by_peer or code != _OK
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        elif task is None:
            self._complete()
            self._server._call_finished(self)
        for fut in (self._reader, self._writable):
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _on_writable(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_deadline(self) -> None:
        self._timer = None
        if not self._ended:
            self._end_with(_C.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
            self._cancelled = True
            if self._task is not None and not self._task.done():
                self._task.cancel()

    # ------------------------------------------------------------ running

    def _start(self) -> None:
        self._task = task = self._loop.create_task(self._run())
        # Cleanup in a done callback, not in _run's finally: a task cancelled
        # before its first step never enters _run at all.
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        if not self._ended:
            self._end_with(_C.CANCELLED.value[0], "Cancelled by the server")
        self._complete()
        self._server._call_finished(self)

    async def _run(self) -> None:
        handler = self._handler
        try:
            if handler.request_streaming:
                request = self._request_iterator()
            else:
                request = self._decode(self._requests.popleft())
                self._link.conn.consume(self._sid)
            if handler.response_streaming:
                await self._run_streaming(handler, request)
                self._end_ok()
            else:
                fn = handler.stream_unary if handler.request_streaming else handler.unary_unary
                if _kind(fn) is _COROUTINE:
                    response = await fn(request, self)
                else:
                    response = await self._in_thread(fn, request, _ThreadContext(self))
                if self._code is not None and self._code != _OK:
                    self._end_with(self._code, self._details or "", self._trailing)
                elif response is None:
                    # grpc.aio: a handler that returns nothing without a status is a bug.
                    self._end_with(_C.UNKNOWN.value[0] if self._code is None else self._code,
                                   self._details or "Handler returned no response", self._trailing)
                else:
                    self._send_unary(response)
        except asyncio.CancelledError:
            if not self._ended:
                self._end_with(_C.CANCELLED.value[0], "Cancelled by the server")
        except aio.AbortError:
            self._end_with(self._code if self._code is not None else _C.UNKNOWN.value[0],
                           self._details or "", self._trailing)
        except _ResponseError as exc:
            self._end_with(_C.INTERNAL.value[0], str(exc))
        except Exception as exc:
            # As grpc.aio: a code set before the exception stays, the details
            # name the exception.
            if self._code is None or self._code == _OK:
                log.exception("lanerpc: handler of %s raised", self._method)
            code = self._code if self._code is not None and self._code != _OK else _C.UNKNOWN.value[0]
            self._end_with(code, f"Unexpected {type(exc)}: {exc}", self._trailing)

    async def _run_streaming(self, handler, request) -> None:
        fn = handler.stream_stream if handler.request_streaming else handler.unary_stream
        kind = _kind(fn)
        if kind is _ASYNCGEN:
            agen = fn(request, self)
            try:
                async for response in agen:
                    await self.write(response)
            finally:
                await agen.aclose()
        elif kind is _COROUTINE:
            result = await fn(request, self)
            if result is not None and hasattr(result, "__aiter__"):
                async for response in result:
                    await self.write(response)
        else:
            # A plain function or generator: run on the thread pool, as grpc.aio does.
            result = await self._in_thread(fn, request, _ThreadContext(self))
            if result is not None and hasattr(result, "__next__"):
                sentinel = object()
                while True:
                    response = await self._in_thread(next, result, sentinel)
                    if response is sentinel:
                        break
                    await self.write(response)

    async def _in_thread(self, fn, *args):
        return await self._loop.run_in_executor(self._server._executor, fn, *args)

    def _request_iterator(self):
        handler = self._handler
        fn = handler.stream_stream if handler.response_streaming else handler.stream_unary
        if _kind(fn) is not _PLAIN:
            return _RequestIterator(self)
        return _BlockingRequestIterator(self, self._loop)

    def _decode(self, data: bytes):
        deserializer = self._handler.request_deserializer
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as exc:
            raise _ResponseError(f"Failed to deserialize request message: {exc}") from None

    def _send_unary(self, response) -> None:
        serializer = self._handler.response_serializer
        try:
            data = serializer(response) if serializer is not None else response
        except Exception as exc:
            raise _ResponseError(f"Failed to serialize response message: {exc}") from None
        if self._ended:
            return
        conn = self._link.conn
        self._send_initial(conn)
        if self._ended:
            return
        limit = self._server._options.max_send_message_length
        if len(data) > limit:
            self._end_with(_C.RESOURCE_EXHAUSTED.value[0],
                           f"Sent message larger than max ({len(data)} vs. {limit})")
            return
        code = self._code if self._code is not None else _OK
        self._end_with(code, self._details or "", self._trailing, data)

    def _send_initial(self, conn: c.Connection) -> None:
        # Empty initial metadata needs no frame: the first MESSAGE (or the
        # TRAILERS) implies it. Set metadata goes out in a HEADERS frame.
        if not self._initial_sent:
            self._initial_sent = True
            if self._initial:
                try:
                    conn.send_initial_metadata(self._sid, self._initial)
                except c.MetadataTooLarge as exc:
                    self._end_with(_C.RESOURCE_EXHAUSTED.value[0], str(exc))

    def _end_ok(self) -> None:
        code = self._code if self._code is not None else _OK
        self._end_with(code, self._details or "", self._trailing)

    def _end_with(self, code: int, details: str, trailing: tuple = (), message: bytes | None = None) -> None:
        """Send the final status (after ``message``, a unary response) and end the call."""
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        link = self._link
        link.ping_strikes = 0
        link.conn.end_stream(self._sid, code, details, trailing, message)
        calls = link.calls
        calls.pop(self._sid, None)
        if calls:
            link.flush_soon()     # others are in flight: batch with their writes
        else:
            link.flush()          # the only call: don't wait a loop turn
            link.stay_awake()     # ...nor a CPU's wake-up for the next request
        self._server._stats.call_ended(link.lane or "?", code)

    def _complete(self) -> None:
        callbacks, self._callbacks = self._callbacks, ()
        for cb in callbacks:
            try:
                cb(self)
            except Exception:
                log.exception("lanerpc: done callback raised")

    # ------------------------------------------------------------ reading/writing

    async def read(self):
        if not self._handler.request_streaming:
            raise RuntimeError("read() is for methods with a streaming request")
        while not self._requests:
            if self._input_done or self._ended:
                return _EOF
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = self._requests.popleft()
        self._link.conn.consume(self._sid)
        return self._decode(data)

    async def write(self, message) -> None:
        if self._ended:
            if self._cancelled:
                raise asyncio.CancelledError()
            raise asyncio.InvalidStateError("the RPC has already finished")
        serializer = self._handler.response_serializer
        data = serializer(message) if serializer is not None else message
        limit = self._server._options.max_send_message_length
        if len(data) > limit:
            self._end_with(_C.RESOURCE_EXHAUSTED.value[0],
                           f"Sent message larger than max ({len(data)} vs. {limit})")
            raise asyncio.CancelledError()
        link = self._link
        link.ping_strikes = 0
        conn = link.conn
        self._send_initial(conn)
        if self._ended:
            raise asyncio.CancelledError()
        sent = conn.send_message(self._sid, data)
        link.flush_soon()
        if not sent and conn.wait_writable(self._sid):
            self._writable = self._loop.create_future()
            try:
                await self._writable
            finally:
                self._writable = None
        await link.drain()

    async def send_initial_metadata(self, initial_metadata) -> None:
        if self._initial_sent:
            raise aio.UsageError("initial metadata has already been sent") if hasattr(aio, "UsageError") \
                else RuntimeError("initial metadata has already been sent")
        self._initial = validate_metadata(initial_metadata)
        if not self._ended:
            self._initial_sent = True
            try:
                self._link.conn.send_initial_metadata(self._sid, self._initial)
            except c.MetadataTooLarge as exc:
                self._end_with(_C.RESOURCE_EXHAUSTED.value[0], str(exc))
                raise asyncio.CancelledError() from None
            self._link.flush_soon()

    # ------------------------------------------------------------ status

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self._abort(code, details, trailing_metadata)

    def _abort(self, code: grpc.StatusCode, details: str, trailing_metadata) -> None:
        """Set the final status and raise out of the handler (sync and async abort)."""
        if code == _C.OK:
            raise ValueError("abort() needs a non-OK status code")
        self._code = code.value[0]
        self._details = details
        if trailing_metadata:
            self._trailing = validate_metadata(trailing_metadata)
        raise _Abort()

    async def abort_with_status(self, status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code.value[0]

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._trailing = validate_metadata(trailing_metadata)

    def trailing_metadata(self):
        return self._trailing

    def code(self):
        return status_code(self._code) if self._code is not None else None

    def details(self):
        return self._details

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - self._loop.time(), 0.0)

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._ended and (self._task is None or self._task.done())

    def add_done_callback(self, callback) -> None:
        if self.done():
            callback(self)
        elif self._callbacks:
            self._callbacks.append(callback)
        else:
            self._callbacks = [callback]

    def peer(self) -> str:
        peer = self._link.peer
        return peer.address if peer is not None else "unknown"

    def peer_identities(self):
        return None

    def peer_identity_key(self):
        return None

    def auth_context(self):
        return {}

    def set_compression(self, compression) -> None:
        pass   # lanerpc lanes don't compress; accepted for compatibility

    def disable_next_message_compression(self) -> None:
        pass

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

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._context._loop).result()

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self._context._abort(code, details, trailing_metadata)

    def abort_with_status(self, status) -> None:
        self.abort(status.code, status.details, status.trailing_metadata)

    def send_initial_metadata(self, initial_metadata) -> None:
        self._run(self._context.send_initial_metadata(initial_metadata))

    def read(self):
        return self._run(self._context.read())

    def write(self, message) -> None:
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

    def __aiter__(self):
        return self

    async def __anext__(self):
        message = await self._context.read()
        if message is _EOF:
            raise StopAsyncIteration
        return message


class _BlockingRequestIterator:
    """The ``request_iterator`` of a plain (threaded) stream-request handler."""

    def __init__(self, context: ServicerContext, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    def __iter__(self):
        return self

    def __next__(self):
        future = asyncio.run_coroutine_threadsafe(self._context.read(), self._loop)
        message = future.result()
        if message is _EOF:
            raise StopIteration
        return message


# ============================================================ stats

class Stats:
    """Counters for the SIGUSR1 snapshot: per lane, bytes, and errors by code."""

    def __init__(self) -> None:
        self.connections: collections.Counter = collections.Counter()
        self.connections_total: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.codes: collections.Counter = collections.Counter()
        self._closed_bytes = [0, 0]
        self._live: set = set()

    def connection_opened(self, link) -> None:
        lane = link.lane or "?"
        self.connections[lane] += 1
        self.connections_total[lane] += 1
        self._live.add(link)

    def connection_closed(self, link) -> None:
        if link in self._live:
            self._live.discard(link)
            self.connections[link.lane or "?"] -= 1
            self._closed_bytes[0] += link.bytes_in
            self._closed_bytes[1] += link.bytes_out

    def call_ended(self, lane: str, code: int) -> None:
        self.calls[lane] += 1
        if code:
            self.codes[status_code(code).name] += 1

    def snapshot(self) -> dict:
        bytes_in = self._closed_bytes[0] + sum(link.bytes_in for link in self._live)
        bytes_out = self._closed_bytes[1] + sum(link.bytes_out for link in self._live)
        return {
            "connections_open": {k: v for k, v in self.connections.items() if v},
            "connections_total": dict(self.connections_total),
            "calls_by_lane": dict(self.calls),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "errors_by_code": dict(self.codes),
        }


# ============================================================ server

class Server(aio.Server):
    """A grpc.aio-compatible server."""

    def __init__(self, migration_thread_pool=None, handlers=None, interceptors=None,
                 options=None, maximum_concurrent_rpcs=None, compression=None) -> None:
        self._options = _options.parse(options)
        self._raw_options = tuple(options or ())
        self._executor = migration_thread_pool
        self._own_executor = False        # start() makes a pool when none was given
        self._generic_handlers: list = list(handlers or ())
        self._registered: dict[str, Any] = {}
        self._compression = compression
        self._grpc: _grpc.GrpcPorts | None = None   # grpc:// and secure ports, via grpcio
        self._interceptors = list(interceptors or ())
        for interceptor in self._interceptors:
            if not isinstance(interceptor, aio.ServerInterceptor):
                raise ValueError(f"interceptor {interceptor!r} must be a grpc.aio.ServerInterceptor")
        if maximum_concurrent_rpcs is not None and maximum_concurrent_rpcs < 1:
            raise ValueError("maximum_concurrent_rpcs must be at least 1")
        self._max_rpcs = maximum_concurrent_rpcs
        self._active = 0
        self._pending_sockets: list[tuple[str, socket.socket]] = []
        self._listeners: list = []
        self._links: set[ServerLink] = set()
        self._state = "new"
        self._stopping: asyncio.Future | None = None
        self._stop_requested: asyncio.Future | None = None   # stop() waiting for start()
        self._stop_deadline: float | None = None
        self._terminated: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = Stats()
        self._lanes = _lanes.ServerLanes(self._options)

    @property
    def started(self) -> bool:
        """True once ``start()`` has been called (lanerpc's own; used by ``rpc.serve``)."""
        return self._state != "new"

    @property
    def upgrade_path(self) -> str | None:
        """The private Unix socket same-host TCP clients are moved to, or None."""
        return self._lanes.upgrade_path

    @property
    def stats(self) -> "Stats":
        return self._stats

    # ------------------------------------------------------------ handlers

    def add_generic_rpc_handlers(self, generic_rpc_handlers) -> None:
        generic_rpc_handlers = tuple(generic_rpc_handlers)
        for handler in generic_rpc_handlers:
            if not hasattr(handler, "service"):
                raise TypeError(f"{handler!r} is not a grpc.GenericRpcHandler")
        self._generic_handlers.extend(generic_rpc_handlers)
        if self._grpc is not None:
            self._grpc.add_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        for name, handler in method_handlers.items():
            self._registered[f"/{service_name}/{name}"] = handler
        if self._grpc is not None:
            self._grpc.add_handlers(registered={service_name: dict(method_handlers)})

    def _find_handler(self, method: str, metadata: tuple):
        handler = self._registered.get(method)
        if handler is not None:
            return handler
        if self._generic_handlers:
            details = _HandlerCallDetails(method, metadata)
            for generic in self._generic_handlers:
                handler = generic.service(details)
                if handler is not None:
                    return handler
        return None

    # ------------------------------------------------------------ ports

    def add_insecure_port(self, address: str) -> int:
        """Bind ``address`` (``host:port``, ``[v6]:port``, ``unix:path``) for lanerpc
        clients; ``grpc://address`` serves plain gRPC there instead (through grpcio), for
        gRPC clients in any language. Returns the port, as gRPC does."""
        if self._state != "new":
            raise RuntimeError("ports must be added before start()")
        plain, rest = _grpc.strip_scheme(address)
        if plain:
            return self._grpc_ports().add_insecure_port(rest)
        kind, sockets, port = _ports.bind(
            address, mode=0o666 if self._options.allowed_uids else 0o600,
            reuse_port=self._options.so_reuseport)
        self._pending_sockets.extend((kind, s) for s in sockets)
        return port

    def add_secure_port(self, address: str, server_credentials) -> int:
        """Serve gRPC over TLS at ``address`` with grpc's ``server_credentials``
        (``grpc.ssl_server_credentials(...)``), through grpcio: for
        ``rpc.secure_channel`` and any gRPC client. Returns the port."""
        if self._state != "new":
            raise RuntimeError("ports must be added before start()")
        return self._grpc_ports().add_secure_port(_grpc.strip_scheme(address)[1],
                                                  server_credentials)

    def _grpc_ports(self) -> _grpc.GrpcPorts:
        if self._grpc is None:
            def make_server() -> aio.Server:   # called in start(), in the running loop
                return aio.server(
                    migration_thread_pool=self._executor,
                    interceptors=self._interceptors or None,
                    options=_grpc.grpc_options(self._raw_options),
                    maximum_concurrent_rpcs=self._max_rpcs,
                    compression=self._compression)
            self._grpc = _grpc.GrpcPorts(make_server)
            self._grpc.add_handlers(self._generic_handlers, self._registered_by_service())
        return self._grpc

    def _registered_by_service(self) -> dict[str, dict]:
        by_service: dict[str, dict] = {}
        for path, handler in self._registered.items():
            service, _, name = path[1:].rpartition("/")
            by_service.setdefault(service, {})[name] = handler
        return by_service

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("server already started")
        if not self._pending_sockets and (self._grpc is None or not self._grpc.bound):
            raise RuntimeError("add a port before start()")
        self._state = "starting"
        self._loop = asyncio.get_running_loop()
        self._terminated = asyncio.Event()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(32, (os.cpu_count() or 1) + 4),
                thread_name_prefix="lanerpc-handler")
            self._own_executor = True
        try:
            if self._pending_sockets:
                self._listeners = await self._lanes.listen(self._pending_sockets, self._new_link)
                self._pending_sockets = []
            if self._grpc is not None:
                await self._grpc.start()
        except BaseException:
            # Nothing half-started stays behind: listeners, upgrade socket, grpc ports.
            for _, sock in self._pending_sockets:
                sock.close()
            self._pending_sockets = []
            for listener in self._listeners:
                listener.close()
            if self._grpc is not None:
                await self._grpc.stop(None)
            self._state = "stopping"
            await self._finish_stop()
            raise
        else:
            self._state = "serving"
        finally:
            if self._stop_requested is not None and not self._stop_requested.done():
                self._stop_requested.set_result(None)

    def _new_link(self, negotiator: _lanes.Negotiator) -> ServerLink:
        return ServerLink(self, self._options, negotiator)

    async def stop(self, grace: float | None) -> None:
        if self._state == "new":
            self._state = "stopped"
            for _, sock in self._pending_sockets:
                sock.close()
            if self._grpc is not None:
                self._grpc.release()          # the ports held for it
            return
        loop = asyncio.get_running_loop()
        if self._state == "starting":         # stop() while start() runs: let it finish
            if self._stop_requested is None:
                self._stop_requested = loop.create_future()
            await asyncio.shield(self._stop_requested)
        grpc_stop = (asyncio.ensure_future(self._grpc.stop(grace))
                     if self._grpc is not None and self._state != "stopped" else None)
        deadline = loop.time() + (grace or 0)
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        if self._state == "serving":
            self._state = "stopping"
            for listener in self._listeners:
                listener.close()
            for link in list(self._links):
                link.conn.goaway(GoAwayCode.NO_ERROR, "server shutting down")
                link.flush()
            self._stopping = loop.create_task(self._drain())
        # The smallest grace wins: a later stop(0) cuts an earlier stop(10) short.
        if self._stopping is not None:
            while not self._stopping.done():
                remaining = self._stop_deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(self._stopping), min(remaining, 0.05))
                except asyncio.TimeoutError:
                    continue
            self._cancel_everything()
            await asyncio.shield(self._stopping) if self._stopping.done() else None
        if grpc_stop is not None:
            await grpc_stop
        await self._finish_stop()

    async def _drain(self) -> None:
        while any(link.calls for link in self._links):
            await asyncio.sleep(0.01)

    def _cancel_everything(self) -> None:
        for link in list(self._links):
            for call in list(link.calls.values()):
                call._end_with(_C.UNAVAILABLE.value[0], "server shutting down")
                call._cancelled = True
                if call._task is not None and not call._task.done():
                    call._task.cancel()

    async def _finish_stop(self) -> None:
        if self._state == "stopped":
            return
        # Let cancelled handlers unwind, briefly.
        tasks = [call._task for link in self._links for call in link.calls.values()
                 if call._task is not None and not call._task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for link in list(self._links):
            link.close("server stopped")
        links = list(self._links)
        if links:
            await asyncio.wait([asyncio.ensure_future(asyncio.shield(l.closed)) for l in links], timeout=1.0)
            for link in links:
                if not link.closed.done():
                    link.abort("server stopped")
        for listener in self._listeners:
            try:
                await asyncio.wait_for(listener.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
        self._lanes.close()
        self._state = "stopped"
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._terminated is not None:
            self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        if self._terminated is None:
            return True
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # ------------------------------------------------------------ calls

    def _on_request(self, link: ServerLink, ev: c.RequestReceived) -> None:
        conn = link.conn
        sid = ev.stream_id
        if self._state != "serving":
            conn.cancel(sid, _C.UNAVAILABLE.value[0], "server is shutting down", not_started=True)
            link.flush_soon()
            return
        if self._interceptors:
            link.calls[sid] = _PendingCall()   # holds messages while interceptors run
            self._loop.create_task(self._intercepted_request(link, ev))
            return
        handler = self._find_handler(ev.method, ev.metadata)
        self._accept(link, ev, handler)

    async def _intercepted_request(self, link: ServerLink, ev: c.RequestReceived) -> None:
        details = _HandlerCallDetails(ev.method, ev.metadata)

        async def lookup_at(index: int, call_details):
            if index == len(self._interceptors):
                return self._find_handler(call_details.method, call_details.invocation_metadata)
            return await self._interceptors[index].intercept_service(
                lambda d: lookup_at(index + 1, d), call_details)

        try:
            handler = await lookup_at(0, details)
        except Exception as exc:
            log.exception("lanerpc: server interceptor raised")
            link.calls.pop(ev.stream_id, None)
            link.conn.end_stream(ev.stream_id, _C.UNKNOWN.value[0], f"Unexpected {type(exc)}: {exc}")
            link.flush_soon()
            return
        pending = link.calls.pop(ev.stream_id, None)
        if not isinstance(pending, _PendingCall) or pending.ended:
            return   # cancelled, or the connection died, meanwhile
        self._accept(link, ev, handler)
        call = link.calls.get(ev.stream_id)
        if call is not None:
            for data, end in pending.items:
                if data is None:
                    call._on_end_of_input()
                else:
                    call._on_message(data, end)

    def _accept(self, link: ServerLink, ev: c.RequestReceived, handler) -> None:
        conn = link.conn
        sid = ev.stream_id
        if handler is None:
            conn.end_stream(sid, _C.UNIMPLEMENTED.value[0], "Method not found!")
            link.flush_soon()
            self._stats.call_ended(link.lane or "?", _C.UNIMPLEMENTED.value[0])
            return
        if self._max_rpcs is not None and self._active >= self._max_rpcs:
            conn.end_stream(sid, _C.RESOURCE_EXHAUSTED.value[0], "Concurrent RPC limit exceeded!")
            link.flush_soon()
            self._stats.call_ended(link.lane or "?", _C.RESOURCE_EXHAUSTED.value[0])
            return
        self._active += 1
        call = ServicerContext(self, link, sid, ev.method, ev.timeout, ev.metadata, handler)
        call._counted = True
        link.calls[sid] = call
        if handler.request_streaming:
            call._start()
            if ev.end_stream:
                call._on_end_of_input()
        elif ev.end_stream:
            call._on_end_of_input()

    def _call_finished(self, call: ServicerContext) -> None:
        if call._counted:
            call._counted = False
            self._active -= 1
        call._link.calls.pop(call._sid, None)


class _HandlerCallDetails(grpc.HandlerCallDetails):
    __slots__ = ("method", "invocation_metadata")

    def __init__(self, method: str, invocation_metadata: tuple) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata
