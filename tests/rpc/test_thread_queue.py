"""The queue of calls waiting for a handler thread is bounded: a plain (not async)
handler's call beyond the pool's threads plus ``lanerpc.max_queued_calls`` ends
RESOURCE_EXHAUSTED at once, without running; the calls already queued run when threads
free up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import grpc
import pytest

from examples.echo import echo_pb2_grpc
from tests._support import msg, serve, wait_until, within


class Blocking(echo_pb2_grpc.EchoServicer):
    """Unary as a plain function that waits for ``release``; counts the runs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ran = 0
        self._lock = threading.Lock()

    def Unary(self, request: Any, context: Any) -> Any:
        with self._lock:
            self.ran += 1
        self.release.wait(10)
        return request


async def test_calls_past_the_thread_queue_are_refused_and_the_queued_ones_run() -> None:
    servicer = Blocking()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        async with serve(servicer, lanes="tcp", options=[("lanerpc.max_queued_calls", 2)],
                         migration_thread_pool=pool) as served:
            stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
            held = [asyncio.ensure_future(stub.Unary(msg(f"held {i}".encode()))) for i in range(3)]
            await wait_until(lambda: servicer.ran == 1)   # one runs, two wait for the thread
            await asyncio.sleep(0.1)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await within(stub.Unary(msg(b"one too many")), 5)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "waiting for a handler thread" in (refused.value.details() or "")
            assert servicer.ran == 1
            servicer.release.set()
            replies = await within(asyncio.gather(*held), 10)
            assert [r.payload for r in replies] == [f"held {i}".encode() for i in range(3)]
            assert servicer.ran == 3
            # Room again once they have run.
            assert (await within(stub.Unary(msg(b"again")), 5)).payload == b"again"
    finally:
        servicer.release.set()
        pool.shutdown(wait=True)


def test_max_queued_calls_must_not_be_negative() -> None:
    import rpc
    with pytest.raises(ValueError, match="lanerpc.max_queued_calls"):
        rpc.server(options=[("lanerpc.max_queued_calls", -1)])
