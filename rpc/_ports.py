"""Server addresses -> bound sockets, synchronously (add_insecure_port returns the port).

The binding itself is the transports' (:func:`rpc.transports.tcp.bind`,
:func:`rpc.transports.unix.bind`); this module parses gRPC's address spellings and
words errors as gRPC does."""

from __future__ import annotations

import os
import socket

from rpc._target import parse_server_address
from rpc.transports import tcp, unix


def bind(address: str, *, mode: int = 0o600,
         reuse_port: bool = True) -> tuple[str, list[socket.socket], int]:
    """Bind ``address`` now; returns (lane, sockets, port). Listening happens at start().

    ``reuse_port`` is gRPC's ``grpc.so_reuseport`` (on by default, as there)."""
    try:
        endpoint = parse_server_address(address)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    if endpoint.lane == "unix":
        check_directory(address, endpoint.path)
        try:
            return "unix", [unix.bind(endpoint.path, mode=mode)], 0
        except OSError as exc:
            raise RuntimeError(f"Failed to bind to address {address}: {exc.strerror or exc}") from exc
    try:
        sockets = tcp.bind(endpoint.host, endpoint.port, reuse_port=reuse_port)
    except OSError as exc:
        raise RuntimeError(f"Failed to bind to address {address}: {exc}") from exc
    return "tcp", sockets, sockets[0].getsockname()[1]


def check_directory(address: str, path: str) -> None:
    """A socket file's directory must exist (an abstract name, NUL first, has none)."""
    if path.startswith("\0"):
        return
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise RuntimeError(f"Failed to bind to address {address}: no directory {directory}")


def claim_unix(address: str, path: str) -> None:
    """Refuse a ``grpc://unix:`` port whose socket file a live server holds, at once:
    grpcio, binding it at start(), would unlink and replace it (as grpc.aio does),
    taking the path from under that server. lanerpc's own unix ports refuse it too."""
    if path.startswith("\0"):
        return      # an abstract name: grpcio's bind fails if it is taken, nothing to claim
    try:
        unix.claim_path(path)
    except OSError as exc:
        raise RuntimeError(f"Failed to bind to address {address}: {exc.strerror or exc}") from exc
