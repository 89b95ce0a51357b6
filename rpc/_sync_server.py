"""rpc.sync's server: grpc's blocking ``grpc.Server`` over lanerpc's async Server.

The async :class:`rpc._server.Server` runs on the process's loop thread
(:mod:`rpc._sync_loop`) with the user's thread pool as its executor: it already runs
plain handlers (functions and generators) there, as grpc does, and this module gives
them grpc's blocking ``grpc.ServicerContext`` instead of grpc.aio's threaded one.
Its lifecycle calls (``start``, ``stop``, ``wait_for_termination``) block the caller,
or hand back a ``threading.Event``, as grpc's do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Callable, NoReturn, TypeVar

import grpc
from grpc import aio

from rpc import _server, _sync_loop
from rpc._context import MetadataType, ServicerContext
from rpc._status import _Metadatum
from rpc._wire import DecodedMetadata

_C = grpc.StatusCode
T = TypeVar("T")
# grpc's deadline for a call without one (gpr_inf_future), in seconds since the epoch.
_NO_DEADLINE = float(2**63 - 1)


class SyncServicerContext(grpc.ServicerContext):
    """What a handler of a blocking server gets: grpc's ``grpc.ServicerContext`` over
    the call's lanerpc context. Methods that send (initial metadata, an abort) block
    the handler's thread until the loop has sent; the others read or set fields."""

    __slots__ = ("_context",)

    def __init__(self, context: ServicerContext) -> None:
        self._context = context

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._context._loop).result()

    # ------------------------------------------------------------ the call

    def is_active(self) -> bool:
        context = self._context
        return not (context._ended or context._cancelled)

    def time_remaining(self) -> float:
        """Seconds left before the deadline; with none, as grpc's sync server: the
        distance to its "infinite future" (about 9.2e18 s), never None."""
        remaining = self._context.time_remaining()
        return _NO_DEADLINE - time.time() if remaining is None else remaining

    def cancel(self) -> None:   # type: ignore[override]  # grpc's returns None too
        """End the call CANCELLED, as grpc's ``context.cancel()``."""
        self._context._loop.call_soon_threadsafe(_cancel, self._context)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """``callback()`` when the call ends (on the callbacks thread); False if over."""
        if not self.is_active():
            return False
        self._context._loop.call_soon_threadsafe(
            self._context.add_done_callback, lambda _: _sync_loop.deliver(callback))
        return True

    def invocation_metadata(self) -> tuple[_Metadatum, ...]:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Iterable[bytes] | None:
        return self._context.peer_identities()

    def peer_identity_key(self) -> str | None:
        return self._context.peer_identity_key()

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:   # type: ignore[override]  # grpc's value: a list
        return self._context.auth_context()

    @property
    def lane(self) -> str | None:
        """The lane this call arrived on."""
        return self._context.lane

    # ------------------------------------------------------------ the answer

    def set_compression(self, compression: grpc.Compression) -> None:
        self._context.set_compression(compression)

    def disable_next_message_compression(self) -> None:
        self._context.disable_next_message_compression()

    def send_initial_metadata(self, initial_metadata: MetadataType) -> None:
        self._run(self._context.send_initial_metadata(initial_metadata))

    def set_trailing_metadata(self, trailing_metadata: MetadataType) -> None:
        self._context.set_trailing_metadata(trailing_metadata)

    def trailing_metadata(self) -> DecodedMetadata:
        return self._context.trailing_metadata()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def code(self) -> Any:
        return self._context.code()

    def details(self) -> str | None:
        return self._context.details()

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        """End the call with ``code`` (sent before this returns) and raise out of the handler."""
        self._run(self._context.abort(code, details))
        raise AssertionError("abort() returned")   # (it raises)

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self._run(self._context.abort(status.code, status.details, status.trailing_metadata))
        raise AssertionError("abort() returned")


def _cancel(context: ServicerContext) -> None:
    if not context._ended:
        context._end_with(_C.CANCELLED.value[0], "Cancelled")
        context._cancelled = True


class _SyncInterceptors(aio.ServerInterceptor):
    """grpc's sync server interceptors (``grpc.ServerInterceptor``), as one interceptor
    of the async server. They run on the loop's thread, in order, as grpc runs them on
    its serving thread (not on the handlers' pool): each one's ``continuation`` is the
    next one, the last one's finds the handler."""

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor]) -> None:
        for interceptor in interceptors:
            if not callable(getattr(interceptor, "intercept_service", None)):
                raise TypeError(f"interceptor {interceptor!r} must be a grpc.ServerInterceptor")
        self._interceptors = tuple(interceptors)
        self._server: _LoopServer | None = None

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._chain(0, handler_call_details)

    def _chain(self, index: int, details: grpc.HandlerCallDetails
               ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if index == len(self._interceptors):
            assert self._server is not None     # set as the server is made
            return self._server._find_handler(
                details.method, details.invocation_metadata)
        return self._interceptors[index].intercept_service(
            lambda next_details: self._chain(index + 1, next_details), details)


class _LoopServer(_server.Server):
    """The async server a blocking one runs: plain handlers get grpc's blocking
    context, and grpc's sync interceptors run as one async interceptor."""

    _thread_context = SyncServicerContext

    def __init__(self, thread_pool: concurrent.futures.Executor | None,
                 handlers: Sequence[grpc.GenericRpcHandler] | None,
                 interceptors: Sequence[grpc.ServerInterceptor] | None,
                 options: Sequence[tuple[str, Any]] | None,
                 maximum_concurrent_rpcs: int | None,
                 compression: grpc.Compression | None) -> None:
        chain = _SyncInterceptors(interceptors) if interceptors else None
        super().__init__(thread_pool, handlers, [chain] if chain is not None else None, options,
                         maximum_concurrent_rpcs, compression)
        if chain is not None:
            chain._server = self


class Server(grpc.Server):
    """A blocking server (``grpc.Server``) on lanerpc's lanes. Add grpc's sync
    servicers with the generated ``add_FooServicer_to_server(servicer, server)``;
    their handlers run on ``thread_pool``."""

    def __init__(self, thread_pool: concurrent.futures.Executor | None,
                 handlers: Sequence[grpc.GenericRpcHandler] | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] | None = None,
                 options: Sequence[tuple[str, Any]] | None = None,
                 maximum_concurrent_rpcs: int | None = None,
                 compression: grpc.Compression | None = None) -> None:
        self._server: _LoopServer = _sync_loop.call(
            _LoopServer, thread_pool, handlers, interceptors, options, maximum_concurrent_rpcs,
            compression)
        self._terminated = threading.Event()
        _sync_loop.keep_for_exit(self)

    @property
    def upgrade_path(self) -> str | None:
        """The private Unix socket same-host TCP clients are moved to, or None."""
        return self._server.upgrade_path

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        _sync_loop.call(self._server.add_generic_rpc_handlers, tuple(generic_rpc_handlers))

    def add_registered_method_handlers(
            self, service_name: str,
            method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        _sync_loop.call(self._server.add_registered_method_handlers, service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return _sync_loop.call(self._server.add_insecure_port, address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return _sync_loop.call(self._server.add_secure_port, address, server_credentials)

    def start(self) -> None:
        _sync_loop.run(self._start()).result()

    async def _start(self) -> None:
        await self._server.start()
        asyncio.get_running_loop().create_task(self._watch_termination())

    async def _watch_termination(self) -> None:
        await self._server.wait_for_termination()
        self._terminated.set()

    def stop(self, grace: float | None) -> threading.Event:
        """As grpc: no new calls; running ones get ``grace`` seconds (None: none), then
        are cancelled. Returns an Event set once the server has stopped."""
        stopped = threading.Event()

        def done(_: concurrent.futures.Future[None]) -> None:
            stopped.set()
            self._terminated.set()

        _sync_loop.run(self._server.stop(grace)).add_done_callback(done)
        return stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; as grpc, True if ``timeout`` passed first."""
        return not self._terminated.wait(timeout)

    async def _close_at_exit(self) -> None:
        if self._server.started and not self._terminated.is_set():
            await self._server.stop(0)
