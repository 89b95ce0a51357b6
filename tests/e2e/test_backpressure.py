"""A peer that never reads can't make the server buffer without bound: a streaming
handler's ``await context.write()`` (or its ``yield``) waits for the transport once the
peer stops reading, even when the peer announced the largest windows the protocol
allows. An honest client beside it is answered at once.

The attacker is a raw socket driven by lanerpc's own sans-IO client connection, with
windows of 2**31-1, that opens a server-streaming call and then reads nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from examples.echo import echo_pb2, echo_pb2_grpc
from rpc import _wire
from rpc._connection import Connection, Limits, Role
from tests._support import msg, serve, within

MESSAGE = 64 * 1024
# What may pile up between a handler and a peer that reads nothing: socket buffers both
# ways (a few MiB at most on Linux), the transport's high-water mark, one message.
BOUND = 16 * 1024 * 1024


class Flood(echo_pb2_grpc.EchoServicer):
    """ServerStream: writes 64 KiB messages for as long as it is let; counts them."""

    def __init__(self) -> None:
        self.written = 0

    async def ServerStream(self, request: Any, context: Any) -> None:
        chunk = msg(b"z" * MESSAGE)
        while True:
            await context.write(chunk)
            self.written += 1

    async def Bidi(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        chunk = msg(b"z" * MESSAGE)
        while True:
            yield chunk
            self.written += 1

    async def Unary(self, request: Any, context: Any) -> Any:
        return request


async def _attacker(port: int, method: str) -> asyncio.StreamWriter:
    """Open ``method`` with the largest windows and never read; returns the writer."""
    conn = Connection(Role.CLIENT, Limits(stream_window=_wire.MAX_WINDOW,
                                          connection_window=_wire.MAX_WINDOW))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(conn.data_to_send()))
    # Read the server's HELLO only (the magic, then one frame), then nothing ever again.
    buffered = b""
    while not conn.handshake_done:
        buffered = await within(reader.read(4096))
        assert buffered, "server closed during the handshake"
        conn.receive_data(buffered)
    sid = conn.start_request(method, None, (), end_stream=True,
                             message=echo_pb2.EchoMessage().SerializeToString())
    writer.write(b"".join(conn.data_to_send()))
    await writer.drain()
    return writer


@pytest.mark.parametrize("method", ["/lanerpc.echo.Echo/ServerStream", "/lanerpc.echo.Echo/Bidi"],
                         ids=["context.write", "yield"])
async def test_a_peer_that_never_reads_stalls_its_own_stream_only(method: str) -> None:
    flood = Flood()
    async with serve(flood, lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        await within(stub.Unary(msg(b"warm")))
        writer = await _attacker(served.port, method)
        try:
            # Let the handler run until it is stalled by the peer that reads nothing.
            previous = -1
            for _ in range(100):
                await asyncio.sleep(0.02)
                if flood.written == previous and flood.written > 0:
                    break
                previous = flood.written
            assert 0 < flood.written * MESSAGE <= BOUND, flood.written
            # The server still answers others at once, every time.
            loop = asyncio.get_running_loop()
            latencies = []
            for _ in range(20):
                started = loop.time()
                reply = await within(stub.Unary(msg(b"honest")), 2)
                latencies.append(loop.time() - started)
                assert reply.payload == b"honest"
            assert max(latencies) < 0.1, [f"{t * 1000:.1f} ms" for t in latencies]
            assert flood.written * MESSAGE <= BOUND
        finally:
            writer.close()
