"""The TestService servicer the conformance suite serves on every implementation.

It behaves as gRPC's interop test server does, plus what the suite needs to watch
the server side: every handler records that it started, that it ended (whichever way),
and whether it saw ``asyncio.CancelledError``.

Why "ended" and "cancelled" apart: when a client cancels (or its deadline passes) while
a grpc.aio handler waits on its request stream, grpc.aio ends that stream as if the
client had half-closed, and ``context.cancelled()`` stays False; the handler typically
just returns. Only a handler waiting on something else (a sleep, say) gets
``CancelledError``. So the suite asserts "ended promptly" for the first kind and
"cancelled" for the second.

Request metadata the handlers act on:

- ``x-grpc-test-echo-initial``: sent back as initial metadata;
- ``x-grpc-test-echo-trailing-bin``: sent back as trailing metadata;
- ``x-conformance-raise``: the handler raises ``RuntimeError(value)`` (unary calls at
  once; server-streaming calls after their responses).

``UnimplementedCall`` is deliberately not overridden: the generated base class's
method (a plain function that sets UNIMPLEMENTED and raises) is what a servicer that
leaves a method out really serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from tests._support import Tracked
from tests.conformance import conformance_pb2 as pb
from tests.conformance import conformance_pb2_grpc

ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"
RAISE_KEY = "x-conformance-raise"

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _metadata_value(context: Any, key: str) -> Any:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v
    return None


def _status(echo: pb.EchoStatus) -> grpc.StatusCode:
    return _CODES.get(echo.code, grpc.StatusCode.UNKNOWN)


class ConformanceServicer(Tracked, conformance_pb2_grpc.TestServiceServicer):
    """Interop-style TestService; one instance per server, so per test. Its handlers are
    counted and can be waited for (see :class:`tests._support.Tracked`)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping = asyncio.Event()  # a handler is in a sleep_ms / interval_us pause

    async def _sleep(self, seconds: float) -> None:
        self.sleeping.set()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.sleeping.clear()

    @staticmethod
    async def _echo_metadata(context: Any) -> None:
        initial = _metadata_value(context, ECHO_INITIAL_KEY)
        if initial is not None:
            await context.send_initial_metadata(((ECHO_INITIAL_KEY, initial),))
        trailing = _metadata_value(context, ECHO_TRAILING_KEY)
        if trailing is not None:
            context.set_trailing_metadata(((ECHO_TRAILING_KEY, trailing),))

    @staticmethod
    def _maybe_raise(context: Any) -> None:
        message = _metadata_value(context, RAISE_KEY)
        if message is not None:
            raise RuntimeError(message)

    async def EmptyCall(self, request: pb.Empty, context: Any) -> pb.Empty:
        with self._track():
            return pb.Empty()

    async def UnaryCall(self, request: pb.SimpleRequest, context: Any) -> pb.SimpleResponse:
        with self._track():
            time_remaining = context.time_remaining()
            await self._echo_metadata(context)
            self._maybe_raise(context)
            if request.sleep_ms:
                await self._sleep(request.sleep_ms / 1000)
            if request.HasField("response_status") and request.response_status.code:
                # abort(): the raising way to end a call with a status.
                await context.abort(_status(request.response_status), request.response_status.message)
            return pb.SimpleResponse(
                payload=pb.Payload(body=bytes(request.response_size)),
                time_remaining=-1.0 if time_remaining is None else time_remaining,
            )

    async def StreamingOutputCall(
        self, request: pb.StreamingOutputCallRequest, context: Any
    ) -> AsyncIterator[pb.StreamingOutputCallResponse]:
        with self._track():
            await self._echo_metadata(context)
            for params in request.response_parameters:
                if params.interval_us:
                    await self._sleep(params.interval_us / 1e6)
                yield pb.StreamingOutputCallResponse(payload=pb.Payload(body=bytes(params.size)))
            self._maybe_raise(context)
            if request.HasField("response_status") and request.response_status.code:
                # set_code()/set_details() and return: the non-raising way.
                context.set_code(_status(request.response_status))
                context.set_details(request.response_status.message)

    async def StreamingInputCall(
        self, request_iterator: AsyncIterator[pb.StreamingInputCallRequest], context: Any
    ) -> pb.StreamingInputCallResponse:
        with self._track():
            total = 0
            async for request in request_iterator:
                total += len(request.payload.body)
            return pb.StreamingInputCallResponse(aggregated_payload_size=total)

    async def FullDuplexCall(
        self, request_iterator: AsyncIterator[pb.StreamingOutputCallRequest], context: Any
    ) -> AsyncIterator[pb.StreamingOutputCallResponse]:
        with self._track():
            await self._echo_metadata(context)
            async for request in request_iterator:
                if request.HasField("response_status") and request.response_status.code:
                    context.set_code(_status(request.response_status))
                    context.set_details(request.response_status.message)
                    return
                for params in request.response_parameters:
                    if params.interval_us:
                        await self._sleep(params.interval_us / 1e6)
                    yield pb.StreamingOutputCallResponse(payload=pb.Payload(body=bytes(params.size)))

    async def HalfDuplexCall(
        self, request_iterator: AsyncIterator[pb.StreamingOutputCallRequest], context: Any
    ) -> AsyncIterator[pb.StreamingOutputCallResponse]:
        with self._track():
            await self._echo_metadata(context)
            requests = [request async for request in request_iterator]
            for request in requests:
                for params in request.response_parameters:
                    yield pb.StreamingOutputCallResponse(payload=pb.Payload(body=bytes(params.size)))
