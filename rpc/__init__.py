"""lanerpc: grpc.aio's API, moved over the fastest lane that reaches the peer.

    import rpc
    server = rpc.server()
    channel = rpc.insecure_channel("127.0.0.1:50051")

Everything here behaves as its namesake in ``grpc.aio``; see README.md for
what lanerpc adds (``channel.lane``, the ``lanerpc.lanes`` option, ``rpc.serve``).
"""

import logging
from concurrent import futures

import grpc
from grpc.aio import AioRpcError, EOF, Metadata

# First: it decides whether the compiled hot path or its pure-Python source is imported.
from rpc import _compiled
from rpc import _compression, _credentials, _grpc, _options
from rpc._channel import (
    Channel,
    StreamStreamCall,
    StreamUnaryCall,
    UnaryStreamCall,
    UnaryUnaryCall,
)
from rpc._call_credentials import (
    CallCredentials,
    CompositeChannelCredentials,
    access_token_call_credentials,
    composite_call_credentials,
    composite_channel_credentials,
    metadata_call_credentials,
)
from rpc._context import ServicerContext
from rpc._credentials import (
    LocalChannelCredentials,
    LocalServerCredentials,
    SslChannelCredentials,
    SslServerCredentials,
    local_channel_credentials,
    local_server_credentials,
    ssl_channel_credentials,
    ssl_server_credentials,
)
from rpc._grpc import GrpcChannel
from rpc._metrics import disable_metrics, enable_metrics
from rpc._serve import serve, serve_async
from rpc._server import Server
from rpc._spawn import SpawnedChannel, serve_stdio, serve_stdio_async, spawn
from rpc._wire import ProtocolError
from rpc import sync   # the blocking API: rpc.sync.insecure_channel, rpc.sync.server

__version__ = _options.VERSION
_log = logging.getLogger("lanerpc")
_log.debug("lanerpc: compiled modules: %s%s", ", ".join(_compiled.compiled_modules()) or "none",
           " (LANERPC_PURE_PYTHON is set)" if _compiled.PURE_PYTHON_FORCED else "")


def insecure_channel(target: str, options: _grpc.Options | None = None,
                     compression: grpc.Compression | None = None,
                     interceptors: _grpc.ClientInterceptors | None = None) -> Channel | GrpcChannel:
    """A channel to ``target`` (``host:port``, ``unix:/path``, ``dns:///name:port``, ...).

    ``grpc://target`` or the option ``("lanerpc.protocol", "grpc")`` dials a plain gRPC
    server instead, through grpcio (a :class:`GrpcChannel`).
    """
    plain, rest = _grpc.strip_scheme(target)
    if plain or _grpc.wants_grpc(options):
        return _grpc.channel(rest, options, None, compression, interceptors)
    return Channel(target, _compression.as_option(options, compression), interceptors)


def secure_channel(target: str, credentials: grpc.ChannelCredentials,
                   options: _grpc.Options | None = None, compression: grpc.Compression | None = None,
                   interceptors: _grpc.ClientInterceptors | None = None) -> Channel | GrpcChannel:
    """A TLS channel to ``target``.

    With ``rpc.ssl_channel_credentials(...)``: a lanerpc :class:`Channel` whose TCP
    connections use TLS (to a lanerpc server's ``add_secure_port`` with
    ``rpc.ssl_server_credentials``); on the server's host it moves to the unix or shm
    lane, keeping its TLS identity, unless ``lanerpc.lanes`` is ``tcp``. With grpc's own
    credentials objects, or a ``grpc://`` target or the option ``("lanerpc.protocol",
    "grpc")``: gRPC over TLS through grpcio (a :class:`GrpcChannel`), to any gRPC server.
    With local credentials (``rpc.local_channel_credentials(...)`` or grpc's): a
    plaintext lanerpc :class:`Channel` that dials only local peers (a ``unix:`` target,
    or loopback addresses), where call credentials are allowed.
    See README, "TLS on lanerpc's own lane"."""
    plain, rest = _grpc.strip_scheme(target)
    inner = credentials.channel if isinstance(credentials, CompositeChannelCredentials) else credentials
    ours = (isinstance(inner, SslChannelCredentials)
            or _credentials.local_connect_type(inner, target) is not None)
    if plain or _grpc.wants_grpc(options) or not ours:
        if not plain and not _grpc.wants_grpc(options):
            _log.debug("lanerpc: secure_channel(%s) with grpc's credentials: a grpcio channel "
                       "(gRPC over TLS); rpc.ssl_channel_credentials gives lanerpc's TLS lane",
                       target)
        return _grpc.channel(rest, options, credentials, compression, interceptors)
    return Channel(target, _compression.as_option(options, compression), interceptors,
                   credentials=credentials)


def server(migration_thread_pool: futures.Executor | None = None,
           handlers: _grpc.GenericHandlers | None = None,
           interceptors: _grpc.ServerInterceptors | None = None,
           options: _grpc.Options | None = None,
           maximum_concurrent_rpcs: int | None = None,
           compression: grpc.Compression | None = None) -> Server:
    """A server; add servicers with the generated ``add_*Servicer_to_server``."""
    return Server(migration_thread_pool, handlers, interceptors, options,
                  maximum_concurrent_rpcs, compression)


__all__ = (
    "AioRpcError",
    "CallCredentials",
    "Channel",
    "CompositeChannelCredentials",
    "EOF",
    "GrpcChannel",
    "LocalChannelCredentials",
    "LocalServerCredentials",
    "Metadata",
    "ProtocolError",
    "Server",
    "ServicerContext",
    "SpawnedChannel",
    "SslChannelCredentials",
    "SslServerCredentials",
    "StreamStreamCall",
    "StreamUnaryCall",
    "UnaryStreamCall",
    "UnaryUnaryCall",
    "access_token_call_credentials",
    "composite_call_credentials",
    "composite_channel_credentials",
    "disable_metrics",
    "enable_metrics",
    "insecure_channel",
    "local_channel_credentials",
    "local_server_credentials",
    "metadata_call_credentials",
    "secure_channel",
    "serve",
    "serve_async",
    "serve_stdio",
    "serve_stdio_async",
    "server",
    "spawn",
    "ssl_channel_credentials",
    "ssl_server_credentials",
)
