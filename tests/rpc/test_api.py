"""grpc.aio features beyond the interop cases, run against grpc.aio and lanerpc with
the same assertions: plain (threaded) handlers, interceptors, metadata rules."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc import aio

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc

IMPLS = ["grpc", "lanerpc"]


def make_server(impl: str, **kwargs):
    return aio.server(**kwargs) if impl == "grpc" else rpc.server(**kwargs)


def make_channel(impl: str, target: str, **kwargs):
    if impl == "grpc":
        return aio.insecure_channel(target, **kwargs)
    return rpc.insecure_channel(target, **kwargs)


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


async def serve(impl: str, servicer, **kwargs):
    server = make_server(impl, **kwargs)
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("impl", IMPLS)
async def test_plain_function_and_generator_handlers(impl):
    servicer = ThreadedEcho()
    server, target = await serve(impl, servicer)
    try:
        async with make_channel(impl, target) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            call = stub.Unary(echo_pb2.EchoMessage(payload=b"hi"), timeout=5)
            assert (await call).payload == b"hi"
            assert ("where", "thread") in tuple(await call.trailing_metadata())
            assert threading.current_thread().name not in servicer.threads

            got = [r.payload async for r in stub.ServerStream(echo_pb2.EchoMessage(payload=b"s"),
                                                             timeout=5)]
            assert got == [b"s0", b"s1", b"s2"]

            reqs = [echo_pb2.EchoMessage(payload=bytes([97 + i])) for i in range(4)]
            assert (await stub.ClientStream(iter(reqs), timeout=5)).payload == b"abcd"

            bidi = stub.Bidi(iter(reqs), timeout=5)
            assert [r.payload async for r in bidi] == [b"a", b"b", b"c", b"d"]

            with pytest.raises(aio.AioRpcError) as info:
                await stub.Unary(echo_pb2.EchoMessage(payload=b"fail"), timeout=5)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert info.value.details() == "asked to fail"
    finally:
        await server.stop(0)


class AsyncEcho(echo_pb2_grpc.EchoServicer):
    def __init__(self) -> None:
        self.seen_metadata: list = []

    async def Unary(self, request, context):
        self.seen_metadata.append(tuple(context.invocation_metadata()))
        return request

    async def Bidi(self, request_iterator, context):
        async for request in request_iterator:
            yield request


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


@pytest.mark.parametrize("impl", IMPLS)
async def test_client_and_server_interceptors(impl):
    servicer = AsyncEcho()
    guard = DenyServer()
    server, target = await serve(impl, servicer, interceptors=[guard])
    try:
        async with make_channel(impl, target) as plain:
            with pytest.raises(aio.AioRpcError) as info:
                await echo_pb2_grpc.EchoStub(plain).Unary(echo_pb2.EchoMessage(), timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        tagger_a, tagger_b = TagClient("a"), TagClient("b")
        async with make_channel(impl, target, interceptors=[tagger_a, tagger_b]) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            call = stub.Unary(echo_pb2.EchoMessage(payload=b"x"), timeout=5)
            assert (await call).payload == b"x"
            assert await call.code() == grpc.StatusCode.OK
            tags = [v for k, v in servicer.seen_metadata[-1] if k == "x-tag"]
            assert tags == ["a", "b"]
            assert tagger_a.methods == [b"/lanerpc.echo.Echo/Unary"]   # bytes, as grpc.aio gives it
        assert guard.seen == 2
    finally:
        await server.stop(0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("metadata,error", [
    ((("Upper", "x"),), ValueError),
    ((("key-bin", "text"),), TypeError),
])
async def test_bad_metadata_is_refused_before_sending(impl, metadata, error):
    servicer = AsyncEcho()
    server, target = await serve(impl, servicer)
    try:
        async with make_channel(impl, target) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            with pytest.raises(Exception) as info:
                await stub.Unary(echo_pb2.EchoMessage(), metadata=metadata, timeout=5)
            if impl == "lanerpc":
                assert isinstance(info.value, error)
            assert servicer.seen_metadata == []
    finally:
        await server.stop(0)


@pytest.mark.parametrize("impl", IMPLS)
async def test_binary_metadata_round_trips(impl):
    servicer = AsyncEcho()
    server, target = await serve(impl, servicer)
    try:
        async with make_channel(impl, target) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            blob = bytes(range(256))
            await stub.Unary(echo_pb2.EchoMessage(), metadata=(("k-bin", blob), ("t", "v")),
                             timeout=5)
            seen = dict(servicer.seen_metadata[-1])
            assert seen["k-bin"] == blob and seen["t"] == "v"
    finally:
        await server.stop(0)


class Named(echo_pb2_grpc.EchoServicer):
    def __init__(self, name: bytes) -> None:
        self.name = name

    async def Unary(self, request, context):
        return echo_pb2.EchoMessage(payload=self.name)


@pytest.mark.parametrize("impl", IMPLS)
async def test_servers_share_a_port_as_grpc_does(impl):
    """grpc.so_reuseport is on by default: a second server (another worker process,
    typically) can bind the same port, and both serve it."""
    first = make_server(impl)
    echo_pb2_grpc.add_EchoServicer_to_server(Named(b"first"), first)
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    second = make_server(impl)
    echo_pb2_grpc.add_EchoServicer_to_server(Named(b"second"), second)
    try:
        assert second.add_insecure_port(f"127.0.0.1:{port}") == port
        await second.start()
        seen = set()
        for _ in range(40):   # new connections, spread by the kernel
            async with make_channel(impl, f"127.0.0.1:{port}") as channel:
                reply = await echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoMessage(), timeout=5)
                seen.add(reply.payload)
            if len(seen) == 2:
                break
        assert seen == {b"first", b"second"}
    finally:
        await second.stop(0)
        await first.stop(0)


@pytest.mark.parametrize("impl", IMPLS)
async def test_port_taken_without_reuseport_is_refused(impl):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        server = make_server(impl)
        with pytest.raises(RuntimeError):
            server.add_insecure_port(f"127.0.0.1:{holder.getsockname()[1]}")
        await server.stop(0)
    finally:
        holder.close()
