"""Server addresses -> bound sockets, synchronously (add_insecure_port returns the port)."""

from __future__ import annotations

import os
import socket

from rpc._target import parse_server_address


def bind(address: str, *, mode: int = 0o600,
         reuse_port: bool = True) -> tuple[str, list[socket.socket], int]:
    """Bind ``address`` now; returns (lane, sockets, port). ``listen`` happens at start().

    ``reuse_port`` (gRPC's ``grpc.so_reuseport``, on by default as there): TCP sockets
    get SO_REUSEPORT, so several servers (processes of one uid) can share a port and
    the kernel spreads connections among them."""
    try:
        endpoint = parse_server_address(address)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    if endpoint.lane == "unix":
        return "unix", [_bind_unix(endpoint.path, mode)], 0
    host, port = endpoint.host, endpoint.port
    if host in ("", "::", "*"):
        infos = [(socket.AF_INET6, "::")]
    else:
        infos = []
        for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            if (family, sockaddr[0]) not in infos:
                infos.append((family, sockaddr[0]))
    sockets: list[socket.socket] = []
    try:
        for family, addr in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # "[::]" serves IPv4 too, as gRPC's does; a named v6 address only v6.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr == "::" else 1)
            sock.bind((addr, port))
            port = sock.getsockname()[1]   # port 0: later addresses reuse the one chosen
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise RuntimeError(f"Failed to bind to address {address}: {exc}") from exc
    for sock in sockets:
        sock.setblocking(False)
    return "tcp", sockets, port


def _bind_unix(path: str, mode: int) -> socket.socket:
    from rpc.transports.unix import _claim_path
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise RuntimeError(f"Failed to bind to unix:{path}: no directory {directory}")
    try:
        _claim_path(path)
    except OSError as exc:
        raise RuntimeError(f"Failed to bind to unix:{path}: {exc.strerror or exc}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)   # never briefly open to others
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"Failed to bind to unix:{path}: {exc}") from exc
    sock.setblocking(False)
    return sock
