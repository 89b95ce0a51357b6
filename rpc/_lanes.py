"""Lane choice and the same-host upgrade: the one place that decides which lane
carries a channel. Decides first (from the target and the options), then does I/O.

The upgrade (docs/wire-protocol.md, "Same-host upgrade"):

1. A server that listens on TCP also listens on a private Unix socket
   (``<runtime dir>/lanerpc-<random>/up.sock``, directory 0700, socket 0600).
   Its HELLO on every TCP connection carries an :class:`UpgradeOffer`: that path
   and a fresh 32-byte token.
2. The client dials the path and sends an ``UpgradeClaim``: SHA-256 of the token
   (naming it without revealing it) and a nonce of its own.
3. The server answers HMAC-SHA256(token, nonce). Only the process that made the
   token can; a decoy at the same path (another mount namespace, another
   server) can't. The client checks the answer in constant time.
4. Any failing or slow step leaves the channel on TCP, logged at DEBUG.

The upgrade runs when a channel connects, before any call uses the connection,
so no call is ever in flight across the switch.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import logging
import os
import shutil
import socket
import stat
import tempfile
import time

from rpc._link import LaneAdapter
from rpc.transports import shm
from rpc._proto import handshake_pb2
from rpc._target import Endpoint
from rpc.transports import tcp, unix

log = logging.getLogger("lanerpc")

_DIR_PREFIX = "lanerpc-up-"   # specific: the sweep must never touch other programs' dirs
_SOCKET_NAME = "up.sock"


def _answer(token: bytes, nonce: bytes) -> bytes:
    return hmac.new(token, nonce, hashlib.sha256).digest()


# ------------------------------------------------------------------ client side

async def _dial(channel, endpoint: Endpoint, hello_extra=None, lanes=None):
    options = channel._options
    if endpoint.lane == "unix":
        # Tell the server which lanes we take, so it offers shm only when we do.
        hello_extra = hello_extra if hello_extra is not None else handshake_pb2.Hello()
        hello_extra.lanes = ",".join(lanes if lanes is not None else options.lanes)
    factory = lambda: channel._new_link(hello_extra)  # noqa: E731
    if endpoint.lane == "unix":
        _, link = await unix.connect(endpoint.path, factory)
    else:
        _, link = await tcp.connect(endpoint.host, endpoint.port, factory)
    try:
        await asyncio.wait_for(asyncio.shield(link.ready), options.handshake_timeout)
    except BaseException:
        link.abort("handshake failed")
        raise
    return link


async def connect(channel, endpoint: Endpoint):
    """A ready link to ``endpoint``, on the fastest lane both sides allow."""
    lanes = channel._options.lanes
    if endpoint.lane == "unix" and "unix" not in lanes:
        raise ConnectionError(f"{endpoint} is a unix: target but lanerpc.lanes excludes unix")
    link = await _dial(channel, endpoint)
    offer = link.hello.upgrade if link.hello is not None and link.hello.HasField("upgrade") else None
    if endpoint.lane == "tcp" and offer is not None and "unix" in lanes:
        upgraded = await _try_upgrade(channel, offer)
        if upgraded is not None:
            link.close("moved to the unix lane")
            link, endpoint = upgraded, Endpoint("unix", path=offer.unix_path)
    if link.lane == "unix" and link.hello is not None and link.hello.HasField("shm"):
        if "shm" in lanes:
            link = await _try_shm(channel, link, endpoint)
        else:
            link.conn.send_lane("unix")     # not ours to take: let the server drop it
            link.flush()
    return link


async def _try_shm(channel, link, endpoint: Endpoint):
    """Move a unix link to the shm lane the server offered: map the segment, check
    the server's nonce in it, ask with a LANE frame, switch on the server's grant.
    Declining is silent (DEBUG) and leaves the link on unix."""
    offered = link.hello.shm
    offer = shm.ShmOffer(segment=offered.segment, semaphores=tuple(offered.semaphores),
                         ring_capacity=offered.ring_capacity, nonce=offered.nonce)
    try:
        offer.check()
        segment = shm.ShmSegment.open(offer)
    except Exception as exc:    # ShmUnavailable, or a peer's nonsense: stay on unix
        log.debug("lanerpc: shm offer not taken (%s); staying on unix", exc)
        try:
            shm.ShmSegment.discard(offer)
        except Exception:
            pass
        link.conn.send_lane("unix")
        link.flush()
        return link
    loop = asyncio.get_running_loop()
    link.lane_grant = loop.create_future()
    link.conn.send_lane("shm")
    link.flush()
    try:
        granted = await asyncio.wait_for(asyncio.shield(link.lane_grant),
                                         channel._options.upgrade_timeout)
    except (asyncio.TimeoutError, ConnectionError) as exc:
        # The server may or may not have switched: this connection can't be
        # trusted either way. Start again on unix, without shm.
        segment.close()
        link.abort("shm switch did not complete")
        log.debug("lanerpc: shm switch did not complete (%s); dialing unix again",
                  exc or type(exc).__name__)
        return await _dial(channel, endpoint, lanes=[lane for lane in channel._options.lanes
                                                    if lane != "shm"])
    if granted != "shm":
        segment.close()
        return link
    try:
        transport = shm.ShmTransport(loop, segment, "client", LaneAdapter(link),
                                     control_transport=link.transport)
    except Exception:
        segment.close()
        link.abort("shm transport failed")
        raise
    link.switch_to(transport)
    return link


# ------------------------------------------------------------------ shm, server side

def offer_shm(link, client_hello):
    """Make a segment for this unix connection and the offer naming it, when the
    client's and our lanes both list shm; None otherwise (no shm here: stay on unix)."""
    server = link.server
    if "shm" not in server._options.lanes or "shm" not in client_hello.lanes.split(","):
        return None
    try:
        segment, offer = shm.ShmSegment.create()
    except Exception as exc:    # ShmUnavailable: full /dev/shm, no posix_ipc, other CPU...
        log.debug("lanerpc: no shm lane for this connection (%s)", exc)
        return None
    link.shm_segment = segment
    # A client that never answers must not keep the names in /dev/shm.
    link.loop.call_later(server._options.handshake_timeout, _expire_offer, link, segment)
    return handshake_pb2.ShmOffer(segment=offer.segment, semaphores=list(offer.semaphores),
                                  ring_capacity=offer.ring_capacity, nonce=offer.nonce)


def _expire_offer(link, segment) -> None:
    if link.shm_segment is segment:
        link.shm_segment = None
        segment.close()


def server_lane_change(link, lane: str) -> None:
    """The client asked for a lane: grant shm if its segment checks out."""
    segment, link.shm_segment = link.shm_segment, None
    if lane != "shm":
        if segment is not None:
            segment.close()          # declined
        return
    if segment is None:
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
    control = link.transport
    try:
        transport = shm.ShmTransport(link.loop, segment, "server", LaneAdapter(link),
                                     control_transport=control)
    except Exception as exc:
        log.warning("lanerpc: could not start the shm transport: %s", exc)
        segment.close()
        link.abort(f"shm transport failed: {exc}")
        return
    link.switch_to(transport)


async def _try_upgrade(channel, offer: handshake_pb2.UpgradeOffer):
    """The unix link the offer leads to, proven; None if it can't be had."""
    path = offer.unix_path
    token = offer.token
    if not path or len(token) < 16 or len(path) > 107:
        log.debug("lanerpc: upgrade offer malformed; staying on tcp")
        return None
    nonce = os.urandom(32)
    extra = handshake_pb2.Hello()
    extra.claim.token_id = hashlib.sha256(token).digest()
    extra.claim.nonce = nonce
    try:
        link = await asyncio.wait_for(
            _dial(channel, Endpoint("unix", path=path), extra), channel._options.upgrade_timeout)
    except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
        log.debug("lanerpc: upgrade to unix:%s failed (%s); staying on tcp",
                  path, exc or type(exc).__name__)
        return None
    answer = link.hello.claim_answer if link.hello is not None else b""
    if not hmac.compare_digest(answer, _answer(token, nonce)):
        log.debug("lanerpc: unix:%s did not prove it is the same server; staying on tcp", path)
        link.abort("upgrade proof failed")
        return None
    return link


# ------------------------------------------------------------------ server side

class _PathListener:
    """An asyncio server whose socket file is removed when it closes."""

    def __init__(self, server: asyncio.AbstractServer, path: str) -> None:
        self._server = server
        self.path = path
        st = os.lstat(path)
        self._inode = (st.st_dev, st.st_ino)

    def close(self) -> None:
        self._server.close()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:   # still ours, not a successor's
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


class UpgradeListener:
    """The server's private upgrade socket and the tokens it has offered."""

    def __init__(self, directory: str, listener: _PathListener) -> None:
        self.directory = directory
        self.listener = listener
        self.path = listener.path
        self.tokens: dict[bytes, bytes] = {}   # sha256(token) -> token

    def offer(self) -> handshake_pb2.Hello:
        token = os.urandom(32)
        self.tokens[hashlib.sha256(token).digest()] = token
        extra = handshake_pb2.Hello()
        extra.upgrade.unix_path = self.path
        extra.upgrade.token = token
        return extra

    def forget(self, hello_extra: handshake_pb2.Hello | None) -> None:
        if hello_extra is not None and hello_extra.HasField("upgrade"):
            self.tokens.pop(hashlib.sha256(hello_extra.upgrade.token).digest(), None)

    def answer(self, client_hello: handshake_pb2.Hello) -> handshake_pb2.Hello | None:
        if not client_hello.HasField("claim"):
            return None
        token = self.tokens.pop(client_hello.claim.token_id, None)   # one use only
        if token is None or len(client_hello.claim.nonce) < 16:
            return None
        reply = handshake_pb2.Hello()
        reply.claim_answer = _answer(token, client_hello.claim.nonce)
        return reply

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def runtime_dir() -> str:
    """Where upgrade sockets live: $LANERPC_RUNTIME_DIR, $XDG_RUNTIME_DIR, or the temp dir."""
    for candidate in (os.environ.get("LANERPC_RUNTIME_DIR"), os.environ.get("XDG_RUNTIME_DIR")):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return tempfile.gettempdir()


def sweep_stale(base: str) -> int:
    """Remove upgrade directories of ours whose server is gone (killed with
    SIGKILL, say). A directory is stale when its socket file exists and nothing
    accepts on it; anything else (no socket yet, not ours) is left alone."""
    removed = 0
    uid = os.geteuid()
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(_DIR_PREFIX):
            continue
        directory = os.path.join(base, name)
        try:
            st = os.lstat(directory)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or time.time() - st.st_mtime < 5:
            continue
        path = os.path.join(directory, _SOCKET_NAME)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode) or set(os.listdir(directory)) != {_SOCKET_NAME}:
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


async def _start_upgrade_listener(server) -> UpgradeListener:
    base = runtime_dir()
    sweep_stale(base)
    directory = tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=base)   # mode 0700
    os.chmod(directory, 0o700)
    path = os.path.join(directory, _SOCKET_NAME)
    try:
        listener = await unix.listen(path, lambda: server._new_link(upgrade_side=True))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return UpgradeListener(directory, listener)


async def start_listening(server, sockets) -> None:
    """Listen on the sockets bound by add_insecure_port, and on the upgrade
    socket when a TCP port may be upgraded."""
    loop = asyncio.get_running_loop()
    lanes = server._options.lanes
    has_tcp = any(kind == "tcp" for kind, _ in sockets)
    if has_tcp and "unix" in lanes:
        try:
            server._upgrade = await _start_upgrade_listener(server)
        except OSError as exc:
            log.debug("lanerpc: no upgrade socket (%s); tcp clients stay on tcp", exc)
    for kind, sock in sockets:
        sock.listen(1024)
        if kind == "unix":
            aserver = await loop.create_unix_server(server._new_link, sock=sock)
            server._listeners.append(_PathListener(aserver, sock.getsockname()))
        else:
            aserver = await loop.create_server(
                lambda: _nodelay_link(server._new_link(offer=True)), sock=sock)
            server._listeners.append(aserver)


def _nodelay_link(link):
    made = link.connection_made

    def connection_made(transport):
        tcp._nodelay(transport)
        made(transport)
    link.connection_made = connection_made
    return link


def admitted_uid(server, uid: int | None) -> bool:
    """The unix and shm lanes admit our own uid, and those the option lists."""
    if uid is None:
        return False
    return uid == os.geteuid() or uid in server._options.allowed_uids


def stop_upgrade(server) -> None:
    if server._upgrade is not None:
        server._upgrade.close()
        server._upgrade = None
