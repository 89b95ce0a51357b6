"""Plain gRPC at the edges: a lanerpc server's grpc:// and TLS ports serve gRPC clients,
and a lanerpc channel dials plain gRPC servers (grpc://, the option, secure_channel)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import grpc
import pytest
from grpc import aio

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve


class Tag(aio.ServerInterceptor):
    """Counts the calls it sees, on every port."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation, handler_call_details):
        self.methods.append(handler_call_details.method)
        return await continuation(handler_call_details)


async def every_call_kind(channel) -> None:
    stub = echo_pb2_grpc.EchoStub(channel)
    call = stub.Unary(msg(b"hi"), timeout=5)
    assert (await call).payload == b"hi"
    got = [r.payload async for r in stub.ServerStream(msg(b"s"), timeout=5)]
    assert got == [b"s0", b"s1", b"s2"]
    reqs = [msg(bytes([97 + i])) for i in range(3)]
    assert (await stub.ClientStream(iter(reqs), timeout=5)).payload == b"abc"
    assert [r.payload async for r in stub.Bidi(iter(reqs), timeout=5)] == [b"a", b"b", b"c"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Unary(msg(b"fail"), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "asked to fail"


async def test_grpc_port_serves_grpc_clients_beside_the_lanerpc_port():
    tag = Tag()
    async with serve(Echo(), address=["127.0.0.1:0", "grpc://127.0.0.1:0"], interceptors=[tag]) as served:
        lanerpc_target, grpc_target = served.targets
        assert lanerpc_target != grpc_target
        channel = served.channel(grpc_target, plain_grpc=True)
        await every_call_kind(channel)
        reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"peer"), timeout=5)
        # The handler ran on grpcio's server, with grpcio's context.
        assert reply.payload.split(b"|")[1:3] == [b"None", b"grpc"]
        channel = served.channel(lanerpc_target)
        await every_call_kind(channel)
        assert channel.lane in ("unix", "shm")
        # The interceptor saw the calls of both ports.
        assert tag.methods.count("/lanerpc.echo.Echo/Unary") == 5


async def test_a_server_with_only_a_grpc_port_starts_and_stops():
    async with serve(Echo(), address="grpc://127.0.0.1:0") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True))
        assert (await stub.Unary(msg(b"x"), timeout=5)).payload == b"x"
        await asyncio.wait_for(served.server.stop(1), 5)
        assert await asyncio.wait_for(served.server.wait_for_termination(), 5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Unary(msg(), timeout=1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_drains_calls_in_flight_on_the_grpc_port():
    servicer = Echo()
    async with serve(servicer, address="grpc://127.0.0.1:0") as served:
        call = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=True)).Unary(msg(b"sleep:200"), timeout=5)
        await asyncio.wait_for(servicer.started.wait(), 5)
        await asyncio.wait_for(served.server.stop(5), 10)
        assert (await call).payload == b"sleep:200"


@pytest.mark.parametrize("how", ["scheme", "option"])
async def test_lanerpc_channel_dials_a_plain_grpc_server(how):
    async with serve(Echo(), plain_grpc=True) as served:
        if how == "scheme":
            channel = served.channel(f"grpc://{served.target}")
        else:
            channel = served.channel(options=[("lanerpc.protocol", "grpc")])
        assert isinstance(channel, rpc.GrpcChannel)
        assert isinstance(channel, grpc.aio.Channel)
        assert channel.lane is None
        await every_call_kind(channel)
        assert channel.lane == "tcp"


def test_bad_protocol_option_and_empty_scheme_are_refused():
    with pytest.raises(ValueError, match="lanerpc.protocol"):
        rpc.insecure_channel("127.0.0.1:1", options=[("lanerpc.protocol", "http3")])
    with pytest.raises(ValueError, match="grpc://"):
        rpc.insecure_channel("grpc://")


async def test_secure_port_needs_grpc_server_credentials():
    server = rpc.server()
    with pytest.raises(TypeError, match="ssl_server_credentials"):
        server.add_secure_port("127.0.0.1:0", object())
    await server.stop(0)
    with pytest.raises(TypeError, match="ssl_channel_credentials"):
        rpc.secure_channel("127.0.0.1:1", object())


# -- TLS -------------------------------------------------------------------------------

def make_certs(directory) -> dict[str, bytes]:
    """A CA, and a server certificate for localhost signed by it (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True,
                       timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return {name: (directory / name).read_bytes() for name in ("ca.pem", "server.key", "server.pem")}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    return make_certs(tmp_path_factory.mktemp("certs"))


async def test_tls_port_and_secure_channel(certs):
    creds = grpc.ssl_server_credentials([(certs["server.key"], certs["server.pem"])])
    async with serve(Echo(), address="localhost:0", credentials=creds) as served:
        trusted = grpc.ssl_channel_credentials(root_certificates=certs["ca.pem"])
        channel = served.keep(rpc.secure_channel(served.target, trusted))
        await every_call_kind(channel)
        assert channel.lane == "tcp"
        for refused in (
            # A client that does not trust the CA gets nothing through.
            aio.secure_channel(served.target, grpc.ssl_channel_credentials()),
            # Plaintext to the TLS port fails too: TLS is not optional there.
            aio.insecure_channel(served.target),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await echo_pb2_grpc.EchoStub(served.keep(refused)).Unary(msg(), timeout=3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the inner server's life follows the lanerpc server's ------------------------------
# (A server made before any loop runs: tests/rpc/test_loops.py.)

def can_bind(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_stop_before_start_gives_the_grpc_port_back():
    server = rpc.server()
    port = server.add_insecure_port("grpc://127.0.0.1:0")
    assert not can_bind(port)          # held for the server meanwhile
    await server.stop(0)
    assert can_bind(port)


async def test_handlers_added_after_start_reach_the_grpc_port():
    async with serve(address=["grpc://127.0.0.1:0", "127.0.0.1:0"]) as served:
        echo_pb2_grpc.add_EchoServicer_to_server(Echo(), served.server)
        grpc_target, lanerpc_target = served.targets
        for channel in (served.channel(grpc_target, plain_grpc=True), served.channel(lanerpc_target)):
            reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"late"), timeout=5)
            assert reply.payload == b"late"


async def test_refused_credentials_leave_no_port():
    server = rpc.server()
    with pytest.raises(TypeError):
        server.add_secure_port("127.0.0.1:0", "not credentials")
    with pytest.raises(RuntimeError, match="add a port"):
        await server.start()
    with pytest.raises(RuntimeError, match="no directory"):
        server.add_insecure_port("grpc://unix:/nonexistent-dir/x.sock")


async def test_a_start_that_fails_leaves_nothing_listening(monkeypatch, tmp_path):
    from rpc import _grpc

    monkeypatch.setenv("LANERPC_RUNTIME_DIR", str(tmp_path))   # where upgrade sockets go

    async def broken_start(self):
        raise RuntimeError("grpc port could not start")

    monkeypatch.setattr(_grpc.GrpcPorts, "start", broken_start)
    server = rpc.server()
    lanerpc_port = server.add_insecure_port("127.0.0.1:0")
    grpc_port = server.add_insecure_port("grpc://127.0.0.1:0")
    with pytest.raises(RuntimeError, match="could not start"):
        await server.start()
    assert can_bind(lanerpc_port) and can_bind(grpc_port)
    assert list(tmp_path.iterdir()) == []      # the upgrade socket's directory is gone
    assert await asyncio.wait_for(server.wait_for_termination(), 5)


async def test_stop_while_start_runs_stops_everything():
    server = rpc.server()
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    lanerpc_port = server.add_insecure_port("127.0.0.1:0")
    grpc_port = server.add_insecure_port("grpc://127.0.0.1:0")
    starting = asyncio.ensure_future(server.start())
    await asyncio.sleep(0)
    await asyncio.wait_for(server.stop(0), 10)
    await asyncio.wait_for(starting, 10)
    assert can_bind(lanerpc_port) and can_bind(grpc_port)
    assert await asyncio.wait_for(server.wait_for_termination(), 5)
