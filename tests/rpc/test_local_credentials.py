"""grpc's local credentials on lanerpc: rpc.local_channel_credentials /
local_server_credentials (and grpc's own channel object) give plaintext channels and
ports between local peers only (UDS: unix: targets; LOCAL_TCP: loopback addresses),
whose handlers see grpc's local auth context, and where call credentials are allowed.
Each case that grpc.aio has runs on grpc.aio too, and the two are compared."""

from __future__ import annotations

import os
import socket

import grpc
import pytest

import rpc
from rpc import _resolver
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, within
from tests.rpc.test_grpc_edges import every_call_kind

UDS = grpc.LocalConnectionType.UDS
LOCAL_TCP = grpc.LocalConnectionType.LOCAL_TCP


class Identity(Echo):
    """Echo whose Unary records what its handler sees of the peer and the metadata,
    then echoes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict[str, list[bytes]], str | None, list[bytes] | None,
                              str | None]] = []

    async def Unary(self, request, context):
        props = {key: list(values) for key, values in context.auth_context().items()}
        identities = context.peer_identities()
        self.seen.append((props, context.peer_identity_key(),
                          None if identities is None else list(identities),
                          dict(context.invocation_metadata()).get("authorization")))
        return await super().Unary(request, context)


def _address(kind: grpc.LocalConnectionType, tmp_path) -> str:
    return f"unix:{tmp_path}/local.sock" if kind is UDS else "127.0.0.1:0"


def _channel(served, module, kind, **kwargs):
    channel_creds = module.local_channel_credentials(kind)
    if module is grpc:
        return served.keep(grpc.aio.secure_channel(served.target, channel_creds, **kwargs))
    kwargs.setdefault("options", [("lanerpc.lanes", "tcp" if kind is LOCAL_TCP else "unix")])
    return served.keep(rpc.secure_channel(served.target, channel_creds, **kwargs))


@pytest.mark.parametrize("kind", [UDS, LOCAL_TCP], ids=["uds", "local_tcp"])
async def test_every_call_kind_and_the_auth_context_as_grpc(kind, tmp_path):
    seen = {}
    for module in (grpc, rpc):
        identity = Identity()
        async with serve(identity, address=_address(kind, tmp_path), plain_grpc=module is grpc,
                         credentials=module.local_server_credentials(kind)) as served:
            channel = _channel(served, module, kind)
            if module is rpc:
                assert isinstance(channel, rpc.Channel)
                await every_call_kind(channel)
                assert channel.lane == ("tcp" if kind is LOCAL_TCP else "unix")
            await within(echo_pb2_grpc.EchoStub(channel).Unary(msg()))
        seen[module] = identity.seen[-1]
    (ours, key, identities, _), (theirs, *grpc_identity) = seen[rpc], seen[grpc]
    assert {k: v for k, v in ours.items() if not k.startswith("lanerpc_")} == theirs
    assert ours["transport_security_type"] == [b"local"]
    assert (key, identities) == tuple(grpc_identity[:2]) == ("transport_security_type", [b"local"])
    if kind is UDS:    # the kernel names the peer on a unix socket (SO_PEERCRED)
        assert ours["lanerpc_peer_uid"] == [str(os.getuid()).encode()]
        assert ours["lanerpc_peer_pid"] == [str(os.getpid()).encode()]


async def test_a_local_tcp_channel_upgrades_and_stays_local():
    identity = Identity()
    async with serve(identity, credentials=rpc.local_server_credentials(LOCAL_TCP)) as served:
        channel = served.keep(rpc.secure_channel(served.target, rpc.local_channel_credentials()))
        await within(echo_pb2_grpc.EchoStub(channel).Unary(msg()))
        assert channel.lane == "shm"
    props, key, identities, _ = identity.seen[0]
    assert props["transport_security_type"] == [b"local"]
    assert props["lanerpc_lane"] == [b"shm"]
    assert (key, identities) == ("transport_security_type", [b"local"])


@pytest.mark.parametrize("kind", [UDS, LOCAL_TCP], ids=["uds", "local_tcp"])
async def test_call_credentials_are_allowed_on_local_channels(kind, tmp_path):
    for module in (grpc, rpc):
        identity = Identity()
        async with serve(identity, address=_address(kind, tmp_path), plain_grpc=module is grpc,
                         credentials=module.local_server_credentials(kind)) as served:
            stub = echo_pb2_grpc.EchoStub(_channel(served, module, kind))
            await within(stub.Unary(msg(), credentials=module.access_token_call_credentials("t0k")))
            composite = module.composite_channel_credentials(
                module.local_channel_credentials(kind), module.access_token_call_credentials("ch"))
            options = [] if module is grpc else [("lanerpc.lanes", "tcp,unix")]
            channel = (grpc.aio.secure_channel(served.target, composite) if module is grpc
                       else rpc.secure_channel(served.target, composite, options=options))
            await within(echo_pb2_grpc.EchoStub(served.keep(channel)).Unary(msg()))
        assert [seen[3] for seen in identity.seen] == ["Bearer t0k", "Bearer ch"], module


async def test_grpc_own_local_channel_credentials_make_a_lanerpc_channel():
    """grpc's object does not say its connection type: the target's is taken."""
    identity = Identity()
    async with serve(identity, credentials=rpc.local_server_credentials(LOCAL_TCP)) as served:
        channel = served.keep(rpc.secure_channel(served.target, grpc.local_channel_credentials(),
                                                 options=[("lanerpc.lanes", "tcp")]))
        assert isinstance(channel, rpc.Channel)
        await within(echo_pb2_grpc.EchoStub(channel).Unary(
            msg(), credentials=rpc.access_token_call_credentials("g")))
    assert identity.seen[0][0]["transport_security_type"] == [b"local"]
    assert identity.seen[0][3] == "Bearer g"


def test_targets_and_addresses_local_credentials_cannot_serve_are_refused(tmp_path):
    with pytest.raises(ValueError, match="loopback addresses only; 192.0.2.1"):
        rpc.secure_channel("192.0.2.1:5", rpc.local_channel_credentials(LOCAL_TCP))
    with pytest.raises(ValueError, match="loopback TCP addresses only"):
        rpc.secure_channel(f"unix:{tmp_path}/x.sock", rpc.local_channel_credentials(LOCAL_TCP))
    with pytest.raises(ValueError, match=r"UDS\) dials unix: targets only"):
        rpc.secure_channel("127.0.0.1:5", rpc.local_channel_credentials(UDS))
    with pytest.raises(TypeError, match="LocalConnectionType"):
        rpc.local_channel_credentials("uds")   # type: ignore[arg-type]


async def test_server_ports_local_credentials_cannot_serve_are_refused(tmp_path):
    server = rpc.server()
    try:
        with pytest.raises(RuntimeError, match=r"local_server_credentials\(UDS\) serves unix:"):
            server.add_secure_port("127.0.0.1:0", rpc.local_server_credentials(UDS))
        with pytest.raises(RuntimeError, match=r"\(LOCAL_TCP\) serves TCP"):
            server.add_secure_port(f"unix:{tmp_path}/x.sock", rpc.local_server_credentials(LOCAL_TCP))
    finally:
        await within(server.stop(0))
    assert not os.path.exists(f"{tmp_path}/x.sock")


def _own_non_loopback_address() -> str | None:
    """An address of this host that is not loopback (the route out's source), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))      # no packet is sent for a UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_a_local_tcp_port_turns_away_a_peer_not_on_loopback():
    """Bound on every address, a LOCAL_TCP port serves loopback clients and turns a
    client on another address away before any handler runs, saying why."""
    address = _own_non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    echo = Echo()
    async with serve(echo, address="0.0.0.0:0",
                     credentials=rpc.local_server_credentials(LOCAL_TCP)) as served:
        loopback = served.keep(rpc.secure_channel(f"127.0.0.1:{served.port}",
                                                  rpc.local_channel_credentials(),
                                                  options=[("lanerpc.lanes", "tcp")]))
        assert (await within(echo_pb2_grpc.EchoStub(loopback).Unary(msg(b"a")))).payload == b"a"
        outside = served.channel(f"{address}:{served.port}", lanes="tcp")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await within(echo_pb2_grpc.EchoStub(outside).Unary(msg(b"b"), timeout=5))
        # grpc's handshake would fail (UNAVAILABLE); lanerpc's server says why, and
        # the client sees a denial, as of a uid the unix lane does not admit.
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "loopback peers only" in info.value.details()
        assert echo.started_calls == 1


async def test_a_local_tcp_channel_checks_the_address_a_name_resolved_to(monkeypatch):
    """A name is not judged by its spelling: the address it resolved to is checked
    once connected, before the HELLO, and a non-loopback one fails the call."""
    address = _own_non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")

    async def lookup(host: str, port: int):
        assert host == "elsewhere.test"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(_resolver, "_system_lookup", lookup)
    echo = Echo()
    async with serve(echo, address="0.0.0.0:0") as served:
        channel = served.keep(rpc.secure_channel(f"elsewhere.test:{served.port}",
                                                 rpc.local_channel_credentials()))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loopback peers only" in info.value.details()
        assert echo.started_calls == 0
