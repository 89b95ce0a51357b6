"""Big messages end to end: read into one buffer of their size, handed to protobuf's
FromString as they are, and as bytes to anything else (what grpc.aio gives)."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest

from examples.echo import echo_pb2, echo_pb2_grpc
from rpc._stream import parses_buffers
from tests._support import Echo, msg, serve, within

MIB = 1 << 20
OPTIONS = [("grpc.max_send_message_length", 32 * MIB),
           ("grpc.max_receive_message_length", 32 * MIB)]


def test_only_a_protobuf_message_class_fromstring_parses_buffers() -> None:
    assert parses_buffers(echo_pb2.EchoMessage.FromString)
    assert not parses_buffers(None)
    assert not parses_buffers(bytes)
    assert not parses_buffers(lambda data: echo_pb2.EchoMessage.FromString(data))
    assert not parses_buffers(echo_pb2.EchoMessage().ParseFromString)


@pytest.mark.parametrize("lanes", ["tcp", "unix,tcp"])
async def test_big_messages_cross_whole_to_protobuf_and_to_raw_bytes(lanes: str) -> None:
    seen: list[Any] = []

    def raw(server: Any) -> None:
        async def upload(request: Any, context: Any) -> bytes:
            seen.append(request)          # no deserializer: the handler gets bytes
            return bytes(request[::-1])

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "raw.Raw", {"Upload": grpc.unary_unary_rpc_method_handler(upload)}),))

    big = os.urandom(9 * MIB + 7)
    async with serve(Echo(), raw, lanes=lanes, options=OPTIONS) as served:
        channel = served.channel(lanes=lanes, options=OPTIONS)
        stub = echo_pb2_grpc.EchoStub(channel)
        reply = await within(stub.Unary(msg(big)), 60)
        assert reply.payload == big
        call = stub.Bidi(iter([msg(big), msg(b"small")]))
        replies = [r.payload for r in await within(_all(call), 60)]
        assert replies == [big, b"small"]
        answer = await within(channel.unary_unary("/raw.Raw/Upload")(big), 60)
        assert type(answer) is bytes and answer == big[::-1]
        assert [type(r) for r in seen] == [bytes] and seen[0] == big
        assert channel.lane == lanes.split(",")[0]


async def _all(call: Any) -> list[Any]:
    return [reply async for reply in call]
