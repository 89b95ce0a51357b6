"""The RPC subjects of rpc/_bench/_run.py: grpc.aio and lanerpc serving the same Echo service.

Both sides use the generated code of examples/echo (a copy ships here) untouched, and lanerpc is driven
exactly as a grpc.aio user would drive it; only the module (``grpc.aio`` or ``rpc``)
and the options differ between rows.

lanerpc is imported lazily, inside the server function and the connect function, so
that a library that does not import yet (or lacks a feature) turns into an "n/a: ..."
row with the reason, while the grpc rows and floors still run.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc

from rpc._bench._core import SIZE_OPTIONS, Ready, ServeResult, Subject, register
from rpc._bench import echo_pb2, echo_pb2_grpc

EchoMessage = echo_pb2.EchoMessage

# How long Stream.close may take to read back what is still in flight.
DRAIN_TIMEOUT = 30.0


class EchoServicer(echo_pb2_grpc.EchoServicer):
    """Returns what it gets. Written for grpc.aio; lanerpc runs it unchanged."""

    async def Unary(self, request: EchoMessage, context: Any) -> EchoMessage:
        return request

    async def ServerStream(self, request: EchoMessage, context: Any) -> AsyncIterator[EchoMessage]:
        yield request

    async def ClientStream(self, request_iterator: AsyncIterator[EchoMessage], context: Any) -> EchoMessage:
        last = EchoMessage()
        async for request in request_iterator:
            last = request
        return last

    async def Bidi(self, request_iterator: AsyncIterator[EchoMessage], context: Any) -> AsyncIterator[EchoMessage]:
        async for request in request_iterator:
            yield request


# ---------------------------------------------------------------------------- servers
# (these run in the server process, see rpc/_bench/_server.py)


async def serve_grpc(args: dict[str, Any]) -> ServeResult:
    server = grpc.aio.server(options=SIZE_OPTIONS)
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    if args["transport"] == "unix":
        target = f"unix:{args['unix_path']}"
        server.add_insecure_port(target)
    else:
        host = args.get("host", "127.0.0.1")   # a netns row's veth address
        target = f"{host}:{server.add_insecure_port(f'{host}:0')}"
    await server.start()
    return {"target": target}, lambda: server.stop(None)


async def serve_lanerpc(args: dict[str, Any]) -> ServeResult:
    import rpc  # lanerpc; may fail while the library is being written: the row says why

    # Default lanes on the server: which lane a call takes is the client's choice (its
    # "lanerpc.lanes" option), so all four lanerpc rows run against the same server setup.
    server = rpc.server(options=SIZE_OPTIONS)
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    host = args.get("host", "127.0.0.1")   # a netns row's veth address
    port = server.add_insecure_port(f"{host}:0")
    unix_path = args["unix_path"]
    server.add_insecure_port(f"unix:{unix_path}")
    await server.start()
    return {"host": host, "port": port, "unix_path": unix_path}, lambda: server.stop(None)


async def serve_lanerpc_for_grpc(args: dict[str, Any]) -> ServeResult:
    """A lanerpc server with a lanerpc TCP port and a grpc:// port, for grpc.aio
    clients: ``args["port"]`` says which one they dial ("lanerpc": spliced to the inner
    grpcio server; "grpc": that server's own port). ``args["one_port"]`` is the
    lanerpc.grpc_on_lanerpc_ports option."""
    import rpc  # see serve_lanerpc

    options = [*SIZE_OPTIONS, ("lanerpc.grpc_on_lanerpc_ports", args.get("one_port", 1))]
    server = rpc.server(options=options)
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    lanerpc_port = server.add_insecure_port("127.0.0.1:0")
    grpc_port = server.add_insecure_port("grpc://127.0.0.1:0")
    await server.start()
    port = lanerpc_port if args["port"] == "lanerpc" else grpc_port
    return {"target": f"127.0.0.1:{port}"}, lambda: server.stop(None)


def _tls_server_pems() -> tuple[bytes, bytes, bytes]:
    """(CA, server key, server chain): certificates made now (needs the
    ``cryptography`` package)."""
    from rpc._bench._certs import server_pems

    return server_pems()


async def serve_grpc_tls(args: dict[str, Any]) -> ServeResult:
    ca, key, chain = _tls_server_pems()
    server = grpc.aio.server(options=SIZE_OPTIONS)
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, chain)]))
    await server.start()
    return {"target": f"127.0.0.1:{port}", "ca": ca.decode()}, lambda: server.stop(None)


async def serve_lanerpc_tls(args: dict[str, Any]) -> ServeResult:
    import rpc  # see serve_lanerpc

    ca, key, chain = _tls_server_pems()
    server = rpc.server(options=SIZE_OPTIONS)
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", rpc.ssl_server_credentials([(key, chain)]))
    await server.start()
    return {"target": f"127.0.0.1:{port}", "ca": ca.decode()}, lambda: server.stop(None)


# ---------------------------------------------------------------------------- clients


class _BidiStream:
    """A Bidi call: ``send`` is ``call.write``, a reader task counts the echoes."""

    def __init__(self, call: Any, message: EchoMessage) -> None:
        self._call = call
        self._message = message  # built once: the same message every time, as a caller would
        self._received = 0
        self._reader = asyncio.create_task(self._read())

    @property
    def received(self) -> int:
        return self._received

    async def _read(self) -> None:
        while True:
            reply = await self._call.read()
            if reply is grpc.aio.EOF:
                return
            self._received += 1

    async def send(self) -> None:
        if self._reader.done():  # the call ended early: say why instead of writing into it
            self._reader.result()
            raise RuntimeError("the server ended the Bidi call early")
        # grpc.aio's write returns once flow control has accepted the message.
        await self._call.write(self._message)

    async def close(self) -> None:
        try:
            await self._call.done_writing()
            await asyncio.wait_for(asyncio.shield(self._reader), DRAIN_TIMEOUT)
        finally:
            if not self._reader.done():
                self._call.cancel()
                self._reader.cancel()


class StubClient:
    """An EchoStub on a channel: grpc.aio's or lanerpc's, the code is the same."""

    def __init__(self, channel: Any, lane: str | None) -> None:
        self._channel = channel
        self._fixed_lane = lane
        self._stub = echo_pb2_grpc.EchoStub(channel)

    @property
    def lane(self) -> str | None:
        if self._fixed_lane is not None:
            return self._fixed_lane
        return getattr(self._channel, "lane", None)

    async def echo(self, payload: bytes) -> int:
        reply = await self._stub.Unary(EchoMessage(payload=payload))
        return len(reply.payload)

    async def open_stream(self, payload: bytes) -> _BidiStream:
        return _BidiStream(self._stub.Bidi(), EchoMessage(payload=payload))

    async def close(self) -> None:
        await self._channel.close()


async def _connect_grpc(ready: Ready, lane: str) -> StubClient:
    channel = grpc.aio.insecure_channel(ready["target"], options=SIZE_OPTIONS)
    return StubClient(channel, lane)


async def connect_grpc_tcp(ready: Ready) -> StubClient:
    return await _connect_grpc(ready, "tcp")


async def connect_grpc_unix(ready: Ready) -> StubClient:
    return await _connect_grpc(ready, "unix")


async def connect_grpc_tls(ready: Ready) -> StubClient:
    creds = grpc.ssl_channel_credentials(str(ready["ca"]).encode())
    return StubClient(grpc.aio.secure_channel(ready["target"], creds, options=SIZE_OPTIONS), "tcp")


def _lanerpc_tls_connector(lanes: str | None) -> Any:
    """A connect function for a lanerpc TLS row: ``lanes`` "tcp" keeps it on the TLS
    lane; None lets it upgrade on this host (keeping its TLS identity)."""

    async def connect(ready: Ready) -> StubClient:
        import rpc  # see serve_lanerpc

        creds = rpc.ssl_channel_credentials(str(ready["ca"]).encode())
        options = list(SIZE_OPTIONS)
        if lanes is not None:
            options.append(("lanerpc.lanes", lanes))
        return StubClient(rpc.secure_channel(ready["target"], creds, options=options), lane=None)

    return connect


def _lanerpc_connector(dial: str, lanes: str | None) -> Any:
    """A connect function for one lanerpc row.

    ``dial`` is "tcp" (127.0.0.1:port) or "unix" (the server's unix: path); ``lanes``
    is the "lanerpc.lanes" channel option, None for the library's default.
    """

    async def connect(ready: Ready) -> StubClient:
        import rpc  # see serve_lanerpc

        host = ready.get("host", "127.0.0.1")
        target = f"{host}:{ready['port']}" if dial == "tcp" else f"unix:{ready['unix_path']}"
        options = list(SIZE_OPTIONS)
        if lanes is not None:
            options.append(("lanerpc.lanes", lanes))
        return StubClient(rpc.insecure_channel(target, options=options), lane=None)

    return connect


# ---------------------------------------------------------------------------- rows

register(Subject(
    name="grpc-tcp", label="grpc.aio, TCP 127.0.0.1", family="grpc", lane="tcp",
    server="rpc._bench._rpc:serve_grpc", server_args={"transport": "tcp"}, connect=connect_grpc_tcp,
))
register(Subject(
    name="grpc-unix", label="grpc.aio, Unix socket", family="grpc", lane="unix",
    server="rpc._bench._rpc:serve_grpc", server_args={"transport": "unix"}, connect=connect_grpc_unix,
))
register(Subject(
    name="lanerpc-tcp", label="lanerpc, lanes=tcp, dial 127.0.0.1", family="lanerpc", lane="tcp",
    server="rpc._bench._rpc:serve_lanerpc", connect=_lanerpc_connector("tcp", "tcp"),
))
register(Subject(
    name="lanerpc-unix", label="lanerpc, lanes=unix,tcp, dial unix:", family="lanerpc", lane="unix",
    server="rpc._bench._rpc:serve_lanerpc", connect=_lanerpc_connector("unix", "unix,tcp"),
))
# The same-host upgrade to the Unix socket: dial TCP, allow unix and tcp.
register(Subject(
    name="lanerpc-tcp2unix", label="lanerpc, lanes=unix,tcp, dial 127.0.0.1 (upgraded)",
    family="lanerpc", lane="unix",
    server="rpc._bench._rpc:serve_lanerpc", connect=_lanerpc_connector("tcp", "unix,tcp"),
))
# The product: dial TCP with nothing configured and let the channel find the fastest lane.
# Its lane is whatever the channel reports (lane=None), and its floor follows that lane.
register(Subject(
    name="lanerpc-upgraded", label="lanerpc, default lanes, dial 127.0.0.1", family="lanerpc",
    server="rpc._bench._rpc:serve_lanerpc", connect=_lanerpc_connector("tcp", None),
))
register(Subject(
    name="lanerpc-shm", label="lanerpc, lanes=shm,unix,tcp, dial unix:", family="lanerpc", lane="shm",
    server="rpc._bench._rpc:serve_lanerpc", connect=_lanerpc_connector("unix", "shm,unix,tcp"),
))
# TLS on TCP: grpc.aio's (grpcio's TLS) and lanerpc's own TLS lane, same certificates.
register(Subject(
    name="grpc-tls", label="grpc.aio, TLS over TCP 127.0.0.1", family="grpc", lane="tcp",
    server="rpc._bench._rpc:serve_grpc_tls", connect=connect_grpc_tls,
))
register(Subject(
    name="lanerpc-tls", label="lanerpc, TLS lane (lanes=tcp), dial 127.0.0.1", family="lanerpc",
    lane="tcp", server="rpc._bench._rpc:serve_lanerpc_tls", connect=_lanerpc_tls_connector("tcp"),
    reference="grpc-tls",
))
# A TLS channel on the server's host upgrades like any other (to shm by default).
register(Subject(
    name="lanerpc-tls-upgraded", label="lanerpc, TLS, default lanes, dial 127.0.0.1",
    family="lanerpc", server="rpc._bench._rpc:serve_lanerpc_tls",
    connect=_lanerpc_tls_connector(None), reference="grpc-tls",
))
# grpc.aio clients of a lanerpc server: on its grpc:// port (the inner grpcio server's own
# port), and on its lanerpc TCP port (spliced to that same inner server). The third row
# is the grpc:// port of a server with lanerpc.grpc_on_lanerpc_ports off.
register(Subject(
    name="grpc-to-lanerpc-port", label="grpc.aio client -> lanerpc port (spliced)", family="grpc",
    lane="tcp", server="rpc._bench._rpc:serve_lanerpc_for_grpc", server_args={"port": "lanerpc"},
    connect=connect_grpc_tcp,
))
register(Subject(
    name="grpc-to-grpc-port", label="grpc.aio client -> grpc:// port", family="grpc",
    lane="tcp", server="rpc._bench._rpc:serve_lanerpc_for_grpc", server_args={"port": "grpc"},
    connect=connect_grpc_tcp,
))
register(Subject(
    name="grpc-to-grpc-port-solo", label="grpc.aio client -> grpc:// port, one-port off",
    family="grpc", lane="tcp", server="rpc._bench._rpc:serve_lanerpc_for_grpc",
    server_args={"port": "grpc", "one_port": 0}, connect=connect_grpc_tcp,
))
# Across two network namespaces joined by a veth pair (rpc/_bench/_netns.py): the server
# in a namespace made for the round, the client here dialling its veth address. lanerpc
# keeps to tcp: with the default lanes it would prove the same host (the namespaces
# share the filesystem) and move to shm, which is not what another machine would get.
register(Subject(
    name="grpc-veth-tcp", label="grpc.aio, TCP over veth to another netns", family="grpc",
    lane="tcp", server="rpc._bench._rpc:serve_grpc", server_args={"transport": "tcp"},
    connect=connect_grpc_tcp, netns=True, reference="grpc-veth-tcp",
))
register(Subject(
    name="lanerpc-veth-tcp", label="lanerpc, lanes=tcp, over veth to another netns",
    family="lanerpc", lane="tcp", server="rpc._bench._rpc:serve_lanerpc",
    connect=_lanerpc_connector("tcp", "tcp"), netns=True, reference="grpc-veth-tcp",
))
