"""``unix-abstract:NAME`` targets and server addresses (Linux's abstract socket namespace,
as gRPC spells it): served and called on asyncio and uvloop, with no file anywhere; a name
a live server holds is refused at add_insecure_port; the name is free again once the
server stops."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, within


async def _round_trip(name: str) -> None:
    async with serve(Echo(), address=f"unix-abstract:{name}") as served:
        channel = served.channel(f"unix-abstract:{name}")
        reply = await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"abstract")))
        assert reply.payload == b"abstract"
        assert channel.lane in ("unix", "shm")     # a unix: peer moves on to shm by default
        with pytest.raises(RuntimeError, match="Failed to bind to address unix-abstract"):
            rpc.server().add_insecure_port(f"unix-abstract:{name}")
    # Free again: another server takes it.
    async with serve(Echo(), address=f"unix-abstract:{name}") as again:
        reply = await within(echo_pb2_grpc.EchoStub(again.channel(f"unix-abstract:{name}")).Unary(msg(b"x")))
        assert reply.payload == b"x"


async def test_unix_abstract_on_asyncio() -> None:
    await _round_trip(f"lanerpc-test-{os.getpid()}-{os.urandom(4).hex()}")


def test_unix_abstract_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_round_trip(f"lanerpc-test-{os.getpid()}-{os.urandom(4).hex()}"))


async def test_a_name_nobody_serves_fails_unavailable() -> None:
    async with rpc.insecure_channel(f"unix-abstract:lanerpc-nobody-{os.urandom(4).hex()}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=2))
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


def test_an_empty_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no name"):
        rpc.insecure_channel("unix-abstract:")


async def test_a_grpc_port_on_an_abstract_name() -> None:
    """``grpc://unix-abstract:NAME``: plain gRPC there, grpcio's, no file claimed."""
    name = f"lanerpc-test-{os.getpid()}-{os.urandom(4).hex()}"
    async with serve(Echo(), address=f"grpc://unix-abstract:{name}") as served:
        async with grpc.aio.insecure_channel(f"unix-abstract:{name}") as channel:
            reply = await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"g")))
        assert reply.payload == b"g"
        assert served.ports == [1]
