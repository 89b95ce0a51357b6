"""Plain gRPC at the edges: serving lanerpc's servicers to any gRPC client, and dialing
any gRPC server, with or without TLS, all carried by grpcio itself.

- ``server.add_insecure_port("grpc://host:port")`` and ``server.add_secure_port(...)``
  with a ``grpc://`` address or grpc's own credentials bind ports of an inner
  ``grpc.aio`` server that runs beside the lanerpc listeners: the same handlers,
  interceptors, thread pool and options, started and stopped with the lanerpc server.
  Clients in any language reach the same servicers there.
- ``rpc.insecure_channel("grpc://target")``, the option ``("lanerpc.protocol", "grpc")``,
  and ``rpc.secure_channel`` with a ``grpc://`` target or grpc's own credentials return a
  :class:`GrpcChannel`: a ``grpc.aio`` channel (HTTP/2, TLS when asked) that also
  answers ``channel.lane``.

grpc's own credentials objects are opaque (a ``grpc.ssl_server_credentials(...)`` object
does not hand its keys back to Python), so the only way to honour one unchanged is to
give it to grpcio. lanerpc's own TLS lane takes ``rpc.ssl_*_credentials``, which keep
their PEM bytes (see :mod:`rpc._credentials`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from rpc import _splice

Options = Sequence[tuple[str, Any]]                  # gRPC's (name, value) option pairs
ClientInterceptors = Sequence[aio.ClientInterceptor]
ServerInterceptors = Sequence[aio.ServerInterceptor]
GenericHandlers = Sequence[grpc.GenericRpcHandler]
MethodHandlers = Mapping[str, "grpc.RpcMethodHandler[Any, Any]"]   # generic in the stubs only


if TYPE_CHECKING:
    # grpcio types its concrete channel against private classes the stubs don't know; to
    # mypy it is the stubs' grpc.aio.Channel, which is what users and generated stubs expect.
    _AioChannel = aio.Channel
else:
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


def wants_grpc(options: Options | None) -> bool:
    """Whether the options ask for plain gRPC (``("lanerpc.protocol", "grpc")``)."""
    chosen = "lanerpc"
    for item in options or ():
        if isinstance(item, tuple) and len(item) == 2 and item[0] == PROTOCOL_OPTION:
            chosen = str(item[1]).strip().lower()
            if chosen not in PROTOCOLS:
                raise ValueError(f"{PROTOCOL_OPTION} must be one of {', '.join(PROTOCOLS)}; "
                                 f"got {item[1]!r}")
    return chosen == "grpc"


def grpc_options(options: Options | None) -> list[tuple[str, Any]]:
    """The options grpcio gets: ours (``lanerpc.*``) left out."""
    return [item for item in options or ()
            if not (isinstance(item, tuple) and str(item[0]).startswith("lanerpc."))]


class GrpcChannel(_AioChannel):
    """A ``grpc.aio`` channel (grpcio's HTTP/2, TLS when given credentials), with the
    ``lane`` attribute lanerpc's channels have: ``"unix"`` for a ``unix:`` target,
    ``"tcp"`` otherwise, once connected; None before."""

    def __init__(self, target: str, options: Options | None,
                 credentials: grpc.ChannelCredentials | None,
                 compression: grpc.Compression | None,
                 interceptors: ClientInterceptors | None) -> None:
        self._lane = "unix" if target.startswith("unix") else "tcp"
        # grpcio's own aio.secure_channel hands its channel the same private
        # `_credentials` (the stubs leave private attributes out).
        # (The stubs' abstract base takes no arguments; grpcio's concrete channel does.)
        super().__init__(target, grpc_options(options),  # type: ignore[call-arg]
                         credentials._credentials  # type: ignore[attr-defined]  # see above
                         if credentials is not None else None,
                         compression, interceptors)

    @property
    def lane(self) -> str | None:
        ready = self.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY
        return self._lane if ready else None


def refuse_server_uids(target: str, options: Options | None) -> None:
    """Raise when ``lanerpc.server_uids`` would be dropped with our options: a check
    the user asked for, which a grpcio channel to a unix socket would not make."""
    if target.startswith("unix") and any(
            isinstance(item, tuple) and item[:1] == ("lanerpc.server_uids",) for item in options or ()):
        raise ValueError("lanerpc.server_uids is checked by lanerpc channels only: a plain gRPC "
                         f"(grpcio) channel to {target} would not check the server's uid")


def channel(target: str, options: Options | None, credentials: grpc.ChannelCredentials | None,
            compression: grpc.Compression | None,
            interceptors: ClientInterceptors | None) -> GrpcChannel:
    if credentials is not None and not isinstance(credentials, grpc.ChannelCredentials):
        raise TypeError(f"credentials must be grpc.ChannelCredentials (from "
                        f"grpc.ssl_channel_credentials() and friends); got {credentials!r}")
    refuse_server_uids(target, options)
    # grpcio's channel implements what the stubs' base leaves abstract.
    return GrpcChannel(  # type: ignore[abstract]
        target, options, credentials, compression, interceptors)


class _SplicedContext:
    """A gRPC-side call's context for a client spliced from a lanerpc TCP port: all
    of grpc.aio's context, except that ``peer()`` is the client's own address, not
    the splice's socket."""

    __slots__ = ("_context", "_peer")

    def __init__(self, context: aio.ServicerContext[Any, Any], peer: str) -> None:
        self._context = context
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """The callback gets this context, the one its handler was given."""
        self._context.add_done_callback(lambda _: callback(self))  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


aio.ServicerContext.register(_SplicedContext)


def _context_for(context: Any) -> Any:
    peer = _splice.real_peer(context.peer())
    return context if peer is None else _SplicedContext(context, peer)


def _with_real_peer(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """``behavior`` given the spliced client's context; of the same kind (coroutine,
    async generator, plain), which is how grpc.aio decides how to run it."""
    if inspect.isasyncgenfunction(behavior):
        async def streaming(request: Any, context: Any) -> Any:
            async for response in behavior(request, _context_for(context)):
                yield response
        return streaming
    if inspect.iscoroutinefunction(behavior):
        async def coroutine(request: Any, context: Any) -> Any:
            return await behavior(request, _context_for(context))
        return coroutine

    def plain(request: Any, context: Any) -> Any:
        return behavior(request, _context_for(context))
    return plain


_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class _HandlerWrapper:
    """Method handlers whose behaviours give a spliced client's calls its own address
    as ``context.peer()`` (cached per handler: a generic handler may return the same
    handler for every call)."""

    def __init__(self) -> None:
        self._wrapped: dict[Any, grpc.RpcMethodHandler[Any, Any]] = {}

    def __call__(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        try:
            return self._wrapped[handler]
        except (KeyError, TypeError):
            pass
        if not hasattr(handler, "_replace"):
            return handler                # a handler class of the user's: left as it is
        wrapped: grpc.RpcMethodHandler[Any, Any] = handler._replace(**{
            kind: _with_real_peer(getattr(handler, kind))          # grpc's is a namedtuple
            for kind in _KINDS if getattr(handler, kind, None) is not None})
        if len(self._wrapped) > 1024:    # generic handlers may make a handler per call
            self._wrapped.clear()
        try:
            self._wrapped[handler] = wrapped
        except TypeError:
            pass                          # not hashable: wrapped again next time
        return wrapped


class SplicedPeers(aio.ServerInterceptor):
    """The inner server's first interceptor, when it has interceptors and serves gRPC
    clients spliced from the lanerpc TCP ports: the interceptors after it and the
    handlers see such a client's address as ``context.peer()``. (Without interceptors
    the handlers are wrapped where they are added: grpc.aio's interceptor path costs
    tens of microseconds a call.)"""

    def __init__(self) -> None:
        self._wrap = _HandlerWrapper()

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return None if handler is None else self._wrap(handler)


class _PeerGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers get the wrapping of _HandlerWrapper."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: _HandlerWrapper) -> None:
        self._inner = inner
        self._wrap = wrap

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else self._wrap(handler)


class GrpcPorts:
    """The inner ``grpc.aio`` server behind a lanerpc server's ``grpc://`` and secure ports.

    grpcio ties a server to the event loop that runs when it is made, and a lanerpc
    server is often made before any loop runs (``rpc.serve(server)``). So the inner
    server is made in ``start()``; until then a TCP port is held by a socket of ours
    bound with SO_REUSEPORT (which reports the port, refuses a port taken by others,
    and keeps port 0's choice), released just before grpcio binds it.
    """

    def __init__(self, make_server: Callable[[Sequence[aio.ServerInterceptor]], aio.Server],
                 intercepted: bool = False) -> None:
        self._make_server = make_server
        self._intercepted = intercepted      # the lanerpc server has interceptors
        self._wrap: _HandlerWrapper | None = None   # wraps handlers for spliced peers
        self.server: aio.Server | None = None
        self._private: str | None = None   # unix socket for gRPC clients of lanerpc tcp ports
        self._starting: asyncio.Task[None] | None = None
        self._stopped = False
        self._ports: list[tuple[str, grpc.ServerCredentials | None, list[socket.socket]]] = []
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    @property
    def bound(self) -> bool:
        return bool(self._ports)

    def addresses(self) -> list[str]:
        """The grpc:// ports' addresses (for lanerpc ps)."""
        return [address for address, _, _ in self._ports]

    def add_insecure_port(self, address: str) -> int:
        return self._reserve(address, None)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        if not isinstance(credentials, grpc.ServerCredentials):
            raise TypeError(f"server_credentials must be grpc.ServerCredentials (from "
                            f"grpc.ssl_server_credentials() and friends); got {credentials!r}")
        return self._reserve(address, credentials)

    def _reserve(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        from rpc import _ports, _target

        endpoint = _target.parse_server_address(address)
        if endpoint.lane == "unix":
            _ports.check_directory(address, endpoint.path)
            _ports.claim_unix(address, endpoint.path)
            self._ports.append((address, credentials, []))
            return 1                      # what grpcio answers for a unix: port
        _, sockets, port = _ports.bind(address, reuse_port=True)
        bind_to = str(dataclasses.replace(endpoint, port=port))
        if endpoint.host in ("", "*"):
            bind_to = f"[::]:{port}"
        self._ports.append((bind_to, credentials, sockets))
        return port

    def add_handlers(self, generic_handlers: Iterable[grpc.GenericRpcHandler] = (),
                     registered: Mapping[str, MethodHandlers] | None = None) -> None:
        """Handlers added to the lanerpc server, before or after start()."""
        generic_handlers = tuple(generic_handlers)
        self._generic.extend(generic_handlers)
        for service, handlers in (registered or {}).items():
            self._registered.setdefault(service, {}).update(handlers)
        if self.server is not None:
            self._register(self.server, generic_handlers, registered or {})

    def _register(self, server: aio.Server, generic_handlers: Sequence[grpc.GenericRpcHandler],
                  registered: Mapping[str, MethodHandlers]) -> None:
        wrap = self._wrap
        if wrap is not None:
            generic_handlers = [_PeerGenericHandler(g, wrap) for g in generic_handlers]
            registered = {service: {name: wrap(h) for name, h in handlers.items()}
                          for service, handlers in registered.items()}
        if generic_handlers:
            server.add_generic_rpc_handlers(tuple(generic_handlers))
        for service, handlers in registered.items():
            server.add_registered_method_handlers(service, handlers)

    def serve_privately_at(self, path: str) -> None:
        """Also listen on the Unix socket ``path`` (in the lanerpc server's private
        directory), where gRPC clients of the lanerpc TCP ports are spliced to; set
        before the inner server starts."""
        if self._starting is not None and self._private != path:
            raise RuntimeError("the inner gRPC server has started without the private socket")
        self._private = path

    async def start(self) -> None:
        """Start the inner server (once, however many ask at the same time): at the
        lanerpc server's start() for grpc:// ports, else on the first gRPC client
        of a lanerpc TCP port. Raises once the lanerpc server is stopping."""
        if self._stopped:
            raise RuntimeError("the server is stopping")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        first: list[aio.ServerInterceptor] = []
        if self._private is not None:
            if self._intercepted:
                first.append(SplicedPeers())
            else:
                self._wrap = _HandlerWrapper()
        server = self.server = self._make_server(first)
        self._register(server, self._generic, self._registered)
        for address, credentials, sockets in self._ports:
            for sock in sockets:
                sock.close()
            sockets.clear()
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
            if port == 0:
                raise RuntimeError(f"Failed to bind to address {address} (grpc port)")
        if self._private is not None:
            if server.add_insecure_port("unix:" + self._private) == 0:
                raise RuntimeError(f"Failed to bind the gRPC side's socket {self._private}")
        await server.start()

    def release(self) -> None:
        """Give back the ports held before start() (a server stopped before it started)."""
        for _, _, sockets in self._ports:
            for sock in sockets:
                sock.close()
            sockets.clear()

    async def stop(self, grace: float | None) -> None:
        self._stopped = True
        self.release()
        if self._starting is not None and not self._starting.done():
            await asyncio.wait([self._starting])      # its error, if any, went to start()
        if self.server is not None:
            await self.server.stop(grace)
