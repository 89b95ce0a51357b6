"""The tcp lane: asyncio's TCP transport with TCP_NODELAY (frames are written
whole and batched per loop iteration, so Nagle's delay would only add latency).

A server binds first (:func:`bind`, synchronous, so the caller learns the port at
once, as gRPC's ``add_insecure_port`` returns it) and listens later, in its event
loop (:func:`listen`).

TLS is the event loop's own (``ssl=`` of ``create_connection``/``create_server``, which
asyncio and uvloop both implement): the protocol's ``connection_made`` runs only after
the handshake succeeded, so a peer refused there never reaches the protocol. Give it an
``asyncio.BufferedProtocol``: the loop's TLS then decrypts straight into the buffer the
protocol lends, while a plain Protocol gets each arrival decrypted into a fresh 256 KiB
bytes object (an mmap, a shrinking mremap and a munmap per read).
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
from collections.abc import Callable

# An asyncio.Protocol, or a BufferedProtocol (read straight into its buffer).
ProtocolFactory = Callable[[], asyncio.BaseProtocol]

BACKLOG = 1024


def _nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def connect(host: str, port: int, factory: ProtocolFactory, *,
                  ssl: _ssl.SSLContext | None = None, server_hostname: str | None = None,
                  handshake_timeout: float | None = None,
                  ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """Dial ``host:port``; with ``ssl``, a TLS connection whose certificate is checked
    against ``server_hostname`` (also sent as SNI)."""
    loop = asyncio.get_running_loop()
    if ssl is None:
        transport, protocol = await loop.create_connection(factory, host, port)
    else:
        transport, protocol = await loop.create_connection(
            factory, host, port, ssl=ssl, server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        _nodelay(sock)
    return transport, protocol


def bind(host: str, port: int, *, reuse_port: bool = True) -> list[socket.socket]:
    """Sockets bound to ``host:port``, one per address ``host`` resolves to; ``""``,
    ``"::"`` or ``"*"``: every address, IPv4 included. Port 0 picks a free port, and
    later addresses take the same one. ``reuse_port`` sets SO_REUSEPORT, so servers of
    one uid can share a port (the kernel spreads connections among them).

    Raises OSError; nothing stays bound then."""
    addresses: list[tuple[socket.AddressFamily, str]]
    if host in ("", "::", "*"):
        addresses = [(socket.AF_INET6, "::")]
    else:
        addresses = []
        for found, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            # An AF_INET/AF_INET6 sockaddr starts with the address as text.
            if (found, str(sockaddr[0])) not in addresses:
                addresses.append((found, str(sockaddr[0])))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # "::" serves IPv4 too, as gRPC's does; a named v6 address only v6.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                0 if address == "::" else 1)
            # Accepted sockets inherit TCP_NODELAY from the listening one (Linux).
            _nodelay(sock)
            sock.bind((address, port))
            port = sock.getsockname()[1]
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def listen(sock: socket.socket, factory: ProtocolFactory, *,
                 ssl: _ssl.SSLContext | None = None,
                 handshake_timeout: float | None = None) -> asyncio.AbstractServer:
    """Accept connections on a socket from :func:`bind`; each gets a protocol from
    ``factory`` (with ``ssl``: after its TLS handshake, within ``handshake_timeout``).
    Closing the returned server closes the socket."""
    loop = asyncio.get_running_loop()
    sock.listen(BACKLOG)
    if ssl is None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(factory, sock=sock, ssl=ssl,
                                    ssl_handshake_timeout=handshake_timeout)
