"""Call credentials on lanerpc's lanes: rpc.access_token_call_credentials /
metadata_call_credentials / composite_* add their metadata to each call on a TLS channel
(and on the unix and shm lanes it upgrades to) and on a unix: channel; a plugin's error
ends that call UNAVAILABLE with its message; an insecure tcp channel refuses them
(UsageError, as grpc.aio); grpc's own objects are refused naming rpc's functions. The
same credentials objects work on grpc.aio's secure channels."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import msg, serve, within
from tests._tls import certs


class Seen(echo_pb2_grpc.EchoServicer):
    """Unary answers with the call's authorization / x-extra metadata."""

    async def Unary(self, request, context):
        md = dict(context.invocation_metadata())
        return msg(f"{md.get('authorization')}|{md.get('x-extra')}|{context.auth_context().get('lanerpc_lane')}".encode())


class Extra(grpc.AuthMetadataPlugin):
    def __init__(self, value: str = "1", error: str | None = None) -> None:
        self.value, self.error, self.contexts = value, error, []

    def __call__(self, context: Any, callback: Any) -> None:
        self.contexts.append((context.service_url, context.method_name))
        callback((("x-extra", self.value),) if self.error is None else None, self.error)


def _tls(c: Any) -> tuple[Any, Any]:
    server = rpc.ssl_server_credentials([(c.server.key, c.server.cert)])
    channel = rpc.ssl_channel_credentials(c.ca)
    return server, channel


@pytest.mark.parametrize("lanes, lane", [("tcp", "tcp"), (None, "shm"), ("unix,tcp", "unix")])
async def test_a_token_reaches_the_handler_on_a_tls_channel_whatever_the_lane(lanes, lane):
    c = certs()
    server_creds, channel_creds = _tls(c)
    async with serve(Seen(), address="127.0.0.1:0", credentials=server_creds) as served:
        options = [("lanerpc.lanes", lanes)] if lanes else []
        channel = served.keep(rpc.secure_channel(f"localhost:{served.port}", channel_creds, options))
        stub = echo_pb2_grpc.EchoStub(channel)
        reply = await within(stub.Unary(msg(b""), credentials=rpc.access_token_call_credentials("t0k")))
        assert reply.payload.decode() == f"Bearer t0k|None|[b'{lane}']"
        assert channel.lane == lane
        plugin = Extra("x")
        both = rpc.composite_call_credentials(rpc.access_token_call_credentials("a"),
                                              rpc.metadata_call_credentials(plugin))
        reply = await within(stub.Unary(msg(b""), credentials=both))
        assert reply.payload.decode().startswith("Bearer a|x|")
        assert plugin.contexts == [(f"https://localhost:{served.port}/lanerpc.echo.Echo", "Unary")]


async def test_channel_call_credentials_go_with_every_call():
    c = certs()
    server_creds, channel_creds = _tls(c)
    composite = rpc.composite_channel_credentials(channel_creds, rpc.access_token_call_credentials("ch"))
    async with serve(Seen(), address="127.0.0.1:0", credentials=server_creds) as served:
        channel = served.keep(rpc.secure_channel(f"localhost:{served.port}", composite,
                                                 [("lanerpc.lanes", "tcp")]))
        assert isinstance(channel, rpc.Channel)
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(2):
            assert (await within(stub.Unary(msg(b"")))).payload.startswith(b"Bearer ch|")
        # The same object on grpc.aio's own secure channel (grpcio runs the plugin).
        async with grpc.aio.secure_channel(f"localhost:{served.port}", composite) as plain:
            with pytest.raises(grpc.aio.AioRpcError):    # a lanerpc TLS port: ALPN refuses
                await within(echo_pb2_grpc.EchoStub(plain).Unary(msg(b"")), 10)


async def test_on_a_unix_channel_and_refused_on_insecure_tcp(tmp_path):
    async with serve(Seen(), address=[f"unix:{tmp_path}/s.sock", "127.0.0.1:0"]) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(f"unix:{tmp_path}/s.sock"))
        reply = await within(stub.Unary(msg(b""), credentials=rpc.access_token_call_credentials("u")))
        assert reply.payload.startswith(b"Bearer u|None|")
        tcp = echo_pb2_grpc.EchoStub(served.channel(f"127.0.0.1:{served.ports[1]}"))
        with pytest.raises(grpc.aio.UsageError, match="secure channels"):
            tcp.Unary(msg(b""), credentials=rpc.access_token_call_credentials("u"))


async def test_a_failing_plugin_ends_its_call_unavailable_with_its_message(tmp_path):
    async with serve(Seen(), address=f"unix:{tmp_path}/s.sock") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await within(stub.Unary(msg(b""), credentials=rpc.metadata_call_credentials(
                Extra(error="no token today"))))
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no token today" in (failed.value.details() or "")
        assert (await within(stub.Unary(msg(b"")))).payload.startswith(b"None|")


async def test_grpcs_own_call_credentials_are_refused_naming_rpcs(tmp_path):
    async with serve(Seen(), address=f"unix:{tmp_path}/s.sock") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        with pytest.raises(TypeError, match="rpc.access_token_call_credentials"):
            stub.Unary(msg(b""), credentials=grpc.access_token_call_credentials("t"))
    with pytest.raises(TypeError, match="rpc.metadata_call_credentials"):
        rpc.composite_call_credentials(grpc.access_token_call_credentials("t"))
