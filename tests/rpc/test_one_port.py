"""One port for every client: a lanerpc TCP port also serves plain gRPC clients
(``lanerpc.grpc_on_lanerpc_ports``, on by default), spliced to the server's gRPC side.

The conformance suite runs every case with grpc.aio clients on a lanerpc TCP port
(``lanerpc-one-port``); these tests cover what is particular to the splice: the same
answers as a grpc.aio server in one test, lanerpc clients on the same port, the
option off, a stalled sniff, the connection limit, bounded buffering and clean-up.
"""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
import pytest

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc
from rpc import _splice
from tests._support import Echo, msg, serve, wait_until, within

TIMEOUT = 5.0


async def _four_kinds(stub: echo_pb2_grpc.EchoStub) -> list[object]:
    """One call of each kind, and a failing one: what each returned."""
    unary = (await stub.Unary(msg(b"one"), timeout=TIMEOUT)).payload
    streamed = [m.payload async for m in stub.ServerStream(msg(b"s"), timeout=TIMEOUT)]
    joined = (await stub.ClientStream(iter([msg(b"a"), msg(b"b")]), timeout=TIMEOUT)).payload
    bidi = stub.Bidi(timeout=TIMEOUT)
    echoed = []
    for payload in (b"x", b"y"):
        await bidi.write(msg(payload))
        echoed.append((await bidi.read()).payload)
    await bidi.done_writing()
    assert await bidi.read() is grpc.aio.EOF
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Unary(msg(b"fail"), timeout=TIMEOUT)
    return [unary, streamed, joined, echoed, failed.value.code(), failed.value.details()]


async def test_a_grpc_aio_client_on_a_lanerpc_port_gets_what_grpc_aio_gives():
    async with serve(Echo(), plain_grpc=True) as reference, serve(Echo()) as lanerpc:
        expected = await _four_kinds(echo_pb2_grpc.EchoStub(reference.channel(plain_grpc=True)))
        got = await _four_kinds(echo_pb2_grpc.EchoStub(lanerpc.channel(plain_grpc=True)))
        assert got == expected
        assert expected[0] == b"one" and expected[4] == grpc.StatusCode.FAILED_PRECONDITION


async def test_lanerpc_clients_on_the_same_port_still_speak_lanerpc_and_upgrade():
    async with serve(Echo()) as served:
        grpc_stub = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True))
        assert (await grpc_stub.Unary(msg(b"g"), timeout=TIMEOUT)).payload == b"g"
        upgraded = served.channel()
        on_tcp = served.channel(lanes="tcp")
        for channel in (upgraded, on_tcp):
            stub = echo_pb2_grpc.EchoStub(channel)
            assert (await stub.Unary(msg(b"l"), timeout=TIMEOUT)).payload == b"l"
        assert upgraded.lane in ("unix", "shm")
        assert on_tcp.lane == "tcp"
        # The gRPC client, still connected, is still served.
        assert (await grpc_stub.Unary(msg(b"g2"), timeout=TIMEOUT)).payload == b"g2"


class _Passing(grpc.aio.ServerInterceptor):
    """Lets every call through (grpc.aio then runs its interceptor path)."""

    async def intercept_service(self, continuation, details):
        return await continuation(details)


@pytest.mark.parametrize("interceptors", [(), (_Passing(),)], ids=["plain", "intercepted"])
async def test_handlers_see_the_grpc_clients_own_address(interceptors):
    async with serve(Echo(), interceptors=interceptors) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True))
        reply = await stub.Unary(msg(b"peer"), timeout=TIMEOUT)
        peer = reply.payload.decode().split("|")[0]
        assert peer.startswith("ipv4:127.0.0.1:") and peer != f"ipv4:127.0.0.1:{served.port}"


async def test_first_grpc_clients_at_once_share_one_gRPC_side_started_on_demand():
    async with serve(Echo()) as served:
        assert served.server._grpc is None           # nothing of grpcio until a gRPC client
        stubs = [echo_pb2_grpc.EchoStub(served.channel(
            plain_grpc=True, options=[("grpc.use_local_subchannel_pool", 1)])) for _ in range(5)]
        replies = await within(asyncio.gather(
            *(stub.Unary(msg(b"%d" % i), timeout=TIMEOUT) for i, stub in enumerate(stubs))))
        assert [r.payload for r in replies] == [b"%d" % i for i in range(5)]
        assert len(served.server._lanes.splices) == 5
        assert served.server._counted_links == 5


async def test_a_server_with_a_grpc_port_too_serves_both_from_one_inner_server():
    async with serve(Echo(), address=["127.0.0.1:0", "grpc://127.0.0.1:0"]) as served:
        inner = served.server._grpc.server
        assert inner is not None                     # started with the server, for grpc://
        for target in served.targets:
            stub = echo_pb2_grpc.EchoStub(served.channel(target, plain_grpc=True))
            reply = await stub.Unary(msg(b"peer"), timeout=TIMEOUT)
            assert reply.payload.decode().startswith("ipv4:127.0.0.1:")
        assert served.server._grpc.server is inner and len(served.server._lanes.splices) == 1


async def test_with_the_option_off_a_grpc_client_is_refused_clearly(caplog):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    async with serve(Echo(), options=[("lanerpc.grpc_on_lanerpc_ports", 0)]) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Unary(msg(b"x"), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # lanerpc clients are served as ever
        lanerpc_stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        assert (await lanerpc_stub.Unary(msg(b"l"), timeout=TIMEOUT)).payload == b"l"
        assert served.server._lanes.grpc_path is None
    reasons = [r.getMessage() for r in caplog.records if "HTTP/2" in r.getMessage()]
    assert reasons and "lanerpc.grpc_on_lanerpc_ports" in reasons[0], reasons


@pytest.mark.parametrize("value", ["yes", 2, "", None])
def test_a_bad_value_of_the_option_is_an_error(value):
    with pytest.raises(ValueError, match="lanerpc.grpc_on_lanerpc_ports must be 0 or 1"):
        rpc.server(options=[("lanerpc.grpc_on_lanerpc_ports", value)])


async def _raw(port: int, payload: bytes) -> tuple[bytes, float]:
    """Send ``payload`` and read until the server closes: what it said, how long it took."""
    loop = asyncio.get_running_loop()
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
    try:
        writer.write(payload)
        started = loop.time()
        data = bytearray()
        async with asyncio.timeout(TIMEOUT):
            try:
                while chunk := await reader.read(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        return bytes(data), loop.time() - started
    finally:
        writer.close()


async def test_a_peer_that_stalls_inside_the_preface_is_closed_after_the_handshake_timeout(caplog):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    async with serve(Echo(), options=[("lanerpc.handshake_timeout_ms", 300)]) as served:
        said, took = await _raw(served.port, b"PRI")
        assert said == b""                       # nothing written to a peer we can't place
        assert 0.2 < took < 3.0
        # Not the preface after all (an HTTP/1 POST): refused by lanerpc as before.
        said, took = await _raw(served.port, b"POST / HTTP/1.1\r\n\r\n")
        assert b"HTTP/1" in said and took < 3.0
        stub = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True))
        assert (await stub.Unary(msg(b"still"), timeout=TIMEOUT)).payload == b"still"
    messages = [r.getMessage() for r in caplog.records]
    assert any("no lanerpc magic or HTTP/2 preface" in m and "b'PRI'" in m for m in messages)


async def test_grpc_clients_count_against_max_connections(caplog):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    async with serve(Echo(), options=[("grpc.max_allowed_incoming_connections", 1)],
                     lanes="tcp") as served:
        first = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True))
        assert (await first.Unary(msg(b"1"), timeout=TIMEOUT)).payload == b"1"
        # (its own subchannel: grpc.aio channels to one target share a connection)
        second = echo_pb2_grpc.EchoStub(served.channel(
            plain_grpc=True, options=[("grpc.use_local_subchannel_pool", 1)]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await second.Unary(msg(b"2"), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        lanerpc_stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        with pytest.raises(grpc.aio.AioRpcError):
            await lanerpc_stub.Unary(msg(b"3"), timeout=TIMEOUT)
        assert served.server._counted_links == 1
    assert any("too many connections" in r.getMessage() for r in caplog.records)


class Flood(echo_pb2_grpc.EchoServicer):
    """ServerStream yields 256 KiB messages for as long as it is let; counts them."""

    SIZE = 256 * 1024

    def __init__(self) -> None:
        self.sent = 0

    async def ServerStream(self, request, context):
        block = b"x" * self.SIZE
        while True:
            yield echo_pb2.EchoMessage(payload=block)
            self.sent += 1


async def test_a_grpc_client_that_stops_reading_holds_a_bounded_amount_of_the_server():
    flood = Flood()
    async with serve(flood, lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True))
        call = stub.ServerStream(msg(b"go"), timeout=30)
        assert len((await within(call.read())).payload) == Flood.SIZE   # then reads no more
        splices = served.server._lanes.splices
        assert len(splices) == 1
        splice = next(iter(splices))
        peak = [0, 0]
        for _ in range(30):                      # 1.5 s of a client that doesn't read
            await asyncio.sleep(0.05)
            peak = [max(a, b) for a, b in zip(peak, splice.buffered(), strict=True)]
        sent = flood.sent * Flood.SIZE
        # Our buffer toward the client stays near its high-water mark; what the handler
        # got out is bounded by HTTP/2 flow control and the socket buffers, not growing.
        assert peak[0] <= _splice.HIGH_WATER + 2 * Flood.SIZE, peak
        assert sent < 64 * 1024 * 1024, sent
        await asyncio.sleep(0.3)
        assert flood.sent * Flood.SIZE - sent <= 2 * Flood.SIZE     # stalled, not creeping
        call.cancel()


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _h2_literal(name: bytes, value: bytes) -> bytes:
    """An HPACK header field, literal without indexing, no Huffman (short strings)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _greedy_h2_call(path: bytes, request: bytes) -> bytes:
    """What a hostile HTTP/2 client sends: the preface, windows of 2 GiB (so flow control
    lets the server send without end), a call, and then it never reads."""
    huge = 2**31 - 1
    headers = b"".join(_h2_literal(n, v) for n, v in (
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
        (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")))
    message = b"\x00" + len(request).to_bytes(4, "big") + request
    return b"".join((
        _splice.PREFACE,
        _h2_frame(0x4, 0, 0, (0x4).to_bytes(2, "big") + huge.to_bytes(4, "big")),   # SETTINGS
        _h2_frame(0x4, 0x1, 0, b""),                                     # ack the server's
        _h2_frame(0x8, 0, 0, (huge - 65535).to_bytes(4, "big")),        # WINDOW_UPDATE
        _h2_frame(0x1, 0x4, 1, headers),                                 # HEADERS, END_HEADERS
        _h2_frame(0x0, 0x1, 1, message),                                 # DATA, END_STREAM
    ))


async def test_a_client_that_opens_huge_windows_and_never_reads_is_held_to_our_high_water_mark():
    flood = Flood()
    async with serve(flood, lanes="tcp") as served:
        reader, writer = await within(asyncio.open_connection("127.0.0.1", served.port))
        try:
            writer.write(_greedy_h2_call(b"/lanerpc.echo.Echo/ServerStream", b"\x0a\x02go"))
            await within(wait_until(lambda: flood.sent > 0))
            splice = next(iter(served.server._lanes.splices))
            peak = 0
            for _ in range(30):                  # 1.5 s, reading nothing
                await asyncio.sleep(0.05)
                peak = max(peak, splice.buffered()[0])
            sent = flood.sent * Flood.SIZE
            # Reading from the gRPC side paused at our high-water mark (one read past it at
            # most); the handler stalled once socket buffers were full too, far below what
            # 2 GiB windows and 1.5 s would let through.
            assert _splice.HIGH_WATER <= peak <= _splice.HIGH_WATER + 2 * Flood.SIZE, peak
            assert sent < 64 * 1024 * 1024, sent
            await asyncio.sleep(0.3)
            assert flood.sent * Flood.SIZE - sent <= 2 * Flood.SIZE
        finally:
            writer.close()


async def test_stopping_the_server_ends_spliced_connections_and_leaves_nothing():
    for lanes in ("tcp", None):                   # own private directory; the upgrade one's
        echo = Echo()
        async with serve(echo, lanes=lanes) as served:
            stub = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True))
            assert (await stub.Unary(msg(b"x"), timeout=TIMEOUT)).payload == b"x"
            path = served.server._lanes.grpc_path
            assert path is not None and os.path.exists(path)
            assert len(served.server._lanes.splices) == 1
            echo.started.clear()
            waiting = asyncio.ensure_future(stub.Unary(msg(b"wait"), timeout=TIMEOUT))
            await within(echo.started.wait())
            await within(served.server.stop(0))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await within(waiting)
            assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            await wait_until(lambda: not served.server._lanes.splices)
            assert served.server._counted_links == 0
            assert not os.path.exists(os.path.dirname(path))


def test_the_splice_works_under_uvloop():
    """uvloop's transports (what tools/bench and many deployments run) take the same path."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[object]:
        async with serve(Echo()) as served:
            return await _four_kinds(echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True)))

    got = uvloop.run(asyncio.wait_for(main(), 30))
    assert got[:4] == [b"one", [b"s0", b"s1", b"s2"], b"ab", [b"x", b"y"]]
