"""A server's ``grpc.max_connection_age_ms`` and ``grpc.max_connection_age_grace_ms``,
as grpc.aio applies them: each connection gets GOAWAY once it is that old (±10 %), its
calls in flight get the grace, then the connection is closed; the channel carries on
over a new connection and no call fails for it. Same assertions on every
implementation."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, wait_until, within
from tests.conformance.impls import Impl

_C = grpc.StatusCode


def _connections_seen(impl: Impl, served: Any, peers: list[bytes]) -> int | None:
    """How many server connections the calls went over: distinct client addresses
    where the peer names a port (tcp, or a tcp dial moved to a local lane), else the
    lanerpc server's own count of connections on the final lane."""
    if all(peer.startswith((b"ipv4:", b"ipv6:")) for peer in peers):
        return len(set(peers))
    if isinstance(served.server, rpc.Server) and impl.expected_lane:
        return served.server._stats.connections_total[impl.expected_lane]
    return None


async def test_connections_are_rotated_at_their_max_age_and_no_call_fails(impl, start, connect):
    served = await start(Echo(), options=[("grpc.max_connection_age_ms", 500)])
    stub = echo_pb2_grpc.EchoStub(connect(served))
    loop = asyncio.get_running_loop()
    peers = []
    end = loop.time() + 2.0
    while loop.time() < end:      # a call every 50 ms for 2 s: every one succeeds
        reply = await within(stub.Unary(msg(b"peer"), timeout=5), 6)
        peers.append(reply.payload.split(b"|")[0])
        await asyncio.sleep(0.05)
    seen = _connections_seen(impl, served, peers)
    if seen is None:
        pytest.skip(f"{impl.name}: no way to tell its connections apart")
    assert seen >= 3, peers


async def test_a_call_in_flight_at_max_age_finishes_within_the_grace(impl, start, connect):
    served = await start(Echo(), options=[("grpc.max_connection_age_ms", 200),
                                          ("grpc.max_connection_age_grace_ms", 3000)])
    stub = echo_pb2_grpc.EchoStub(connect(served))
    running = stub.Unary(msg(b"sleep:700"), timeout=5)
    await within(running.initial_metadata(), 5)
    assert (await within(running, 5)).payload == b"sleep:700"
    assert (await within(stub.Unary(msg(b"after"), timeout=5), 6)).payload == b"after"


async def test_a_call_past_the_grace_is_cancelled_and_the_next_call_succeeds(impl, start, connect):
    servicer = Echo()
    served = await start(servicer, options=[("grpc.max_connection_age_ms", 200),
                                            ("grpc.max_connection_age_grace_ms", 300)])
    stub = echo_pb2_grpc.EchoStub(connect(served))
    loop = asyncio.get_running_loop()
    started = loop.time()
    running = stub.Unary(msg(b"sleep:10000"), timeout=8)
    await within(running.initial_metadata(), 5)
    with pytest.raises(aio.AioRpcError) as info:
        await within(running, 5)
    ended_in = loop.time() - started
    assert info.value.code() is _C.UNAVAILABLE, info.value
    assert 0.4 <= ended_in < 1.5, ended_in        # age 180-220 ms + grace 300 ms
    await wait_until(lambda: servicer.cancelled_calls == 1, 3)   # the handler was cancelled
    assert (await within(stub.Unary(msg(b"after"), timeout=5), 6)).payload == b"after"
