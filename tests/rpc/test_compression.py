"""What compression does to the bytes on lanerpc's wire: on tcp a channel's or server's
compression shrinks 64 KiB of repeated bytes to under 1 KiB each way; on unix and shm only
a call's own ``compression=`` (or ``set_compression``) compresses; a message that
inflates past the receive limit (a zip bomb) or is not valid ends its call, nothing more.
Counted at the server's sockets (its stats' bytes in and out)."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import grpc
import pytest

from examples.echo import echo_pb2_grpc
from rpc import _wire
from rpc._connection import Connection, Role, StreamEnded
from tests._support import msg, rss_mb, serve, within
from tests.conformance.test_compression import BIG, Compressing

GZIP = grpc.Compression.Gzip


def _traffic(server: Any) -> tuple[int, int]:
    snapshot = server._stats.snapshot()
    return snapshot["bytes_in"], snapshot["bytes_out"]


async def _one_call(served: Any, stub: Any, payload: bytes, **kwargs: Any) -> tuple[int, int]:
    """Bytes in and out at the server for one Unary call echoing ``payload``."""
    await within(stub.Unary(msg(b"warm")))             # connected, upgraded: counted apart
    before = _traffic(served.server)
    assert (await within(stub.Unary(msg(payload), **kwargs))).payload == payload
    after = _traffic(served.server)
    return after[0] - before[0], after[1] - before[1]


def _address(lane: str, tmp_path: Any) -> str:
    return f"unix:{tmp_path}/s.sock" if lane == "unix" else "127.0.0.1:0"


def _lanes(lane: str) -> str | None:
    return None if lane == "shm" else lane      # shm: tcp upgraded by default


@pytest.mark.parametrize("lane", ["tcp", "unix", "shm"])
async def test_channel_and_server_compression_shrink_tcp_only(lane, tmp_path):
    async with serve(Compressing(), address=_address(lane, tmp_path), compression=GZIP) as served:
        channel = served.channel(lanes=_lanes(lane), compression=GZIP)
        stub = echo_pb2_grpc.EchoStub(channel)
        sent, received = await _one_call(served, stub, BIG)
        assert channel.lane == lane
        if lane == "tcp":
            assert sent < 1024 and received < 1024, (sent, received)
        else:       # costs CPU for nothing there: not compressed
            assert sent > len(BIG) and received > len(BIG), (sent, received)


@pytest.mark.parametrize("lane", ["tcp", "unix", "shm"])
async def test_a_calls_own_compression_applies_on_every_lane(lane, tmp_path):
    async with serve(Compressing(), address=_address(lane, tmp_path)) as served:
        channel = served.channel(lanes=_lanes(lane))
        stub = echo_pb2_grpc.EchoStub(channel)
        sent, received = await _one_call(served, stub, b"g" + BIG, compression=GZIP)
        assert channel.lane == lane
        assert sent < 1024 and received < 1024, (sent, received)    # set_compression too
        sent, received = await _one_call(served, stub, BIG)
        assert sent > len(BIG) and received > len(BIG)               # the next call: not


async def test_disable_next_message_compression_sends_that_one_plain():
    async with serve(Compressing(), lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        await within(stub.Unary(msg(b"warm")))
        before = _traffic(served.server)[1]
        replies = [r.payload async for r in stub.ServerStream(msg(b"d" + BIG))]
        assert replies == [b"d" + BIG] * 3
        out = _traffic(served.server)[1] - before
        assert len(BIG) < out < len(BIG) + 2048, out     # the first plain, two compressed


async def _raw_unary(port: int, message: bytes, encoding: int) -> StreamEnded:
    """A hand-made client sends one Unary request with ``message`` flagged as
    compressed with ``encoding``; returns how the server ended the call."""
    conn = Connection(Role.CLIENT)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(conn.data_to_send()))
        while not conn.handshake_done:
            data = await within(reader.read(65536))
            assert data
            conn.receive_data(data)
        conn.start_request("/lanerpc.echo.Echo/Unary", None, (), message=message, encoding=encoding)
        writer.write(b"".join(conn.data_to_send()))
        while True:
            data = await within(reader.read(65536))
            assert data, "server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, StreamEnded):
                    return event
            writer.write(b"".join(conn.data_to_send()))
    finally:
        writer.close()


def _bomb(size: int) -> bytes:
    # Run-length matching: as small as the default strategy on zeros, in a third the time.
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16, 9, zlib.Z_RLE)
    zeros = bytes(1 << 20)
    parts = [packer.compress(zeros) for _ in range(size >> 20)]
    return b"".join(parts) + packer.flush()


async def test_a_zip_bomb_ends_its_call_resource_exhausted_and_costs_the_limit_at_most():
    bomb = _bomb(1 << 30)                               # 1 GiB of zeros, about 1 MiB on the wire
    assert len(bomb) < 4 << 20
    async with serve(Compressing(), lanes="tcp") as served:
        base = rss_mb()
        ended = await _raw_unary(served.port, bomb, 2)
        assert ended.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "larger than max" in ended.details
        assert rss_mb() - base < 64
        # Not valid gzip at all: INTERNAL, for that call only.
        ended = await _raw_unary(served.port, b"\x1f\x8b not gzip", 2)
        assert ended.code == grpc.StatusCode.INTERNAL.value[0]
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        assert (await within(stub.Unary(msg(b"still here")))).payload == b"still here"


def test_bad_compression_values_are_refused():
    import rpc
    with pytest.raises(ValueError, match="grpc.Compression"):
        rpc.insecure_channel("127.0.0.1:1", compression="gzip")
    with pytest.raises(ValueError, match="grpc.compression_enabled_algorithms_bitset"):
        rpc.server(options=[("grpc.compression_enabled_algorithms_bitset", 9)])
    with pytest.raises(ValueError, match="grpc.default_compression_algorithm"):
        rpc.server(options=[("grpc.default_compression_algorithm", 7)])


def test_an_unknown_encoding_flag_is_a_protocol_error():
    from rpc._proto import handshake_pb2
    from rpc._wire import ENCODING_MASK, ProtocolError
    server = Connection(Role.SERVER)
    hello = handshake_pb2.Hello(versions=[_wire.PROTOCOL_VERSION]).SerializeToString()
    server.receive_data(_wire.MAGIC + _wire.frame(_wire.HELLO, 0, 0, hello))
    server.accept()
    headers = _wire.encode_request_headers("/svc/M", 0, None)
    server.receive_data(_wire.frame(_wire.HEADERS, 0, 1, headers))
    with pytest.raises(ProtocolError, match="unknown encoding"):
        server.receive_data(_wire.frame(_wire.MESSAGE, ENCODING_MASK, 1, b"x"))
