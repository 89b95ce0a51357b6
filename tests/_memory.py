"""lanerpc calls without sockets: a Channel's connections reach a Server through a pair
of in-memory transports (grpclib's ``ChannelFor`` idea), so the call and context logic
runs as it does on every lane, with no kernel in between.

``served_in_memory(served)`` registers a started lanerpc server under its first target;
while it is registered, a lanerpc channel that dials that target is connected in memory
(lane ``"memory"``) instead of through a socket. The server still binds its port (start()
wants one), but no byte goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from rpc import _lanes
from rpc._link import Link
from rpc._options import Options
from rpc._proto import handshake_pb2
from rpc._target import Endpoint, parse_target
from rpc.transports import PeerInfo
from tests._support import SETUP_TIMEOUT, Served


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory byte pipe, with asyncio's transport behaviour: what is
    written reaches the peer's protocol on a later turn of the loop, in order;
    ``close()`` delivers what was written first, then both ends lose the connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        super().__init__()
        self._loop = loop
        self._protocol: asyncio.BaseProtocol | None = None
        self._peer: MemoryTransport | None = None
        self._closing = False
        self._lost = False
        self._peer_info = PeerInfo("memory", f"memory:{name}", os.getpid(), os.geteuid(),
                                   os.getegid())

    @classmethod
    def pair(cls, loop: asyncio.AbstractEventLoop) -> tuple[MemoryTransport, MemoryTransport]:
        client, server = cls(loop, "client"), cls(loop, "server")
        client._peer, server._peer = server, client
        return client, server

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer_info if name == "lanerpc_peer" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        assert self._peer is not None
        self._loop.call_soon(self._peer._deliver, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _deliver(self, data: bytes) -> None:
        # A link is a BufferedProtocol that also takes data_received (every lane's does).
        receive = getattr(self._protocol, "data_received", None)
        if not self._lost and receive is not None:
            receive(data)

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        assert self._peer is not None
        self._loop.call_soon(self._lose)
        self._loop.call_soon(self._peer._peer_closed)

    def abort(self) -> None:
        self.close()

    def _peer_closed(self) -> None:
        self._closing = True
        self._lose()

    def _lose(self) -> None:
        if not self._lost:
            self._lost = True
            if self._protocol is not None:
                self._protocol.connection_lost(None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._closing


# A target's path or host:port -> its lanerpc server and how a channel reaches it.
LinkPair = Callable[[Any, Options, Callable[[handshake_pb2.Hello | None], Link]], Awaitable[Link]]
_servers: dict[str, tuple[Any, LinkPair]] = {}
_dial = _lanes.connect


def _key(endpoint: Endpoint) -> str:
    return endpoint.path if endpoint.lane == "unix" else f"{endpoint.host}:{endpoint.port}"


async def _connect(endpoint: Endpoint, options: Options,
                   make_link: Callable[[handshake_pb2.Hello | None], Link]) -> Link:
    registered = _servers.get(_key(endpoint))
    if registered is None:
        return await _dial(endpoint, options, make_link)
    server, pair = registered
    return await pair(server, options, make_link)


async def _in_memory(server: Any, options: Options,
                     make_link: Callable[[handshake_pb2.Hello | None], Link]) -> Link:
    loop = asyncio.get_running_loop()
    client_end, server_end = MemoryTransport.pair(loop)
    # What a listener does for an accepted connection (a connection of the lanes that
    # offers nothing: no upgrade, no shm).
    server_link = server._new_link(_lanes.Negotiator(server._lanes))
    client_link = make_link(None)
    server_end.set_protocol(server_link)
    client_end.set_protocol(client_link)
    server_link.connection_made(server_end)
    client_link.connection_made(client_end)
    await client_link.handshake(options.handshake_timeout)
    return client_link


@contextlib.asynccontextmanager
async def served_through(serving: contextlib.AbstractAsyncContextManager[Served],
                         pair: LinkPair) -> AsyncIterator[Served]:
    """``async with served_through(serve(...), pair) as served``: channels dialing
    ``served.target`` get the link ``pair(server, options, make_link)`` makes."""
    async with serving as served:
        key = _key(parse_target(served.target)[0])
        _servers[key] = (served.server, pair)
        _lanes.connect = _connect        # channels look it up at each connection
        try:
            yield served
        finally:
            # Channels close before the server stops: unregister after them.
            await asyncio.wait_for(served.close_channels(), SETUP_TIMEOUT)
            del _servers[key]
            if not _servers:
                _lanes.connect = _dial


def served_in_memory(serving: contextlib.AbstractAsyncContextManager[Served]
                     ) -> contextlib.AbstractAsyncContextManager[Served]:
    """``async with served_in_memory(serve(...)) as served``: channels dialing
    ``served.target`` are connected to ``served.server`` in memory."""
    return served_through(serving, _in_memory)
