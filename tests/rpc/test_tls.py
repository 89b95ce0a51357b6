"""TLS and mTLS on lanerpc's own TCP lane (rpc.ssl_*_credentials, add_secure_port,
secure_channel), each compared with grpc.aio under the same certificates where
grpc.aio has the feature."""

from __future__ import annotations

import asyncio
import logging
import ssl

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, within
from tests._tls import CLIENT_SANS, Pem, certs
from tests.rpc.test_grpc_edges import every_call_kind

# grpc's auth properties that lanerpc's TLS lane does not set: Python's ssl does not
# say which key exchange group was agreed, and grpc's RFC 2253 rendering of the subject
# is not rebuilt. Every other key is compared with grpc.aio's.
GRPC_ONLY = {"ssl_negotiated_key_exchange_group", "x509_subject"}


def as_grpc_shows(props):
    """An auth context without lanerpc's own keys and grpc's GRPC_ONLY ones."""
    return {k: v for k, v in props.items() if not k.startswith("lanerpc_") and k not in GRPC_ONLY}


class Identity(Echo):
    """Echo whose Unary answers with what the handler sees of its peer."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict[str, list[bytes]], str | None, list[bytes] | None]] = []

    async def Unary(self, request, context):
        with self._track():
            props = {key: list(values) for key, values in context.auth_context().items()}
            identities = context.peer_identities()
            self.seen.append((props, context.peer_identity_key(),
                              None if identities is None else list(identities)))
            return msg(b"ok")


def server_creds(module, *, mtls: bool):
    c = certs()
    return module.ssl_server_credentials([(c.server.key, c.server.cert)],
                                         c.ca if mtls else None, mtls)


def channel_creds(module, client: Pem | None = None, roots: bytes | None = None):
    return module.ssl_channel_credentials(roots or certs().ca, client and client.key,
                                          client and client.cert)


def secure(served, creds, *, plain_grpc: bool = False, target: str | None = None, **kwargs):
    """A secure channel to ``served``; a lanerpc one is kept on the TLS lane (lanes=tcp)
    unless ``options`` say otherwise (the same-host upgrade has its own tests)."""
    if plain_grpc:
        return served.keep(grpc.aio.secure_channel(target or served.target, creds, **kwargs))
    kwargs.setdefault("options", [("lanerpc.lanes", "tcp")])
    return served.keep(rpc.secure_channel(target or served.target, creds, **kwargs))


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
async def test_every_call_kind_over_tls_on_the_tcp_lane(mtls):
    client = certs().client if mtls else None
    async with serve(Echo(), credentials=server_creds(rpc, mtls=mtls)) as served:
        channel = secure(served, channel_creds(rpc, client))
        assert isinstance(channel, rpc.Channel)
        await every_call_kind(channel)
        assert channel.lane == "tcp"
    async with serve(Echo(), plain_grpc=True, credentials=server_creds(grpc, mtls=mtls)) as served:
        await every_call_kind(secure(served, channel_creds(grpc, client), plain_grpc=True))


def test_tls_runs_on_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        async with serve(Echo(), credentials=server_creds(rpc, mtls=True)) as served:
            await every_call_kind(secure(served, channel_creds(rpc, certs().client)))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_big_and_many_messages_cross_tls_intact(loop):
    """The loop's TLS decrypts straight into the buffers the link lends: the free end
    of its receive buffer, and a big message's own buffer piece by piece (a record is
    at most 16 KiB, so one read never fills a 3 MiB message)."""
    factory = None
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    big = bytes(range(256)) * (3 * 4096)          # 3 MiB, every byte value
    stream = [bytes([i]) * (1000 + 997 * i) for i in range(40)]

    async def main():
        async with serve(Echo(), credentials=server_creds(rpc, mtls=False)) as served:
            stub = echo_pb2_grpc.EchoStub(secure(served, channel_creds(rpc)))
            for _ in range(2):
                answer = await within(stub.Unary(msg(big)), 20)
                assert answer.payload == big
            async def requests():
                for payload in stream:
                    yield msg(payload)
            answers = [m.payload async for m in stub.Bidi(requests(), timeout=20)]
            assert answers == stream

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(main(), 40))


@pytest.mark.parametrize("client,reason", [
    ("none", "certificate required"),
    ("stranger", "bad certificate"),
    ("expired", "bad certificate"),
])
async def test_refused_client_certificates_never_reach_a_handler(client, reason):
    c = certs()
    pem = None if client == "none" else getattr(c, client)
    for plain in (False, True):
        module = grpc if plain else rpc
        echo = Echo()
        async with serve(echo, plain_grpc=plain, credentials=server_creds(module, mtls=True)) as served:
            stub = echo_pb2_grpc.EchoStub(secure(served, channel_creds(module, pem), plain_grpc=plain))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(msg(b"x"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (plain, info.value)
            if not plain:
                assert reason in info.value.details()
            assert echo.started_calls == 0


async def test_auth_context_as_grpc_shows_it():
    c = certs()
    seen = {}
    for plain in (False, True):
        module = grpc if plain else rpc
        identity = Identity()
        async with serve(identity, plain_grpc=plain, credentials=server_creds(module, mtls=True)) as served:
            for client in (c.client, c.client_cn_only):
                stub = echo_pb2_grpc.EchoStub(secure(served, channel_creds(module, client),
                                                     plain_grpc=plain))
                await stub.Unary(msg(), timeout=5)
        seen[plain] = identity.seen
    for ours, theirs in zip(seen[False], seen[True], strict=True):
        props, key, identities = ours
        assert as_grpc_shows(props) == as_grpc_shows(theirs[0])
        assert (key, identities) == theirs[1:]
        assert props["lanerpc_lane"] == [b"tcp"]
    props, key, identities = seen[False][0]
    assert props["transport_security_type"] == [b"ssl"]
    assert props["x509_common_name"] == [b"client"]
    assert props["x509_subject_alternative_name"] == list(CLIENT_SANS)
    assert props["x509_pem_cert"][0].decode().strip() == c.client.cert.decode().strip()
    assert props["peer_dns"] == [CLIENT_SANS[0]]
    assert props["peer_uri"] == props["peer_spiffe_id"] == [CLIENT_SANS[1]]
    assert props["ssl_session_reused"] == [b"false"]
    assert props["ssl_tls_version"] == [b"TLSv1.3"]
    assert (key, identities) == ("x509_subject_alternative_name", list(CLIENT_SANS))
    assert seen[False][1][1:] == ("x509_common_name", [b"cn-only"])


async def test_server_only_tls_has_no_peer_identity():
    seen = {}
    for plain in (False, True):
        module = grpc if plain else rpc
        identity = Identity()
        async with serve(identity, plain_grpc=plain, credentials=server_creds(module, mtls=False)) as served:
            await echo_pb2_grpc.EchoStub(secure(served, channel_creds(module), plain_grpc=plain)
                                         ).Unary(msg(), timeout=5)
        seen[plain] = identity.seen[0]
    assert seen[False][1:] == seen[True][1:] == (None, None)
    assert as_grpc_shows(seen[False][0]) == as_grpc_shows(seen[True][0])


async def test_one_credentials_object_serves_lanerpc_and_grpc_ports():
    creds = server_creds(rpc, mtls=True)
    assert isinstance(creds, grpc.ServerCredentials)
    client = channel_creds(rpc, certs().client)
    assert isinstance(client, grpc.ChannelCredentials)
    async with serve(Echo(), address=["127.0.0.1:0", "grpc://127.0.0.1:0"], credentials=creds) as served:
        lanerpc_target, grpc_target = served.targets
        # grpc.aio's own channel, with rpc's credentials, on the grpc:// port
        await every_call_kind(secure(served, client, plain_grpc=True, target=grpc_target))
        # and rpc's secure_channel with grpc:// picks grpcio
        assert isinstance(secure(served, client, target=f"grpc://{grpc_target}"), rpc.GrpcChannel)
        await every_call_kind(secure(served, client, target=lanerpc_target))


async def test_grpc_and_lanerpc_tls_ports_tell_each_other_apart():
    """A gRPC client at a lanerpc TLS port and a lanerpc client at a gRPC TLS port fail
    at once, naming ALPN, instead of hanging."""
    creds = server_creds(rpc, mtls=False)
    client = channel_creds(rpc)
    echo = Echo()
    async with serve(echo, address=["127.0.0.1:0", "grpc://127.0.0.1:0"], credentials=creds) as served:
        lanerpc_target, grpc_target = served.targets
        for target, plain in ((lanerpc_target, True), (grpc_target, False)):
            stub = echo_pb2_grpc.EchoStub(secure(served, client, plain_grpc=plain, target=target))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(stub.Unary(msg(), timeout=5), 3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "ALPN" in info.value.details()
        assert echo.started_calls == 0


async def test_server_name_checks_and_override():
    for plain in (False, True):
        module = grpc if plain else rpc
        async with serve(Echo(), plain_grpc=plain, credentials=server_creds(module, mtls=False)) as served:
            creds = channel_creds(module)
            good = secure(served, creds, plain_grpc=plain,
                          options=[("grpc.ssl_target_name_override", "localhost")])
            assert (await echo_pb2_grpc.EchoStub(good).Unary(msg(b"a"), timeout=5)).payload == b"a"
            bad = secure(served, creds, plain_grpc=plain,
                         options=[("grpc.ssl_target_name_override", "elsewhere.test")])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await echo_pb2_grpc.EchoStub(bad).Unary(msg(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            if not plain:
                assert "elsewhere.test" in info.value.details()
                untrusting = secure(served, channel_creds(rpc, roots=certs().other_ca))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await echo_pb2_grpc.EchoStub(untrusting).Unary(msg(), timeout=5)
                assert "certificate verify failed" in info.value.details()


@pytest.mark.parametrize("lanes,lane", [(None, "shm"), ("unix,tcp", "unix"), ("tcp", "tcp")])
async def test_a_tls_connection_upgrades_on_one_host_and_keeps_its_identity(lanes, lane):
    """On one host a TLS client moves to the unix or shm lane as a plaintext one does
    (the offer and the server's token travel inside TLS), and its handlers see the same
    TLS identity there; lanerpc.lanes=tcp keeps it on TLS."""
    identity = Identity()
    options = [] if lanes is None else [("lanerpc.lanes", lanes)]
    async with serve(identity, credentials=server_creds(rpc, mtls=True)) as served:
        assert served.server.upgrade_path is not None
        channel = secure(served, channel_creds(rpc, certs().client), options=options)
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Unary(msg(), timeout=5)
        assert [r.payload async for r in stub.Bidi(iter([msg(b"a"), msg(b"b")]), timeout=5)] \
            == [b"a", b"b"]
        assert channel.lane == lane
        on_tcp = secure(served, channel_creds(rpc, certs().client),
                        options=[("lanerpc.lanes", "tcp")])
        await echo_pb2_grpc.EchoStub(on_tcp).Unary(msg(), timeout=5)
    (moved, key, identities), (stayed, *tcp_identity) = identity.seen
    assert moved["lanerpc_lane"] == [lane.encode()]
    assert {k: v for k, v in moved.items() if not k.startswith("lanerpc_")} == \
        {k: v for k, v in stayed.items() if not k.startswith("lanerpc_")}
    assert moved["transport_security_type"] == [b"ssl"]
    assert (key, identities) == tuple(tcp_identity) == ("x509_subject_alternative_name",
                                                        list(CLIENT_SANS))


async def _tls_and_plain(identity: Identity, lanes: str) -> list[str]:
    """One server with a TLS port and a plain one; a channel to each (``lanes``) makes a
    call; returns the lanes the channels ended on."""
    server = rpc.server()
    try:
        echo_pb2_grpc.add_EchoServicer_to_server(identity, server)
        tls_port = server.add_secure_port("127.0.0.1:0", server_creds(rpc, mtls=True))
        plain_port = server.add_insecure_port("127.0.0.1:0")
        await asyncio.wait_for(server.start(), 5)
        tls = rpc.secure_channel(f"127.0.0.1:{tls_port}", channel_creds(rpc, certs().client),
                                 options=[("lanerpc.lanes", lanes)])
        plain = rpc.insecure_channel(f"127.0.0.1:{plain_port}", options=[("lanerpc.lanes", lanes)])
        ended = []
        for channel in (tls, plain):
            async with channel:
                await echo_pb2_grpc.EchoStub(channel).Unary(msg(), timeout=5)
                ended.append(channel.lane)
        return ended
    finally:
        await asyncio.wait_for(server.stop(0), 5)


async def test_an_upgrade_token_is_not_a_tls_identity_for_another_client():
    """The identity travels with the token of the connection it was offered on: a
    plaintext client of the same server, upgraded, is not given a TLS identity."""
    identity = Identity()
    assert await _tls_and_plain(identity, "unix,tcp") == ["unix", "unix"]
    (with_tls, *_), (without, key, identities) = identity.seen
    assert with_tls["transport_security_type"] == [b"ssl"]
    assert without["transport_security_type"] == [b"local"]
    assert "x509_common_name" not in without
    assert (key, identities) == ("transport_security_type", [b"local"])


async def test_plaintext_and_tls_ports_side_by_side():
    """One server, a TLS port and a plain one: each connection gets its own properties."""
    identity = Identity()
    await _tls_and_plain(identity, "tcp")
    assert [seen[0]["transport_security_type"] for seen in identity.seen] == [[b"ssl"], [b"insecure"]]


def test_contexts_are_tls_1_2_or_later_with_lanerpc_alpn():
    c = certs()
    client = rpc.ssl_channel_credentials(c.ca, c.client.key, c.client.cert).client_context()
    server = server_creds(rpc, mtls=True).server_context()
    for context in (client, server):
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED


async def test_bad_input_is_refused_clearly():
    c = certs()
    with pytest.raises(ValueError, match="go together"):
        rpc.ssl_channel_credentials(c.ca, private_key=c.client.key)
    with pytest.raises(ValueError, match="not PEM"):
        rpc.ssl_channel_credentials(b"not a certificate")
    with pytest.raises(ValueError):        # grpc's own check: client auth needs roots
        rpc.ssl_server_credentials([(c.server.key, c.server.cert)], None, True)
    with pytest.raises(ValueError, match="can't be loaded"):
        rpc.ssl_server_credentials([(c.client.key, c.server.cert)]).server_context()
    two = rpc.ssl_server_credentials([(c.server.key, c.server.cert), (c.client.key, c.client.cert)])
    server = rpc.server()
    try:
        with pytest.raises(ValueError, match="one certificate chain"):
            server.add_secure_port("127.0.0.1:0", two)
        with pytest.raises(RuntimeError, match="TLS lane is TCP"):
            server.add_secure_port("unix:/tmp/never-made.sock", server_creds(rpc, mtls=False))
    finally:
        await server.stop(0)
    with pytest.raises(ValueError, match="rpc.ssl_channel_credentials"):
        rpc.Channel("127.0.0.1:1", credentials=grpc.ssl_channel_credentials())
    with pytest.raises(ValueError, match="TLS lane is TCP"):
        rpc.secure_channel("unix:/tmp/never-made.sock", channel_creds(rpc))


async def test_grpc_credentials_keep_the_grpcio_path_and_say_so(caplog):
    c = certs()
    server = rpc.server()
    try:
        with caplog.at_level(logging.DEBUG, logger="lanerpc"):
            server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
                [(c.server.key, c.server.cert)]))
            channel = rpc.secure_channel("127.0.0.1:1", grpc.ssl_channel_credentials(c.ca))
        assert isinstance(channel, rpc.GrpcChannel)
        await channel.close()
    finally:
        await server.stop(0)
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "add_secure_port(127.0.0.1:0) with grpc's credentials: served by grpcio" in messages
    assert "secure_channel(127.0.0.1:1) with grpc's credentials: a grpcio channel" in messages


async def test_a_tls_client_without_alpn_is_told_why():
    """A TLS client that does not ask for lanerpc's protocol gets a GOAWAY naming ALPN
    (readable inside TLS), and no handler runs."""
    echo = Echo()
    async with serve(echo, credentials=server_creds(rpc, mtls=False)) as served:
        context = ssl.create_default_context(cadata=certs().ca.decode())
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", served.port, ssl=context, server_hostname="localhost"), 5)
        try:
            received = b""
            while b"ALPN" not in received:
                chunk = await asyncio.wait_for(reader.read(4096), 5)
                if not chunk:
                    break
                received += chunk
        finally:
            writer.close()
        assert received.startswith(b"LNRPC\r\n\0")
        assert b"did not agree on ALPN 'lanerpc'" in received
        assert echo.started_calls == 0


async def test_a_client_that_never_starts_tls_is_dropped_at_the_handshake_timeout():
    """A TCP connection to a TLS port that sends nothing is closed after
    lanerpc.handshake_timeout_ms, as a silent plaintext one is; no handler runs."""
    echo = Echo()
    async with serve(echo, credentials=server_creds(rpc, mtls=False),
                     options=[("lanerpc.handshake_timeout_ms", 300)]) as served:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", served.port), 5)
        try:
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            assert asyncio.get_running_loop().time() - started < 3
        finally:
            writer.close()
        assert echo.started_calls == 0


@pytest.mark.parametrize("scheme", ["", "dns:///"])
async def test_a_name_target_checks_the_name_not_the_address_it_resolves_to(scheme):
    """The channel resolves ``localhost`` to addresses, yet the certificate (which names
    only ``localhost``) is checked against the target's name, as grpc does."""
    made = certs()
    creds = rpc.ssl_server_credentials([(made.server_by_name.key, made.server_by_name.cert)])
    async with serve(Echo(), address="localhost:0", credentials=creds) as served:
        by_name = secure(served, channel_creds(rpc), target=f"{scheme}localhost:{served.port}")
        assert (await echo_pb2_grpc.EchoStub(by_name).Unary(msg(b"n"), timeout=5)).payload == b"n"
        by_address = secure(served, channel_creds(rpc), target=f"127.0.0.1:{served.port}")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await echo_pb2_grpc.EchoStub(by_address).Unary(msg(), timeout=5)
        assert "127.0.0.1" in info.value.details()


@pytest.mark.parametrize("uris,expected", [
    ([b"spiffe://example.org/client"], b"spiffe://example.org/client"),
    ([b"spiffe://example.org/a", b"spiffe://example.org/b"], None),   # only one URI SAN counts
    ([b"spiffe://example.org"], None),                                 # no path
    ([b"spiffe://example.org/"], None),
    ([b"spiffe:///client"], None),                                     # no trust domain
    ([b"https://example.org/client"], None),
    ([b"spiffe://" + b"d" * 256 + b"/x"], None),                       # trust domain > 255
    ([b"spiffe://example.org/" + b"p" * 2048], None),                  # > 2048 in all
])
def test_a_peer_spiffe_id_is_its_one_uri_san_when_that_is_a_spiffe_id(uris, expected):
    from rpc import _credentials
    assert _credentials._spiffe_id(uris) == expected
