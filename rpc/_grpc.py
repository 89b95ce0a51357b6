"""Plain gRPC at the edges: serving lanerpc's servicers to any gRPC client, dialing any
gRPC server, and TLS — all carried by grpcio itself.

- ``server.add_insecure_port("grpc://host:port")`` and ``server.add_secure_port(address,
  credentials)`` bind ports of an inner ``grpc.aio`` server that runs beside the lanerpc
  listeners: the same handlers, interceptors, thread pool and options, started and stopped
  with the lanerpc server. Clients in any language reach the same servicers there.
- ``rpc.insecure_channel("grpc://target")``, the option ``("lanerpc.protocol", "grpc")``,
  and ``rpc.secure_channel(target, credentials)`` return a :class:`GrpcChannel`: a
  ``grpc.aio`` channel (HTTP/2, TLS when asked) that also answers ``channel.lane``.

TLS goes through grpcio because its credentials objects are opaque: a
``grpc.ssl_server_credentials(...)`` object does not hand its keys back to Python, so the
only way to honour it unchanged is to give it to grpcio. A secure channel is therefore
never moved to the unix or shm lanes; a same-host deployment that wants those lanes uses
an insecure port, which is admitted by uid on the local lanes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio
from grpc.aio._channel import Channel as _AioChannel

SCHEME = "grpc://"
PROTOCOL_OPTION = "lanerpc.protocol"
PROTOCOLS = ("lanerpc", "grpc")


def strip_scheme(target: str) -> tuple[bool, str]:
    """``(True, rest)`` for a ``grpc://`` target, else ``(False, target)``."""
    if target[:len(SCHEME)].lower() == SCHEME:
        rest = target[len(SCHEME):]
        if not rest:
            raise ValueError(f"{target!r}: nothing after {SCHEME}")
        return True, rest
    return False, target


def wants_grpc(options: Sequence[tuple[str, Any]] | None) -> bool:
    """Whether the options ask for plain gRPC (``("lanerpc.protocol", "grpc")``)."""
    chosen = "lanerpc"
    for item in options or ():
        if isinstance(item, tuple) and len(item) == 2 and item[0] == PROTOCOL_OPTION:
            chosen = str(item[1]).strip().lower()
            if chosen not in PROTOCOLS:
                raise ValueError(f"{PROTOCOL_OPTION} must be one of {', '.join(PROTOCOLS)}; "
                                 f"got {item[1]!r}")
    return chosen == "grpc"


def grpc_options(options: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """The options grpcio gets: ours (``lanerpc.*``) left out."""
    return [item for item in options or ()
            if not (isinstance(item, tuple) and str(item[0]).startswith("lanerpc."))]


class GrpcChannel(_AioChannel):
    """A ``grpc.aio`` channel (grpcio's HTTP/2, TLS when given credentials), with the
    ``lane`` attribute lanerpc's channels have: ``"unix"`` for a ``unix:`` target,
    ``"tcp"`` otherwise, once connected; None before."""

    def __init__(self, target: str, options, credentials, compression, interceptors) -> None:
        self._lane = "unix" if target.startswith("unix") else "tcp"
        super().__init__(target, grpc_options(options),
                         credentials._credentials if credentials is not None else None,
                         compression, interceptors)

    @property
    def lane(self) -> str | None:
        ready = self.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY
        return self._lane if ready else None


def channel(target: str, options, credentials, compression, interceptors) -> GrpcChannel:
    if credentials is not None and not isinstance(credentials, grpc.ChannelCredentials):
        raise TypeError(f"credentials must be grpc.ChannelCredentials (from "
                        f"grpc.ssl_channel_credentials() and friends); got {credentials!r}")
    return GrpcChannel(target, options, credentials, compression, interceptors)


class GrpcPorts:
    """The inner ``grpc.aio`` server behind a lanerpc server's ``grpc://`` and secure ports."""

    def __init__(self, *, thread_pool, interceptors, options, maximum_concurrent_rpcs,
                 compression) -> None:
        self.server = aio.server(
            migration_thread_pool=thread_pool,
            interceptors=interceptors or None,
            options=grpc_options(options),
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            compression=compression,
        )
        self.addresses: list[str] = []

    def add_insecure_port(self, address: str) -> int:
        port = self.server.add_insecure_port(address)
        self._bound(address, port)
        return port

    def add_secure_port(self, address: str, credentials) -> int:
        if not isinstance(credentials, grpc.ServerCredentials):
            raise TypeError(f"server_credentials must be grpc.ServerCredentials (from "
                            f"grpc.ssl_server_credentials() and friends); got {credentials!r}")
        port = self.server.add_secure_port(address, credentials)
        self._bound(address, port)
        return port

    def _bound(self, address: str, port: int) -> None:
        if port == 0 and not address.startswith("unix"):
            raise RuntimeError(f"could not bind a gRPC port at {address!r}")
        self.addresses.append(address)

    async def start(self, generic_handlers, registered: dict[str, dict]) -> None:
        if generic_handlers:
            self.server.add_generic_rpc_handlers(tuple(generic_handlers))
        for service, handlers in registered.items():
            self.server.add_registered_method_handlers(service, handlers)
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)
