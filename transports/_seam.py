"""The seam between lanes and the RPC layer.

A lane's transport is an ``asyncio.BaseTransport``-compatible object (asyncio's
own socket transports for ``tcp`` and ``unix``; a transport of our own for ``shm``).
The RPC layer calls only these methods on it:

``write(data)`` / ``writelines(list_of_buffers)``
    queue bytes; never blocks. Above the high-water mark the transport calls the
    protocol's ``pause_writing()``, below the low-water mark ``resume_writing()``.
``close()``
    flush what is queued, then close; ``connection_lost(None)`` follows.
``abort()``
    close at once, dropping what is queued; ``connection_lost(None)`` follows.
``is_closing()``
``get_extra_info("lanerpc_peer")``
    a :class:`PeerInfo`.

and the lane calls only these on the protocol: ``connection_made(transport)``,
``data_received(data)`` (any split of the byte stream, never empty),
``eof_received()``, ``connection_lost(exc_or_None)``, ``pause_writing()``,
``resume_writing()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import struct


@dataclasses.dataclass(frozen=True, slots=True)
class PeerInfo:
    """Typed facts about the other end of one connection."""

    lane: str                    # "tcp", "unix", "shm", "pipe"
    address: str                 # gRPC's spelling: "ipv4:1.2.3.4:5", "ipv6:%5B::1%5D:5", "unix:/p";
                                 # "pipe:<pid>" (a spawned worker's or its parent's)
    pid: int | None = None       # SO_PEERCRED, on local lanes
    uid: int | None = None
    gid: int | None = None


_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket, or None."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def is_this_process(peer: PeerInfo) -> bool:
    """Whether the other end of a connection is this very process: its pid (the
    process that called connect() or listen(); a socketpair's creator, on both ends),
    known on the local lanes. Such a peer answers with this process's CPU, so nothing
    here polls for it."""
    return peer.pid is not None and peer.pid == os.getpid()


def peer_info(transport: asyncio.BaseTransport) -> PeerInfo:
    """The PeerInfo of any lane's transport (asyncio socket transports included)."""
    info = transport.get_extra_info("lanerpc_peer")
    if isinstance(info, PeerInfo):
        return info
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        path = sock.getsockname() or transport.get_extra_info("peername") or ""
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        creds = peer_credentials(sock)
        if creds:
            return PeerInfo("unix", f"unix:{path}", *creds)
        return PeerInfo("unix", f"unix:{path}")
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return PeerInfo("tcp", ip_peer(peer[0], peer[1]))
    return PeerInfo("unknown", "unknown")


_V4_MAPPED = "::ffff:"


def ip_peer(host: str, port: int) -> str:
    """A TCP peer as grpc spells it: ``ipv4:127.0.0.1:5`` (an IPv4 client of a
    dual-stack socket, ``::ffff:a.b.c.d``, included), and for IPv6 a URI with the
    brackets percent-encoded, ``ipv6:%5B::1%5D:5``, exactly as grpc reports it."""
    if ":" not in host:
        return f"ipv4:{host}:{port}"
    if host.lower().startswith(_V4_MAPPED) and "." in host:
        return f"ipv4:{host[len(_V4_MAPPED):]}:{port}"
    quoted = host.replace("%", "%25")
    return f"ipv6:%5B{quoted}%5D:{port}"
