"""The tcp lane: asyncio's TCP transport with TCP_NODELAY (frames are written
whole and batched per loop iteration, so Nagle's delay would only add latency)."""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

ProtocolFactory = Callable[[], asyncio.Protocol]


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def connect(host: str, port: int, factory: ProtocolFactory) -> tuple[asyncio.Transport, asyncio.Protocol]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(factory, host, port)
    _nodelay(transport)
    return transport, protocol


class _NoDelay(asyncio.Protocol):
    pass


async def listen(host: str, port: int, factory: ProtocolFactory) -> asyncio.AbstractServer:
    """Listen on host:port (port 0: any free port; read it from the server's sockets)."""
    loop = asyncio.get_running_loop()

    def make() -> asyncio.Protocol:
        protocol = factory()
        made = protocol.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            _nodelay(transport)
            made(transport)
        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol

    host_arg: str | None = host
    if host in ("", "[::]", "::", "0.0.0.0"):
        host_arg = None if host in ("", "[::]", "::") else host
    return await loop.create_server(make, host_arg, port, reuse_address=True, backlog=1024)


def bound_port(server: asyncio.AbstractServer) -> int:
    for sock in server.sockets:
        return sock.getsockname()[1]
    raise OSError("server has no sockets")
