"""Lane choice and the same-host upgrade: the one place that decides which lane
carries a channel. Decides first (from the target and the options), then does I/O.

The upgrade (docs/wire-protocol.md, "Same-host upgrade"):

1. A server that listens on TCP also listens on a private Unix socket
   (``<runtime dir>/lanerpc-up-<random>/up.sock``, directory 0700, socket 0600).
   The directory also holds ``lock``, flock()ed by the server for its lifetime: the
   kernel drops the lock when the process dies, SIGKILL included, so the next
   server's :func:`sweep_stale` knows at once that the directory is a leftover.
   Its HELLO on every TCP connection carries an :class:`UpgradeOffer`: that path
   and a fresh 32-byte token.
2. The client dials the path and sends an ``UpgradeClaim``: SHA-256 of the token
   (naming it without revealing it) and a nonce of its own.
3. The server answers HMAC-SHA256(token, nonce). Only the process that made the
   token can; a decoy at the same path (another mount namespace, another
   server) can't. The client checks the answer in constant time.
4. Any failing or slow step leaves the channel on TCP, logged at DEBUG.

With ``lanerpc.server_uids`` set, every unix socket a client dials (a ``unix:``
target, the upgrade path, a redial after a failed shm switch) is checked by
:func:`_server_uid_check` once connected and before a byte is sent: a server whose
SO_PEERCRED uid is not listed is dropped. On a ``unix:`` target that fails the
connection (UNAVAILABLE); on an upgrade it leaves the channel on TCP, like any
failed step.

The upgrade runs when a channel connects, before any call uses the connection,
so no call is ever in flight across the switch.

This module imports nothing above it: a client hands :func:`connect` a factory that
makes its links; a server gets its listeners from :class:`ServerLanes` and, for each
connection, a :class:`Negotiator` that answers the client's HELLO and LANE frames.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import hmac
import logging
import os
import shutil
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

from rpc import _credentials
from rpc._link import LaneAdapter, Link
from rpc._splice import GrpcSide, Sniffer, Splice
from rpc._options import Options
from rpc._proto import handshake_pb2
from rpc._target import Endpoint
from rpc.transports import PeerInfo, pipe, shm, tcp, unix
from rpc.transports import peer_credentials

log = logging.getLogger("lanerpc")

_DIR_PREFIX = "lanerpc-up-"   # specific: the sweep must never touch other programs' dirs
_SOCKET_NAME = "up.sock"
_GRPC_SOCKET_NAME = "grpc.sock"   # the inner grpcio server behind gRPC clients of tcp ports
_LOCK_NAME = "lock"           # flock()ed by the live server
_NEW_LOCK_NAME = "lock.new"   # the same file before it is locked and renamed
_YOUNG = 5.0                  # seconds: directories without a lock this young are left alone

TlsProperties = dict[str, list[bytes]]   # a TLS peer's auth properties (rpc._credentials)

# Makes a client link whose HELLO carries these fields (the lanes it takes, a claim).
ClientLinkFactory = Callable[[handshake_pb2.Hello | None], Link]
# Makes a server link that negotiates its lanes through this negotiator.
ServerLinkFactory = Callable[["Negotiator"], Link]
Listener = asyncio.AbstractServer | unix.UnixListener


def _answer(token: bytes, nonce: bytes) -> bytes:
    return hmac.new(token, nonce, hashlib.sha256).digest()


# ------------------------------------------------------------------ client side

class UntrustedServer(ConnectionError):
    """The unix socket's server runs as a uid that ``lanerpc.server_uids`` does not list."""


def _server_uid_check(path: str, allowed: frozenset[int]) -> unix.ConnectCheck:
    def check(sock: socket.socket) -> None:
        creds = peer_credentials(sock)
        found = "unknown" if creds is None else str(creds[1])
        if creds is None or creds[1] not in allowed:
            expected = ",".join(str(uid) for uid in sorted(allowed))
            raise UntrustedServer(
                f"server at unix:{path} runs as uid {found}, not one of lanerpc.server_uids "
                f"({expected}); disconnected before sending anything")
    return check


async def _dial(endpoint: Endpoint, options: Options, make_link: ClientLinkFactory,
                hello: handshake_pb2.Hello | None = None,
                lanes: Sequence[str] | None = None) -> Link:
    if endpoint.lane == "unix":
        # Tell the server which lanes we take, so it offers shm only when we do.
        hello = hello if hello is not None else handshake_pb2.Hello()
        hello.lanes = ",".join(lanes if lanes is not None else options.lanes)
    factory = lambda: make_link(hello)  # noqa: E731
    if endpoint.lane == "unix":
        allowed = options.server_uids
        check = None if allowed is None else _server_uid_check(endpoint.path, allowed)
        _, protocol = await unix.connect(endpoint.path, factory, check=check)
    elif options.tls is not None:
        protocol = await _dial_tls(endpoint, options, factory)
    else:
        transport, protocol = await tcp.connect(endpoint.host, endpoint.port, factory)
        if options.local_tcp:
            try:   # as grpc's local credentials: the peer's address, once connected
                _credentials.check_local_peer(transport.get_extra_info("peername"), str(endpoint))
            except ConnectionError:
                transport.abort()
                raise
    assert isinstance(protocol, Link)
    try:
        await protocol.handshake(options.handshake_timeout)
    except ConnectionError as exc:
        if (options.tls is None or endpoint.lane != "tcp" or isinstance(exc, PermissionError)
                or protocol.conn.peer_hello):
            raise
        raise ConnectionError(f"{exc}: {_credentials.refusal_reason(options.tls)}") from exc
    return protocol


async def _dial_tls(endpoint: Endpoint, options: Options,
                    factory: Callable[[], Link]) -> asyncio.BaseProtocol:
    """A TLS connection to a lanerpc TLS port: the server's certificate checked against
    the target's host (or ``grpc.ssl_target_name_override``), and ALPN agreed on
    lanerpc's protocol (a gRPC/HTTP2 TLS port is told apart here, not by a hang)."""
    assert options.tls is not None
    name = options.ssl_target_name_override or options.tls_server_name or endpoint.host
    try:
        transport, protocol = await tcp.connect(
            endpoint.host, endpoint.port, factory, ssl=options.tls, server_hostname=name,
            handshake_timeout=options.handshake_timeout)
    except ssl.SSLError as exc:
        raise ConnectionError(f"TLS handshake with {endpoint} failed: {exc}") from exc
    try:
        _credentials.check_alpn(transport.get_extra_info("ssl_object"), str(endpoint))
    except ConnectionError:
        transport.abort()
        raise
    return protocol


async def connect(endpoint: Endpoint, options: Options, make_link: ClientLinkFactory) -> Link:
    """A ready link to ``endpoint``, on the fastest lane both sides allow. Says at
    INFO which lane it ended on and, when it did not move to a faster one, why."""
    lanes = options.lanes
    if endpoint.refused:      # a target lanerpc can't resolve (xds:, say): see rpc._target
        raise ConnectionError(endpoint.refused)
    if endpoint.lane == "unix" and "unix" not in lanes:
        raise ConnectionError(f"{endpoint} is a unix: target but lanerpc.lanes excludes unix")
    link = await _dial(endpoint, options, make_link)
    dialled, first_lane = endpoint, link.lane
    why: list[str] = []       # why a faster lane was not taken, for the INFO line
    local = await move_local(link, options, make_link, why) if endpoint.lane == "tcp" else None
    if local is not None:
        link.close("moved to the unix lane")
        link = local
    else:
        link = await _shm_or_stay(link, endpoint, options, make_link, why)
    _log_lane(dialled, first_lane, link.lane, why)
    return link


async def move_local(link: Link, options: Options, make_link: ClientLinkFactory,
                     why: list[str] | None = None) -> Link | None:
    """The same-host link that ``link``'s server offered in its HELLO (a unix link,
    moved on to shm when both sides allow), its proof checked; None when there was no
    offer or it can't be had (``why`` is told the reason). ``link`` is left as it is:
    closing it is the caller's (a tcp link is closed; a spawned worker's pipe stays
    open as its lifeline)."""
    hello = link.conn.peer_hello
    offer = hello.upgrade if hello is not None and hello.HasField("upgrade") else None
    # A TLS connection upgrades too: the offer came inside TLS from the server whose
    # certificate was checked, and the server's proof of its token shows the unix
    # socket is that server's. (lanerpc.lanes=tcp keeps a channel on TLS.)
    reasons = why if why is not None else []
    if "unix" not in options.lanes:
        reasons.append("option lanerpc.lanes excludes unix")
        return None
    if offer is None:
        reasons.append("no upgrade offer (another host's server, or its lanes exclude unix)")
        return None
    upgraded = await _try_upgrade(offer, options, make_link)
    if isinstance(upgraded, str):
        reasons.append(upgraded)
        return None
    return await _shm_or_stay(upgraded, Endpoint("unix", path=offer.unix_path), options,
                              make_link, why)


async def _shm_or_stay(link: Link, endpoint: Endpoint, options: Options,
                       make_link: ClientLinkFactory, why: list[str] | None = None) -> Link:
    """A unix link moved on to the shm lane its server offered, when we take shm;
    otherwise ``link`` as it is (the offer declined, so the server drops its segment)."""
    if link.lane != "unix":
        return link
    reasons = why if why is not None else []
    hello = link.conn.peer_hello
    if "shm" not in options.lanes:
        reasons.append("option lanerpc.lanes excludes shm")
        if hello is not None and hello.HasField("shm"):
            link.conn.send_lane("unix")     # not ours to take: let the server drop it
            link.flush()
    elif hello is None or not hello.HasField("shm"):
        reasons.append("no shm offer (the server's lanes exclude shm, or it has none to give)")
    else:
        link = await _try_shm(link, hello.shm, endpoint, options, make_link, why)
    return link


def _log_lane(endpoint: Endpoint, first: str | None, last: str | None, why: list[str]) -> None:
    """One INFO line per connection: the lane it moved to, or the one it stays on and why."""
    if not log.isEnabledFor(logging.INFO):
        return
    moved = f"upgraded {first} -> {last}" if first != last else f"stays on {last}"
    if why and last != "shm":
        log.info("lanerpc: connection to %s %s: %s", endpoint, moved, "; ".join(why))
    else:
        log.info("lanerpc: connection to %s %s", endpoint, moved)


def _shm_refusal(offer: shm.ShmOffer, options: Options, peer: PeerInfo | None) -> str | None:
    """Why the client won't take this offer (None: it will)."""
    offer.check()
    wanted = options.shm_variant
    if wanted != "auto" and wanted != offer.variant:
        return f"the server offers the {offer.variant} variant; lanerpc.shm_variant is {wanted}"
    if peer is None or peer.uid != os.geteuid():
        # Shared memory only between processes of one uid: an admitted peer of another
        # uid could block our loop through the file descriptions we share (eventfd flags).
        return "the server runs as another uid"
    if offer.variant == "memfd" and shm.resolve_variant("auto") != "memfd":
        return "this system has no sealed memfds or eventfds"
    return None


async def _try_shm(link: Link, offered: handshake_pb2.ShmOffer, endpoint: Endpoint,
                   options: Options, make_link: ClientLinkFactory,
                   why: list[str] | None = None) -> Link:
    """Move a unix link to the shm lane the server offered: map the segment, check
    the server's nonce in it, ask with a LANE frame, switch on the server's grant.
    Declining is silent (DEBUG) and leaves the link on unix."""
    offer = shm.ShmOffer(segment=offered.segment, semaphores=tuple(offered.semaphores),
                         ring_capacity=offered.ring_capacity, nonce=offered.nonce,
                         variant="memfd" if offered.variant == "memfd" else "posix")
    segment: shm.ShmSegment | None = None
    try:
        if offered.variant not in ("", "posix", "memfd"):
            raise shm.ShmUnavailable(f"unknown shm variant {offered.variant!r}")
        refusal = _shm_refusal(offer, options, link.peer)
        if refusal is not None:
            raise shm.ShmUnavailable(refusal)
        if offer.variant == "posix":
            segment = shm.ShmSegment.open(offer)
        elif link.transport is None or link.transport.get_extra_info("socket") is None:
            raise shm.ShmUnavailable("the unix transport has no socket to receive fds on")
    except Exception as exc:    # ShmUnavailable, or a peer's nonsense: stay on unix
        log.debug("lanerpc: shm offer not taken (%s); staying on unix", exc)
        if why is not None:
            why.append(f"shm offer not taken: {exc}")
        try:
            shm.ShmSegment.discard(offer)
        except Exception:
            pass
        link.conn.send_lane("unix")
        link.flush()
        return link
    if segment is None:
        return await _try_shm_memfd(link, offer, endpoint, options, make_link, why)
    grant = link.expect_lane_answer()
    link.conn.send_lane("shm")
    link.flush()
    return await _switch_to_shm(link, segment, grant, endpoint, options, make_link, why)


async def _redial_without_shm(link: Link, reason: BaseException, endpoint: Endpoint,
                              options: Options, make_link: ClientLinkFactory,
                              why: list[str] | None = None) -> Link:
    # The server may or may not have switched: this connection can't be trusted
    # either way. Start again on unix, without shm.
    link.abort("shm switch did not complete")
    log.debug("lanerpc: shm switch did not complete (%s); dialing unix again",
              reason or type(reason).__name__)
    if why is not None:
        why.append(f"shm switch did not complete ({reason or type(reason).__name__}); "
                   "dialled unix again")
    return await _dial(endpoint, options, make_link,
                       lanes=[lane for lane in options.lanes if lane != "shm"])


async def _try_shm_memfd(link: Link, offer: shm.ShmOffer, endpoint: Endpoint,
                         options: Options, make_link: ClientLinkFactory,
                         why: list[str] | None = None) -> Link:
    """The memfd variant: ask with a LANE frame, receive the segment's fds on the
    socket (read with recvmsg while the transport is not reading, so no plain read
    drops them), check them, then take the server's grant."""
    transport = link.transport
    assert transport is not None          # checked by _try_shm, with the socket
    sock = transport.get_extra_info("socket")
    transport.pause_reading()
    grant = link.expect_lane_answer()
    link.conn.send_lane("shm")
    link.flush()
    try:
        received = await shm.receive_segment_fds(link.loop, sock.fileno(),
                                                 options.upgrade_timeout)
        segment = None if received is None else shm.ShmSegment.from_fds(offer, *received)
    except (asyncio.TimeoutError, OSError, shm.ShmUnavailable) as exc:
        return await _redial_without_shm(link, exc, endpoint, options, make_link, why)
    transport.resume_reading()    # the grant (or the refusal) follows as a frame
    if segment is None:
        log.debug("lanerpc: the server declined the shm switch; staying on unix")
        if why is not None:
            why.append("the server declined the shm switch")
        grant.cancel()
        return link
    return await _switch_to_shm(link, segment, grant, endpoint, options, make_link, why)


async def _switch_to_shm(link: Link, segment: shm.ShmSegment, grant: asyncio.Future[str],
                         endpoint: Endpoint, options: Options,
                         make_link: ClientLinkFactory, why: list[str] | None = None) -> Link:
    """The client has the segment and asked for the lane: switch on the server's grant."""
    try:
        granted = await asyncio.wait_for(asyncio.shield(grant), options.upgrade_timeout)
    except (asyncio.TimeoutError, ConnectionError) as exc:
        segment.close()
        return await _redial_without_shm(link, exc, endpoint, options, make_link, why)
    if granted != "shm":
        segment.close()
        if why is not None:
            why.append("the server did not grant shm")
        return link
    try:
        transport = shm.ShmTransport(link.loop, segment, "client", LaneAdapter(link),
                                     control_transport=link.transport)
    except Exception:
        segment.close()
        link.abort("shm transport failed")
        raise
    link.switch_to(transport)
    return link


async def _try_upgrade(offer: handshake_pb2.UpgradeOffer, options: Options,
                       make_link: ClientLinkFactory) -> Link | str:
    """The unix link the offer leads to, proven; or why it can't be had."""
    path = offer.unix_path
    token = offer.token
    if not path or len(token) < 16 or len(path) > 107:
        log.debug("lanerpc: upgrade offer malformed; staying on tcp")
        return "malformed upgrade offer"
    nonce = os.urandom(32)
    claim = handshake_pb2.Hello()
    claim.claim.token_id = hashlib.sha256(token).digest()
    claim.claim.nonce = nonce
    try:
        link = await asyncio.wait_for(
            _dial(Endpoint("unix", path=path), options, make_link, claim),
            options.upgrade_timeout)
    except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
        log.debug("lanerpc: upgrade to unix:%s failed (%s); staying on tcp",
                  path, exc or type(exc).__name__)
        return _upgrade_failure(path, exc, options.upgrade_timeout)
    hello = link.conn.peer_hello
    answer = hello.claim_answer if hello is not None else b""
    if not hmac.compare_digest(answer, _answer(token, nonce)):
        log.debug("lanerpc: unix:%s did not prove it is the same server; staying on tcp", path)
        link.abort("upgrade proof failed")
        return f"unix:{path} did not prove it is the same server (a decoy)"
    return link


def _upgrade_failure(path: str, exc: BaseException, timeout: float) -> str:
    """Why dialling the offered upgrade socket failed, in the words of the INFO line."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"upgrade timed out after {timeout:g} s"
    if isinstance(exc, UntrustedServer):
        return f"peer uid refused: {exc}"
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        return (f"unix:{path} is not reachable from here "
                "(another host, or another mount namespace)")
    return f"upgrade to unix:{path} failed: {exc or type(exc).__name__}"


# ------------------------------------------------------------------ server side

# grpc's auth context keys and the values its insecure and local credentials give.
_INSECURE = {"transport_security_type": b"insecure", "security_level": b"TSI_SECURITY_NONE"}
_LOCAL = {"transport_security_type": b"local", "security_level": b"TSI_PRIVACY_AND_INTEGRITY"}


def auth_properties(peer: PeerInfo | None, lane: str | None,
                    tls: dict[str, list[bytes]] | None = None) -> dict[str, list[bytes]]:
    """A call's ``auth_context()``: values are lists of bytes, as in grpc.

    A connection whose peer the kernel vouches for (SO_PEERCRED: the unix and shm
    lanes) is what grpc calls local: ``transport_security_type`` ``local``, and
    lanerpc adds the client's ``lanerpc_peer_pid``, ``lanerpc_peer_uid`` and
    ``lanerpc_peer_gid``. TCP is grpc's insecure. ``lanerpc_lane`` names the lane
    the call came on, on every lanerpc connection. A TLS connection's properties
    (``tls``, from :func:`rpc._credentials.peer_properties`) are grpc's ssl ones."""
    local = peer is not None and peer.uid is not None
    props = {key: [value] for key, value in (_LOCAL if local else _INSECURE).items()}
    if tls is not None:
        props = {key: list(values) for key, values in tls.items()}
    if peer is not None and local:
        for key, number in (("pid", peer.pid), ("uid", peer.uid), ("gid", peer.gid)):
            if number is not None:
                props[f"lanerpc_peer_{key}"] = [str(number).encode()]
    if lane is not None:
        props["lanerpc_lane"] = [lane.encode()]
    return props


class ServerLanes:
    """A server's side of the lanes: its listeners, the private upgrade socket when
    TCP clients may move, and a :class:`Negotiator` for each connection."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._upgrade: _UpgradeSocket | None = None
        self._private: _PrivateDir | None = None      # for the gRPC side, without an upgrade socket
        self.grpc_path: str | None = None             # where the gRPC side of tcp ports listens
        self.splices: set[Splice] = set()             # gRPC clients of tcp ports, spliced
        self._tls: dict[socket.socket, ssl.SSLContext] = {}   # TLS ports' sockets
        self._local: set[socket.socket] = set()    # local_server_credentials' TCP ports

    def use_tls(self, sockets: Sequence[socket.socket], context: ssl.SSLContext) -> None:
        """Serve these bound TCP sockets (add_secure_port's) with TLS: lanerpc's
        protocol only (no gRPC sniffing: a gRPC TLS client is told apart by ALPN).
        Their clients are offered the same-host upgrade like any TCP client's, inside
        TLS; the upgraded connection keeps the TLS peer's identity (see _UpgradeSocket)."""
        for sock in sockets:
            self._tls[sock] = context

    def use_local(self, sockets: Sequence[socket.socket]) -> None:
        """Serve these bound TCP sockets (add_secure_port's, with local credentials)
        to loopback peers only, lanerpc's protocol only; their connections' auth
        context is grpc's local one (and the same-host upgrade is offered)."""
        self._local.update(sockets)

    @property
    def upgrade_path(self) -> str | None:
        return self._upgrade.path if self._upgrade is not None else None

    async def listen(self, sockets: Sequence[tuple[str, socket.socket]],
                     make_link: ServerLinkFactory,
                     grpc_side: GrpcSide | None = None) -> list[Listener]:
        """Listen on the sockets bound by add_insecure_port (and, when a TCP port may
        be upgraded, on the upgrade socket); returns the ports' listeners. With
        ``grpc_side``, TCP ports also take plain gRPC clients (see rpc._splice)."""
        lanes = self.options.lanes
        has_tcp = any(kind == "tcp" for kind, _ in sockets)
        if has_tcp and "unix" in lanes:
            await self._start_upgrade(make_link, "tcp")
        # gRPC clients are sniffed on plaintext TCP ports only (TLS ones speak lanerpc).
        if grpc_side is not None and any(kind == "tcp" and sock not in self._tls
                                         and sock not in self._local for kind, sock in sockets):
            self.grpc_path = self._grpc_socket_path()
        listeners: list[Listener] = []
        try:
            for kind, sock in sockets:
                if kind == "unix":
                    listeners.append(await unix.listen(
                        sock, lambda: make_link(Negotiator(self))))
                elif sock in self._tls:
                    listeners.append(await tcp.listen(
                        sock, lambda: make_link(Negotiator(self, offer_upgrade=True, tls=True)),
                        ssl=self._tls[sock], handshake_timeout=self.options.handshake_timeout))
                elif sock in self._local:
                    listeners.append(await tcp.listen(
                        sock, lambda: make_link(Negotiator(self, offer_upgrade=True, local=True))))
                else:
                    listeners.append(await tcp.listen(
                        sock, self._tcp_factory(make_link, grpc_side)))
        except BaseException:
            for listener in listeners:
                listener.close()
            raise
        return listeners

    async def _start_upgrade(self, make_link: ServerLinkFactory, lane: str) -> None:
        if self._upgrade is not None:
            return
        try:
            self._upgrade = await _UpgradeSocket.start(
                lambda: make_link(Negotiator(self, upgrade_side=True)))
        except OSError as exc:
            log.debug("lanerpc: no upgrade socket (%s); %s clients stay on %s", exc, lane, lane)

    async def serve_pipe(self, read_fd: int, write_fd: int, make_link: ServerLinkFactory,
                         peer_pid: int | None) -> Link:
        """One connection over a pipe pair (``rpc.serve_stdio``'s: the parent that
        spawned us), offered the same-host upgrade like a TCP client: the upgrade
        socket is opened for it when the lanes allow unix."""
        if "unix" in self.options.lanes:
            await self._start_upgrade(make_link, "pipe")
        _, link = await pipe.connect(
            read_fd, write_fd, lambda: make_link(Negotiator(self, offer_upgrade=True)),
            peer_pid=peer_pid)
        assert isinstance(link, Link)
        return link

    def _tcp_factory(self, make_link: ServerLinkFactory,
                     grpc_side: GrpcSide | None) -> Callable[[], asyncio.BaseProtocol]:
        """A TCP port's protocols: the lanerpc link at once, or a sniffer first when
        gRPC clients are taken on the same port."""
        def link() -> Link:
            return make_link(Negotiator(self, offer_upgrade=True))
        if grpc_side is None or self.grpc_path is None:
            return link
        side = grpc_side
        return lambda: Sniffer(link, side, self.options.handshake_timeout, self.splices)

    def _grpc_socket_path(self) -> str:
        """The gRPC side's socket, in the server's private directory: only our uid
        reaches it."""
        return os.path.join(self.private_directory(), _GRPC_SOCKET_NAME)

    def private_directory(self) -> str:
        """The server's private runtime directory (0700, flock()ed, removed by
        :meth:`close`): the upgrade socket's, or one made for it when there is none.
        Raises OSError when none can be made."""
        if self._upgrade is not None:
            return self._upgrade.directory
        if self._private is None:
            self._private = _PrivateDir.make()
        return self._private.directory

    def admits(self, uid: int | None) -> bool:
        """The unix and shm lanes admit our own uid, and those the option lists."""
        if uid is None:
            return False
        return uid == os.geteuid() or uid in self.options.allowed_uids

    def close(self) -> None:
        """Stop the upgrade socket and remove its directory; cut what is left of the
        spliced gRPC connections (the gRPC side has stopped by now)."""
        for splice in list(self.splices):
            splice.abort()
        if self._upgrade is not None:
            self._upgrade.close()
            self._upgrade = None
        if self._private is not None:
            self._private.close()
            self._private = None


class Negotiator:
    """One server connection's part in the lanes: what its HELLO offers (the upgrade
    on tcp, the proof on the upgrade socket, shm on unix), whether a LANE request is
    granted, and what is cleaned up when the connection ends."""

    def __init__(self, lanes: ServerLanes, *, offer_upgrade: bool = False,
                 upgrade_side: bool = False, tls: bool = False, local: bool = False) -> None:
        self._lanes = lanes
        self.tls = tls                  # a TLS port's connection: see port_properties
        self.local = local              # a local credentials' TCP port's: likewise
        self._offer_upgrade = offer_upgrade
        self._upgrade_side = upgrade_side
        self._token_id: bytes | None = None       # of the upgrade offer we made
        self._segment: shm.ShmSegment | None = None   # offered, not yet taken or declined
        self._offered: str | None = None     # the variant of the shm offer we made
        self._expiry: asyncio.TimerHandle | None = None

    def admits(self, uid: int | None) -> bool:
        return self._lanes.admits(uid)

    def port_properties(self, transport: asyncio.BaseTransport) -> dict[str, list[bytes]] | None:
        """The peer's auth properties its port's credentials give: on a TLS port once
        its ALPN is checked (a ConnectionError for a client that did not ask for
        lanerpc's protocol); on a local credentials' port once it is found on loopback
        (:class:`rpc._credentials.NotLocal` if not). None on the other ports."""
        if self.local:
            _credentials.check_local_peer(transport.get_extra_info("peername"),
                                          "this port")
            return _credentials.local_properties()
        if not self.tls:
            return None
        ssl_object = transport.get_extra_info("ssl_object")
        _credentials.check_alpn(ssl_object, str(transport.get_extra_info("peername")))
        return _credentials.peer_properties(ssl_object)

    def hello(self, link: Link, client_hello: handshake_pb2.Hello) -> handshake_pb2.Hello | None:
        """The fields of our HELLO that depend on the lanes, or None."""
        upgrade = self._lanes._upgrade
        reply: handshake_pb2.Hello | None = None
        if upgrade is not None and self._offer_upgrade:
            reply = handshake_pb2.Hello()
            self._token_id = upgrade.offer(reply.upgrade, link.peer.address if link.peer else None,
                                           link.tls)
        if upgrade is not None and self._upgrade_side and client_hello.HasField("claim"):
            answered = upgrade.answer(client_hello.claim)
            if answered is not None:
                reply = reply or handshake_pb2.Hello()
                reply.claim_answer, link.dialled_as, link.tls = answered
        if link.lane == "unix":
            offer = self._offer_shm(link, client_hello)
            if offer is not None:
                reply = reply or handshake_pb2.Hello()
                reply.shm.CopyFrom(offer)
        return reply

    def _offer_shm(self, link: Link,
                   client_hello: handshake_pb2.Hello) -> handshake_pb2.ShmOffer | None:
        """A segment for this unix connection and the offer naming it, when the
        client's and our lanes both list shm; None otherwise (stay on unix)."""
        if "shm" not in self._lanes.options.lanes or "shm" not in client_hello.lanes.split(","):
            return None
        if link.peer is None or link.peer.uid != os.geteuid():
            # Shared memory only between processes of one uid: an admitted client of
            # another uid could block our loop through the file descriptions we
            # would share (an eventfd's flags). It stays on unix.
            return None
        try:
            segment, offer = shm.ShmSegment.create(variant=self._lanes.options.shm_variant)
        except Exception as exc:    # ShmUnavailable: full /dev/shm, no posix_ipc, other CPU...
            log.debug("lanerpc: no shm lane for this connection (%s)", exc)
            return None
        self._segment = segment
        self._offered = offer.variant
        # A client that never answers must not keep the segment (nor, posix, its names).
        self._expiry = link.loop.call_later(self._lanes.options.handshake_timeout,
                                            self._drop_segment)
        return handshake_pb2.ShmOffer(segment=offer.segment, semaphores=list(offer.semaphores),
                                      ring_capacity=offer.ring_capacity, nonce=offer.nonce,
                                      variant=offer.variant)

    def _take_segment(self) -> shm.ShmSegment | None:
        segment, self._segment = self._segment, None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        return segment

    def _drop_segment(self) -> None:
        segment = self._take_segment()
        if segment is not None:
            segment.close()

    def lane_change(self, link: Link, lane: str) -> None:
        """The client asked for ``lane``: grant shm if its segment checks out."""
        segment = self._take_segment()
        if lane != "shm":
            if segment is not None:
                segment.close()          # declined
            return
        if self._offered == "memfd":
            # The client reads an fd message before any frame: send the segment, or
            # say that none is coming.
            if segment is None or not self._send_fds(link, segment):
                link.conn.send_lane("unix")
                link.flush()
                return
        elif segment is None:
            link.conn.send_lane("unix")
            link.flush()
            return
        try:
            segment.confirm_attached()
        except Exception as exc:
            log.debug("lanerpc: client did not map the offered segment (%s); staying on unix", exc)
            segment.close()
            link.conn.send_lane("unix")
            link.flush()
            return
        link.conn.send_lane("shm")
        link.flush()                     # the last bytes on the unix socket
        try:
            transport = shm.ShmTransport(link.loop, segment, "server", LaneAdapter(link),
                                         control_transport=link.transport)
        except Exception as exc:
            log.warning("lanerpc: could not start the shm transport: %s", exc)
            segment.close()
            link.abort(f"shm transport failed: {exc}")
            return
        link.switch_to(transport)

    def _send_fds(self, link: Link, segment: shm.ShmSegment | None) -> bool:
        """The memfd variant's fd message: the segment's fds, or (``segment`` None, or
        they can't be sent) the marker that none come. False if the client gets none;
        the link is aborted if not even the marker could go (the client then dials
        again without shm)."""
        transport = link.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if transport is None or sock is None or transport.get_write_buffer_size():
            # Bytes still queued would arrive after the fd message: out of order.
            if segment is not None:
                segment.close()
            link.abort("cannot send the shm segment's fds in order")
            return False
        try:
            if segment is not None:
                try:
                    segment.send_fds(sock.fileno())
                    return True
                except shm.ShmUnavailable as exc:
                    log.debug("lanerpc: %s; staying on unix", exc)
                    segment.close()
            shm.send_decline(sock.fileno())
        except OSError as exc:
            link.abort(f"shm switch failed: {exc}")
        return False

    def close(self) -> None:
        """The connection ended: its unused token and segment go."""
        upgrade = self._lanes._upgrade
        if upgrade is not None and self._token_id is not None:
            upgrade.forget(self._token_id)
        self._token_id = None
        self._drop_segment()


class _UpgradeSocket:
    """The server's private upgrade socket and the tokens it has offered."""

    def __init__(self, directory: str, lock_fd: int, listener: unix.UnixListener) -> None:
        self.directory = directory
        self.lock_fd: int | None = lock_fd
        self.listener = listener
        self.path = listener.path
        # sha256(token) -> the token, and the address of the tcp peer it was offered to
        # and, on a TLS port, that peer's TLS properties (its verified identity)
        self.tokens: dict[bytes, tuple[bytes, str | None, TlsProperties | None]] = {}

    @classmethod
    async def start(cls, factory: Callable[[], Link]) -> _UpgradeSocket:
        base = runtime_dir()
        sweep_stale(base)
        directory = tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=base)   # mode 0700
        os.chmod(directory, 0o700)
        try:
            lock_fd = _hold_lock(directory)
            try:
                sock = unix.bind(os.path.join(directory, _SOCKET_NAME))
                try:
                    listener = await unix.listen(sock, factory)
                except BaseException:
                    sock.close()
                    raise
            except BaseException:
                os.close(lock_fd)
                raise
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(directory, lock_fd, listener)

    def offer(self, into: handshake_pb2.UpgradeOffer, peer_address: str | None,
              tls: TlsProperties | None = None) -> bytes:
        """Fill ``into`` with our path and a fresh token for the tcp peer at
        ``peer_address`` (with ``tls``, its TLS properties, when it came over TLS: the
        token then travels inside TLS, and whoever claims it is that peer); returns
        the token's id."""
        token = os.urandom(32)
        token_id = hashlib.sha256(token).digest()
        self.tokens[token_id] = (token, peer_address, tls)
        into.unix_path = self.path
        into.token = token
        return token_id

    def forget(self, token_id: bytes) -> None:
        self.tokens.pop(token_id, None)

    def answer(self, claim: handshake_pb2.UpgradeClaim
               ) -> tuple[bytes, str | None, TlsProperties | None] | None:
        """The proof for a client's claim, once per token, the tcp address the token
        was offered to (the peer's address as calls report it) and that connection's
        TLS properties (None if it was plaintext); None for a bad claim."""
        offered = self.tokens.pop(claim.token_id, None)
        if offered is None or len(claim.nonce) < 16:
            return None
        token, peer_address, tls = offered
        return _answer(token, claim.nonce), peer_address, tls

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.lock_fd is not None:     # last: the directory is ours until it is gone
            os.close(self.lock_fd)
            self.lock_fd = None


class _PrivateDir:
    """A private directory like the upgrade socket's (0700, flock()ed lock file, so
    a killed server's is swept), for the gRPC side's socket when there is no
    upgrade socket to share one with."""

    def __init__(self, directory: str, lock_fd: int) -> None:
        self.directory = directory
        self.lock_fd: int | None = lock_fd

    @classmethod
    def make(cls) -> _PrivateDir:
        base = runtime_dir()
        sweep_stale(base)
        directory = tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=base)   # mode 0700
        try:
            return cls(directory, _hold_lock(directory))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _hold_lock(directory: str) -> int:
    """Create ``directory``/lock and hold an exclusive flock on it; returns its fd
    (O_CLOEXEC: a child that execs does not keep our directory alive). The file is
    locked under another name and renamed, so a sweep never finds ``lock`` unlocked
    while its server lives."""
    new = os.path.join(directory, _NEW_LOCK_NAME)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(new, os.path.join(directory, _LOCK_NAME))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_is_free(path: str) -> bool | None:
    """Whether the lock file at ``path`` can be taken now (its server is gone): True,
    False (held: a live server), or None (no such regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True          # closing the fd below releases it again
    finally:
        os.close(fd)


def runtime_dir() -> str:
    """Where upgrade sockets live: $LANERPC_RUNTIME_DIR, $XDG_RUNTIME_DIR, or the temp dir."""
    for candidate in (os.environ.get("LANERPC_RUNTIME_DIR"), os.environ.get("XDG_RUNTIME_DIR")):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return tempfile.gettempdir()


def private_directories(base: str) -> Iterator[tuple[str, os.stat_result]]:
    """The upgrade directories in ``base`` that are ours (our uid, a real directory,
    not a link), with their stat; live or not."""
    uid = os.geteuid()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(_DIR_PREFIX):
            continue
        directory = os.path.join(base, name)
        try:
            st = os.lstat(directory)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            yield directory, st


def sweep_stale(base: str) -> int:
    """Remove upgrade directories of ours whose server is gone (killed with
    SIGKILL, say). A directory with a lock file is stale as soon as its lock can be
    taken, whatever its age, and never while it is held. One without (made by an
    older version, or a server killed while starting) is stale when it is older
    than a few seconds and its socket file exists with nothing accepting on it (or,
    for a server killed while starting, its unlocked ``lock.new`` is all there is);
    anything else (not ours, no socket yet) is left alone."""
    removed = 0
    for directory, st in private_directories(base):
        free = _lock_is_free(os.path.join(directory, _LOCK_NAME))
        if free is not None:
            if free:
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
            continue
        if time.time() - st.st_mtime < _YOUNG:
            continue
        try:
            contents = set(os.listdir(directory))
        except OSError:
            continue
        if contents == {_NEW_LOCK_NAME}:
            if _lock_is_free(os.path.join(directory, _NEW_LOCK_NAME)):
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
            continue
        path = os.path.join(directory, _SOCKET_NAME)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode) or contents != {_SOCKET_NAME}:
                continue
        except OSError:
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect(path)
            alive = True
        except (ConnectionRefusedError, FileNotFoundError):
            alive = False
        except OSError as exc:
            alive = exc.errno in (errno.EAGAIN, errno.EINPROGRESS)
        finally:
            probe.close()
        if not alive:
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
    return removed
