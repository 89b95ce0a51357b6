"""gRPC's interop cases, and the grpc.aio behaviours lanerpc promises, run against every
active implementation with the same assertions (see impls.py for which run).

Written against the grpc.aio API only. Every await that could hang is bounded: RPCs carry
``timeout=``, other awaits go through ``within()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests._support import wait_until, within
from tests.conformance import conformance_pb2 as pb
from tests.conformance import conformance_pb2_grpc
from tests.conformance.impls import Impl
from tests.conformance.servicer import ECHO_INITIAL_KEY, ECHO_TRAILING_KEY, RAISE_KEY

RPC_TIMEOUT = 5.0  # every call's deadline; generous, a passing case takes milliseconds
OBSERVE_TIMEOUT = 1.0  # the server handler must see a cancellation within this

SPECIAL_STATUS_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
ECHO_INITIAL_VALUE = "test_initial_metadata_value"
ECHO_TRAILING_VALUE = b"\x0a\x0b\x0a\x0b\x0a\x0b"
ECHO_METADATA = ((ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE), (ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE))

CLIENT_STREAMING_SIZES = (27182, 8, 1828, 45904)
SERVER_STREAMING_SIZES = (31415, 9, 2653, 58979)


def values(metadata: Any, key: str) -> list[Any]:
    """All values of ``key`` in ``metadata`` (a grpc.aio.Metadata or pairs)."""
    return [v for k, v in (metadata or ()) if k == key]


def payload(size: int) -> pb.Payload:
    return pb.Payload(body=bytes(size))


def streaming_request(*sizes: int, request_size: int = 0) -> pb.StreamingOutputCallRequest:
    return pb.StreamingOutputCallRequest(
        response_parameters=[pb.ResponseParameters(size=s) for s in sizes],
        payload=payload(request_size),
    )


def status_request(code: int, message: str) -> pb.SimpleRequest:
    return pb.SimpleRequest(response_size=1, response_status=pb.EchoStatus(code=code, message=message))


async def expect_rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert isinstance(info.value, grpc.RpcError)
    return info.value


# -- the interop cases ------------------------------------------------------------------


async def test_empty_unary(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    response = await stub.EmptyCall(pb.Empty(), timeout=RPC_TIMEOUT)
    assert response == pb.Empty()


async def test_large_unary(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    request = pb.SimpleRequest(response_size=314159, payload=payload(271828))
    response = await stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    assert response.payload.body == bytes(314159)


async def test_client_streaming(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
    for size in CLIENT_STREAMING_SIZES:
        await call.write(pb.StreamingInputCallRequest(payload=payload(size)))
    await call.done_writing()
    response = await call
    assert response.aggregated_payload_size == 74922
    assert await call.code() == grpc.StatusCode.OK


async def test_server_streaming(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.StreamingOutputCall(streaming_request(*SERVER_STREAMING_SIZES), timeout=RPC_TIMEOUT)
    sizes = [len(r.payload.body) async for r in call]
    assert sizes == list(SERVER_STREAMING_SIZES)
    assert await call.code() == grpc.StatusCode.OK


async def test_ping_pong(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    for request_size, response_size in zip(CLIENT_STREAMING_SIZES, SERVER_STREAMING_SIZES, strict=True):
        await call.write(streaming_request(response_size, request_size=request_size))
        response = await call.read()
        assert response is not grpc.aio.EOF
        assert response.payload.body == bytes(response_size)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_empty_stream(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_empty_stream_async_for(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.FullDuplexCall(iter(()), timeout=RPC_TIMEOUT)
    assert [r async for r in call] == []
    assert await call.code() == grpc.StatusCode.OK


async def test_write_on_a_call_fed_by_an_iterator_is_a_usage_error(
        server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    requests = [pb.StreamingInputCallRequest(payload=payload(3))]
    call = stub.StreamingInputCall(iter(requests), timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.aio.UsageError):
        await call.write(pb.StreamingInputCallRequest(payload=payload(1)))
    with pytest.raises(grpc.aio.UsageError):
        await call.done_writing()
    assert (await within(call)).aggregated_payload_size == 3


async def test_custom_metadata_unary(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    request = pb.SimpleRequest(response_size=314159, payload=payload(271828))
    call = stub.UnaryCall(request, metadata=ECHO_METADATA, timeout=RPC_TIMEOUT)
    response = await call
    assert len(response.payload.body) == 314159
    assert values(await call.initial_metadata(), ECHO_INITIAL_KEY) == [ECHO_INITIAL_VALUE]
    assert values(await call.trailing_metadata(), ECHO_TRAILING_KEY) == [ECHO_TRAILING_VALUE]


async def test_custom_metadata_full_duplex(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.FullDuplexCall(metadata=ECHO_METADATA, timeout=RPC_TIMEOUT)
    await call.write(streaming_request(314159, request_size=271828))
    response = await call.read()
    assert len(response.payload.body) == 314159
    assert values(await call.initial_metadata(), ECHO_INITIAL_KEY) == [ECHO_INITIAL_VALUE]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert values(await call.trailing_metadata(), ECHO_TRAILING_KEY) == [ECHO_TRAILING_VALUE]


async def test_status_code_and_message_unary(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    error = await expect_rpc_error(
        stub.UnaryCall(status_request(2, "test status message"), timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details() == "test status message"


async def test_status_code_and_message_full_duplex(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await call.write(
        pb.StreamingOutputCallRequest(response_status=pb.EchoStatus(code=2, message="test status message"))
    )
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "test status message"
    assert await call.code() == grpc.StatusCode.UNKNOWN
    assert await call.details() == "test status message"


async def test_status_code_and_message_server_streaming(server_and_channel: Any) -> None:
    # Responses first, then a non-OK status set with set_code()/set_details().
    _, stub, _ = server_and_channel
    request = streaming_request(5, 6)
    request.response_status.CopyFrom(pb.EchoStatus(code=9, message="after two"))
    call = stub.StreamingOutputCall(request, timeout=RPC_TIMEOUT)
    sizes = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for response in call:
            sizes.append(len(response.payload.body))
    assert sizes == [5, 6]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "after two"


async def test_special_status_message(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    error = await expect_rpc_error(
        stub.UnaryCall(status_request(2, SPECIAL_STATUS_MESSAGE), timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details() == SPECIAL_STATUS_MESSAGE


async def test_unimplemented_method(server_and_channel: Any) -> None:
    # The servicer leaves UnimplementedCall to the generated base class.
    _, stub, _ = server_and_channel
    error = await expect_rpc_error(stub.UnimplementedCall(pb.Empty(), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_unregistered_method(server_and_channel: Any) -> None:
    # A method the server has no handler for at all.
    _, _, channel = server_and_channel
    method = channel.unary_unary(
        "/lanerpc.conformance.TestService/NoSuchMethod",
        request_serializer=pb.Empty.SerializeToString,
        response_deserializer=pb.Empty.FromString,
    )
    error = await expect_rpc_error(method(pb.Empty(), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_unimplemented_service(server_and_channel: Any) -> None:
    _, _, channel = server_and_channel
    stub = conformance_pb2_grpc.UnimplementedServiceStub(channel)
    error = await expect_rpc_error(stub.UnimplementedCall(pb.Empty(), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_cancel_after_begin(server_and_channel: Any) -> None:
    servicer, stub, _ = server_and_channel
    call = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
    # The call has begun once the server runs its handler; no message was sent.
    await within(servicer.started.wait())
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(call)
    assert call.cancelled()
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    # The handler was waiting on its request stream: it must end promptly, whether by
    # CancelledError or (as in grpc.aio) by that stream ending.
    await wait_until(lambda: servicer.ended_calls == 1, OBSERVE_TIMEOUT)


async def test_cancel_after_first_response(server_and_channel: Any) -> None:
    servicer, stub, _ = server_and_channel
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    await call.write(streaming_request(31415, request_size=27182))
    response = await call.read()
    assert len(response.payload.body) == 31415
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(call.read())
    assert call.cancelled()
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    await wait_until(lambda: servicer.ended_calls == 1, OBSERVE_TIMEOUT)  # as in test_cancel_after_begin


async def test_cancel_while_handler_busy_full_duplex(server_and_channel: Any) -> None:
    # The handler is sleeping before its second response, not reading: it must see
    # CancelledError. (Cancelling before the handler is in its sleep is racy on
    # grpc.aio: if the first response's send completes after the cancel, the handler
    # is never resumed, so never sees anything.)
    servicer, stub, _ = server_and_channel
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    request = streaming_request(1)
    request.response_parameters.add(size=2, interval_us=60_000_000)
    await call.write(request)
    assert len((await call.read()).payload.body) == 1
    await within(servicer.sleeping.wait())
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(call.read())
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    await within(servicer.cancelled.wait(), OBSERVE_TIMEOUT)
    assert servicer.cancelled_calls == servicer.ended_calls == 1


async def test_cancel_server_streaming_mid_stream(server_and_channel: Any) -> None:
    servicer, stub, _ = server_and_channel
    request = streaming_request(1)
    request.response_parameters.add(size=2, interval_us=60_000_000)
    call = stub.StreamingOutputCall(request, timeout=RPC_TIMEOUT)
    assert len((await call.read()).payload.body) == 1
    await within(servicer.sleeping.wait())  # as in the full-duplex case above
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(call.read())
    assert call.cancelled()
    assert await within(call.code()) == grpc.StatusCode.CANCELLED
    await within(servicer.cancelled.wait(), OBSERVE_TIMEOUT)
    assert servicer.cancelled_calls == servicer.ended_calls == 1


async def test_timeout_on_sleeping_server(server_and_channel: Any) -> None:
    # The server answers nothing and waits for input. Unlike the interop spec, no
    # request is written: on grpc.aio a write racing the 1 ms deadline sometimes ends
    # the whole call with INTERNAL ("Internal error from Core") instead of
    # DEADLINE_EXCEEDED.
    servicer, stub, _ = server_and_channel
    call = stub.FullDuplexCall(timeout=0.001)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await within(call.read())
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await within(call.code()) == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server may never have seen the call; if it did, the handler ends promptly.
    await wait_until(lambda: servicer.ended_calls == servicer.started_calls, OBSERVE_TIMEOUT)


# -- message size limits ----------------------------------------------------------------

SMALL_LIMIT = 1024


def unary_request_of_size(size: int) -> pb.SimpleRequest:
    """A SimpleRequest whose serialized size is exactly ``size`` bytes."""
    body = size
    while pb.SimpleRequest(payload=payload(body)).ByteSize() > size:
        body -= 1
    request = pb.SimpleRequest(payload=payload(body))
    assert request.ByteSize() == size
    return request


def unary_response_size_for(size: int) -> int:
    """``response_size`` for which the server's SimpleResponse (no deadline, so
    time_remaining=-1) serializes to exactly ``size`` bytes."""
    body = size
    while pb.SimpleResponse(payload=payload(body), time_remaining=-1.0).ByteSize() > size:
        body -= 1
    assert pb.SimpleResponse(payload=payload(body), time_remaining=-1.0).ByteSize() == size
    return body


async def test_server_max_receive_message_length(serve: Any) -> None:
    _, stub, _ = await serve(server_options=[("grpc.max_receive_message_length", SMALL_LIMIT)])
    response = await stub.UnaryCall(unary_request_of_size(SMALL_LIMIT), timeout=RPC_TIMEOUT)
    assert response.payload.body == b""
    error = await expect_rpc_error(
        stub.UnaryCall(unary_request_of_size(SMALL_LIMIT + 1), timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The connection is still good for the next call.
    assert await stub.EmptyCall(pb.Empty(), timeout=RPC_TIMEOUT) == pb.Empty()


async def test_client_max_receive_message_length(serve: Any) -> None:
    _, stub, _ = await serve(channel_options=[("grpc.max_receive_message_length", SMALL_LIMIT)])
    # No deadline on these calls (it would change the response's size), so within().
    at_limit = unary_response_size_for(SMALL_LIMIT)
    response = await within(stub.UnaryCall(pb.SimpleRequest(response_size=at_limit)))
    assert len(response.payload.body) == at_limit
    error = await expect_rpc_error(within(stub.UnaryCall(pb.SimpleRequest(response_size=at_limit + 1))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await stub.EmptyCall(pb.Empty(), timeout=RPC_TIMEOUT) == pb.Empty()


async def test_default_max_receive_message_length_is_4mib(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    error = await expect_rpc_error(
        stub.UnaryCall(pb.SimpleRequest(payload=payload(4 * 1024 * 1024 + 1)), timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- deadlines --------------------------------------------------------------------------


async def test_deadline_propagates_to_handler(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    response = await stub.UnaryCall(pb.SimpleRequest(), timeout=2.0)
    # grpc rounds the timeout it sends up by up to ~1% (2 s arrives as ~2.009 s).
    assert 1.0 < response.time_remaining <= 2.0 * 1.02


async def test_no_deadline_reaches_handler_as_none(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    response = await within(stub.UnaryCall(pb.SimpleRequest()))
    assert response.time_remaining == -1.0  # the servicer's encoding of None


async def test_deadline_cancels_handler(server_and_channel: Any) -> None:
    servicer, stub, _ = server_and_channel
    call = stub.UnaryCall(pb.SimpleRequest(sleep_ms=60_000), timeout=0.5)
    # The handler must be running when the deadline passes (one that has not begun
    # yet is never started at all).
    await within(servicer.sleeping.wait())
    error = await expect_rpc_error(within(call))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await within(call.code()) == grpc.StatusCode.DEADLINE_EXCEEDED
    await within(servicer.cancelled.wait(), OBSERVE_TIMEOUT)
    assert servicer.cancelled_calls == servicer.ended_calls == 1


async def test_deadline_already_passed(server_and_channel: Any) -> None:
    # A negative timeout, not 0: grpc.aio lets a timeout=0 call through most of the time.
    _, stub, _ = server_and_channel
    error = await expect_rpc_error(stub.UnaryCall(pb.SimpleRequest(), timeout=-1.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- handler errors ---------------------------------------------------------------------


async def test_handler_exception_unary(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    metadata = ((RAISE_KEY, "conformance handler failure"),)
    error = await expect_rpc_error(stub.UnaryCall(pb.SimpleRequest(), metadata=metadata, timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert "conformance handler failure" in error.details()


async def test_handler_exception_after_responses(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    metadata = ((RAISE_KEY, "failure after two"),)
    call = stub.StreamingOutputCall(streaming_request(3, 4), metadata=metadata, timeout=RPC_TIMEOUT)
    assert len((await call.read()).payload.body) == 3
    assert len((await call.read()).payload.body) == 4
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "failure after two" in info.value.details()


async def test_error_carries_metadata(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.UnaryCall(status_request(5, "not here"), metadata=ECHO_METADATA, timeout=RPC_TIMEOUT)
    error = await expect_rpc_error(call)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "not here"
    assert values(error.initial_metadata(), ECHO_INITIAL_KEY) == [ECHO_INITIAL_VALUE]
    assert values(error.trailing_metadata(), ECHO_TRAILING_KEY) == [ECHO_TRAILING_VALUE]
    assert values(await call.trailing_metadata(), ECHO_TRAILING_KEY) == [ECHO_TRAILING_VALUE]


# -- the call objects -------------------------------------------------------------------


async def test_unary_call_object(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.UnaryCall(pb.SimpleRequest(response_size=10), metadata=ECHO_METADATA, timeout=RPC_TIMEOUT)
    assert isinstance(call, grpc.aio.UnaryUnaryCall)
    assert values(await call.initial_metadata(), ECHO_INITIAL_KEY) == [ECHO_INITIAL_VALUE]
    response = await call
    assert len(response.payload.body) == 10
    assert await call.code() == grpc.StatusCode.OK
    assert not await call.details()
    assert values(await call.trailing_metadata(), ECHO_TRAILING_KEY) == [ECHO_TRAILING_VALUE]
    assert call.done()
    assert not call.cancelled()
    assert not call.cancel()  # too late: the call is done
    assert await call == response  # awaiting again gives the same response


async def test_server_streaming_call_object(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.StreamingOutputCall(streaming_request(1, 2), metadata=ECHO_METADATA, timeout=RPC_TIMEOUT)
    assert isinstance(call, grpc.aio.UnaryStreamCall)
    assert values(await call.initial_metadata(), ECHO_INITIAL_KEY) == [ECHO_INITIAL_VALUE]
    assert len((await call.read()).payload.body) == 1
    assert len((await call.read()).payload.body) == 2
    assert await call.read() is grpc.aio.EOF
    assert await call.read() is grpc.aio.EOF  # and stays at EOF
    assert await call.code() == grpc.StatusCode.OK
    assert not await call.details()
    assert values(await call.trailing_metadata(), ECHO_TRAILING_KEY) == [ECHO_TRAILING_VALUE]
    assert call.done()


async def test_client_streaming_call_object(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
    assert isinstance(call, grpc.aio.StreamUnaryCall)
    await call.write(pb.StreamingInputCallRequest(payload=payload(7)))
    await call.done_writing()
    await call.done_writing()  # idempotent
    response = await call
    assert response.aggregated_payload_size == 7
    assert await call.code() == grpc.StatusCode.OK
    assert call.done()


async def test_bidi_call_object(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    assert isinstance(call, grpc.aio.StreamStreamCall)
    await call.write(streaming_request(3))
    assert len((await call.read()).payload.body) == 3
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert not await call.details()
    assert call.done()


# -- the four call kinds, iterator style ------------------------------------------------


async def _input_requests(*sizes: int) -> AsyncIterator[pb.StreamingInputCallRequest]:
    for size in sizes:
        yield pb.StreamingInputCallRequest(payload=payload(size))


async def _output_requests(*sizes: int) -> AsyncIterator[pb.StreamingOutputCallRequest]:
    for size in sizes:
        yield streaming_request(size)


async def test_unary_await(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    response = await stub.UnaryCall(pb.SimpleRequest(response_size=3), timeout=RPC_TIMEOUT)
    assert response.payload.body == bytes(3)


async def test_server_streaming_async_for(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.StreamingOutputCall(streaming_request(1, 2, 3), timeout=RPC_TIMEOUT)
    assert [len(r.payload.body) async for r in call] == [1, 2, 3]


async def test_client_streaming_async_iterator(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    response = await stub.StreamingInputCall(_input_requests(*CLIENT_STREAMING_SIZES), timeout=RPC_TIMEOUT)
    assert response.aggregated_payload_size == 74922


async def test_client_streaming_sync_iterator(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    requests = [pb.StreamingInputCallRequest(payload=payload(s)) for s in CLIENT_STREAMING_SIZES]
    response = await stub.StreamingInputCall(iter(requests), timeout=RPC_TIMEOUT)
    assert response.aggregated_payload_size == 74922


async def test_bidi_async_for(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.FullDuplexCall(_output_requests(*SERVER_STREAMING_SIZES), timeout=RPC_TIMEOUT)
    assert [len(r.payload.body) async for r in call] == list(SERVER_STREAMING_SIZES)
    assert await call.code() == grpc.StatusCode.OK


async def test_half_duplex(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    call = stub.HalfDuplexCall(_output_requests(4, 5, 6), timeout=RPC_TIMEOUT)
    assert [len(r.payload.body) async for r in call] == [4, 5, 6]


# -- several calls on one channel -------------------------------------------------------


async def test_concurrent_unary_calls(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    sizes = [i * 997 for i in range(32)]
    calls = [
        stub.UnaryCall(pb.SimpleRequest(response_size=s, sleep_ms=s % 5), timeout=RPC_TIMEOUT) for s in sizes
    ]
    responses = await within(asyncio.gather(*calls))
    assert [len(r.payload.body) for r in responses] == sizes


async def test_interleaved_streams(server_and_channel: Any) -> None:
    _, stub, _ = server_and_channel
    first = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    second = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    for i in range(1, 6):
        await first.write(streaming_request(i))
        await second.write(streaming_request(100 + i))
        assert len((await second.read()).payload.body) == 100 + i
        assert len((await first.read()).payload.body) == i
    await first.done_writing()
    assert await first.read() is grpc.aio.EOF
    # The second stream is unaffected by the first one's end.
    await second.write(streaming_request(7))
    assert len((await second.read()).payload.body) == 7
    await second.done_writing()
    assert await second.read() is grpc.aio.EOF


# -- the lane ---------------------------------------------------------------------------


async def test_lane(impl: Impl, server_and_channel: Any) -> None:
    if impl.expected_lane is None:
        pytest.skip(f"{impl.name} promises no lane")
    _, stub, channel = server_and_channel
    await stub.EmptyCall(pb.Empty(), timeout=RPC_TIMEOUT)
    assert channel.lane == impl.expected_lane
