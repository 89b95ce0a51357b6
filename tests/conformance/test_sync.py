"""The blocking API (rpc.sync) against grpc's own: the same cases on grpc's sync
channel and server (``grpc.insecure_channel``, ``grpc.server``), the reference, and on
rpc.sync over each lanerpc lane.

The implementations are named as in impls.py, and run when that name is active
(``LANERPC_CONFORMANCE_IMPLS`` or the defaults): ``grpc-tcp`` runs grpc's sync API,
the ``lanerpc-*`` ones rpc.sync's server and channel on their lane. Handlers are grpc
sync servicers (plain functions and generators). Every blocking call has a timeout,
every thread a test starts is joined with one, and every server is stopped, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import rpc
import rpc.sync
from examples.echo import echo_pb2, echo_pb2_grpc
from tests._support import register
from tests.conformance import conformance_pb2 as pb
from tests.conformance import conformance_pb2_grpc
from tests.conformance.impls import _socket_path, active_impls
from tests.conformance.servicer import ECHO_INITIAL_KEY, ECHO_TRAILING_KEY, RAISE_KEY

TIMEOUT = 5.0
LONG = 60.0    # the deadline of calls a test ends itself (cancel, close), well before it
LOCALLY_CANCELLED = "Locally cancelled by application!"
CHANNEL_CLOSED = "Channel closed!"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


# ------------------------------------------------------------------ implementations

@dataclasses.dataclass(frozen=True)
class SyncImpl:
    """A blocking server and channel: grpc's (``lanes`` None) or rpc.sync's with the
    ``lanerpc.lanes`` option ``lanes``, bound on TCP or a socket file (``bind``);
    ``lane``: what ``channel.lane`` must say once a call has gone through."""

    name: str
    lanes: str | None
    bind: str
    lane: str | None
    tls: bool = False      # a TLS port (rpc.ssl_server_credentials), a secure channel

    @property
    def is_grpc(self) -> bool:
        return self.lanes is None

    def options(self) -> list[tuple[str, Any]]:
        return [] if self.lanes is None else [("lanerpc.lanes", self.lanes)]

    def address(self) -> str:
        return "unix:" + _socket_path() if self.bind == "unix" else "127.0.0.1:0"

    def server(self, pool: futures.Executor, **kwargs: Any) -> Any:
        make = grpc.server if self.is_grpc else rpc.sync.server
        return make(pool, options=self.options(), **kwargs)

    def channel(self, target: str) -> Any:
        if self.tls:
            from tests._tls import certs

            return rpc.sync.secure_channel(target, rpc.ssl_channel_credentials(certs().ca),
                                           options=self.options())
        make = grpc.insecure_channel if self.is_grpc else rpc.sync.insecure_channel
        return make(target, options=self.options())

    def add_port(self, server: Any, address: str) -> int:
        if self.tls:
            from tests._tls import certs

            made = certs()
            return server.add_secure_port(
                address, rpc.ssl_server_credentials([(made.server.key, made.server.cert)]))
        return server.add_insecure_port(address)


SYNC_IMPLS = {impl.name: impl for impl in (
    SyncImpl("grpc-tcp", None, "tcp", None),
    SyncImpl("lanerpc-tcp", "tcp", "tcp", "tcp"),
    SyncImpl("lanerpc-unix", "unix", "unix", "unix"),
    SyncImpl("lanerpc-upgraded", "unix,tcp", "tcp", "unix"),
    SyncImpl("lanerpc-shm", "shm,unix,tcp", "tcp", "shm"),
    SyncImpl("lanerpc-tls", "tcp", "tcp", "tcp", tls=True),
)}
ACTIVE = [SYNC_IMPLS[impl.name] for impl in active_impls() if impl.name in SYNC_IMPLS]


class Served:
    """A started blocking server, its target, and the channels to close with it."""

    def __init__(self, impl: SyncImpl, server: Any, target: str) -> None:
        self.impl = impl
        self.server = server
        self.target = target
        self.channels: list[Any] = []

    def channel(self) -> Any:
        channel = self.impl.channel(self.target)
        self.channels.append(channel)
        return channel

    def stub(self) -> conformance_pb2_grpc.TestServiceStub:
        return conformance_pb2_grpc.TestServiceStub(self.channel())


@contextlib.contextmanager
def serving(impl: SyncImpl, *servicers: Any, threads: int = 8, **server_kwargs: Any) -> Iterator[Served]:
    """A started server of ``impl`` serving ``servicers``; on the way out its channels
    are closed and it is stopped, each bounded."""
    pool = futures.ThreadPoolExecutor(threads, thread_name_prefix="sync-test")
    server = impl.server(pool, **server_kwargs)
    for servicer in servicers:
        register(server, servicer)
    address = impl.address()
    port = impl.add_port(server, address)
    server.start()
    target = address if address.startswith("unix:") else f"127.0.0.1:{port}"
    served = Served(impl, server, target)
    try:
        yield served
    finally:
        for channel in served.channels:
            channel.close()
        assert server.stop(0).wait(TIMEOUT), "the server did not stop in time"
        pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(params=ACTIVE, ids=lambda impl: impl.name)
def impl(request: pytest.FixtureRequest) -> SyncImpl:
    return request.param


# ------------------------------------------------------------------ the servicer

def _metadata_value(context: Any, key: str) -> Any:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v
    return None


def _status(echo: pb.EchoStatus) -> grpc.StatusCode:
    return _CODES.get(echo.code, grpc.StatusCode.UNKNOWN)


class SyncServicer(conformance_pb2_grpc.TestServiceServicer):
    """The interop TestService written for grpc's sync server (see servicer.py for
    what its request metadata asks). A handler that sleeps waits for its call to end
    instead (``context.add_callback``), and records when it ended early."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = threading.Event()
        self.ended_early = threading.Event()    # a sleeping handler saw its call end
        self.terminated = threading.Event()     # a call ended (its add_callback ran)
        self.contexts: list[bool] = []          # was each context a grpc.ServicerContext
        self.threads: set[str] = set()
        self.running = 0
        self.peak = 0

    def _enter(self, context: Any) -> None:
        with self.lock:
            self.contexts.append(isinstance(context, grpc.ServicerContext))
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.peak = max(self.peak, self.running)
        context.add_callback(self.terminated.set)
        self.started.set()

    def _leave(self) -> None:
        with self.lock:
            self.running -= 1

    def _sleep(self, context: Any, seconds: float) -> None:
        gone = threading.Event()
        if not context.add_callback(gone.set) or gone.wait(seconds):
            self.ended_early.set()

    @staticmethod
    def _echo_metadata(context: Any) -> None:
        initial = _metadata_value(context, ECHO_INITIAL_KEY)
        if initial is not None:
            context.send_initial_metadata(((ECHO_INITIAL_KEY, initial),))
        trailing = _metadata_value(context, ECHO_TRAILING_KEY)
        if trailing is not None:
            context.set_trailing_metadata(((ECHO_TRAILING_KEY, trailing),))

    def EmptyCall(self, request, context):
        return pb.Empty()

    def UnaryCall(self, request, context):
        self._enter(context)
        try:
            self._echo_metadata(context)
            message = _metadata_value(context, RAISE_KEY)
            if message is not None:
                raise RuntimeError(message)
            if request.sleep_ms:
                self._sleep(context, request.sleep_ms / 1000)
            if request.response_status.code:
                context.abort(_status(request.response_status), request.response_status.message)
            remaining = context.time_remaining()
            return pb.SimpleResponse(payload=pb.Payload(body=bytes(request.response_size)),
                                     time_remaining=-1.0 if remaining is None else remaining)
        finally:
            self._leave()

    def StreamingOutputCall(self, request, context):
        self._enter(context)
        try:
            self._echo_metadata(context)
            for params in request.response_parameters:
                if params.interval_us:
                    self._sleep(context, params.interval_us / 1e6)
                yield pb.StreamingOutputCallResponse(payload=pb.Payload(body=bytes(params.size)))
            if request.response_status.code:
                context.set_code(_status(request.response_status))
                context.set_details(request.response_status.message)
        finally:
            self._leave()

    def StreamingInputCall(self, request_iterator, context):
        self._enter(context)
        try:
            total = sum(len(request.payload.body) for request in request_iterator)
            return pb.StreamingInputCallResponse(aggregated_payload_size=total)
        finally:
            self._leave()

    def FullDuplexCall(self, request_iterator, context):
        self._enter(context)
        try:
            self._echo_metadata(context)
            for request in request_iterator:
                if request.response_status.code:
                    context.set_code(_status(request.response_status))
                    context.set_details(request.response_status.message)
                    return
                for params in request.response_parameters:
                    yield pb.StreamingOutputCallResponse(payload=pb.Payload(body=bytes(params.size)))
        finally:
            self._leave()


def _out(*sizes: int, interval_us: int = 0, status: pb.EchoStatus | None = None
         ) -> pb.StreamingOutputCallRequest:
    return pb.StreamingOutputCallRequest(
        response_parameters=[pb.ResponseParameters(size=s, interval_us=interval_us) for s in sizes],
        response_status=status)


def _first_then_pause() -> pb.StreamingOutputCallRequest:
    """A response at once, then one after a pause longer than any test waits."""
    return pb.StreamingOutputCallRequest(response_parameters=[
        pb.ResponseParameters(size=1), pb.ResponseParameters(size=1, interval_us=30_000_000)])


def _joined(thread: threading.Thread) -> None:
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"{thread.name} still runs"


# ------------------------------------------------------------------ the four kinds

def test_unary_returns_the_response_and_with_call_the_call(impl):
    servicer = SyncServicer()
    with serving(impl, servicer) as served:
        channel = served.channel()
        stub = conformance_pb2_grpc.TestServiceStub(channel)
        reply = stub.UnaryCall(pb.SimpleRequest(response_size=7), timeout=TIMEOUT)
        assert reply.payload.body == bytes(7)
        # grpcio may report a little more than the timeout (5.009 s of 5 seen once: it
        # rounds the timeout it sends up); 2 % over, as the interop case allows.
        assert 0 < reply.time_remaining <= TIMEOUT * 1.02

        reply, call = stub.UnaryCall.with_call(
            pb.SimpleRequest(response_size=3), timeout=TIMEOUT,
            metadata=((ECHO_INITIAL_KEY, "hello"), (ECHO_TRAILING_KEY, b"\x00\xff")))
        assert reply.payload.body == bytes(3)
        assert isinstance(call, grpc.Call) and isinstance(call, grpc.Future)
        assert call.code() is grpc.StatusCode.OK
        assert call.details() in ("", None)
        assert (ECHO_INITIAL_KEY, "hello") in tuple(call.initial_metadata())
        assert (ECHO_TRAILING_KEY, b"\x00\xff") in tuple(call.trailing_metadata())
        assert call.done() and not call.running() and not call.is_active()
        assert call.result(timeout=TIMEOUT) == reply
        assert stub.EmptyCall(pb.Empty(), timeout=TIMEOUT) == pb.Empty()
        # No deadline: the handler's time_remaining() is grpc's "infinite future".
        no_deadline = stub.UnaryCall.future(pb.SimpleRequest()).result(timeout=TIMEOUT)
        assert no_deadline.time_remaining > 1e9
        assert all(servicer.contexts), "a handler's context was not a grpc.ServicerContext"
        assert threading.current_thread().name not in servicer.threads
        if impl.lane is not None:
            assert channel.lane == impl.lane


def test_server_streaming_iterates_the_responses(impl):
    with serving(impl, SyncServicer()) as served:
        stub = served.stub()
        call = stub.StreamingOutputCall(_out(1, 2, 3, 40000), timeout=TIMEOUT,
                                        metadata=((ECHO_INITIAL_KEY, "s"),))
        assert isinstance(call, grpc.Call) and isinstance(call, grpc.Future)
        assert (ECHO_INITIAL_KEY, "s") in tuple(call.initial_metadata())
        assert [len(r.payload.body) for r in call] == [1, 2, 3, 40000]
        assert call.code() is grpc.StatusCode.OK
        with pytest.raises(StopIteration):
            next(call)
        # More responses than the client reads ahead: all arrive, in order.
        many = stub.StreamingOutputCall(_out(*range(200)), timeout=TIMEOUT)
        assert [len(r.payload.body) for r in many] == list(range(200))


def test_client_streaming_takes_an_iterator(impl):
    with serving(impl, SyncServicer()) as served:
        stub = served.stub()
        requests = [pb.StreamingInputCallRequest(payload=pb.Payload(body=bytes(n))) for n in (1, 10, 100)]
        reply = stub.StreamingInputCall(iter(requests), timeout=TIMEOUT)
        assert reply.aggregated_payload_size == 111

        def slowly() -> Iterator[pb.StreamingInputCallRequest]:
            for n in range(50):
                if n % 10 == 0:
                    time.sleep(0.01)
                yield pb.StreamingInputCallRequest(payload=pb.Payload(body=b"x"))

        reply, call = stub.StreamingInputCall.with_call(slowly(), timeout=TIMEOUT)
        assert reply.aggregated_payload_size == 50 and call.code() is grpc.StatusCode.OK
        future = stub.StreamingInputCall.future(iter(requests), timeout=TIMEOUT)
        assert future.result(timeout=TIMEOUT).aggregated_payload_size == 111


def test_bidi_ping_pong_with_a_blocking_request_iterator(impl):
    """The request iterator blocks on a queue the test feeds after each answer:
    grpc consumes it on a thread of its own, so the caller can read meanwhile."""
    with serving(impl, SyncServicer()) as served:
        stub = served.stub()
        requests: queue.Queue[pb.StreamingOutputCallRequest | None] = queue.Queue()

        def from_queue() -> Iterator[pb.StreamingOutputCallRequest]:
            while (request := requests.get(timeout=TIMEOUT)) is not None:
                yield request

        call = stub.FullDuplexCall(from_queue(), timeout=TIMEOUT)
        for size in (1, 5, 9):
            requests.put(_out(size))
            assert len(next(call).payload.body) == size
        requests.put(None)
        with pytest.raises(StopIteration):
            next(call)
        assert call.code() is grpc.StatusCode.OK


# ------------------------------------------------------------------ errors

def test_errors_carry_code_details_and_trailers(impl):
    with serving(impl, SyncServicer()) as served:
        stub = served.stub()
        with pytest.raises(grpc.RpcError) as info:
            stub.UnaryCall(pb.SimpleRequest(response_status=pb.EchoStatus(code=9, message="nope")),
                           timeout=TIMEOUT, metadata=((ECHO_TRAILING_KEY, b"t"),))
        error = info.value
        assert isinstance(error, grpc.Call)
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == "nope"
        assert (ECHO_TRAILING_KEY, b"t") in tuple(error.trailing_metadata())

        with pytest.raises(grpc.RpcError) as info:
            stub.UnaryCall.with_call(pb.SimpleRequest(), timeout=TIMEOUT,
                                     metadata=((RAISE_KEY, "boom"),))
        assert info.value.code() is grpc.StatusCode.UNKNOWN

        future = stub.UnaryCall.future(
            pb.SimpleRequest(response_status=pb.EchoStatus(code=5, message="gone")), timeout=TIMEOUT)
        error = future.exception(timeout=TIMEOUT)
        assert isinstance(error, grpc.RpcError) and error.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError):
            future.result(timeout=TIMEOUT)
        assert future.traceback(timeout=TIMEOUT) is not None

        # A streaming response: the messages, then the status.
        call = stub.StreamingOutputCall(
            _out(1, 2, status=pb.EchoStatus(code=8, message="enough")), timeout=TIMEOUT)
        assert len(next(call).payload.body) == 1
        assert len(next(call).payload.body) == 2
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == "enough"
        assert call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

        with pytest.raises(grpc.RpcError) as info:
            conformance_pb2_grpc.TestServiceStub(served.channel()).UnimplementedCall(
                pb.Empty(), timeout=TIMEOUT)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_a_failing_request_iterator_ends_the_call_unknown(impl):
    def failing() -> Iterator[pb.StreamingInputCallRequest]:
        yield pb.StreamingInputCallRequest()
        raise ValueError("no more")

    with serving(impl, SyncServicer()) as served:
        with pytest.raises(grpc.RpcError) as info:
            served.stub().StreamingInputCall(failing(), timeout=TIMEOUT)
        assert info.value.code() is grpc.StatusCode.UNKNOWN
        assert info.value.details() == "Exception iterating requests!"


def test_deadline_exceeded(impl):
    servicer = SyncServicer()
    with serving(impl, servicer) as served:
        stub = served.stub()
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.UnaryCall(pb.SimpleRequest(sleep_ms=30_000), timeout=0.2)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.details() == "Deadline Exceeded"
        assert time.monotonic() - start < 2.0
        # A handler that ran (under load it may be dropped before a thread takes it)
        # saw its call end at the deadline, not at the end of its sleep.
        if servicer.started.wait(1.0):
            assert servicer.ended_early.wait(TIMEOUT), "the handler did not see its deadline pass"

        call = stub.StreamingOutputCall(_out(1, 1, interval_us=3_000_000), timeout=0.2)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        future = stub.UnaryCall.future(pb.SimpleRequest(sleep_ms=3000), timeout=0.2)
        assert future.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert future.time_remaining() == 0


# ------------------------------------------------------------------ futures and cancelling

def test_future_result_timeout_and_done_callback(impl):
    with serving(impl, SyncServicer()) as served:
        stub = served.stub()
        future = stub.UnaryCall.future(pb.SimpleRequest(sleep_ms=300, response_size=2), timeout=TIMEOUT)
        assert future.running() and not future.done() and future.is_active()
        with pytest.raises(grpc.FutureTimeoutError):
            future.result(timeout=0.01)
        called = queue.Queue()
        future.add_done_callback(lambda f: called.put((f, threading.current_thread().name)))
        assert future.result(timeout=TIMEOUT).payload.body == bytes(2)
        done, thread = called.get(timeout=TIMEOUT)
        assert done is future
        assert thread != "lanerpc-sync-loop"      # user code never runs on the loop
        assert future.exception(timeout=TIMEOUT) is None
        late = queue.Queue()
        future.add_done_callback(late.put)        # already done: called at once
        assert late.get_nowait() is future
        assert future.add_callback(lambda: None) is False

        # A future let go of at once still runs, and calls its callback.
        bodies: queue.Queue[bytes] = queue.Queue()
        stub.UnaryCall.future(pb.SimpleRequest(sleep_ms=100, response_size=4), timeout=TIMEOUT
                              ).add_done_callback(lambda f: bodies.put(f.result().payload.body))
        gc.collect()
        assert bodies.get(timeout=TIMEOUT) == bytes(4)


def test_cancelling_a_future(impl):
    servicer = SyncServicer()
    with serving(impl, servicer) as served:
        stub = served.stub()
        future = stub.UnaryCall.future(pb.SimpleRequest(sleep_ms=30_000), timeout=LONG)
        assert servicer.started.wait(TIMEOUT)
        ended = threading.Event()
        assert future.add_callback(ended.set) is True
        assert future.cancel() is True
        assert future.cancelled() and future.done()
        assert future.cancel() is False
        assert future.code() is grpc.StatusCode.CANCELLED
        assert future.details() == LOCALLY_CANCELLED
        with pytest.raises(grpc.FutureCancelledError):
            future.result(timeout=TIMEOUT)
        with pytest.raises(grpc.FutureCancelledError):
            future.exception(timeout=TIMEOUT)
        assert ended.wait(TIMEOUT)
        assert servicer.terminated.wait(TIMEOUT), "the server did not see the cancel"


def test_cancelling_a_streaming_iterator(impl):
    servicer = SyncServicer()
    with serving(impl, servicer) as served:
        call = served.stub().StreamingOutputCall(_first_then_pause(), timeout=LONG)
        assert len(next(call).payload.body) == 1
        assert call.cancel() is True
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value is call
        assert call.code() is grpc.StatusCode.CANCELLED
        assert call.details() == LOCALLY_CANCELLED
        assert servicer.terminated.wait(TIMEOUT), "the server did not see the cancel"


def test_cancelling_a_bidi_call_stops_its_request_iterator(impl):
    with serving(impl, SyncServicer()) as served:
        taken = threading.Event()

        def endless() -> Iterator[pb.StreamingOutputCallRequest]:
            while True:
                taken.set()
                yield _out(1)
                time.sleep(0.01)

        call = served.stub().FullDuplexCall(endless(), timeout=TIMEOUT)
        assert len(next(call).payload.body) == 1
        assert call.cancel()
        assert call.code() is grpc.StatusCode.CANCELLED
        assert taken.wait(TIMEOUT)
        # The iterator is asked for no more (one taken as the cancel came is let go).
        time.sleep(0.1)
        taken.clear()
        time.sleep(0.1)
        assert not taken.is_set()


def test_a_dropped_streaming_call_is_cancelled(impl):
    """A response stream its caller drops unfinished (``break`` out of the loop and
    let go) is cancelled, as grpc's ``__del__`` means to, not left running on the
    server. (grpc 1.85's own call stays referenced in its channel, so it runs on.)"""
    if impl.is_grpc:
        pytest.skip("grpc's dropped call is kept alive by its channel: it is not cancelled")
    servicer = SyncServicer()
    with serving(impl, servicer) as served:
        stub = served.stub()
        for response in stub.StreamingOutputCall(_first_then_pause(), timeout=LONG):
            assert len(response.payload.body) == 1
            break
        gc.collect()
        assert servicer.terminated.wait(TIMEOUT), "the dropped call went on"


# ------------------------------------------------------------------ threads and closing

def test_many_threads_share_one_channel(impl):
    servicer = SyncServicer()
    with serving(impl, servicer, threads=16) as served:
        stub = served.stub()
        errors: list[BaseException] = []

        def caller(n: int) -> None:
            try:
                for i in range(30):
                    size = (n * 31 + i) % 97
                    if i % 3 == 0:
                        assert stub.UnaryCall(pb.SimpleRequest(response_size=size),
                                              timeout=TIMEOUT).payload.body == bytes(size)
                    elif i % 3 == 1:
                        got = [len(r.payload.body) for r in
                               stub.StreamingOutputCall(_out(size, size + 1), timeout=TIMEOUT)]
                        assert got == [size, size + 1]
                    else:
                        future = stub.UnaryCall.future(pb.SimpleRequest(response_size=size),
                                                       timeout=TIMEOUT)
                        assert future.result(timeout=TIMEOUT).payload.body == bytes(size)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(n,), name=f"caller-{n}") for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            _joined(thread)
        assert errors == []
        assert servicer.peak > 1, "the calls did not overlap"


def test_close_cancels_active_calls(impl):
    servicer = SyncServicer()
    with serving(impl, servicer) as served:
        channel = impl.channel(served.target)
        stub = conformance_pb2_grpc.TestServiceStub(channel)
        future = stub.UnaryCall.future(pb.SimpleRequest(sleep_ms=30_000), timeout=LONG)
        stream = stub.StreamingOutputCall(_first_then_pause(), timeout=LONG)
        assert len(next(stream).payload.body) == 1
        assert servicer.started.wait(TIMEOUT)
        start = time.monotonic()
        channel.close()
        assert time.monotonic() - start < 2.0
        assert future.code() is grpc.StatusCode.CANCELLED
        assert future.details() == CHANNEL_CLOSED
        assert not future.cancelled()
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(ValueError):
            stub.UnaryCall(pb.SimpleRequest(), timeout=TIMEOUT)
        channel.close()     # twice: nothing more
        assert servicer.terminated.wait(TIMEOUT), "the server did not see the close"


def test_channel_as_context_manager_and_subscribe(impl):
    with serving(impl, SyncServicer()) as served:
        states: queue.Queue[grpc.ChannelConnectivity] = queue.Queue()
        with impl.channel(served.target) as channel:
            channel.subscribe(states.put, try_to_connect=True)
            seen = set()
            deadline = time.monotonic() + TIMEOUT
            while grpc.ChannelConnectivity.READY not in seen:
                seen.add(states.get(timeout=max(deadline - time.monotonic(), 0.01)))
            channel.unsubscribe(states.put)
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)   # grpc's helper, on subscribe
            stub = conformance_pb2_grpc.TestServiceStub(channel)
            assert stub.EmptyCall(pb.Empty(), timeout=TIMEOUT) == pb.Empty()


def test_server_stop_and_wait_for_termination(impl):
    pool = futures.ThreadPoolExecutor(4)
    server = impl.server(pool)
    register(server, SyncServicer())
    impl.add_port(server, impl.address())
    server.start()
    try:
        assert server.wait_for_termination(timeout=0.05) is True     # timed out: still serving
    finally:
        stopped = server.stop(None)
    assert isinstance(stopped, threading.Event)
    assert stopped.wait(TIMEOUT)
    assert server.wait_for_termination(timeout=TIMEOUT) is False
    pool.shutdown(wait=False)


def test_stop_with_grace_lets_running_calls_finish(impl):
    servicer = SyncServicer()
    pool = futures.ThreadPoolExecutor(4)
    server = impl.server(pool)
    register(server, servicer)
    address = impl.address()
    port = impl.add_port(server, address)
    server.start()
    target = address if address.startswith("unix:") else f"127.0.0.1:{port}"
    with impl.channel(target) as channel:
        stub = conformance_pb2_grpc.TestServiceStub(channel)
        future = stub.UnaryCall.future(pb.SimpleRequest(sleep_ms=300, response_size=1), timeout=TIMEOUT)
        assert servicer.started.wait(TIMEOUT)
        stopped = server.stop(TIMEOUT)
        assert future.result(timeout=TIMEOUT).payload.body == b"\x00"
        assert stopped.wait(TIMEOUT)
    pool.shutdown(wait=False)


def test_maximum_concurrent_rpcs(impl):
    servicer = SyncServicer()
    with serving(impl, servicer, maximum_concurrent_rpcs=1) as served:
        stub = served.stub()
        first = stub.UnaryCall.future(pb.SimpleRequest(sleep_ms=2000), timeout=TIMEOUT)
        assert servicer.started.wait(TIMEOUT)
        with pytest.raises(grpc.RpcError) as info:
            stub.UnaryCall(pb.SimpleRequest(), timeout=TIMEOUT)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()


class DenyUntagged(grpc.ServerInterceptor):
    """grpc's sync server interceptor: calls without ``x-tag`` are refused; the
    methods it saw are kept."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def intercept_service(self, continuation, handler_call_details):
        self.seen.append(handler_call_details.method)
        if not any(k == "x-tag" for k, _ in handler_call_details.invocation_metadata):
            def deny(request, context):
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "untagged")
            return grpc.unary_unary_rpc_method_handler(deny)
        return continuation(handler_call_details)


class Counting(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self.count = 0

    def intercept_service(self, continuation, handler_call_details):
        self.count += 1
        return continuation(handler_call_details)


def test_server_interceptors(impl):
    deny, counting = DenyUntagged(), Counting()
    with serving(impl, SyncServicer(), interceptors=[counting, deny]) as served:
        stub = served.stub()
        with pytest.raises(grpc.RpcError) as info:
            stub.UnaryCall(pb.SimpleRequest(), timeout=TIMEOUT)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == "untagged"
        reply = stub.UnaryCall(pb.SimpleRequest(response_size=2), timeout=TIMEOUT,
                               metadata=(("x-tag", "1"),))
        assert reply.payload.body == bytes(2)
        streamed = stub.StreamingOutputCall(_out(1, 2), timeout=TIMEOUT, metadata=(("x-tag", "1"),))
        assert [len(r.payload.body) for r in streamed] == [1, 2]
        assert deny.seen == ["/lanerpc.conformance.TestService/UnaryCall"] * 2 + \
            ["/lanerpc.conformance.TestService/StreamingOutputCall"]
        assert counting.count == 3


# ------------------------------------------------------------------ mixing the APIs

class _ThreadedEcho(echo_pb2_grpc.EchoServicer):
    def Unary(self, request, context):
        return echo_pb2.EchoMessage(payload=request.payload + b"!")


def test_a_sync_server_serves_async_and_grpc_channels(impl):
    """The blocking server answers lanerpc's async channel (grpc.aio's for grpc's
    server), and grpc's own sync channel (on a TCP port: lanerpc's ports splice gRPC
    clients to grpcio)."""
    with serving(impl, _ThreadedEcho()) as served:
        async def over_async() -> bytes:
            if impl.tls:
                from tests._tls import certs

                channel = rpc.secure_channel(served.target, rpc.ssl_channel_credentials(certs().ca))
            else:
                make = grpc.aio.insecure_channel if impl.is_grpc else rpc.insecure_channel
                channel = make(served.target)
            async with channel:
                reply = await echo_pb2_grpc.EchoStub(channel).Unary(
                    echo_pb2.EchoMessage(payload=b"a"), timeout=TIMEOUT)
                return reply.payload

        assert asyncio.run(asyncio.wait_for(over_async(), TIMEOUT)) == b"a!"
        if impl.bind == "tcp" and not impl.tls:
            with grpc.insecure_channel(served.target) as channel:
                reply = echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoMessage(payload=b"g"),
                                                              timeout=TIMEOUT)
                assert reply.payload == b"g!"


def test_a_sync_channel_calls_an_async_server(impl):
    """rpc.sync's channel (or grpc's) to an async server of the same kind."""
    from tests._support import Echo, serve

    credentials = None
    if impl.tls:
        from tests._tls import certs

        made = certs()
        credentials = rpc.ssl_server_credentials([(made.server.key, made.server.cert)])

    async def main() -> None:
        async with serve(Echo(), address=impl.address(), lanes=impl.lanes,
                         plain_grpc=impl.is_grpc, credentials=credentials) as served:
            def blocking() -> tuple[bytes, Any]:
                with impl.channel(served.target) as channel:
                    stub = echo_pb2_grpc.EchoStub(channel)
                    reply = stub.Unary(echo_pb2.EchoMessage(payload=b"s"), timeout=TIMEOUT)
                    streamed = [r.payload for r in stub.ServerStream(
                        echo_pb2.EchoMessage(payload=b"p"), timeout=TIMEOUT)]
                    return reply.payload, (streamed, getattr(channel, "lane", None))

            payload, (streamed, lane) = await asyncio.wait_for(asyncio.to_thread(blocking), TIMEOUT)
            assert payload == b"s"
            assert streamed == [b"p0", b"p1", b"p2"]
            if impl.lane is not None:
                assert lane == impl.lane

    asyncio.run(main())


def test_grpc_intercept_channel_wraps_a_sync_channel(impl):
    class Tag(grpc.UnaryUnaryClientInterceptor):
        def __init__(self) -> None:
            self.methods: list[str] = []

        def intercept_unary_unary(self, continuation, client_call_details, request):
            self.methods.append(client_call_details.method)
            return continuation(client_call_details, request)

    with serving(impl, SyncServicer()) as served:
        tag = Tag()
        channel = grpc.intercept_channel(served.channel(), tag)
        stub = conformance_pb2_grpc.TestServiceStub(channel)
        assert stub.UnaryCall(pb.SimpleRequest(response_size=1), timeout=TIMEOUT).payload.body == b"\x00"
        assert tag.methods == ["/lanerpc.conformance.TestService/UnaryCall"]
