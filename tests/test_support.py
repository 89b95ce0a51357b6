"""The shared test helpers keep their promises: serve() stops its server and closes its
channels whatever the body did, for lanerpc and grpc.aio servers alike."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, assert_pending, msg, serve, wait_until, within


async def unavailable(target: str, plain_grpc: bool) -> None:
    make = grpc.aio.insecure_channel if plain_grpc else rpc.insecure_channel
    async with make(target) as probe:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await echo_pb2_grpc.EchoStub(probe).Unary(msg(), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("plain_grpc", [False, True], ids=["lanerpc", "grpc"])
@pytest.mark.parametrize("body_fails", [False, True], ids=["body-returns", "body-raises"])
async def test_serve_stops_the_server_and_closes_its_channels(plain_grpc, body_fails):
    servicer = Echo()
    with pytest.raises(KeyError) if body_fails else contextlib.nullcontext():
        async with serve(servicer, plain_grpc=plain_grpc) as served:
            channel = served.channel(plain_grpc=plain_grpc)
            stub = echo_pb2_grpc.EchoStub(channel)
            assert (await stub.Unary(msg(b"up"), timeout=5)).payload == b"up"
            waiting = stub.Unary(msg(b"wait"), timeout=30)
            await within(servicer.started.wait())
            if body_fails:
                raise KeyError("the body failed")
    # The call running at the end was ended by the stop (grace 0), not left hanging.
    assert await within(waiting.code()) != grpc.StatusCode.OK
    await wait_until(lambda: servicer.running == 0)
    assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    await unavailable(served.target, plain_grpc)


async def test_a_server_that_cannot_bind_is_stopped_and_the_error_raised():
    async with serve(Echo()) as served:
        with pytest.raises(RuntimeError):
            async with serve(Echo(), address=served.target, options=[("grpc.so_reuseport", 0)]):
                pass
        # The first server is untouched.
        reply = await echo_pb2_grpc.EchoStub(served.channel()).Unary(msg(b"x"), timeout=5)
        assert reply.payload == b"x"


async def test_assert_pending_fails_as_soon_as_a_future_ends():
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_later(0.01, future.set_result, None)
    started = loop.time()
    with pytest.raises(AssertionError):
        await assert_pending(5, future)
    assert loop.time() - started < 1
    await assert_pending(0.01, loop.create_future())   # one that does not end passes
