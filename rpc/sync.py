"""lanerpc for blocking code: grpc's synchronous API on lanerpc's lanes.

    import rpc.sync
    channel = rpc.sync.insecure_channel("127.0.0.1:50051")
    stub = helloworld_pb2_grpc.GreeterStub(channel)          # grpc's generated blocking stub
    reply = stub.SayHello(helloworld_pb2.HelloRequest(name="you"), timeout=1.0)

    server = rpc.sync.server(concurrent.futures.ThreadPoolExecutor(8))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)  # a grpc sync servicer

Everything behaves as its namesake in ``grpc`` (``grpc.insecure_channel``,
``grpc.server``): calls return values or raise ``grpc.RpcError``, ``.with_call()``,
``.future()``, streaming iterators, ``close()``. Underneath, lanerpc's async channel and
server run on one event loop in a daemon thread of the process (started at first use),
so the lanes, the same-host upgrade, the options and the limits are the async API's.
See README.md, "Blocking code".
"""

import concurrent.futures
from collections.abc import Sequence as _Sequence
from typing import Any as _Any

import grpc

from rpc import _compression, _credentials, _grpc
from rpc._call_credentials import CompositeChannelCredentials as _Composite
from rpc._sync_channel import Channel, SyncCall
from rpc._sync_server import Server, SyncServicerContext

_Options = _Sequence[tuple[str, _Any]]


def insecure_channel(target: str, options: _Options | None = None,
                     compression: grpc.Compression | None = None) -> Channel | grpc.Channel:
    """A blocking channel to ``target`` (``host:port``, ``unix:/path``, ...), as
    ``grpc.insecure_channel``. ``grpc://target`` or the option ``("lanerpc.protocol",
    "grpc")`` gives grpc's own blocking channel (plain gRPC) instead."""
    plain, rest = _grpc.strip_scheme(target)
    if plain or _grpc.wants_grpc(options):
        _grpc.refuse_server_uids(rest, options)
        return grpc.insecure_channel(rest, _grpc.grpc_options(options), compression)
    return Channel(target, _compression.as_option(options, compression))


def secure_channel(target: str, credentials: grpc.ChannelCredentials,
                   options: _Options | None = None,
                   compression: grpc.Compression | None = None) -> Channel | grpc.Channel:
    """A blocking TLS channel, as ``grpc.secure_channel``. With
    ``rpc.ssl_channel_credentials(...)``: lanerpc's TLS lane (moved to unix or shm on the
    server's host, as the async API's). With grpc's own credentials, a ``grpc://``
    target or ``("lanerpc.protocol", "grpc")``: grpc's own blocking channel (gRPC over TLS)."""
    plain, rest = _grpc.strip_scheme(target)
    inner = credentials.channel if isinstance(credentials, _Composite) else credentials
    if plain or _grpc.wants_grpc(options) or not isinstance(inner, _credentials.SslChannelCredentials):
        _grpc.refuse_server_uids(rest, options)
        if isinstance(credentials, _Composite) or \
                isinstance(inner, _credentials.SslChannelCredentials):
            raise TypeError("a plain gRPC channel (grpcio) takes grpc's credentials "
                            "(grpc.ssl_channel_credentials and friends), not rpc's")
        return grpc.secure_channel(rest, credentials, _grpc.grpc_options(options), compression)
    return Channel(target, _compression.as_option(options, compression), credentials)


def server(thread_pool: concurrent.futures.Executor | None = None,
           handlers: _Sequence[grpc.GenericRpcHandler] | None = None,
           interceptors: _Sequence[grpc.ServerInterceptor] | None = None,
           options: _Options | None = None,
           maximum_concurrent_rpcs: int | None = None,
           compression: grpc.Compression | None = None) -> Server:
    """A blocking server, as ``grpc.server``: its handlers (grpc's sync servicers) run
    on ``thread_pool`` (None: a pool of its own); ``interceptors`` are grpc's
    ``grpc.ServerInterceptor`` (run on the loop's thread, as grpc runs them on its
    serving thread, so they should not block)."""
    return Server(thread_pool, handlers, interceptors, options, maximum_concurrent_rpcs,
                  compression)


__all__ = (
    "Channel",
    "Server",
    "SyncCall",
    "SyncServicerContext",
    "insecure_channel",
    "secure_channel",
    "server",
)
