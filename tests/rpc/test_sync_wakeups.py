"""How rpc.sync's threads wake each other: the loop's inbox (what other threads give
the loop to run) and the caller threads' wakers (what ends a blocking wait)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import rpc.sync
from examples.echo import echo_pb2, echo_pb2_grpc
from rpc import _sync_loop

TIMEOUT = 5.0


class SlowEcho(echo_pb2_grpc.EchoServicer):
    """Answers after ``delay`` seconds: a blocking caller is asleep when it answers."""

    delay = 0.2

    def Unary(self, request: echo_pb2.EchoMessage, context: Any) -> echo_pb2.EchoMessage:
        time.sleep(self.delay)
        return request


@pytest.fixture
def stub() -> Iterator[echo_pb2_grpc.EchoStub]:
    pool = futures.ThreadPoolExecutor(8)
    server = rpc.sync.server(pool)
    echo_pb2_grpc.add_EchoServicer_to_server(SlowEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = rpc.sync.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield echo_pb2_grpc.EchoStub(channel)
    finally:
        channel.close()
        assert server.stop(0).wait(TIMEOUT)
        pool.shutdown(wait=False)


def test_a_wake_up_left_on_the_thread_does_not_end_its_next_call_early(stub):
    """A wait given up (an interrupt) leaves its wake-up on the thread's eventfd:
    the next blocking call of that thread must still wait for its own answer."""
    waker = _sync_loop.thread_waker()
    waker.wake()
    waker.wake()
    started = time.monotonic()
    reply = stub.Unary(echo_pb2.EchoMessage(payload=b"mine"), timeout=TIMEOUT)
    assert reply.payload == b"mine"
    assert time.monotonic() - started >= SlowEcho.delay * 0.9


def test_threads_waiting_on_one_call_all_wake(stub):
    """Several threads wait on one future without a timeout (code(), result()): each
    registers its own waker, and the call's end wakes every one."""
    call = stub.Unary.future(echo_pb2.EchoMessage(payload=b"shared"), timeout=TIMEOUT)
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(call.code())) for _ in range(3)]
    threads.append(threading.Thread(target=lambda: seen.append(call.result().payload)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(map(str, seen)) == sorted([str(grpc.StatusCode.OK)] * 3 + [str(b"shared")])


def test_blocking_calls_from_many_threads_each_get_their_own_answer(stub):
    SlowEcho.delay = 0.01
    try:
        errors: list[str] = []

        def calls(name: bytes) -> None:
            for i in range(20):
                payload = b"%s-%d" % (name, i)
                reply = stub.Unary(echo_pb2.EchoMessage(payload=payload), timeout=TIMEOUT)
                if reply.payload != payload:
                    errors.append(f"{payload!r} got {reply.payload!r}")

        threads = [threading.Thread(target=calls, args=(b"t%d" % n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 4)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
    finally:
        SlowEcho.delay = 0.2


def test_a_future_waited_with_a_timeout_times_out_then_ends(stub):
    """The timed wait (the call's lock, not the thread's waker) gives up at its
    timeout and, waited again, sees the answer."""
    call = stub.Unary.future(echo_pb2.EchoMessage(payload=b"later"), timeout=TIMEOUT)
    with pytest.raises(grpc.FutureTimeoutError):
        call.result(timeout=0.01)
    assert call.result(timeout=TIMEOUT).payload == b"later"
    assert call.result(timeout=0).payload == b"later"     # over: no wait at all


def test_the_loop_runs_what_threads_give_it_in_order():
    """call_soon from several threads: each thread's functions run in the order it
    gave them, none lost; a call() after them runs after them."""
    ran: list[tuple[int, int]] = []

    def give(thread: int) -> None:
        for i in range(200):
            _sync_loop.call_soon(ran.append, (thread, i))

    threads = [threading.Thread(target=give, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    _sync_loop.call_soon(ran.append, (-1, 0))
    assert _sync_loop.call(lambda: ran[-1]) == (-1, 0)
    for n in range(4):
        assert [i for thread, i in ran if thread == n] == list(range(200))
    assert len(ran) == 4 * 200 + 1


def test_a_function_given_to_the_loop_that_raises_is_reported_and_the_next_still_runs():
    loop = _sync_loop.loop()
    reported: list[dict[str, Any]] = []
    previous = _sync_loop.call(loop.get_exception_handler)
    _sync_loop.call(loop.set_exception_handler, lambda _loop, context: reported.append(context))
    try:
        def fail() -> None:
            raise ValueError("from a test")

        ran: list[int] = []
        _sync_loop.call_soon(fail)
        _sync_loop.call_soon(ran.append, 1)
        _sync_loop.call(lambda: None)
        assert ran == [1]
        assert [type(context.get("exception")) for context in reported] == [ValueError]
    finally:
        _sync_loop.call(loop.set_exception_handler, previous)


class Gate(echo_pb2_grpc.EchoServicer):
    """A handler that holds its (only) pool thread until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.ran: list[bytes] = []

    def Unary(self, request: echo_pb2.EchoMessage, context: Any) -> echo_pb2.EchoMessage:
        self.ran.append(request.payload)
        if request.payload == b"hold":
            self.gate.wait(TIMEOUT)
        if request.payload == b"fail":
            raise ValueError("a handler's error")
        return request


def test_a_handler_still_queued_for_the_pool_when_its_call_ends_never_runs():
    servicer = Gate()
    pool = futures.ThreadPoolExecutor(1)
    server = rpc.sync.server(pool)
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with rpc.sync.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            held = stub.Unary.future(echo_pb2.EchoMessage(payload=b"hold"), timeout=TIMEOUT)
            deadline = time.monotonic() + TIMEOUT
            while servicer.ran != [b"hold"] and time.monotonic() < deadline:
                time.sleep(0.005)
            with pytest.raises(grpc.RpcError) as info:
                stub.Unary(echo_pb2.EchoMessage(payload=b"queued"), timeout=0.2)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.1)     # (the server's own deadline passes too)
            servicer.gate.set()
            assert held.result(TIMEOUT).payload == b"hold"
            # The pool is free again: a new call runs, and its handler's error is the call's.
            with pytest.raises(grpc.RpcError) as info:
                stub.Unary(echo_pb2.EchoMessage(payload=b"fail"), timeout=TIMEOUT)
            assert info.value.code() is grpc.StatusCode.UNKNOWN
            assert stub.Unary(echo_pb2.EchoMessage(payload=b"next"), timeout=TIMEOUT).payload == b"next"
            assert servicer.ran == [b"hold", b"fail", b"next"]
    finally:
        servicer.gate.set()
        assert server.stop(0).wait(TIMEOUT)
        pool.shutdown(wait=False)


def test_without_eventfds_blocking_calls_wait_on_the_calls_lock(stub, monkeypatch):
    """Where the OS has no eventfd, a blocking call waits on its call's lock instead
    of its thread's waker: the same answers, from several threads at once."""
    monkeypatch.setattr(_sync_loop, "HAS_EVENTFD", False)
    SlowEcho.delay = 0.01
    try:
        replies: list[bytes] = []

        def calls(name: bytes) -> None:
            for i in range(5):
                payload = b"%s-%d" % (name, i)
                replies.append(stub.Unary(echo_pb2.EchoMessage(payload=payload), timeout=TIMEOUT).payload)

        threads = [threading.Thread(target=calls, args=(b"t%d" % n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 2)
        assert not any(thread.is_alive() for thread in threads)
        assert sorted(replies) == sorted(b"t%d-%d" % (n, i) for n in range(3) for i in range(5))
        call = stub.Unary.future(echo_pb2.EchoMessage(payload=b"f"), timeout=TIMEOUT)
        assert call.code() is grpc.StatusCode.OK and call.result().payload == b"f"
    finally:
        SlowEcho.delay = 0.2
