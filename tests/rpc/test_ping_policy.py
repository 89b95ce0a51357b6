"""gRPC's ping limits on both sides: a client's ``grpc.http2.max_pings_without_data``
(PINGs in a row while it sends nothing else), a server's strikes
(``grpc.http2.min_ping_interval_without_data_ms``, ``grpc.http2.max_ping_strikes``)
and what forgives them: the server sending data. Next to grpc.aio where it shows."""

from __future__ import annotations

import asyncio
import collections

import grpc
import pytest
from grpc import aio

from examples.echo import echo_pb2_grpc
from rpc._server import ServerLink
from tests._support import Echo, msg, serve, within

_C = grpc.StatusCode
KEEPALIVE = [("grpc.keepalive_time_ms", 50), ("grpc.keepalive_permit_without_calls", 1)]


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """PINGs each lanerpc server connection received (keyed by the connection)."""
    counts: collections.Counter = collections.Counter()
    on_ping = ServerLink._on_ping

    def counting(self: ServerLink) -> None:
        counts[self] += 1
        on_ping(self)

    monkeypatch.setattr(ServerLink, "_on_ping", counting)
    return counts


@pytest.mark.parametrize("limit,expected", [(None, 2), (3, 3), (0, None)],
                         ids=["default", "three", "unlimited"])
async def test_a_client_sends_at_most_max_pings_without_data_in_a_row(limit, expected, pings):
    extra = [] if limit is None else [("grpc.http2.max_pings_without_data", limit)]
    async with serve(Echo(), lanes="tcp", options=[
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 0)]) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(options=KEEPALIVE + extra))
        for round_ in range(2):      # a call (headers, a message) lets it ping again
            assert (await within(stub.Unary(msg(b"x"), timeout=5), 6)).payload == b"x"
            await asyncio.sleep(0.6)
            (count,) = pings.values()
            if expected is None:
                assert count >= 5 * (round_ + 1)
            else:
                assert count == expected * (round_ + 1)


@pytest.mark.parametrize("impl", ["grpc", "lanerpc"])
async def test_data_sent_by_the_server_forgives_ping_strikes(impl):
    # A client pinging 50 ms after each message of a stream that sends one every
    # 100 ms: closer than the server's 5 minutes, but each message wipes the strikes.
    async with serve(Echo(), plain_grpc=impl == "grpc") as served:
        make = aio.insecure_channel if impl == "grpc" else None
        options = KEEPALIVE + [("grpc.http2.max_pings_without_data", 0)]
        channel = served.keep(make(served.target, options=options)) if make \
            else served.channel(options=options)
        call = echo_pb2_grpc.EchoStub(channel).ServerStream(msg(b"stream:10:100"), timeout=10)
        got = [m.payload async for m in call]
        assert got == [b"%d" % i for i in range(10)]
        assert await within(call.code(), 1) == _C.OK


@pytest.mark.parametrize("impl", ["grpc", "lanerpc"])
async def test_pings_on_a_quiet_call_strike_out_and_end_it_unavailable(impl):
    # The server sends nothing after the first message: the third strike is GOAWAY
    # too_many_pings and the call ends UNAVAILABLE (grpc.aio's client took about
    # 3 s to get there, lanerpc's 0.25 s: both within the bound).
    async with serve(Echo(), plain_grpc=impl == "grpc") as served:
        make = aio.insecure_channel if impl == "grpc" else None
        options = KEEPALIVE + [("grpc.http2.max_pings_without_data", 0)]
        channel = served.keep(make(served.target, options=options)) if make \
            else served.channel(options=options)
        call = echo_pb2_grpc.EchoStub(channel).ServerStream(msg(b"stream:2:60000"), timeout=10)
        assert (await within(call.read(), 5)).payload == b"0"
        assert await within(call.code(), 9) == _C.UNAVAILABLE


async def test_pings_arriving_together_are_each_a_strike():
    # Four PINGs in one write to a server with no call on the connection: the 2nd,
    # 3rd and 4th come too soon, and the third strike closes the connection.
    async with serve(Echo(), lanes="tcp") as served:
        channel = served.channel()
        assert (await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5), 6)).payload == b"x"
        link = channel._ready_link()
        assert link is not None
        for _ in range(4):
            link.conn.ping()
        link.flush()
        await within(link.closed, 3)
        assert link.conn.goaway_received is not None
        assert link.conn.goaway_received.reason == "too_many_pings"
