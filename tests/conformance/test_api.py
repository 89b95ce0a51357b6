"""grpc.aio features beyond the interop cases, on the Echo service: plain (threaded)
handlers, interceptors, metadata rules, port sharing. Run against every active
implementation (see impls.py) with the same assertions."""

from __future__ import annotations

import os
import socket
import threading

import grpc
import pytest
from grpc import aio

from examples.echo import echo_pb2, echo_pb2_grpc
from tests._support import Echo, msg

TIMEOUT = 5


def tcp_only(impl) -> None:
    if impl.bind in ("unix", "memory", "pipe"):
        pytest.skip(f"{impl.name} binds no TCP port for its calls: port sharing is not its to show")


class ThreadedEcho(echo_pb2_grpc.EchoServicer):
    """Plain functions and generators: grpc.aio runs them on its thread pool."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def Unary(self, request, context):
        self.threads.add(threading.current_thread().name)
        if request.payload == b"fail":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
        context.set_trailing_metadata((("where", "thread"),))
        return request

    def ServerStream(self, request, context):
        for i in range(3):
            yield echo_pb2.EchoMessage(payload=request.payload + bytes([48 + i]))

    def ClientStream(self, request_iterator, context):
        return echo_pb2.EchoMessage(payload=b"".join(r.payload for r in request_iterator))

    def Bidi(self, request_iterator, context):
        for request in request_iterator:
            yield request


async def test_plain_function_and_generator_handlers(start, connect):
    servicer = ThreadedEcho()
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer)))
    call = stub.Unary(msg(b"hi"), timeout=TIMEOUT)
    assert (await call).payload == b"hi"
    assert ("where", "thread") in tuple(await call.trailing_metadata())
    assert threading.current_thread().name not in servicer.threads

    got = [r.payload async for r in stub.ServerStream(msg(b"s"), timeout=TIMEOUT)]
    assert got == [b"s0", b"s1", b"s2"]

    reqs = [msg(bytes([97 + i])) for i in range(4)]
    assert (await stub.ClientStream(iter(reqs), timeout=TIMEOUT)).payload == b"abcd"

    bidi = stub.Bidi(iter(reqs), timeout=TIMEOUT)
    assert [r.payload async for r in bidi] == [b"a", b"b", b"c", b"d"]

    with pytest.raises(aio.AioRpcError) as info:
        await stub.Unary(msg(b"fail"), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "asked to fail"


class TagClient(aio.UnaryUnaryClientInterceptor, aio.StreamStreamClientInterceptor):
    """Adds metadata, records the calls it saw."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.methods: list[str] = []

    def _details(self, details):
        metadata = aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
        metadata.add("x-tag", self.tag)
        return aio.ClientCallDetails(details.method, details.timeout, metadata,
                                     details.credentials, details.wait_for_ready)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        self.methods.append(client_call_details.method)
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        self.methods.append(client_call_details.method)
        return await continuation(self._details(client_call_details), request_iterator)


class DenyServer(aio.ServerInterceptor):
    """Refuses calls without the x-tag metadata; counts what it saw."""

    def __init__(self) -> None:
        self.seen = 0

    async def intercept_service(self, continuation, handler_call_details):
        self.seen += 1
        if not any(k == "x-tag" for k, _ in handler_call_details.invocation_metadata):
            async def deny(request, context):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "untagged")
            return grpc.unary_unary_rpc_method_handler(deny)
        return await continuation(handler_call_details)


async def test_client_and_server_interceptors(start, connect):
    servicer = Echo()
    guard = DenyServer()
    served = await start(servicer, interceptors=[guard])
    with pytest.raises(aio.AioRpcError) as info:
        await echo_pb2_grpc.EchoStub(connect(served)).Unary(msg(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    tagger_a, tagger_b = TagClient("a"), TagClient("b")
    stub = echo_pb2_grpc.EchoStub(connect(served, interceptors=[tagger_a, tagger_b]))
    call = stub.Unary(msg(b"x"), timeout=TIMEOUT)
    assert (await call).payload == b"x"
    assert await call.code() == grpc.StatusCode.OK
    tags = [v for k, v in servicer.seen_metadata[-1] if k == "x-tag"]
    assert tags == ["a", "b"]
    assert tagger_a.methods == [b"/lanerpc.echo.Echo/Unary"]   # bytes, as grpc.aio gives it
    assert guard.seen == 2


@pytest.mark.parametrize("metadata,error", [
    ((("Upper", "x"),), ValueError),
    ((("key-bin", "text"),), TypeError),
])
async def test_bad_metadata_is_refused_before_sending(impl, start, connect, metadata, error):
    servicer = Echo()
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer)))
    with pytest.raises(Exception) as info:
        await stub.Unary(msg(), metadata=metadata, timeout=TIMEOUT)
    if impl.lanerpc_channel:   # grpc.aio's own exception types are its business
        assert isinstance(info.value, error)
    assert servicer.seen_metadata == []


async def test_binary_metadata_round_trips(start, connect):
    servicer = Echo()
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer)))
    blob = bytes(range(256))
    await stub.Unary(msg(), metadata=(("k-bin", blob), ("t", "v")), timeout=TIMEOUT)
    seen = dict(servicer.seen_metadata[-1])
    assert seen["k-bin"] == blob and seen["t"] == "v"


class Named(echo_pb2_grpc.EchoServicer):
    def __init__(self, name: bytes) -> None:
        self.name = name

    async def Unary(self, request, context):
        return echo_pb2.EchoMessage(payload=self.name)


async def test_servers_share_a_port_as_grpc_does(impl, start, connect):
    """grpc.so_reuseport is on by default: a second server (another worker process,
    typically) can bind the same port, and both serve it."""
    tcp_only(impl)
    first = await start(Named(b"first"))
    second = await start(Named(b"second"), address=impl.address(first.port))
    assert second.port == first.port
    seen = set()
    for _ in range(40):   # new connections, spread by the kernel
        reply = await echo_pb2_grpc.EchoStub(connect(first)).Unary(msg(), timeout=TIMEOUT)
        seen.add(reply.payload)
        await first.close_channels()
        if len(seen) == 2:
            break
    assert seen == {b"first", b"second"}


async def test_port_taken_without_reuseport_is_refused(impl):
    tcp_only(impl)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        with pytest.raises(RuntimeError):
            async with impl.serve(Echo(), address=impl.address(holder.getsockname()[1])):
                pass


@pytest.mark.parametrize("server_uids", [None, "own", "own-int"])
async def test_server_uids_listing_the_servers_uid_changes_nothing(start, connect, server_uids):
    """lanerpc.server_uids unset, or listing the server's uid: the same answers on every
    implementation (grpc.aio ignores a name it does not know)."""
    options = {None: (), "own": (("lanerpc.server_uids", str(os.geteuid())),),
               "own-int": (("lanerpc.server_uids", os.geteuid()),)}[server_uids]
    served = await start(Echo())
    stub = echo_pb2_grpc.EchoStub(connect(served, options))
    reply = await stub.Unary(msg(b"x"), metadata=(("k", "v"),), timeout=TIMEOUT)
    assert reply.payload == b"x"
    replies = [r.payload async for r in stub.ServerStream(msg(b"y"), timeout=TIMEOUT)]
    assert replies and all(r.startswith(b"y") for r in replies)
