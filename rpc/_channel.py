"""The client side: Channel, the four multi-callables and their call objects.

A call opens its stream synchronously when the channel already has a ready
connection (no task per call); its result is one future set when the stream
ends. The connection is made, and lanes chosen, by :mod:`rpc._lanes`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import weakref
from collections.abc import Coroutine, Generator, Sequence
from types import TracebackType
from typing import (TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Callable, Generic, Iterable,
                    Self, TypeVar, Union, cast)

import grpc
from grpc import aio

from rpc import _connection as c
from rpc import _backoff, _balancer, _compression, _interceptors, _lanes, _metrics, _options, _resolver, _service_config
from rpc import _call_credentials, _credentials
from rpc._link import Link
from rpc._status import rpc_error, status_code, to_metadata, validate_metadata
from rpc._stream import Stream, too_large
from rpc._target import Endpoint, parse_target
from rpc._options import Options
from rpc._wire import DecodedMetadata, GoAwayCode

if TYPE_CHECKING:
    from rpc import _grpc

log = logging.getLogger("lanerpc")

_C = grpc.StatusCode
_EOF = aio.EOF
_CONNECTIVITY = grpc.ChannelConnectivity
# grpc.aio's words for misuse of a call (code may match on them).
_API_STYLE_ERROR = _interceptors.API_STYLE_ERROR
_FINISHED = _interceptors.FINISHED
_HALF_CLOSED = _interceptors.HALF_CLOSED
# How a streaming response is being read: one way per call (mixing is grpc.aio's UsageError).
_BY_ITERATOR = 1
_BY_READ = 2

# What a call's metadata may be given as (grpc.aio's stubs say the same).
MetadataArg = Union[aio.Metadata, Sequence[tuple[str, Union[str, bytes]]], None]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def _identity(x: Any) -> Any:
    return x


class ClientLink(Link):
    role = c.Role.CLIENT

    def __init__(self, channel: "Channel", options: Options, *, hello: Any = None) -> None:
        super().__init__(options, hello=hello)
        self.channel = channel
        self.calls: dict[int, _Call[Any, Any]] = {}
        self.draining = False
        # calls over the stream limit, with their first message
        self.waiting: collections.deque[tuple[_Call[Any, Any], bytes | None]] = collections.deque()
        # The server's limit on streams at once: its HELLO's, kept here at the handshake
        # (read per call; none open before it).
        self.stream_limit = 0

    def _on_event(self, ev: Any) -> None:
        t = type(ev)
        if t is c.StreamEnded:
            call = self.calls.pop(ev.stream_id, None)
            if call is not None:
                call._on_end(ev.code, ev.details, ev.metadata, ev.not_started)
            if self.waiting:
                self._start_waiting()
        elif t is c.InitialMetadataReceived:
            call = self.calls.get(ev.stream_id)
            if call is not None:
                call._on_initial_metadata(ev.metadata)
        elif t is c.HandshakeDone:
            self.stream_limit = self.conn.peer.max_concurrent_streams  # type: ignore[union-attr]  # set by the handshake
            self.handshake_complete()
            if self.waiting:
                self._start_waiting()
        elif t is c.GoAwayReceived:
            self._on_goaway(ev)
        elif t is c.LaneChange:
            self.lane_answered(ev.lane)

    def _on_goaway(self, ev: c.GoAwayReceived) -> None:
        if not self.ready.done():
            # Refused during the handshake (e.g. a uid the server doesn't admit). A
            # server over its connection limit (ENHANCE_YOUR_CALM) is unavailable for
            # now, not a denial: the call ends UNAVAILABLE and the channel tries again.
            self.refused = ev.code != GoAwayCode.ENHANCE_YOUR_CALM
            self.close_reason = f"server refused the connection: {ev.reason}"
            self.close(self.close_reason)
            return
        if ev.code == GoAwayCode.ENHANCE_YOUR_CALM:
            log.warning("lanerpc: server %s says we ping too often (%s); "
                        "raise grpc.keepalive_time_ms", self.peer.address if self.peer
                        else "?", ev.reason)
        self.draining = True
        self.channel._link_draining(self)
        if not self.calls:
            self.close("server sent GOAWAY")

    def _lost(self, reason: str) -> None:
        calls, self.calls = self.calls, {}
        waiting, self.waiting = self.waiting, collections.deque()
        for call in calls.values():
            call._on_end(_C.UNAVAILABLE.value[0], reason, (), False)
        for call, _ in waiting:     # never sent: safe to say so
            call._on_end(_C.UNAVAILABLE.value[0], reason, (), True)
        self.channel._link_lost(self)

    def forget(self, sid: int) -> None:
        self.calls.pop(sid, None)
        if self.waiting:
            self._start_waiting()
        if self.draining and not self.calls:
            self.close("server sent GOAWAY")

    def _start_waiting(self) -> None:
        limit = self.stream_limit
        while self.waiting and len(self.calls) < limit and not self.conn.closed:
            call, first = self.waiting.popleft()
            if call._code is None:
                call._open(self, first)


# ============================================================ call objects

class _Call(Stream, Generic[_Req, _Resp]):
    """State shared by the four call kinds; implements grpc.aio.Call. Its
    stream's IO (sending, receiving, the write policy) is :class:`Stream`'s."""

    _unary_request = True
    _unary_response = True
    _kind = "unary_unary"      # the channel's interceptors of this kind apply

    # A call's state is in slots, all set when it is made. Reading a class default
    # through an instance is the slow path of attribute access in CPython 3.11 (not
    # specialized: several times an instance's own field), and the hot path reads
    # most of these fields a few times per call; a slot store or read is fast.
    # State a unary call never reads (or reads only when something went wrong)
    # stays on the class below, each call storing only what differs.
    __slots__ = ("_channel", "_method", "_serialize", "_deserialize", "_code", "_deadline",
                 "_metadata", "_call_credentials", "_config", "_replay", "_tally", "_timer",
                 "_task", "_first", "_lane", "_initial_md", "_response", "_done_fut", "_md_fut",
                 "_opened", "_callbacks",
                 # Stream's (see there)
                 "_loop", "_received", "_link", "_sid", "_reader", "_writable", "_encoding",
                 "_recv_ended")

    _link: "ClientLink | None"
    _code: int | None
    _deadline: float | None
    _metadata: DecodedMetadata
    _call_credentials: tuple[_call_credentials.CallCredentials, ...]
    _config: _service_config.MethodConfig    # this method's part of the channel's service config
    _replay: _service_config.ReplayBuffer | None    # a streaming request's, for retries
    _tally: _metrics.CallTally | None    # when rpc.enable_metrics() is on
    _timer: asyncio.TimerHandle | None
    _task: asyncio.Task[None] | None
    _first: bytes | None      # a unary request, kept for a retry
    _lane: str | None         # the lane of the connection the call went on
    _initial_md: DecodedMetadata | None
    _response: _Resp | None
    _done_fut: asyncio.Future[None] | None
    _md_fut: asyncio.Future[None] | None
    _opened: asyncio.Future[None] | None
    _callbacks: tuple[()] | list[Callable[[Any], None]]

    _trailing_md: DecodedMetadata = ()
    _details = ""
    _locally_cancelled = False
    _not_started = False
    _health_watch = False    # a subchannel's health Watch (not the application's call)
    _attempts = 1
    _wait_for_ready = False
    # A streaming request's (set when it is made; unary calls never write).
    _send_limit = 0           # its largest message
    _half_closed = False
    _iterator_task: asyncio.Task[None] | None = None
    # A streaming response's: how it is read (one way per call), its iterator.
    _response_style = 0
    _responses: AsyncIterator[_Resp] | None = None

    def __init__(self, channel: "Channel", method: str, serializer: Callable[[_Req], bytes] | None,
                 deserializer: Callable[[bytes], _Resp] | None,
                 timeout: float | None, metadata: MetadataArg, wait_for_ready: bool | None,
                 config: _service_config.MethodConfig = _service_config.NO_CONFIG) -> None:
        """``config``: this method's part of the channel's service config (the
        multi-callable looks it up once, not per call)."""
        self._channel = channel
        # (The channel's loop once it has tried to connect: no look-up per call.)
        self._loop = loop = channel._fixed_loop or channel._current_loop()
        self._method = method
        self._serialize: Callable[[_Req], bytes] = serializer or _identity
        self._deserialize: Callable[[bytes], _Resp] = deserializer or _identity
        self._received: collections.deque[bytes | _compression.Compressed] = collections.deque()
        self._code = self._deadline = self._replay = self._tally = self._timer = None
        self._task = self._first = self._lane = self._initial_md = self._response = None
        self._done_fut = self._md_fut = self._opened = None
        self._link = self._reader = self._writable = None
        self._recv_ended = False
        self._metadata = self._call_credentials = self._callbacks = ()
        self._sid = self._encoding = 0
        self._config = config
        recorder = _metrics.recorder
        if recorder is not None:
            self._tally = tally = recorder.client_call(channel._target, method)
            self._serialize = tally.counting_serializer(self._serialize)
            self._deserialize = tally.counting_deserializer(self._deserialize)
        if metadata:
            self._metadata = validate_metadata(metadata)
            if any(key == _compression.REQUEST_KEY for key, _ in self._metadata):
                self._take_call_compression()
        if channel._default_compression and not self._encoding_everywhere:
            self._encoding = channel._default_compression
        if config is not _service_config.NO_CONFIG:   # the service config's say (see there)
            timeout = config.deadline_timeout(timeout)
            wait_for_ready = config.wait_for_ready if wait_for_ready is None else wait_for_ready
            if not self._unary_request:
                self._replay = channel._retries.replay_buffer(config, channel._options)
        if not self._unary_request:
            # Read per message: the call's own fields, not the class's.
            self._send_limit = config.send_limit(channel._options.max_send_message_length)
            self._half_closed = False
            self._iterator_task = None
            self._unyielded = 0
        if not self._unary_response:
            self._response_style = 0
        if wait_for_ready:
            self._wait_for_ready = True
        if timeout is not None:
            self._deadline = loop.time() + timeout
            self._timer = loop.call_later(max(timeout, 0), self._on_deadline)

    def _take_call_compression(self) -> None:
        """The call's own compression, which grpc.aio carries (through interceptors too)
        as the metadata ``grpc-internal-encoding-request``: used on every lane, and not
        sent as metadata."""
        kept = []
        for key, value in self._metadata:
            if key == _compression.REQUEST_KEY:
                self._encoding = _compression.by_name(value)
                self._encoding_everywhere = True
            else:
                kept.append((key, value))
        self._metadata = tuple(kept)

    def _receive_limit(self) -> int:
        limit = self._channel._options.max_receive_message_length
        config_limit = self._config.max_response_bytes
        return limit if config_limit is None else min(limit, config_limit)

    def _decompression_failed(self, exc: _compression.DecompressionError) -> BaseException:
        self._abandon(status_code(exc.code), exc.details)
        return self._error()

    # ------------------------------------------------------------ starting

    async def _authorize_then_connect(self, first: bytes | None) -> None:
        """Ask the call credentials' plugins for their metadata (once: a retry sends the
        same), then go on as any call; a failing plugin ends the call UNAVAILABLE."""
        service, _, method = self._method.lstrip("/").partition("/")
        url = f"https://{self._channel._authority}/{service}"
        credentials, self._call_credentials = self._call_credentials, ()
        try:
            extra = await _call_credentials.metadata(credentials, url, method)
        except _call_credentials.PluginError as exc:
            self._finish(_C.UNAVAILABLE.value[0], str(exc), ())
            return
        except asyncio.CancelledError:
            return
        self._metadata = (*self._metadata, *validate_metadata(extra))
        await self._connect_and_open(first)

    async def _connect_and_open(self, first: bytes | None) -> None:
        try:
            link = await self._channel._get_link(self._deadline, self._wait_for_ready)
        except aio.AioRpcError as err:     # never sent: safe to retry elsewhere
            self._finish(err.code().value[0], err.details() or "", (), True)
            return
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.exception("lanerpc: connecting for %s raised", self._method)
            self._finish(_C.UNAVAILABLE.value[0], f"failed to connect: {exc!r}", (), True)
            return
        if self._code is None:
            self._open(link, first)

    def _open(self, link: ClientLink, first: bytes | None) -> None:
        timeout = None
        if self._deadline is not None:
            timeout = self._deadline - self._loop.time()
            if timeout <= 0:
                self._on_deadline()
                return
        if len(link.calls) >= link.stream_limit:
            # The server takes no more streams on this connection now: wait
            # for one to end (ClientLink.forget starts the next).
            link.waiting.append((self, first))
            return
        message, encoding = first, 0
        if first is not None and self._encoding:
            message, encoding = self._outgoing(first, link)
        try:
            link.open_stream(self, self._method, timeout, self._metadata, message,
                             first is None and self._unary_request, encoding)
        except c.ConnectionClosed as exc:
            self._on_end(_C.UNAVAILABLE.value[0], f"connection closed: {exc}", (), True)
            return
        except c.MetadataTooLarge as exc:
            self._finish(_C.RESOURCE_EXHAUSTED.value[0], str(exc), ())
            return
        self._lane = link.lane
        if self._replay is not None and self._attempts > 1:   # a retry: the requests again
            self._replay.resend(link.conn, self._sid, end=self._half_closed)
            link.flush_soon()
        opened = self._opened
        if opened is not None and not opened.done():
            opened.set_result(None)

    # ------------------------------------------------------------ events from the link

    def _on_initial_metadata(self, metadata: DecodedMetadata) -> None:
        self._initial_md = metadata
        fut = self._md_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_message(self, data: bytes | _compression.Compressed, end: bool) -> None:
        # (end: the server's messages never end the stream; its TRAILERS do.)
        if self._initial_md is None:    # no HEADERS came first: empty initial metadata
            self._initial_md = ()
            fut = self._md_fut
            if fut is not None and not fut.done():
                fut.set_result(None)
        if isinstance(data, _compression.Compressed):
            if self._unary_response:
                # Inflated now, so the call's status says if it can't be.
                try:
                    data = self._inflate(data)
                except aio.AioRpcError:
                    return
            self._deliver(data)
            return
        # (bytes; or a big message's buffer, for a deserializer that parses buffers)
        limit = self._config.max_response_bytes
        if limit is not None and len(data) > limit:     # the service config's, per method
            self._abandon(_C.RESOURCE_EXHAUSTED,
                          f"CLIENT: Received message larger than max ({len(data)} vs. {limit})")
            return
        self._deliver(data)   # (a unary response has no reader: the call's end wakes its awaiter)

    def _on_end(self, code: int, details: str, metadata: DecodedMetadata, not_started: bool) -> None:
        self._link = None
        # An OK call gives no token back: grpc.aio 1.85 refills none either (checked side
        # by side: 20 successes later a failing call is still not retried).
        if code and self._code is None and self._retry(code, metadata, not_started):
            return
        self._finish(code, details, metadata, not_started)

    def _retry(self, code: int, metadata: DecodedMetadata, not_started: bool) -> bool:
        """Start the call again if the channel's retry rules say so (see
        rpc._service_config.Retries.delay): under its retryPolicy, or once when the
        server never started it. Only calls whose whole request is at hand (unary
        requests) are made again; never one whose response reached the application."""
        delay = self._channel._retries.delay(
            self._config, code, metadata, self._attempts,
            committed=self._initial_md is not None, not_started=not_started)
        if delay is None or (self._first is None and not self._prepare_replay()):
            return False
        # A backoff past the deadline is waited all the same: the deadline ends the
        # call (DEADLINE_EXCEEDED), as in grpc.aio. The server is told the count.
        self._metadata = _service_config.with_previous_attempts(self._metadata, self._attempts)
        self._attempts += 1
        self._task = self._loop.create_task(self._open_later(delay))
        self._channel._pending.add(self)
        return True

    def _prepare_replay(self) -> bool:
        """Make ready to send a streaming request again, if all of it was kept (gRPC
        commits a call whose requests outgrow its retry buffer). Writers wait for
        the new attempt's stream; one waiting for window on the old one goes on
        (what it wrote is kept, and sent again)."""
        replay = self._replay
        if replay is None or replay.overflowed:
            return False
        self._opened = None
        self._on_writable()
        return True

    async def _open_later(self, delay: float) -> None:
        retrying = self._channel._retrying     # closing the channel ends a backoff too
        retrying.add(self)
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            retrying.discard(self)
        await self._connect_and_open(self._first)

    def _on_deadline(self) -> None:
        self._timer = None
        if self._code is None:
            self._abandon(_C.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # ------------------------------------------------------------ ending

    def _abandon(self, code: grpc.StatusCode, details: str) -> None:
        """End the call from this side: tell the server, then finish."""
        link = self._link
        if link is not None:
            self._link = None
            link.conn.cancel(self._sid, code.value[0])
            link.forget(self._sid)
            link.flush_soon()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._finish(code.value[0], details, ())

    def _finish(self, code: int, details: str, metadata: DecodedMetadata,
                not_started: bool = False) -> None:
        if self._code is not None:
            return
        self._code = code
        self._recv_ended = True
        # (Empty details and metadata, and False, are the class's defaults already.)
        if details:
            self._details = details
        if metadata:
            self._trailing_md = metadata
        if not_started:
            self._not_started = True
        if self._initial_md is None:
            self._initial_md = ()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:     # it may have waited for a connection
            self._channel._pending.discard(self)
        fut = self._done_fut
        if fut is not None and not fut.done():
            fut.set_result(None)
        fut = self._md_fut
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._reader is not None or self._writable is not None:
            self._release_waiters()
        fut = self._opened
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._callbacks:
            for cb in self._callbacks:
                self._loop.call_soon(cb, self)
            self._callbacks = ()
        if self._tally is not None:
            self._tally.ended(code, self._lane, self._received)

    def _error(self) -> aio.AioRpcError:
        return rpc_error(status_code(self._code or 0), self._details, self._initial_md, self._trailing_md)

    def _raise_for_status(self) -> None:
        if self._locally_cancelled:
            raise asyncio.CancelledError()
        if self._code != 0:
            raise self._error()

    async def _wait_done(self) -> None:
        """Wait for the call to end. Shielded: a task that gives up waiting for the
        status (cancelled in ``await call.code()``) leaves the RPC running, as in
        grpc.aio; only awaiting the call itself, or reading it, cancels it."""
        if self._code is None:
            if self._done_fut is None:
                self._done_fut = self._loop.create_future()
            await asyncio.shield(self._done_fut)

    async def _wait_opened(self) -> None:
        """Wait until the request is on its way (its stream open), or the call over."""
        if self._link is None and self._code is None:
            if self._opened is None:
                self._opened = self._loop.create_future()
            await asyncio.shield(self._opened)

    # ------------------------------------------------------------ grpc.aio.Call

    def cancel(self) -> bool:
        if self._code is not None:
            return False
        self._locally_cancelled = True
        self._abandon(_C.CANCELLED, _interceptors.LOCALLY_CANCELLED)
        feeder = self._iterator_task
        if feeder is not None and not feeder.done():
            # The caller's request iterator sees CancelledError, as in grpc.aio.
            feeder.cancel()
        return True

    def cancelled(self) -> bool:
        return self._code == 1

    def done(self) -> bool:
        return self._code is not None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._code is not None:
            self._loop.call_soon(callback, self)
        elif isinstance(self._callbacks, list):
            self._callbacks.append(callback)
        else:
            self._callbacks = [callback]

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - self._loop.time(), 0.0)

    async def initial_metadata(self) -> aio.Metadata:
        if self._initial_md is None:
            if self._md_fut is None:
                self._md_fut = self._loop.create_future()
            await asyncio.shield(self._md_fut)
        return to_metadata(self._initial_md)

    async def trailing_metadata(self) -> aio.Metadata:
        await self._wait_done()
        return to_metadata(self._trailing_md)

    async def code(self) -> grpc.StatusCode:
        await self._wait_done()
        return status_code(self._code or 0)

    async def details(self) -> str:
        await self._wait_done()
        return self._details

    async def debug_error_string(self) -> str:
        await self._wait_done()
        return f"lanerpc: {status_code(self._code or 0).name}: {self._details}"

    async def wait_for_connection(self) -> None:
        """As grpc.aio: a unary-unary call waits for its end; the others until the
        request is on its way (not for the server's answer: a streaming-request call
        whose server reads before it answers would wait forever). Raises the status
        of a call that has ended with one."""
        if self._unary_request and self._unary_response:
            await self._wait_done()
        else:
            await self._wait_opened()
        if self._code is not None:
            self._raise_for_status()

    @property
    def lane(self) -> str | None:
        """The lane that carried this call ("tcp", "unix", "shm"), or None while it
        waits for a connection (and for a call that never reached one)."""
        return self._lane

    @property
    def never_started(self) -> bool:
        """True if the server refused this call before any handler ran (safe to retry)."""
        return self._not_started

    def __repr__(self) -> str:
        state = "pending" if self._code is None else status_code(self._code).name
        return f"<lanerpc call {self._method} {state}>"

    # ------------------------------------------------------------ reading

    def _read_cancelled(self) -> None:
        self.cancel()

    def _reading_by(self, style: int) -> None:
        """One call is read one way: ``read()`` or ``async for`` (grpc.aio's rule)."""
        if self._response_style == 0:
            self._response_style = style
        elif self._response_style != style:
            raise aio.UsageError(_API_STYLE_ERROR)

    def _response_iterator(self) -> AsyncIterator[_Resp]:
        self._reading_by(_BY_ITERATOR)
        if self._responses is None:
            self._responses = self._iterate()
        return self._responses

    async def read(self) -> _Resp | object:   # object: aio.EOF
        if self._unary_response:
            raise RuntimeError("read() is for calls with a streaming response")
        received = self._received
        if (self._code is None or received) and self._response_style != _BY_READ:
            self._reading_by(_BY_READ)     # (grpc.aio lets anyone read an ended call)
        # A message already here is taken at once (what _receive would do, without
        # making a coroutine for it).
        data = self._take() if received else await self._receive()
        if data is None:
            self._raise_for_status()
            return _EOF
        try:
            return self._deserialize(data)
        except Exception as exc:
            raise self._decode_failed(exc) from exc

    def _message_deserializer(self) -> object:
        return self._deserialize

    def _decode_failed(self, exc: Exception) -> aio.AioRpcError:
        """A response the deserializer refused: the call ends INTERNAL; returns what
        the reader raises."""
        self._abandon(_C.INTERNAL, f"Failed to deserialize response message: {exc}")
        return self._error()

    async def _iterate(self) -> AsyncIterator[_Resp]:
        received = self._received
        while True:
            data = self._take() if received else await self._receive()
            if data is None:
                self._raise_for_status()
                return
            try:
                response = self._deserialize(data)
            except Exception as exc:
                raise self._decode_failed(exc) from exc
            yield response

    # ------------------------------------------------------------ writing

    def write(self, request: _Req) -> Coroutine[Any, None, None]:
        """grpc.aio's ``write``: a coroutine, whose errors come when it is awaited.
        It is :meth:`_write`'s own (not one more coroutine around it per message)."""
        if self._iterator_task is not None:
            return _raise(aio.UsageError(_API_STYLE_ERROR))
        return self._write(request)

    async def _write(self, request: _Req) -> None:
        if self._code is not None:
            raise asyncio.InvalidStateError(_FINISHED)
        if self._half_closed:
            raise asyncio.InvalidStateError(_HALF_CLOSED)
        data = self._serialize(request)
        limit = self._send_limit
        if len(data) > limit:
            self._abandon(_C.RESOURCE_EXHAUSTED, too_large(len(data), limit))
            raise self._error()
        if self._link is None:
            await self._wait_opened()
            if self._link is None:
                self._raise_for_status()
                raise asyncio.InvalidStateError(_FINISHED)
        if self._replay is not None:
            self._replay.keep(data)
        await self._send(data)

    def _window_waited(self) -> None:
        if self._code is not None and self._code != 0:
            self._raise_for_status()

    async def done_writing(self) -> None:
        if self._iterator_task is not None:
            raise aio.UsageError(_API_STYLE_ERROR)
        await self._done_writing()

    async def _done_writing(self) -> None:
        if self._half_closed or self._code is not None:
            return
        self._half_closed = True      # a write() from now on is refused at once
        await self._wait_opened()
        self._half_close()

    def _consume_iterator(self, iterator: AsyncIterable[_Req] | Iterable[_Req]) -> None:
        self._iterator_task = self._loop.create_task(self._feed(iterator))

    async def _feed(self, iterator: AsyncIterable[_Req] | Iterable[_Req]) -> None:
        try:
            if hasattr(iterator, "__aiter__"):
                async for request in iterator:
                    if self._code is not None:
                        return
                    await self._write(request)
            else:
                for request in iterator:
                    if self._code is not None:
                        return
                    await self._write(request)
            await self._done_writing()
        except (asyncio.CancelledError, aio.AioRpcError, asyncio.InvalidStateError):
            return
        except Exception as exc:  # the user's iterator raised: the call fails, like grpc.aio
            self._abandon(_C.UNKNOWN, f"Exception iterating requests: {exc!r}")


class UnaryUnaryCall(_Call[_Req, _Resp], aio.UnaryUnaryCall[_Req, _Resp]):
    def __await__(self) -> Generator[Any, None, _Resp]:
        if self._code is None:
            fut = self._done_fut
            if fut is None:
                self._done_fut = fut = self._loop.create_future()
            try:
                yield from fut
            except asyncio.CancelledError:
                self.cancel()
                raise
        return self._result()

    def _result(self) -> _Resp:  # type: ignore[return]  # not OK: _raise_for_status raises
        if self._code == 0:
            response = self._response
            if response is None:
                received = self._received
                if not received:
                    raise rpc_error(_C.INTERNAL, "server ended the call without a response",
                                    self._initial_md, self._trailing_md)
                # (A unary response is inflated on arrival: bytes, or a big one's buffer.)
                data = received.popleft()
                try:
                    response = self._deserialize(data)  # type: ignore[arg-type]  # bytes, see above
                except Exception as exc:
                    raise self._decode_failed(exc) from exc
                self._response = response
            return response
        self._raise_for_status()


class UnaryStreamCall(_Call[_Req, _Resp], aio.UnaryStreamCall[_Req, _Resp]):
    _unary_response = False
    _kind = "unary_stream"

    def __aiter__(self) -> AsyncIterator[_Resp]:
        return self._response_iterator()


class HealthWatch(UnaryStreamCall[bytes, bytes]):
    """A subchannel's ``grpc.health.v1.Health/Watch`` (gRFC A17), on the connection it
    is about: never on another, never retried (the subchannel makes it again), with no
    deadline and no interceptors, and not an application call (close's grace does not
    wait for it). Its messages are the raw bytes (rpc._balancer decodes them)."""

    _health_watch = True

    def __init__(self, channel: "Channel", link: ClientLink, request: bytes) -> None:
        # (No config: the service config's methodConfig is not for it.)
        super().__init__(channel, _balancer.HEALTH_WATCH, None, None, None, None, False)
        self._open(link, request)

    def _retry(self, code: int, metadata: DecodedMetadata, not_started: bool) -> bool:
        return False


class StreamUnaryCall(_Call[_Req, _Resp], aio.StreamUnaryCall[_Req, _Resp]):
    _unary_request = False
    _kind = "stream_unary"

    if TYPE_CHECKING:   # UnaryUnaryCall's two, typed for this class
        def __await__(self) -> Generator[Any, None, _Resp]: ...
        def _result(self) -> _Resp: ...
    else:
        __await__ = UnaryUnaryCall.__await__
        _result = UnaryUnaryCall._result


class StreamStreamCall(_Call[_Req, _Resp], aio.StreamStreamCall[_Req, _Resp]):
    _unary_request = False
    _unary_response = False
    _kind = "stream_stream"

    def __aiter__(self) -> AsyncIterator[_Resp]:
        return self._response_iterator()


# ============================================================ multi-callables

class _MultiCallable(Generic[_Req, _Resp]):
    """What the four multi-callables share: make the call, through the
    channel's interceptors of this kind when there are any. The classes below
    only give grpc.aio's two ``__call__`` signatures and name their call class."""

    _call_class: type[_Call[Any, Any]]

    def __init__(self, channel: "Channel", method: str, serializer: Callable[[_Req], bytes] | None,
                 deserializer: Callable[[bytes], _Resp] | None) -> None:
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        # What a channel fixes when it is made (its interceptors, its service config
        # and options), looked up here once rather than per call.
        self._interceptors = channel._interceptors.get(self._call_class._kind)
        self._call_class = self._call_class    # (an instance's field: a faster read)
        self._unary_request = self._call_class._unary_request
        self._config = config = channel._retries.method(method)
        self._send_limit = config.send_limit(channel._options.max_send_message_length)

    def _call(self, request: Any, timeout: float | None, metadata: MetadataArg,
              wait_for_ready: bool | None, credentials: grpc.CallCredentials | None,
              compression: grpc.Compression | None = None) -> Any:
        """The call: a ``_call_class`` or, with interceptors, an intercepted call; Any,
        because each multi-callable types it as its grpc.aio call type (_CallT). A
        ``compression`` rides in the metadata, as grpc.aio carries it (interceptors see it).
        (``__call__`` goes to :meth:`_invoke` itself when there is neither.)"""
        if compression is not None:
            metadata = _compression.with_request_key(metadata, compression)
        kind = self._call_class._kind
        interceptors = self._interceptors
        if interceptors:
            details = aio.ClientCallDetails(
                # bytes, as grpc.aio passes it (its stubs say str)
                self._method.encode(),  # type: ignore[arg-type]
                timeout,
                _interceptors.as_metadata(metadata), credentials, wait_for_ready)
            return _interceptors.intercept(kind, interceptors, self._invoke_details, details, request,
                                           self._channel._intercepted)
        return self._invoke(request, timeout, metadata, wait_for_ready, credentials)

    def _invoke_details(self, details: aio.ClientCallDetails, request: Any) -> _Call[_Req, _Resp]:
        """The call at the end of an interceptor chain, as its details now say
        (an interceptor may have changed any of them, the method too)."""
        method = details.method
        if isinstance(method, bytes):
            method = method.decode()
        target = self
        if method != self._method:
            target = type(self)(self._channel, method, self._serializer, self._deserializer)
        call: _Call[_Req, _Resp] = target._invoke(request, details.timeout, details.metadata,
                                                  details.wait_for_ready, details.credentials)
        return call

    def _invoke(self, request: Any, timeout: float | None, metadata: MetadataArg,
                wait_for_ready: bool | None,
                credentials: grpc.CallCredentials | None = None) -> Any:
        """The call itself (a ``_call_class``; Any, as for :meth:`_call`); ``request``
        is the request, or for a streaming request the iterator of requests (or None:
        the caller writes them)."""
        channel = self._channel
        if channel._forked:
            raise RuntimeError(
                "this lanerpc channel was created before os.fork(); its connections (and "
                "shared-memory rings) belong to the parent. Create a new channel in the child.")
        if channel._closed:
            raise aio.UsageError("Channel is closed.")
        call_credentials = channel._call_credentials
        if credentials is not None:
            if not channel._secure:
                # As grpc.aio: call credentials only on a secure channel.
                raise aio.UsageError("Call credentials are only valid on secure channels")
            call_credentials = (*call_credentials, _call_credentials.check(credentials))
        # (object.__new__ and __init__ called from here: Python calls Python, where the
        # class called as a function would enter __init__ from C, a costlier call.)
        call: _Call[_Req, _Resp] = _new_call(self._call_class)
        call.__init__(channel, self._method, self._serializer, self._deserializer, timeout,  # type: ignore[misc]  # each call class keeps this signature
                      metadata, wait_for_ready, self._config)
        first = None      # the whole request of a unary one
        unary_request = self._unary_request
        if unary_request:
            first = call._serialize(request)
            limit = self._send_limit
            if len(first) > limit:
                call._finish(_C.RESOURCE_EXHAUSTED.value[0], too_large(len(first), limit), ())
                return call
            call._first = first
        # Its stream opened now on a ready connection; else a task waits for one
        # (asking the call credentials' plugins first, if any).
        if call_credentials:
            call._call_credentials = call_credentials
            call._task = call._loop.create_task(call._authorize_then_connect(first))
            channel._pending.add(call)
        else:
            link = channel._pick()    # (what Channel._ready_link does, inline)
            if link is not None and not link.draining and not link.conn.closed:
                channel._last_link = link
                call._open(link, first)
            else:
                call._task = call._loop.create_task(call._connect_and_open(first))
                channel._pending.add(call)
        if request is not None and not unary_request:
            call._consume_iterator(request)
        return call


_new_call = object.__new__

# The call a multi-callable returns is its own kind of call, or with interceptors an
# intercepted one: both are the grpc.aio call type (_CallT) each class below names.
_CallT = TypeVar("_CallT")


class _UnaryRequest(_MultiCallable[_Req, _Resp], Generic[_Req, _Resp, _CallT]):
    def __call__(self, request: _Req, *, timeout: float | None = None,
                 metadata: MetadataArg = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> _CallT:
        if compression is None and not self._interceptors:
            call: _CallT = self._invoke(request, timeout, metadata, wait_for_ready, credentials)
        else:
            call = self._call(request, timeout, metadata, wait_for_ready, credentials, compression)
        return call


class _StreamRequest(_MultiCallable[_Req, _Resp], Generic[_Req, _Resp, _CallT]):
    def __call__(self, request_iterator: AsyncIterable[_Req] | Iterable[_Req] | None = None,
                 timeout: float | None = None, metadata: MetadataArg = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> _CallT:
        if compression is None and not self._interceptors:
            call: _CallT = self._invoke(request_iterator, timeout, metadata, wait_for_ready,
                                        credentials)
        else:
            call = self._call(request_iterator, timeout, metadata, wait_for_ready, credentials,
                              compression)
        return call


class UnaryUnaryMultiCallable(_UnaryRequest[_Req, _Resp, aio.UnaryUnaryCall[_Req, _Resp]],
                              aio.UnaryUnaryMultiCallable[_Req, _Resp]):
    _call_class = UnaryUnaryCall


class UnaryStreamMultiCallable(_UnaryRequest[_Req, _Resp, aio.UnaryStreamCall[_Req, _Resp]],
                               aio.UnaryStreamMultiCallable[_Req, _Resp]):
    _call_class = UnaryStreamCall


class StreamUnaryMultiCallable(_StreamRequest[_Req, _Resp, aio.StreamUnaryCall[_Req, _Resp]],
                               aio.StreamUnaryMultiCallable[_Req, _Resp]):
    _call_class = StreamUnaryCall


class StreamStreamMultiCallable(_StreamRequest[_Req, _Resp, aio.StreamStreamCall[_Req, _Resp]],
                                aio.StreamStreamMultiCallable[_Req, _Resp]):
    _call_class = StreamStreamCall


# ============================================================ channel

class Channel(aio.Channel):
    """A grpc.aio-compatible channel. ``channel.lane`` says which lane carries it."""

    def __init__(self, target: str, options: _grpc.Options | None = None,
                 interceptors: _grpc.ClientInterceptors | None = None, *,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self._target = target
        self._forked = False    # (made before an os.fork(), in the child: see _mark_forked)
        self._authority = _authority(target)
        self._options = _options.parse(options)
        resolver = _resolver.Resolver(target, min_interval=self._options.dns_min_interval)
        if isinstance(credentials, _call_credentials.CompositeChannelCredentials):
            self._call_credentials: tuple[_call_credentials.CallCredentials, ...] = (credentials.call,)
            credentials = credentials.channel
        else:
            self._call_credentials = ()
        # Where call credentials may go (as grpc: a secure channel; here also a unix: one,
        # whose peer the kernel vouches for).
        self._secure = credentials is not None or target.startswith("unix:")
        if credentials is not None:
            self._options = _credentials.channel_options(self._options, credentials,
                                                         parse_target(target), target)
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None    # made outside any loop: bound to the first one it is used in
        self._interceptors = _interceptors.sort_interceptors(interceptors)
        self._retries = _service_config.Retries(self._options.service_config,
                                                self._options.enable_retries)
        self._retrying: set[_Call[Any, Any]] = set()   # calls waiting out a retry's backoff
        self._last_link: ClientLink | None = None      # the link the last call was given
        self._old_links: set[ClientLink] = set()        # retired or draining, with calls on
        self._pending: set[_Call[Any, Any]] = set()     # calls waiting for a connection
        # Intercepted calls whose interceptors still run (the calls they made are
        # held as any call is): close() cancels them too.
        self._intercepted: set[Any] = set()
        # The loop the channel is bound to from its first attempt to connect on; None
        # before (see _current_loop).
        self._fixed_loop: asyncio.AbstractEventLoop | None = None
        self._state = _CONNECTIVITY.IDLE
        self._state_waiters: list[asyncio.Future[None]] = []
        self._closed = False
        policy, config = _balancer_choice(self._options)
        opts = self._options
        self._balancer = _balancer.Balancer(
            resolver, policy, config, dial=self._dial, make_link=self._make_link,
            backoff=_backoff.Backoff(initial=opts.initial_reconnect_backoff,
                                     maximum=opts.max_reconnect_backoff,
                                     min_connect_timeout=opts.min_connect_timeout),
            on_state=self._set_state, retire=self._retire,
            health_service=_health_service(opts), open_watch=self._open_watch)
        # Asked by every call: kept at hand (the policy and the options are the
        # channel's for its life).
        self._pick = cast("Callable[[], ClientLink | None]", self._balancer.policy.pick)
        self._default_compression = opts.default_compression
        _CHANNELS.add(self)

    def _current_loop(self) -> asyncio.AbstractEventLoop:
        """The channel's loop. A channel made before ``asyncio.run(...)`` (at import
        time, say) moves to the loop it is first used in: nothing of it lives in the
        old one yet. Once it has connected, it stays (as grpc.aio's channels do)."""
        loop = self._loop
        if loop is not None and (self._old_links or self._fixed_loop is not None):
            return loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            if loop is None:
                raise RuntimeError("a lanerpc channel is used from an event loop: "
                                   "make its calls inside a coroutine") from None
            return loop
        if running is not loop:
            self._loop = loop = running
        return loop

    # ------------------------------------------------------------ public

    @property
    def _link(self) -> ClientLink | None:
        """The connection the last call went on, else the one the next would take."""
        link = self._last_link
        if link is None or link.conn.closed or link.draining:
            link = cast("ClientLink | None", self._balancer.peek())
        return link

    @property
    def lane(self) -> str | None:
        """The lane of the connection the channel's last call went on ("tcp", "unix",
        "shm"), or else of the one its next call would take; None if there is none.
        Each address of the target has its own connection and lane (see README)."""
        link = self._link
        return link.lane if link is not None else None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """As grpc.aio: new calls are refused at once; running calls (those still
        waiting for a connection too) get ``grace`` seconds to end, then are
        cancelled. Every call has ended when this returns."""
        if self._closed:
            return
        if grace is not None and grace < 0:
            raise ValueError(f"grace must be non-negative, got {grace}.")
        self._closed = True
        links = [*cast("list[ClientLink]", self._balancer.links()), *self._old_links]
        calls = self._active_calls(links)
        if grace:
            await self._let_end(calls, grace)
        for call in calls:
            call.cancel()
        links = [*cast("list[ClientLink]", self._balancer.shutdown()), *self._old_links]
        for link in links:
            link.close("channel closed")
        for call in list(self._retrying):    # between attempts: on no link
            call.cancel()
        self._set_state(_CONNECTIVITY.SHUTDOWN)
        for link in links:
            if link.transport is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(link.closed), 1.0)
                except asyncio.TimeoutError:
                    link.abort("channel closed")
        self._last_link = None
        self._old_links.clear()

    def _active_calls(self, links: list[ClientLink]) -> list[Any]:
        """Every call not over: on a connection, queued for one, waiting for one to
        be made, or still in its interceptors."""
        calls: list[Any] = [*self._intercepted, *self._pending]
        for link in links:     # (health Watches end with their subchannels)
            calls.extend(call for call in link.calls.values() if not call._health_watch)
            calls.extend(call for call, _ in link.waiting)
        return calls

    @staticmethod
    async def _let_end(calls: list[Any], grace: float) -> None:
        """Wait up to ``grace`` seconds for ``calls`` to end (however they end)."""
        waiters = [asyncio.ensure_future(_ended(call)) for call in calls if not call.done()]
        if not waiters:
            return
        _, unfinished = await asyncio.wait(waiters, timeout=grace)
        for waiter in unfinished:
            waiter.cancel()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if try_to_connect and self._state is _CONNECTIVITY.IDLE and not self._closed:
            self._start_connecting()
        return self._state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        if self._closed:
            raise aio.UsageError("Channel is closed.")
        while self._state == last_observed_state:
            loop = self._current_loop()
            waiter = loop.create_future()
            self._state_waiters.append(waiter)
            await waiter

    async def channel_ready(self) -> None:
        while True:
            state = self.get_state(try_to_connect=True)
            if state is _CONNECTIVITY.READY:
                return
            if state is _CONNECTIVITY.SHUTDOWN:
                raise aio.UsageError("Channel is closed.")
            if state is _CONNECTIVITY.IDLE:
                self._start_connecting()
            await self.wait_for_state_change(state)

    def unary_unary(self, method: str, request_serializer: Callable[[_Req], bytes] | None = None,
                    response_deserializer: Callable[[bytes], _Resp] | None = None,
                    _registered_method: bool | None = False) -> UnaryUnaryMultiCallable[_Req, _Resp]:
        return UnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Callable[[_Req], bytes] | None = None,
                     response_deserializer: Callable[[bytes], _Resp] | None = None,
                     _registered_method: bool | None = False) -> UnaryStreamMultiCallable[_Req, _Resp]:
        return UnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Callable[[_Req], bytes] | None = None,
                     response_deserializer: Callable[[bytes], _Resp] | None = None,
                     _registered_method: bool | None = False) -> StreamUnaryMultiCallable[_Req, _Resp]:
        return StreamUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Callable[[_Req], bytes] | None = None,
                      response_deserializer: Callable[[bytes], _Resp] | None = None,
                      _registered_method: bool | None = False) -> StreamStreamMultiCallable[_Req, _Resp]:
        return StreamStreamMultiCallable(self, method, request_serializer, response_deserializer)

    # ------------------------------------------------------------ connections

    def _set_state(self, state: grpc.ChannelConnectivity) -> None:
        if self._state is _CONNECTIVITY.SHUTDOWN or state is self._state:
            return
        self._state = state
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _ready_link(self) -> ClientLink | None:
        """The link the policy picks for a call now, or None (then see _get_link)."""
        link = self._pick()
        if link is not None and not link.draining and not link.conn.closed:
            self._last_link = link
            return link
        return None

    def _start_connecting(self) -> None:
        """Have the policy connect (resolving the target first if needed)."""
        loop = self._fixed_loop = self._current_loop()
        self._balancer.exit_idle(loop)

    async def _get_link(self, deadline: float | None, wait_for_ready: bool) -> ClientLink:
        """A ready connection, made if needed. Raises AioRpcError(UNAVAILABLE) when
        the server can't be reached (or, with wait_for_ready, DEADLINE_EXCEEDED)."""
        assert self._loop is not None   # the call asking has bound the channel to its loop
        while True:
            # (Closing, the channel still connects for the calls it has: they have
            # the grace period to run.)
            if self._state is _CONNECTIVITY.SHUTDOWN:
                raise rpc_error(_C.CANCELLED, "Channel closed!")
            if self._options.service_config_error:   # as grpc.aio: every call fails
                raise rpc_error(_C.INVALID_ARGUMENT, f"Failed to create channel to "
                                f"'{self._target}': {self._options.service_config_error}")
            link = self._ready_link()
            if link is not None:
                return link
            self._start_connecting()
            link = self._ready_link()
            if link is not None:
                return link
            if self._state is _CONNECTIVITY.TRANSIENT_FAILURE and not wait_for_ready:
                error, refused = self._balancer.error()
                if refused:
                    raise rpc_error(_C.PERMISSION_DENIED, error)
                raise rpc_error(_C.UNAVAILABLE, f"failed to connect to {self._target}: {error}")
            timeout = None if deadline is None else deadline - self._loop.time()
            try:
                await asyncio.wait_for(self._balancer.changed(), timeout)
            except asyncio.TimeoutError:
                raise rpc_error(_C.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    def _make_link(self, hello: Any) -> ClientLink:
        """A connection's protocol, for rpc._lanes to dial with."""
        return ClientLink(self, self._options, hello=hello)

    async def _dial(self, endpoint: Endpoint, make_link: Callable[[Any], Link]) -> Link:
        """One subchannel's connection, on the lane rpc._lanes chooses for it."""
        return await _lanes.connect(endpoint, self._options, make_link)

    def _open_watch(self, link: Link, request: bytes) -> "HealthWatch":
        """A subchannel's Health/Watch call, opened on its own connection."""
        return HealthWatch(self, cast(ClientLink, link), request)

    def _retire(self, link: Link) -> None:
        """A link the policy no longer uses: its calls end as they will, then it closes."""
        client = cast(ClientLink, link)
        client.draining = True
        if client.calls or client.waiting:
            self._old_links.add(client)
        else:
            client.close("not used by the load-balancing policy")

    def _link_draining(self, link: ClientLink) -> None:
        self._old_links.add(link)
        self._balancer.link_ended(link)

    def _link_lost(self, link: ClientLink) -> None:
        self._old_links.discard(link)
        if self._last_link is link:
            self._last_link = None
        if not self._closed:
            self._balancer.link_ended(link)


def _health_service(options: Options) -> str | None:
    """The service each subchannel's health Watch asks about: the service config's
    ``healthCheckConfig.serviceName``, unless ``grpc.inhibit_health_checking`` is set."""
    config = options.service_config
    if config is None or options.inhibit_health_checking:
        return None
    return config.health_service


def _balancer_choice(options: Options) -> tuple[str, dict[str, Any]]:
    """The policy and its config, in gRPC's order: the service config's
    loadBalancingConfig, its loadBalancingPolicy, then grpc.lb_policy_name."""
    config = options.service_config
    if config is not None and config.lb_policy is not None:
        return config.lb_policy
    return options.lb_policy, {}


_CHANNELS: "weakref.WeakSet[Channel]" = weakref.WeakSet()


def _authority(target: str) -> str:
    """The target's host[:port] as gRPC names it to call credentials' plugins (the
    ``service_url``'s host); local targets are ``localhost``."""
    if target.startswith(("unix:", "unix-abstract:")):
        return "localhost"
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return target[len(scheme):].split(",")[0]
    if target.startswith("dns://"):
        return target[len("dns://"):].partition("/")[2]
    return target


def _mark_forked() -> None:
    for channel in list(_CHANNELS):
        channel._forked = True


os.register_at_fork(after_in_child=_mark_forked)


async def _ended(call: Any) -> None:
    """Wait for ``call`` to end, whichever way it ends."""
    try:
        await call.code()
    except Exception:   # the call's caller sees how it failed; ending is all this waits for
        pass


async def _raise(exc: BaseException) -> None:
    """A coroutine that raises ``exc`` when awaited."""
    raise exc


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
