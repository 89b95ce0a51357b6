"""The client's corners, as grpc.aio has them: interceptors (what the chain sees and
returns), cancellation, misuse of a call, wait_for_connection, and closing a channel.

Run against every active implementation (see impls.py) with the same assertions;
``grpc-tcp`` is the reference. Cases marked ``intercepted`` run twice: on a plain
channel and through a pass-through interceptor of every kind, since an intercepted
call must behave as the plain one does. Every await that could hang is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from tests._support import wait_until, within
from tests.conformance import conformance_pb2 as pb
from tests.conformance import conformance_pb2_grpc
from tests.conformance.servicer import ECHO_INITIAL_KEY, ConformanceServicer

RPC_TIMEOUT = 5.0
LOCALLY_CANCELLED = "Locally cancelled by application!"


# ------------------------------------------------------------------ helpers


def every_kind(hook: Any) -> list[aio.ClientInterceptor]:
    """One interceptor of each kind, each answering ``await hook(continuation,
    details, request)``. (One class per kind: grpc.aio installs an object that
    implements several kinds for the first one only, grpc/grpc#31442.)"""

    class UnaryUnary(aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, details, request):
            return await hook(continuation, details, request)

    class UnaryStream(aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, details, request):
            return await hook(continuation, details, request)

    class StreamUnary(aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, details, request_iterator):
            return await hook(continuation, details, request_iterator)

    class StreamStream(aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, details, request_iterator):
            return await hook(continuation, details, request_iterator)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


async def pass_through(continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
    """Continue the call unchanged; return the call continuing gave."""
    return await continuation(details, request)


@pytest.fixture(params=[False, True], ids=["plain", "intercepted"])
def intercepted(request: pytest.FixtureRequest) -> bool:
    return request.param


async def open_stub(start, connect, *interceptors: Any) -> tuple[ConformanceServicer, Any, Any]:
    """A fresh servicer served on the implementation, and a stub on a channel to it
    with ``interceptors`` (none: a plain channel)."""
    servicer = ConformanceServicer()
    served = await start(servicer)
    channel = connect(served, interceptors=list(interceptors)) if interceptors else connect(served)
    return servicer, conformance_pb2_grpc.TestServiceStub(channel), channel


async def stub_for(start, connect, intercepted: bool) -> tuple[ConformanceServicer, Any, Any]:
    return await open_stub(start, connect, *(every_kind(pass_through) if intercepted else []))


def output_request(*sizes: int, interval_ms: int = 0) -> pb.StreamingOutputCallRequest:
    return pb.StreamingOutputCallRequest(response_parameters=[
        pb.ResponseParameters(size=size, interval_us=interval_ms * 1000) for size in sizes])


def input_request(size: int) -> pb.StreamingInputCallRequest:
    return pb.StreamingInputCallRequest(payload=pb.Payload(body=bytes(size)))


async def awaited(call: Any) -> Any:
    return await call


# ------------------------------------------------------------------ interceptors


class AddsMetadata:
    """Adds the echo key to whatever metadata the call has, grpc.aio's documented way:
    ``Metadata(*details.metadata, ...)``; records the metadata it was given."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
        self.seen.append(details.metadata)
        return await continuation(aio.ClientCallDetails(
            details.method, details.timeout,
            aio.Metadata(*details.metadata, (ECHO_INITIAL_KEY, "added")),
            details.credentials, details.wait_for_ready), request)


async def test_call_details_metadata_is_empty_metadata_when_the_call_has_none(start, connect):
    adds = AddsMetadata()
    _, stub, _ = await open_stub(start, connect, *every_kind(adds))
    unary = stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT)
    await within(unary)
    server_stream = stub.StreamingOutputCall(output_request(1), timeout=RPC_TIMEOUT)
    assert [len(r.payload.body) async for r in server_stream] == [1]
    client_stream = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
    await within(client_stream.done_writing())
    await within(client_stream)
    bidi = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(bidi.done_writing())
    assert await within(bidi.read()) is aio.EOF

    assert len(adds.seen) == 4
    for metadata in adds.seen:
        assert isinstance(metadata, aio.Metadata)
        assert len(metadata) == 0
    for call in (unary, server_stream, bidi):   # the handlers that echo the key
        assert ("x-grpc-test-echo-initial", "added") in tuple(await within(call.initial_metadata()))


async def test_call_details_metadata_keeps_what_the_call_has(start, connect):
    adds = AddsMetadata()
    _, stub, _ = await open_stub(start, connect, *every_kind(adds))
    await within(stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT, metadata=(("k", "v"),)))
    assert isinstance(adds.seen[0], aio.Metadata)
    assert tuple(adds.seen[0]) == (("k", "v"),)


class Answers(aio.UnaryUnaryClientInterceptor):
    """Answers the call itself: the RPC never starts."""

    async def intercept_unary_unary(self, continuation, details, request):
        return pb.SimpleResponse(payload=pb.Payload(body=b"from the interceptor"))


class SeesInner(aio.UnaryUnaryClientInterceptor):
    """Awaits what its continuation returns, as an outer interceptor does."""

    def __init__(self) -> None:
        self.seen: tuple[Any, ...] = ()

    async def intercept_unary_unary(self, continuation, details, request):
        call = await continuation(details, request)
        self.seen = (await call, await call.code(), await call.details(), call.done(),
                     call.cancelled())
        return call


async def test_inner_interceptor_answering_gives_the_outer_one_a_call(start, connect):
    outer = SeesInner()
    servicer, stub, _ = await open_stub(start, connect, outer, Answers())
    call = stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT)
    assert (await within(call)).payload.body == b"from the interceptor"
    response, code, details, done, cancelled = outer.seen
    assert response.payload.body == b"from the interceptor"
    assert (code, details, done, cancelled) == (grpc.StatusCode.OK, "", True, False)
    assert await within(call.code()) == grpc.StatusCode.OK
    assert call.done() and not call.cancelled()
    assert servicer.started_calls == 0


async def wraps_responses(continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
    """Returns an iterator of its own over the call's responses, each marked."""
    call = await continuation(details, request)

    async def marked() -> AsyncIterator[pb.StreamingOutputCallResponse]:
        async for response in call:
            yield pb.StreamingOutputCallResponse(payload=pb.Payload(body=b"w" + response.payload.body))

    return marked()


async def test_wrapped_response_iterator_reads_and_gives_the_real_status(start, connect):
    _, stub, _ = await open_stub(start, connect, *every_kind(wraps_responses)[1::2])
    call = stub.StreamingOutputCall(output_request(1, 2), timeout=RPC_TIMEOUT)
    assert (await within(call.read())).payload.body == b"w" + bytes(1)
    assert (await within(call.read())).payload.body == b"w" + bytes(2)
    assert await within(call.read()) is aio.EOF
    assert await within(call.code()) == grpc.StatusCode.OK

    request = output_request(1)
    request.response_status.code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
    request.response_status.message = "asked"
    failing = stub.StreamingOutputCall(request, timeout=RPC_TIMEOUT)
    assert (await within(failing.read())).payload.body == b"w" + bytes(1)
    with pytest.raises(aio.AioRpcError) as err:
        await within(failing.read())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await within(failing.code()) == grpc.StatusCode.FAILED_PRECONDITION
    assert await within(failing.details()) == "asked"


async def test_wrapped_response_iterator_cancels(start, connect):
    servicer, stub, _ = await open_stub(start, connect, *every_kind(wraps_responses)[1::2])
    call = stub.StreamingOutputCall(output_request(1, 1, 1, interval_ms=300), timeout=RPC_TIMEOUT)
    await within(servicer.sleeping.wait())
    assert call.cancel()
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    assert call.cancelled() and call.done()
    await within(servicer.ended.wait())


async def test_wrapped_response_iterator_with_writes(start, connect):
    _, stub, _ = await open_stub(start, connect, *every_kind(wraps_responses)[1::2])
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(call.write(output_request(3)))
    assert (await within(call.read())).payload.body == b"w" + bytes(3)
    await within(call.done_writing())
    assert await within(call.read()) is aio.EOF
    assert await within(call.code()) == grpc.StatusCode.OK


async def doubles_requests(continuation: Any, details: aio.ClientCallDetails, requests: Any) -> Any:
    """Passes on a request iterator of its own: each request twice."""
    async def doubled() -> AsyncIterator[Any]:
        async for request in requests:
            yield request
            yield request

    return await continuation(details, doubled())


async def test_writes_reach_an_interceptor_that_replaces_the_request_iterator(start, connect):
    _, stub, _ = await open_stub(start, connect, *every_kind(doubles_requests)[2:])
    call = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
    await within(call.write(input_request(3)))
    await within(call.write(input_request(4)))
    await within(call.done_writing())
    assert (await within(call)).aggregated_payload_size == 14

    bidi = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(bidi.write(output_request(5)))
    assert len((await within(bidi.read())).payload.body) == 5
    assert len((await within(bidi.read())).payload.body) == 5
    await within(bidi.done_writing())
    assert await within(bidi.read()) is aio.EOF
    assert await within(bidi.code()) == grpc.StatusCode.OK


async def test_the_callers_request_iterator_goes_through_the_interceptor(start, connect):
    _, stub, _ = await open_stub(start, connect, *every_kind(doubles_requests)[2:])

    async def requests() -> AsyncIterator[pb.StreamingInputCallRequest]:
        yield input_request(2)

    call = stub.StreamingInputCall(requests(), timeout=RPC_TIMEOUT)
    assert (await within(call)).aggregated_payload_size == 4


async def test_intercepted_call_has_debug_error_string(start, connect):
    _, stub, _ = await open_stub(start, connect, *every_kind(pass_through))
    request = pb.SimpleRequest()
    request.response_status.code = grpc.StatusCode.NOT_FOUND.value[0]
    call = stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    with pytest.raises(aio.AioRpcError):
        await within(call)
    assert isinstance(await within(call.debug_error_string()), str)
    ok = stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT)
    await within(ok)
    assert isinstance(await within(ok.debug_error_string()), str)


@pytest.mark.parametrize("when", ["at_once", "running"])
async def test_cancelled_call_code_is_cancelled(start, connect, intercepted, when):
    servicer, stub, _ = await stub_for(start, connect, intercepted)
    call = stub.UnaryCall(pb.SimpleRequest(sleep_ms=3000), timeout=RPC_TIMEOUT)
    if when == "running":
        await within(servicer.sleeping.wait())
    assert call.cancel()
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    assert await within(call.details()) == LOCALLY_CANCELLED
    assert call.cancelled() and call.done()
    with pytest.raises(asyncio.CancelledError):
        await within(call)


async def awaits_the_call(continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
    """Awaits the call inside the chain: a failing call raises out of the interceptor."""
    call = await continuation(details, request)
    await call
    return call


async def test_interceptor_that_raises_gives_the_status_of_its_error(start, connect):
    _, stub, _ = await open_stub(start, connect, *every_kind(awaits_the_call))
    request = pb.SimpleRequest()
    request.response_status.code = grpc.StatusCode.NOT_FOUND.value[0]
    request.response_status.message = "nowhere"
    call = stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    with pytest.raises(aio.AioRpcError) as err:
        await within(call)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await within(call.code()) == grpc.StatusCode.NOT_FOUND
    assert await within(call.details()) == "nowhere"
    assert call.done() and not call.cancelled()


async def retries_once(continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
    """Makes the call again when the first one fails: the second call is the call."""
    first = await continuation(details, request)
    if await first.code() == grpc.StatusCode.OK:
        return first
    return await continuation(details, pb.SimpleRequest(response_size=2))


async def test_interceptor_may_make_the_call_twice(start, connect):
    servicer, stub, _ = await open_stub(start, connect, *every_kind(retries_once)[:1])
    request = pb.SimpleRequest(response_size=1)
    request.response_status.code = grpc.StatusCode.UNAVAILABLE.value[0]
    call = stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    assert len((await within(call)).payload.body) == 2
    assert await within(call.code()) == grpc.StatusCode.OK
    assert servicer.started_calls == 2


@pytest.mark.parametrize("when", ["before", "after"])
async def test_intercepted_call_runs_done_callbacks(start, connect, when):
    _, stub, _ = await open_stub(start, connect, *every_kind(pass_through))
    ended = asyncio.Event()
    seen: list[Any] = []

    def done(call: Any) -> None:
        seen.append(call)
        ended.set()

    call = stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT)
    if when == "after":
        await within(call)
    call.add_done_callback(done)
    await within(call)
    await within(ended.wait())
    assert seen == [call]


# ------------------------------------------------------------------ call credentials


async def test_call_credentials_on_an_insecure_channel_raise_usage_error(impl, start, connect):
    if impl.name.startswith("lanerpc-tls") or impl.name in ("lanerpc-unix", "lanerpc-memory", "lanerpc-pipe"):
        pytest.skip("a secure channel (TLS, or a unix: target the kernel vouches for): call "
                    "credentials are sent there (tests/rpc/test_call_credentials.py)")
    _, stub, _ = await stub_for(start, connect, False)
    credentials = grpc.access_token_call_credentials("token")
    with pytest.raises(aio.UsageError):
        stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT, credentials=credentials)
    with pytest.raises(aio.UsageError):
        stub.StreamingOutputCall(output_request(1), timeout=RPC_TIMEOUT, credentials=credentials)
    with pytest.raises(aio.UsageError):
        stub.StreamingInputCall(timeout=RPC_TIMEOUT, credentials=credentials)
    with pytest.raises(aio.UsageError):
        stub.FullDuplexCall(timeout=RPC_TIMEOUT, credentials=credentials)


# ------------------------------------------------------------------ cancellation


@pytest.mark.parametrize("method", ["StreamingInputCall", "FullDuplexCall"])
async def test_cancel_cancels_the_request_iterator(start, connect, intercepted, method):
    servicer, stub, _ = await stub_for(start, connect, intercepted)
    waiting, saw_cancel = asyncio.Event(), asyncio.Event()
    first = input_request(1) if method == "StreamingInputCall" else output_request()

    async def requests() -> AsyncIterator[Any]:
        try:
            yield first
            waiting.set()
            await asyncio.Event().wait()    # a request that never comes
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    iterator = requests()
    call = getattr(stub, method)(iterator, timeout=RPC_TIMEOUT)
    await within(servicer.started.wait())
    await within(waiting.wait())
    assert call.cancel()
    await within(saw_cancel.wait())
    await wait_until(lambda: iterator.ag_frame is None)     # the generator is over: no task holds it
    assert await within(call.code()) == grpc.StatusCode.CANCELLED


async def test_cancelling_a_wait_for_code_leaves_the_rpc_running(start, connect):
    servicer, stub, _ = await stub_for(start, connect, False)
    call = stub.UnaryCall(pb.SimpleRequest(sleep_ms=600), timeout=RPC_TIMEOUT)
    waiting = asyncio.ensure_future(call.code())
    await within(servicer.sleeping.wait())
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not call.done()
    assert await within(call.code()) == grpc.StatusCode.OK
    await within(call)


async def test_cancelling_a_task_awaiting_the_call_cancels_it(start, connect, intercepted):
    servicer, stub, _ = await stub_for(start, connect, intercepted)
    call = stub.UnaryCall(pb.SimpleRequest(sleep_ms=3000), timeout=RPC_TIMEOUT)
    waiting = asyncio.ensure_future(awaited(call))
    await within(servicer.sleeping.wait())
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    assert call.cancelled()
    await within(servicer.cancelled.wait())


# ------------------------------------------------------------------ misuse


async def test_write_after_the_call_ended_raises_invalid_state(start, connect, intercepted):
    _, stub, _ = await stub_for(start, connect, intercepted)
    call = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
    await within(call.write(input_request(1)))
    await within(call.done_writing())
    await within(call)
    with pytest.raises(asyncio.InvalidStateError):
        await within(call.write(input_request(1)))


async def test_write_after_cancel_raises_invalid_state(start, connect, intercepted):
    _, stub, _ = await stub_for(start, connect, intercepted)
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(call.write(output_request()))
    call.cancel()
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.InvalidStateError):
        await within(call.write(output_request()))


async def test_write_after_done_writing_raises_invalid_state(start, connect, intercepted):
    _, stub, _ = await stub_for(start, connect, intercepted)
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(call.done_writing())
    with pytest.raises(asyncio.InvalidStateError):
        await within(call.write(output_request()))
    await within(call.done_writing())     # idempotent
    assert await within(call.read()) is aio.EOF


async def test_write_with_a_request_iterator_raises_usage_error(start, connect, intercepted):
    _, stub, _ = await stub_for(start, connect, intercepted)

    async def requests() -> AsyncIterator[pb.StreamingInputCallRequest]:
        yield input_request(2)

    call = stub.StreamingInputCall(requests(), timeout=RPC_TIMEOUT)
    with pytest.raises(aio.UsageError):
        await within(call.write(input_request(1)))
    with pytest.raises(aio.UsageError):
        await within(call.done_writing())
    assert (await within(call)).aggregated_payload_size == 2


async def test_read_then_async_for_raises_usage_error(start, connect):
    _, stub, _ = await stub_for(start, connect, False)
    call = stub.StreamingOutputCall(output_request(1, 2), timeout=RPC_TIMEOUT)
    assert len((await within(call.read())).payload.body) == 1
    with pytest.raises(aio.UsageError):
        async for _ in call:
            pass
    call.cancel()


async def test_async_for_then_read_raises_usage_error(start, connect):
    _, stub, _ = await stub_for(start, connect, False)
    call = stub.StreamingOutputCall(output_request(1, 2), timeout=RPC_TIMEOUT)
    responses = call.__aiter__()
    assert len((await within(responses.__anext__())).payload.body) == 1
    with pytest.raises(aio.UsageError):
        await within(call.read())
    call.cancel()


async def test_read_after_the_call_ended_is_not_mixing(start, connect):
    _, stub, _ = await stub_for(start, connect, False)
    call = stub.StreamingOutputCall(output_request(1), timeout=RPC_TIMEOUT)
    assert [len(r.payload.body) async for r in call] == [1]
    assert await within(call.read()) is aio.EOF


async def test_intercepted_call_reads_either_way(start, connect):
    """grpc.aio reads an intercepted call through one iterator: mixing is allowed."""
    _, stub, _ = await stub_for(start, connect, True)
    call = stub.StreamingOutputCall(output_request(1, 2), timeout=RPC_TIMEOUT)
    assert len((await within(call.read())).payload.body) == 1
    assert [len(r.payload.body) async for r in call] == [2]


# ------------------------------------------------------------------ wait_for_connection


async def test_wait_for_connection_on_streaming_calls_does_not_wait_for_the_answer(
        start, connect, intercepted):
    # Neither handler sends anything before it has read all the requests.
    _, stub, _ = await stub_for(start, connect, intercepted)
    client_stream = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
    await within(client_stream.wait_for_connection(), 2)
    assert not client_stream.done()
    await within(client_stream.write(input_request(3)))
    await within(client_stream.done_writing())
    assert (await within(client_stream)).aggregated_payload_size == 3

    bidi = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(bidi.wait_for_connection(), 2)
    assert not bidi.done()
    await within(bidi.done_writing())
    assert await within(bidi.read()) is aio.EOF

    server_stream = stub.StreamingOutputCall(output_request(1, interval_ms=1000), timeout=RPC_TIMEOUT)
    await within(server_stream.wait_for_connection(), 2)
    assert not server_stream.done()
    server_stream.cancel()


async def test_wait_for_connection_raises_the_status_of_a_failed_call(start, connect):
    _, stub, _ = await stub_for(start, connect, False)
    request = pb.SimpleRequest()
    request.response_status.code = grpc.StatusCode.NOT_FOUND.value[0]
    call = stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    with pytest.raises(aio.AioRpcError) as err:
        await within(call.wait_for_connection())
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------ closing the channel


async def test_close_with_grace_lets_a_call_finish(start, connect, intercepted):
    servicer, stub, channel = await stub_for(start, connect, intercepted)
    call = stub.UnaryCall(pb.SimpleRequest(sleep_ms=300), timeout=RPC_TIMEOUT)
    await within(servicer.sleeping.wait())
    await within(channel.close(grace=RPC_TIMEOUT))
    assert call.done()
    assert await within(call.code()) == grpc.StatusCode.OK
    await within(call)


async def test_close_cancels_a_call_that_outlives_the_grace(start, connect, intercepted):
    servicer, stub, channel = await stub_for(start, connect, intercepted)
    call = stub.UnaryCall(pb.SimpleRequest(sleep_ms=4000), timeout=RPC_TIMEOUT)
    await within(servicer.sleeping.wait())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await within(channel.close(grace=0.3))
    assert 0.25 <= loop.time() - started < 3
    assert call.done()
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await within(call)


async def test_close_on_a_connecting_channel_ends_its_calls(start, connect, intercepted):
    _, stub, channel = await stub_for(start, connect, intercepted)
    # The channel has not connected yet: these calls wait for the connection.
    unary = stub.UnaryCall(pb.SimpleRequest(), timeout=RPC_TIMEOUT)
    bidi = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await within(channel.close())
    assert unary.done() and bidi.done()
    assert await within(unary.code()) == grpc.StatusCode.CANCELLED
    assert await within(bidi.code()) == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await within(unary)


async def test_close_with_grace_on_a_connecting_channel_lets_its_calls_finish(
        start, connect, intercepted):
    _, stub, channel = await stub_for(start, connect, intercepted)
    unary = stub.UnaryCall(pb.SimpleRequest(sleep_ms=100), timeout=RPC_TIMEOUT)
    await within(channel.close(grace=RPC_TIMEOUT))
    assert unary.done()
    assert await within(unary.code()) == grpc.StatusCode.OK


async def test_closed_channel_refuses_calls_and_state_waits(start, connect):
    _, stub, channel = await stub_for(start, connect, False)
    await within(stub.EmptyCall(pb.Empty(), timeout=RPC_TIMEOUT))
    await within(channel.close())
    assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    with pytest.raises(aio.UsageError):
        stub.EmptyCall(pb.Empty(), timeout=RPC_TIMEOUT)
    for state in (grpc.ChannelConnectivity.SHUTDOWN, grpc.ChannelConnectivity.READY):
        with pytest.raises(aio.UsageError):
            await within(channel.wait_for_state_change(state), 2)
    with pytest.raises(aio.UsageError):
        await within(channel.channel_ready(), 2)


async def test_close_refuses_a_negative_grace(start, connect):
    _, stub, channel = await stub_for(start, connect, False)
    with pytest.raises(ValueError):
        await within(channel.close(grace=-1))
    await within(stub.EmptyCall(pb.Empty(), timeout=RPC_TIMEOUT))    # still open
