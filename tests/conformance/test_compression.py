"""Compression as grpc.aio does it, on grpc.aio and every lane with the same assertions:
a channel's ``compression=``, a call's ``compression=``, the server's ``compression=``,
``context.set_compression`` and ``disable_next_message_compression`` all give the same
answers as without; a request compressed with an algorithm the server turned off ends
UNIMPLEMENTED. (That the bytes on the wire shrink is lanerpc's own test:
tests/rpc/test_compression.py.)"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from examples.echo import echo_pb2_grpc
from tests._support import msg, within

BIG = b"a" * 65536          # compresses to a few hundred bytes
_C = grpc.StatusCode


class Compressing(echo_pb2_grpc.EchoServicer):
    """Echoes; the payload's first byte says how the handler sets compression:
    ``g`` gzip for the call, ``d`` deflate and the first response uncompressed."""

    @staticmethod
    def _choose(request: Any, context: Any) -> None:
        if request.payload[:1] == b"g":
            context.set_compression(grpc.Compression.Gzip)
        elif request.payload[:1] == b"d":
            context.set_compression(grpc.Compression.Deflate)
            context.disable_next_message_compression()

    async def Unary(self, request, context):
        self._choose(request, context)
        return request

    async def ServerStream(self, request, context):
        self._choose(request, context)
        for _ in range(3):
            yield request

    async def ClientStream(self, request_iterator, context):
        payloads = [message.payload async for message in request_iterator]
        return msg(b"".join(payloads))

    async def Bidi(self, request_iterator, context):
        async for message in request_iterator:
            self._choose(message, context)
            yield message


async def _all_kinds(stub: Any, payload: bytes, **kwargs: Any) -> None:
    assert (await within(stub.Unary(msg(payload), **kwargs))).payload == payload
    replies = [r.payload async for r in stub.ServerStream(msg(payload), **kwargs)]
    assert replies == [payload] * 3
    reply = await within(stub.ClientStream(iter([msg(payload), msg(b"z")]), **kwargs))
    assert reply.payload == payload + b"z"
    call = stub.Bidi(**kwargs)
    await within(call.write(msg(payload)))
    assert (await within(call.read())).payload == payload
    await within(call.done_writing())


@pytest.mark.parametrize("algorithm", [grpc.Compression.Gzip, grpc.Compression.Deflate])
async def test_channel_compression(start, connect, algorithm):
    stub = echo_pb2_grpc.EchoStub(connect(await start(Compressing()), compression=algorithm))
    await _all_kinds(stub, BIG)


@pytest.mark.parametrize("algorithm", [grpc.Compression.Gzip, grpc.Compression.Deflate,
                                       grpc.Compression.NoCompression])
async def test_call_compression(start, connect, algorithm):
    stub = echo_pb2_grpc.EchoStub(connect(await start(Compressing())))
    await _all_kinds(stub, BIG, compression=algorithm)


async def test_server_compression_and_set_compression(start, connect):
    served = await start(Compressing(), compression=grpc.Compression.Gzip)
    stub = echo_pb2_grpc.EchoStub(connect(served))
    await _all_kinds(stub, BIG)
    await _all_kinds(stub, b"g" + BIG)          # set_compression(Gzip)
    await _all_kinds(stub, b"d" + BIG)          # Deflate, the next message not compressed


async def test_a_request_compressed_with_a_disabled_algorithm_is_unimplemented(start, connect):
    served = await start(Compressing(), options=[("grpc.compression_enabled_algorithms_bitset", 1)])
    stub = echo_pb2_grpc.EchoStub(connect(served))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await within(stub.Unary(msg(BIG), compression=grpc.Compression.Gzip))
    assert refused.value.code() is _C.UNIMPLEMENTED
    assert refused.value.details() == "Compression algorithm 'gzip' is disabled."
    # Uncompressed calls are served as before.
    assert (await within(stub.Unary(msg(b"plain")))).payload == b"plain"
