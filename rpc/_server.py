"""The server side: Server, its connections, and dispatching calls.

Each call is a :class:`rpc._context.ServicerContext`, whose one task runs the
user's handler. Everything else (dispatch, status, flow control) happens in
the connection's callbacks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

from rpc import _connection as c
from rpc import _channelz, _compression, _credentials, _grpc, _lanes, _options, _ports, _ps
from rpc._target import parse_server_address
from rpc._context import ServicerContext, _PendingCall, _ThreadContext
from rpc._interceptors import ServerChain, first_step
from rpc._link import Link
from rpc._stats import Stats
from rpc._options import Options
from rpc._settings import MemoryBudget
from rpc._status import _Metadatum, invocation_items
from rpc._wire import DecodedMetadata, GoAwayCode

log = logging.getLogger("lanerpc")

_C = grpc.StatusCode
# max_connection_age is spread by up to this fraction either way, as gRPC does, so
# connections made together don't all reconnect at once.
AGE_JITTER = 0.1


# ============================================================ connection

class ServerLink(Link):
    role = c.Role.SERVER

    def __init__(self, server: "Server", options: Options, negotiator: _lanes.Negotiator) -> None:
        super().__init__(options, budget=server._budget)
        self.server = server
        self.negotiator = negotiator
        self.calls: dict[int, Any] = {}
        self.ping_strikes = 0
        self.last_ping = -1e9
        self.counted = False          # counts against max_connections (not refused by it)
        self.idle_timer: asyncio.TimerHandle | None = None   # with max_connection_idle
        self.idle_since = 0.0         # loop time the last call ended (or the handshake)
        self.age_timer: asyncio.TimerHandle | None = None    # with max_connection_age
        self.aged = False             # GOAWAY "max_age" sent: closes once its calls end
        self.linger_timer: asyncio.TimerHandle | None = None   # closing after a GOAWAY
        self.invocation_head: tuple[_Metadatum, ...] = ()   # the client's user-agent
        # Calls with a deadline started in this read, their timers not armed yet: a
        # call over before the loop runs again (most unary ones) never needs one.
        self.untimed: list[ServicerContext] = []
        self.read_at = 0.0            # monotonic time of the read being dispatched (when many)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self.server
        server._links.add(self)
        server._stats.connection_opened(self)
        try:
            self.tls = self.negotiator.port_properties(transport)
        except ConnectionError as exc:
            # A TLS client that did not ask for lanerpc's protocol (an HTTP/2 one), or
            # a non-loopback peer of a local credentials' port (denied, as a uid the
            # unix lane does not admit is).
            log.debug("lanerpc: refusing connection: %s", exc)
            code = (GoAwayCode.PERMISSION_DENIED if isinstance(exc, _credentials.NotLocal)
                    else GoAwayCode.PROTOCOL_ERROR)
            self._turn_away(code, str(exc), linger=1.0)
            return
        refusal = server._admit_connection(self.peer.address if self.peer else "?")
        if refusal is not None:
            # Over the limit: turned away before the handshake, the reason in a GOAWAY
            # a lanerpc client reports (UNAVAILABLE).
            self._stop_timers()
            self._turn_away(GoAwayCode.ENHANCE_YOUR_CALM, refusal, linger=1.0)
            return
        self.counted = True
        peer = self.peer
        if peer is not None and peer.lane == "unix":
            if not self.negotiator.admits(peer.uid):
                # Refused before the handshake: no call from this peer reaches a handler.
                reason = f"uid {peer.uid} is not admitted on this server's local lanes"
                log.warning("lanerpc: refusing unix connection (pid %s): %s", peer.pid, reason)
                self._turn_away(GoAwayCode.PERMISSION_DENIED, reason, linger=2.0)

    def _turn_away(self, code: int, reason: str, *, linger: float) -> None:
        """Refuse the peer before its HELLO is read: a GOAWAY saying why, then close."""
        self.refused = True
        self.close_reason = reason
        self.conn.refuse(code, reason)
        self.flush()
        transport = self.transport
        assert transport is not None   # called from connection_made
        # Half-close and keep reading until the peer hangs up (at most ``linger``
        # seconds): closing with its HELLO unread would reset the socket before it
        # reads why.
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(linger, transport.abort)
        else:
            transport.close()

    def _switched(self, old_lane: str) -> None:
        stats = self.server._stats
        stats.connections[old_lane] -= 1
        stats.connections[self.lane or "?"] += 1
        stats.connections_total[self.lane or "?"] += 1

    def _dispatch(self, events: list[c.Event]) -> None:
        if len(events) > 2:
            events = _without_requests_cancelled_unseen(events)
            # Requests read together start one after another: one whose timeout
            # runs out meanwhile is not started (see Server._on_request).
            self.read_at = time.monotonic()
        try:
            Link._dispatch(self, events)      # (not super(): this runs per read)
        finally:
            self.read_at = 0.0
            if self.untimed:
                self.arm_deadlines()

    def arm_deadlines(self) -> None:
        """Arm the timers of the calls with a deadline started since the last time,
        those that are not over yet (before the loop runs again: the timers fire
        at the same deadlines they would have had if armed at once)."""
        untimed = self.untimed
        for call in untimed:
            if not call._ended:           # (most are over: no call to arm nothing)
                call._arm_deadline()
        untimed.clear()

    def _on_event(self, ev: Any) -> None:
        t = type(ev)
        if t is c.RequestReceived:
            self.server._on_request(self, ev)
        elif t is c.EndOfInput:
            call = self.calls.get(ev.stream_id)
            if call is not None:
                call._on_end_of_input()
        elif t is c.StreamEnded:
            call = self.calls.pop(ev.stream_id, None)
            if call is not None:
                call._on_stream_ended(ev.code, ev.details, ev.by_peer)
        elif t is c.HelloReceived:
            if ev.hello.user_agent:
                self.invocation_head = (_Metadatum("user-agent", ev.hello.user_agent),)
            # Our HELLO carries what the lanes offer this client; then read on.
            self.conn.accept(self.negotiator.hello(self, ev.hello))
            self.handshake_complete()
            idle = self.options.max_connection_idle
            if idle is not None:
                self.idle_since = self.loop.time()
                self.idle_timer = self.loop.call_later(idle, self._idle_tick)
            age = self.options.max_connection_age
            if age is not None:
                self.age_timer = self.loop.call_later(
                    age * random.uniform(1 - AGE_JITTER, 1 + AGE_JITTER), self._age_reached)
            self._dispatch(self.conn.receive_data(b""))
        elif t is c.PingReceived:
            self._on_ping()
        elif t is c.LaneChange:
            self.negotiator.lane_change(self, ev.lane)

    def _idle_tick(self) -> None:
        """gRPC's max_connection_idle: a connection with no call in flight for that
        long since its last call ended (or its handshake) gets GOAWAY NO_ERROR
        "max_connection_idle"; its client closes it and reconnects on its next call.
        Requests that cross the GOAWAY are refused as never started (retried)."""
        self.idle_timer = None
        idle = self.options.max_connection_idle
        if idle is None or self.conn.closed or self.conn.goaway_sent:
            return
        now = self.loop.time()
        if self.calls:
            self.idle_since = now     # busy now; the call's end moves this on
            wait = idle
        else:
            wait = self.idle_since + idle - now
            if wait <= 0:
                log.info("lanerpc: closing connection from %s: idle for %g s "
                         "(grpc.max_connection_idle_ms)",
                         self.peer.address if self.peer else "?", idle)
                self.conn.goaway(GoAwayCode.NO_ERROR, "max_connection_idle")
                self.flush()
                # A lanerpc client hangs up on the GOAWAY; close anyway after a
                # moment, enough for a request in flight to get its refusal.
                self.idle_timer = self.loop.call_later(1.0, self.close, "max_connection_idle")
                return
        self.idle_timer = self.loop.call_later(wait, self._idle_tick)

    def _age_reached(self) -> None:
        """gRPC's max_connection_age: GOAWAY NO_ERROR "max_age" (the client moves its
        next calls to a new connection; requests crossing the GOAWAY are refused as
        never started, so they are retried there); the calls in flight get
        max_connection_age_grace, then the connection is closed and they are
        cancelled. A connection with no call left closes by itself."""
        self.age_timer = None
        if self.conn.closed or self.conn.goaway_sent:
            return
        log.info("lanerpc: connection from %s reached its max age (grpc.max_connection_age_ms): "
                 "GOAWAY", self.peer.address if self.peer else "?")
        self.aged = True
        self.conn.goaway(GoAwayCode.NO_ERROR, "max_age")
        self.flush()
        grace = self.options.max_connection_age_grace
        if grace is not None:
            self.age_timer = self.loop.call_later(grace, self._age_grace_over)
        if not self.calls:
            self._close_after_goaway()

    def _age_grace_over(self) -> None:
        """Close now, cancelling what still runs; a peer that doesn't read what is
        left to write is cut off a moment later."""
        self.age_timer = None
        if self.calls:
            log.info("lanerpc: closing connection from %s: max_connection_age_grace is over "
                     "with %d call(s) in flight; they are cancelled",
                     self.peer.address if self.peer else "?", len(self.calls))
        reason = "max_connection_age_grace is over"
        self.close(reason)
        self._cancel_linger()
        self.linger_timer = self.loop.call_later(self.GOAWAY_LINGER, self.abort, reason)

    # A lanerpc client hangs up on a GOAWAY once its calls are done; the server closes
    # anyway this much later (time for requests in flight to get their refusal: closing
    # with them unread would reset the connection before the GOAWAY is read).
    GOAWAY_LINGER = 1.0

    def _close_after_goaway(self) -> None:
        if self.linger_timer is None:
            self.linger_timer = self.loop.call_later(
                self.GOAWAY_LINGER, self.close, "GOAWAY sent and no call left")

    def _cancel_linger(self) -> None:
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None

    def call_ended(self) -> None:
        if self.idle_timer is not None and not self.calls:
            self.idle_since = self.loop.time()
        if self.aged and not self.calls:
            self._close_after_goaway()

    # gRPC's bound on PINGs when a connection has no call (and pings without calls are
    # not permitted): two hours, as TCP keepalive (RFC 1122).
    IDLE_PING_INTERVAL = 7200.0

    def _on_ping(self) -> None:
        """gRPC's ping policy: a ping closer to the previous one than
        min_ping_interval (two hours when the connection has no call and
        keepalive_permit_without_calls is off) is a strike; sending anything else
        (headers, messages) forgives them; past max_ping_strikes (0: no limit),
        GOAWAY too_many_pings."""
        now = self.loop.time()
        if self._sent_other_frames():
            self.ping_strikes = 0
            self.last_ping = -1e9
        idle = not self.calls and not self.options.keepalive_permit_without_calls
        allowed = self.IDLE_PING_INTERVAL if idle else self.options.min_ping_interval
        limit = self.options.max_ping_strikes
        if now - self.last_ping < allowed:
            self.ping_strikes += 1
            if limit and self.ping_strikes > limit:
                log.warning("lanerpc: closing connection from %s: too many pings",
                            self.peer.address if self.peer else "?")
                self.conn.goaway(GoAwayCode.ENHANCE_YOUR_CALM, "too_many_pings")
                self.close("too many pings")
        self.last_ping = now

    def _lost(self, reason: str) -> None:
        for timer in (self.idle_timer, self.age_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.age_timer = None
        self._cancel_linger()
        calls, self.calls = self.calls, {}
        self.untimed = []
        for call in calls.values():
            call._on_stream_ended(_C.CANCELLED.value[0], reason, True)
        self.server._links.discard(self)
        if self.counted:
            self.counted = False
            self.server._release_connection()
        self.server._stats.connection_closed(self)
        self.negotiator.close()


# ============================================================ accept errors

class AcceptErrorFilter(logging.Filter):
    """Out of file descriptors, asyncio's selector loops log every failed accept()
    with a traceback: on Linux up to one per pending connection (its accept loop
    goes on after the error), hundreds of lines a second. This lets one through
    per interval, counting those held back. uvloop logs none (libuv accepts and
    drops the connection), so it needs nothing."""

    MESSAGE = "socket.accept() out of system resource"
    INTERVAL = 5.0

    def __init__(self) -> None:
        super().__init__()
        self._logged_at = -1e9
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self.MESSAGE):
            return True
        now = time.monotonic()
        if now - self._logged_at < self.INTERVAL:
            self._held += 1
            return False
        held, self._held = self._held, 0
        self._logged_at = now
        first, _, rest = record.msg.partition("\n")
        more = f"; {held} more since the last such line" if held else ""
        record.msg = (f"{first} (lanerpc: out of file descriptors? raise the limit or set "
                      f"grpc.max_allowed_incoming_connections; logged at most once every "
                      f"{self.INTERVAL:g} s{more})" + (f"\n{rest}" if rest else ""))
        return True


_accept_error_filter = AcceptErrorFilter()


def _quiet_accept_errors() -> None:
    """Install the filter on asyncio's logger, once per process."""
    asyncio_log = logging.getLogger("asyncio")
    if _accept_error_filter not in asyncio_log.filters:
        asyncio_log.addFilter(_accept_error_filter)


def _without_requests_cancelled_unseen(events: list[c.Event]) -> list[c.Event]:
    """``events`` less the requests the client cancelled in the same bytes that opened
    them (and their messages): no handler is started only to be stopped. After an
    overload the backlog of stale calls in the socket then costs little more than its
    parsing, and a fresh call gets through sooner."""
    opened = {ev.stream_id for ev in events if type(ev) is c.RequestReceived}
    if not opened:
        return events
    gone = {ev.stream_id for ev in events
            if type(ev) is c.StreamEnded and ev.by_peer and ev.stream_id in opened}
    if not gone:
        return events
    return [ev for ev in events if getattr(ev, "stream_id", None) not in gone]


# ============================================================ server

class Server(aio.Server):
    """A grpc.aio-compatible server."""

    # A plain handler's context: grpc.aio's threaded one (rpc.sync's server gives grpc's).
    _thread_context: type[Any] = _ThreadContext

    def __init__(self, migration_thread_pool: concurrent.futures.Executor | None = None,
                 handlers: _grpc.GenericHandlers | None = None,
                 interceptors: _grpc.ServerInterceptors | None = None,
                 options: _grpc.Options | None = None,
                 maximum_concurrent_rpcs: int | None = None,
                 compression: grpc.Compression | None = None) -> None:
        # compression=: the default for responses, as grpc.aio's (its channel argument).
        self._options = _options.parse(_compression.as_option(options, compression))
        self._raw_options = tuple(options or ())
        self._executor = migration_thread_pool
        self._own_executor = False        # start() makes a pool when none was given
        self._generic_handlers: list[grpc.GenericRpcHandler] = list(handlers or ())
        self._registered: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._compression = compression     # the grpc:// ports' grpcio server's too
        self._grpc: _grpc.GrpcPorts | None = None   # grpc:// and secure ports, via grpcio
        self._interceptors = list(interceptors or ())
        for interceptor in self._interceptors:
            if not isinstance(interceptor, aio.ServerInterceptor):
                raise ValueError(f"interceptor {interceptor!r} must be a grpc.aio.ServerInterceptor")
        self._chain = ServerChain(self._interceptors, self._find_handler)
        if maximum_concurrent_rpcs is not None and maximum_concurrent_rpcs < 1:
            raise ValueError("maximum_concurrent_rpcs must be at least 1")
        self._max_rpcs = maximum_concurrent_rpcs
        self._active = 0
        self._thread_calls = 0            # plain handlers on the pool, not yet returned
        self._thread_capacity = 0         # threads + lanerpc.max_queued_calls; set by start()
        self._pending_sockets: list[tuple[str, socket.socket]] = []
        self._listeners: list[_lanes.Listener] = []
        self._links: set[ServerLink] = set()
        self._counted_links = 0           # links counted against max_connections
        self._refusals = 0                # over the limit since the last log line
        self._refusal_reason = ""
        self._refusal_logged_at = -1e9
        self._refusal_timer: asyncio.TimerHandle | None = None
        self._state = "new"
        self._stopping: asyncio.Future[None] | None = None
        self._stop_requested: asyncio.Future[None] | None = None   # stop() waiting for start()
        self._stop_deadline: float | None = None
        self._terminated: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = Stats()
        self._start_context: contextvars.Context | None = None
        self._budget = MemoryBudget(self._options.memory_budget)
        self._lanes = _lanes.ServerLanes(self._options)
        self._serves_pipe = False         # rpc.serve_stdio's: a server needs no port then
        self._status_file: _ps.StatusFile | None = None   # for lanerpc ps, once serving

    @property
    def started(self) -> bool:
        """True once ``start()`` has been called (lanerpc's own; used by ``rpc.serve``)."""
        return self._state != "new"

    @property
    def upgrade_path(self) -> str | None:
        """The private Unix socket same-host TCP clients are moved to, or None."""
        return self._lanes.upgrade_path

    @property
    def stats(self) -> "Stats":
        return self._stats

    # ------------------------------------------------------------ handlers

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        generic_rpc_handlers = tuple(generic_rpc_handlers)
        for handler in generic_rpc_handlers:
            if not hasattr(handler, "service"):
                raise TypeError(f"{handler!r} is not a grpc.GenericRpcHandler")
        self._generic_handlers.extend(generic_rpc_handlers)
        if self._grpc is not None:
            self._grpc.add_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(
            self, service_name: str,
            method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        served = method_handlers
        if service_name == _channelz.SERVICE and _channelz.is_grpcs(method_handlers):
            # grpc's channelz knows nothing of lanerpc's connections: ours answers (rpc._channelz).
            served = _channelz.LanerpcChannelz(self).handlers()
        for name, handler in served.items():
            self._registered[f"/{service_name}/{name}"] = handler
        if self._grpc is not None:
            self._grpc.add_handlers(registered={service_name: dict(method_handlers)})

    def _find_handler(self, method: str, metadata: DecodedMetadata) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._registered.get(method)
        if handler is not None:
            return handler
        if self._generic_handlers:
            details = _HandlerCallDetails(method, metadata)
            for generic in self._generic_handlers:
                handler = generic.service(details)
                if handler is not None:
                    return handler
        return None

    # ------------------------------------------------------------ ports

    def add_insecure_port(self, address: str) -> int:
        """Bind ``address`` (``host:port``, ``[v6]:port``, ``unix:path``) for lanerpc
        clients; ``grpc://address`` serves plain gRPC there instead (through grpcio), for
        gRPC clients in any language. Returns the port, as gRPC does."""
        if self._state != "new":
            raise RuntimeError("ports must be added before start()")
        plain, rest = _grpc.strip_scheme(address)
        if plain:
            return self._grpc_ports().add_insecure_port(rest)
        kind, sockets, port = _ports.bind(
            address, mode=0o666 if self._options.allowed_uids else 0o600,
            reuse_port=self._options.so_reuseport)
        self._pending_sockets.extend((kind, s) for s in sockets)
        return port

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        """TLS at ``address``. With ``rpc.ssl_server_credentials(...)``: lanerpc's own
        protocol over TLS on TCP (for ``rpc.secure_channel`` with
        ``rpc.ssl_channel_credentials``). With grpc's credentials objects (whose keys
        grpcio keeps to itself), or a ``grpc://`` address: gRPC over TLS through
        grpcio, for any gRPC client. Returns the port."""
        if self._state != "new":
            raise RuntimeError("ports must be added before start()")
        plain, rest = _grpc.strip_scheme(address)
        if not plain and isinstance(server_credentials, _credentials.LocalServerCredentials):
            return self._add_local_port(address, server_credentials.local_connect_type)
        if plain or not isinstance(server_credentials, _credentials.SslServerCredentials):
            if not plain:
                log.debug("lanerpc: add_secure_port(%s) with grpc's credentials: served by "
                          "grpcio (gRPC over TLS); rpc.ssl_server_credentials serves "
                          "lanerpc's TLS lane", address)
            return self._grpc_ports().add_secure_port(rest, server_credentials)
        try:
            lane = parse_server_address(address).lane
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        if lane != "tcp":
            raise RuntimeError(f"Failed to bind to address {address}: lanerpc's TLS lane is "
                               "TCP; a unix: port is served with add_insecure_port (its "
                               "clients are admitted by uid), or grpc://unix:... for gRPC TLS")
        context = server_credentials.server_context()
        _, sockets, port = _ports.bind(address, reuse_port=self._options.so_reuseport)
        self._lanes.use_tls(sockets, context)
        self._pending_sockets.extend(("tcp", s) for s in sockets)
        return port

    def _add_local_port(self, address: str, connect_type: grpc.LocalConnectionType) -> int:
        """A port of local credentials: plaintext lanerpc, local peers only. UDS: a
        ``unix:`` port (its peers are local by nature); LOCAL_TCP: a TCP port whose
        non-loopback peers are turned away before their HELLO is read."""
        try:
            lane = parse_server_address(address).lane
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        wanted = "unix" if connect_type is grpc.LocalConnectionType.UDS else "tcp"
        if lane != wanted:
            serves = "unix: addresses" if wanted == "unix" else "TCP addresses"
            raise RuntimeError(
                f"Failed to bind to address {address}: local_server_credentials("
                f"{connect_type.name}) serves {serves} only (UDS is for unix:, LOCAL_TCP "
                f"for loopback TCP)")
        before = len(self._pending_sockets)
        port = self.add_insecure_port(address)
        if lane == "tcp":
            self._lanes.use_local([sock for _, sock in self._pending_sockets[before:]])
        return port

    def _grpc_ports(self) -> _grpc.GrpcPorts:
        if self._grpc is None:
            def make_server(first: Sequence[aio.ServerInterceptor]) -> aio.Server:
                # Called in start() (or at the first gRPC client of a lanerpc tcp
                # port), in the running loop.
                return aio.server(
                    migration_thread_pool=self._executor,
                    interceptors=[*first, *self._interceptors] or None,
                    options=_grpc.grpc_options(self._raw_options),
                    maximum_concurrent_rpcs=self._max_rpcs,
                    compression=self._compression)
            self._grpc = _grpc.GrpcPorts(make_server, intercepted=bool(self._interceptors))
            self._grpc.add_handlers(self._generic_handlers, self._registered_by_service())
        return self._grpc

    def _registered_by_service(self) -> dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]:
        by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
        for path, handler in self._registered.items():
            service, _, name = path[1:].rpartition("/")
            by_service.setdefault(service, {})[name] = handler
        return by_service

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("server already started")
        if not self._pending_sockets and not self._serves_pipe and (
                self._grpc is None or not self._grpc.bound):
            raise RuntimeError("add a port before start()")
        self._state = "starting"
        self._loop = asyncio.get_running_loop()
        # Each call's handler starts in a copy of the context start() ran in, as
        # grpc.aio's do; never in whatever context the bytes that began it were read
        # in (a spin after a handler's write can read the next call's request).
        self._start_context = contextvars.copy_context()
        _quiet_accept_errors()
        self._terminated = asyncio.Event()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(32, (os.cpu_count() or 1) + 4),
                thread_name_prefix="lanerpc-handler")
            self._own_executor = True
        threads = getattr(self._executor, "_max_workers", None)
        self._thread_capacity = (threads if isinstance(threads, int) else 0) + self._options.max_queued_calls
        addresses = [_ps_address(kind, sock) for kind, sock in self._pending_sockets]
        try:
            if self._pending_sockets:
                grpc_side = _GrpcSide(self) if self._options.grpc_on_lanerpc_ports else None
                self._listeners = await self._lanes.listen(self._pending_sockets, self._new_link,
                                                           grpc_side)
                self._pending_sockets = []
            if self._grpc is not None:
                if self._lanes.grpc_path is not None:
                    # An inner server runs anyway: gRPC clients of the tcp ports share it.
                    self._grpc.serve_privately_at(self._lanes.grpc_path)
                await self._grpc.start()
        except BaseException:
            # Nothing half-started stays behind: listeners, upgrade socket, grpc ports.
            for _, sock in self._pending_sockets:
                sock.close()
            self._pending_sockets = []
            for listener in self._listeners:
                listener.close()
            if self._grpc is not None:
                await self._grpc.stop(None)
            self._state = "stopping"
            await self._finish_stop()
            raise
        else:
            self._state = "serving"
            self._write_status_file(addresses)
        finally:
            if self._stop_requested is not None and not self._stop_requested.done():
                self._stop_requested.set_result(None)

    async def _serve_pipe(self, read_fd: int, write_fd: int, peer_pid: int | None) -> ServerLink:
        """``rpc.serve_stdio``'s one connection, over a pipe pair; starts the server
        first (it needs no port then)."""
        self._serves_pipe = True
        if self._state == "new":
            await self.start()
        if self._state != "serving":
            raise RuntimeError("the server is stopping")
        link = await self._lanes.serve_pipe(read_fd, write_fd, self._new_link, peer_pid)
        assert isinstance(link, ServerLink)
        return link
    def _write_status_file(self, addresses: list[str]) -> None:
        """The file `lanerpc ps` reads (rpc._ps), in our private directory. A server
        that can't have one serves all the same; ps just won't list it."""
        if self._grpc is not None and self._grpc.bound:
            addresses = addresses + [f"grpc://{a}" for a in self._grpc.addresses()]
        try:
            assert self._loop is not None
            self._status_file = _ps.StatusFile(self._lanes.private_directory(), addresses,
                                               self._options.lanes, self._stats, self._loop)
        except OSError as exc:
            log.debug("lanerpc: no status file for lanerpc ps (%s)", exc)

    def _new_link(self, negotiator: _lanes.Negotiator) -> ServerLink:
        return ServerLink(self, self._options, negotiator)

    def _admit_connection(self, peer: str) -> str | None:
        """Count a new connection against ``max_connections``: a lanerpc link's, or a
        gRPC client's spliced from a lanerpc TCP port (they share the limit). Over the
        limit nothing is counted and the reason is returned, for the caller to turn
        the peer away with (the refusal logged at most once an interval)."""
        limit = self._options.max_connections
        if limit and self._counted_links >= limit:
            reason = (f"too many connections: this server serves at most {limit} at once "
                      "(grpc.max_allowed_incoming_connections)")
            self._note_refusal(peer, reason)
            return reason
        self._counted_links += 1
        return None

    def _release_connection(self) -> None:
        """A connection :meth:`_admit_connection` counted has ended."""
        self._counted_links -= 1

    # Connections refused over max_connections are logged at most once this often:
    # the first at once, then one line counting those refused meanwhile.
    REFUSAL_LOG_INTERVAL = 5.0

    def _note_refusal(self, peer: str, reason: str) -> None:
        self._refusals += 1
        self._refusal_reason = reason
        if self._refusal_timer is not None:
            return                        # a line counting this one is due
        assert self._loop is not None     # connections come only once started
        wait = self._refusal_logged_at + self.REFUSAL_LOG_INTERVAL - self._loop.time()
        if wait <= 0:
            self._log_refusals(peer)
        else:
            self._refusal_timer = self._loop.call_later(wait, self._log_refusals, None)

    def _log_refusals(self, peer: str | None) -> None:
        if self._refusal_timer is not None:
            self._refusal_timer.cancel()
            self._refusal_timer = None
        count, self._refusals = self._refusals, 0
        if not count:
            return
        if self._loop is not None:
            self._refusal_logged_at = self._loop.time()
        if peer is not None:
            log.warning("lanerpc: refusing connection from %s: %s", peer, self._refusal_reason)
        else:
            log.warning("lanerpc: refused %d more connection(s) since the last line: %s",
                        count, self._refusal_reason)

    async def stop(self, grace: float | None) -> None:
        if self._state == "new":
            self._state = "stopped"
            for _, sock in self._pending_sockets:
                sock.close()
            if self._grpc is not None:
                self._grpc.release()          # the ports held for it
            return
        loop = asyncio.get_running_loop()
        if self._state == "starting":         # stop() while start() runs: let it finish
            if self._stop_requested is None:
                self._stop_requested = loop.create_future()
            await asyncio.shield(self._stop_requested)
        grpc_stop = (asyncio.ensure_future(self._grpc.stop(grace))
                     if self._grpc is not None and self._state != "stopped" else None)
        deadline = loop.time() + (grace or 0)
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        if self._state == "serving":
            self._state = "stopping"
            for listener in self._listeners:
                listener.close()
            for link in list(self._links):
                link.conn.goaway(GoAwayCode.NO_ERROR, "server shutting down")
                link.flush()
            self._stopping = loop.create_task(self._drain())
        # The smallest grace wins: a later stop(0) cuts an earlier stop(10) short.
        if self._stopping is not None:
            while not self._stopping.done():
                remaining = self._stop_deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(self._stopping), min(remaining, 0.05))
                except asyncio.TimeoutError:
                    continue
            self._cancel_everything()
            await asyncio.shield(self._stopping) if self._stopping.done() else None
        if grpc_stop is not None:
            await grpc_stop
        await self._finish_stop()

    async def _drain(self) -> None:
        while any(link.calls for link in self._links):
            await asyncio.sleep(0.01)

    def _cancel_everything(self) -> None:
        for link in list(self._links):
            for call in list(link.calls.values()):
                call._end_with(_C.UNAVAILABLE.value[0], "server shutting down")
                call._cancelled = True
                if call._task is not None and not call._task.done():
                    call._task.cancel()

    async def _finish_stop(self) -> None:
        if self._state == "stopped":
            return
        # Let cancelled handlers unwind, briefly.
        tasks = [call._task for link in self._links for call in link.calls.values()
                 if isinstance(call._task, asyncio.Task) and not call._task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for link in list(self._links):
            link.close("server stopped")
        links = list(self._links)
        if links:
            await asyncio.wait([asyncio.ensure_future(asyncio.shield(l.closed)) for l in links], timeout=1.0)
            for link in links:
                if not link.closed.done():
                    link.abort("server stopped")
        for listener in self._listeners:
            try:
                await asyncio.wait_for(listener.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
        if self._status_file is not None:
            self._status_file.close()
            self._status_file = None
        self._lanes.close()
        if self._refusal_timer is not None:
            self._log_refusals(None)      # the count so far, rather than never
        self._state = "stopped"
        if self._own_executor:
            assert self._executor is not None   # start() made it
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._terminated is not None:
            self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        if self._terminated is None:
            return True
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # ------------------------------------------------------------ calls

    def _on_request(self, link: ServerLink, ev: c.RequestReceived) -> None:
        conn = link.conn
        sid = ev.stream_id
        if self._state != "serving":
            conn.cancel(sid, _C.UNAVAILABLE.value[0], "server is shutting down", not_started=True)
            link.flush_soon()
            return
        if ev.timeout is not None and link.read_at and time.monotonic() - link.read_at >= ev.timeout:
            # Its deadline passed while the calls read before it started: as in gRPC,
            # a call whose deadline is gone before its handler starts never starts.
            conn.end_stream(sid, _C.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
            link.flush_soon()
            self._stats.call_ended(link.lane or "?", _C.DEADLINE_EXCEEDED.value[0], link)
            return
        if self._interceptors:
            self._intercept(link, ev)
            return
        handler = self._registered.get(ev.method)
        if handler is None and self._generic_handlers:
            # A generic handler reads the metadata in grpc.aio's form.
            items = invocation_items(link.invocation_head, ev.metadata)
            self._accept(link, ev, self._find_handler(ev.method, items), items)
        else:
            self._accept(link, ev, handler)

    def _intercept(self, link: ServerLink, ev: c.RequestReceived) -> None:
        """Let the interceptors choose the handler of the call ``ev`` starts: now, up
        to their first await that waits (most have none: the call then starts as an
        uninterrupted one does, with no task); a task goes on from there if they wait,
        the call's messages held meanwhile. They run in a copy of the loop's context."""
        items = invocation_items(link.invocation_head, ev.metadata)
        assert self._loop is not None   # set by start(), before "serving"
        try:
            task, handler = first_step(self._loop, self._chain.find_handler(
                _HandlerCallDetails(ev.method, items)), contextvars.copy_context())
        except (Exception, asyncio.CancelledError) as exc:
            self._interceptor_failed(link, ev.stream_id, exc)
            return
        if task is None:
            self._accept(link, ev, handler, items)
            return
        link.calls[ev.stream_id] = _PendingCall()   # holds messages while interceptors run
        task.add_done_callback(functools.partial(self._handler_chosen, link, ev, items))

    def _handler_chosen(self, link: ServerLink, ev: c.RequestReceived, items: tuple[_Metadatum, ...],
                        task: asyncio.Task[grpc.RpcMethodHandler[Any, Any] | None]) -> None:
        """Interceptors that waited are over: start the call (with the messages that
        came meanwhile), unless it ended meanwhile (cancelled, its connection gone)."""
        pending = link.calls.get(ev.stream_id)
        if not isinstance(pending, _PendingCall):
            return
        del link.calls[ev.stream_id]
        error = asyncio.CancelledError() if task.cancelled() else task.exception()
        if pending.ended:
            return
        if error is not None:
            self._interceptor_failed(link, ev.stream_id, error)
            return
        self._accept(link, ev, task.result(), items)
        link.arm_deadlines()              # (not in a read: arm its timer now)
        call = link.calls.get(ev.stream_id)
        if call is not None:
            for data, end in pending.items:
                if data is None:
                    call._on_end_of_input()
                else:
                    call._on_message(data, end)

    def _interceptor_failed(self, link: ServerLink, sid: int, exc: BaseException) -> None:
        """An interceptor raised: the call ends UNKNOWN (CANCELLED if it was cancelled,
        as a handler's task that is)."""
        if isinstance(exc, asyncio.CancelledError):
            link.conn.end_stream(sid, _C.CANCELLED.value[0], "Cancelled by the server")
        else:
            log.error("lanerpc: server interceptor raised", exc_info=exc)
            link.conn.end_stream(sid, _C.UNKNOWN.value[0], f"Unexpected {type(exc)}: {exc}")
        link.flush_soon()

    def _accept(self, link: ServerLink, ev: c.RequestReceived,
                handler: grpc.RpcMethodHandler[Any, Any] | None,
                items: tuple[_Metadatum, ...] | None = None) -> None:
        """Start the call ``handler`` serves (or refuse it); ``items``: its invocation
        metadata when already made for the interceptors or generic handlers."""
        conn = link.conn
        sid = ev.stream_id
        if handler is None:
            conn.end_stream(sid, _C.UNIMPLEMENTED.value[0], "Method not found!")
            link.flush_soon()
            self._stats.call_ended(link.lane or "?", _C.UNIMPLEMENTED.value[0], link)
            return
        if self._max_rpcs is not None and self._active >= self._max_rpcs:
            conn.end_stream(sid, _C.RESOURCE_EXHAUSTED.value[0], "Concurrent RPC limit exceeded!")
            link.flush_soon()
            self._stats.call_ended(link.lane or "?", _C.RESOURCE_EXHAUSTED.value[0], link)
            return
        self._active += 1
        call = ServicerContext(self, link, sid, ev.method, ev.timeout, ev.metadata, handler)
        call._counted = True
        if items is not None:
            call._invocation = items
        link.calls[sid] = call
        if ev.timeout is not None:
            link.untimed.append(call)     # armed when this read's events are handled
        if handler.request_streaming:
            call._start()
            if ev.end_stream:
                call._on_end_of_input()
        elif ev.end_stream:
            call._on_end_of_input()

    def _handler_context(self) -> contextvars.Context:
        """A copy of the context ``start()`` ran in: a call's handler starts there,
        as grpc.aio's do, whatever context the bytes that began the call were read in."""
        base = self._start_context
        return base.copy() if base is not None else contextvars.copy_context()

    def _call_finished(self, call: ServicerContext) -> None:
        if call._counted:
            call._counted = False
            self._active -= 1
        link: ServerLink = call._link  # type: ignore[assignment]  # (this server made it)
        link.calls.pop(call._sid, None)
        if link.idle_timer is not None or link.aged:   # (only these care; a frame less)
            link.call_ended()


def _ps_address(kind: str, sock: socket.socket) -> str:
    """A bound socket's address as a target names it, for lanerpc ps."""
    name = sock.getsockname()
    if kind == "unix":
        if isinstance(name, bytes):      # an abstract socket: a leading NUL
            return "unix-abstract:" + name[1:].decode(errors="replace")
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _GrpcSide:
    """What the lanes' sniffer needs of the server for a plain gRPC client of a
    lanerpc TCP port (rpc._splice): the connection limit, shared with lanerpc's
    connections, and the inner grpcio server (the grpc:// ports' one), started on
    demand with the same handlers, interceptors and options."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def admit(self, peer: str) -> bool:
        return self._server._admit_connection(peer) is None

    def release(self) -> None:
        self._server._release_connection()

    async def serve(self) -> str:
        server = self._server
        while server._state == "starting":   # a client as the listeners open (bounded by the caller)
            await asyncio.sleep(0.01)
        path = server._lanes.grpc_path
        if server._state != "serving" or path is None:
            raise RuntimeError("the server is not serving")
        ports = server._grpc_ports()
        ports.serve_privately_at(path)
        await ports.start()
        return path


class _HandlerCallDetails(grpc.HandlerCallDetails):
    __slots__ = ("method", "invocation_metadata")

    def __init__(self, method: str, invocation_metadata: DecodedMetadata) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata
