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


@pytest.mark.parametrize("lanes", ["tcp", "unix,tcp", "shm,unix,tcp"])
async def test_messages_kept_by_handlers_stay_whole_while_buffers_are_reused(lanes: str) -> None:
    # A connection reads each big message into the buffer the previous one of its size
    # was read into, once nothing holds that any more. Whatever the handlers and the
    # client keep (parsed messages, raw bytes) must stay as it arrived, while messages
    # of one size follow each other one at a time and several at once.
    kept: list[Any] = []

    class Keeper(echo_pb2_grpc.EchoServicer):
        async def Unary(self, request: Any, context: Any) -> Any:
            kept.append(request)
            return request

        async def Bidi(self, requests: Any, context: Any) -> Any:
            async for request in requests:
                kept.append(request)
                yield request

    def raw(server: Any) -> None:
        async def upload(request: Any, context: Any) -> bytes:
            kept.append(request)
            return bytes(request)

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "raw.Raw", {"Upload": grpc.unary_unary_rpc_method_handler(upload)}),))

    payloads = [os.urandom(2 * MIB) for _ in range(9)]
    async with serve(Keeper(), raw, lanes=lanes, options=OPTIONS) as served:
        channel = served.channel(lanes=lanes, options=OPTIONS)
        stub = echo_pb2_grpc.EchoStub(channel)
        replies = [await within(stub.Unary(msg(p)), 60) for p in payloads[:3]]
        upload = channel.unary_unary("/raw.Raw/Upload")
        for payload in payloads[3:6]:
            replies.append(echo_pb2.EchoMessage(payload=await within(upload(payload), 60)))
        call = stub.Bidi(iter([msg(p) for p in payloads[6:]]))
        replies += await within(_all(call), 60)
        assert channel.lane == lanes.split(",")[0]
    assert [r.payload for r in replies] == payloads
    assert [k if type(k) is bytes else k.payload for k in kept] == payloads
