"""One port for every client: a lanerpc TCP port that also serves plain gRPC.

A connection accepted on a lanerpc TCP port starts with a :class:`Sniffer`, which
reads the client's first bytes before anything is written (a lanerpc server's own
magic would be garbage to an HTTP/2 client):

- the first byte that differs from HTTP/2's connection preface
  (``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``) makes it a lanerpc connection: a
  lanerpc client's magic differs at its first byte, so lanerpc pays nothing more
  than one extra call. The lanerpc link then takes the transport with the bytes
  read so far, and refuses anything that is not its magic as it always has;
- the whole preface makes it a plain gRPC connection: it is spliced to the
  server's gRPC side (an inner grpcio server listening on a Unix socket in the
  server's private directory): bytes are copied both ways by two asyncio
  protocols, and each side stops reading while the other side's transport is over
  its high-water mark, so a peer that stops reading holds at most that much of
  ours (plus the kernel's socket buffers);
- a peer that stays a prefix of the preface past the handshake timeout (3 bytes,
  then nothing) is closed with a logged reason.

grpcio can't adopt an accepted socket (its Python API has no way to hand it a file
descriptor), so the bytes are copied; a copy through the event loop is a few tens
of microseconds per message on top of grpc.aio's own cost.

This module knows nothing of servers or links: the lanes layer hands a
:class:`Sniffer` a factory for the lanerpc link and a :class:`GrpcSide` that admits
the connection and says where the gRPC side listens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Protocol, cast

from rpc._link import Link
from rpc.transports import peer_info

log = logging.getLogger("lanerpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Each side's transport pauses the other's reading above this many buffered bytes:
# the bound on what one spliced connection holds in our process, each way.
HIGH_WATER = 256 * 1024


# grpc's spelling of a splice's own socket name -> its client's address (grpc's
# spelling too): what a call on the gRPC side reports as its peer (see rpc._grpc).
PEERS: dict[str, str] = {}


def real_peer(peer: str) -> str | None:
    """The client's address when ``peer`` (a gRPC-side call's) is one of our splices."""
    return PEERS.get(peer)


class GrpcSide(Protocol):
    """What a server lends its TCP listeners to hand gRPC clients over."""

    def admit(self, peer: str) -> bool:
        """Count a new spliced connection against the server's connection limit;
        False (and logged) when it is over."""

    def release(self) -> None:
        """A connection :meth:`admit` counted has ended."""

    async def serve(self) -> str:
        """Make sure the gRPC side listens (started on demand); returns its Unix
        socket's path. Raises when the server is stopping."""


def classify(head: bytes) -> str | None:
    """``"grpc"`` for the whole HTTP/2 preface, ``"lanerpc"`` as soon as a byte
    differs from it (a lanerpc magic, or anything the lanerpc link will refuse),
    None while ``head`` could still become the preface."""
    n = min(len(head), len(PREFACE))
    if head[:n] != PREFACE[:n]:
        return "lanerpc"
    return "grpc" if n == len(PREFACE) else None


class Sniffer(asyncio.Protocol):
    """A TCP connection's first protocol: waits for bytes that tell lanerpc from
    gRPC, then hands the transport over (see the module's docstring)."""

    def __init__(self, make_link: Callable[[], Link], grpc_side: GrpcSide,
                 timeout: float, splices: set[Splice]) -> None:
        self._make_link = make_link
        self._grpc = grpc_side
        self._timeout = timeout
        self._splices = splices
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._timer: asyncio.TimerHandle | None = None
        self._decided = False
        self._lost = False
        self._peer = "?"
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self._transport = cast(asyncio.Transport, transport)
        self._peer = peer_info(transport).address or "?"
        self._timer = self._loop.call_later(self._timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._decided or self._transport is None:
            return
        log.warning("lanerpc: closing connection from %s: no lanerpc magic or HTTP/2 preface "
                    "within the handshake timeout (got %r)", self._peer, self._head[:24])
        self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._head += data
        if self._decided:
            return                    # the splice is being set up: kept for the gRPC side
        kind = classify(self._head)
        if kind is None:
            return
        self._decided = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        assert transport is not None
        if kind == "lanerpc":
            link = self._make_link()
            transport.set_protocol(link)
            link.connection_made(transport)
            head, self._head = self._head, b""
            if not transport.is_closing():
                link.data_received(head)
            return
        transport.pause_reading()
        # Held here: the loop keeps only a weak reference to a task.
        self._task = self._loop.create_task(self._splice(transport))

    async def _splice(self, transport: asyncio.Transport) -> None:
        if not self._grpc.admit(self._peer):
            transport.abort()
            return
        splice = Splice(self._splices, self._grpc.release, self._peer)
        try:
            path = await asyncio.wait_for(self._grpc.serve(), self._timeout)
            sock = splice.inner_socket()
            try:
                await asyncio.wait_for(self._loop.sock_connect(sock, path), self._timeout)
                await self._loop.create_unix_connection(lambda: splice.inner, sock=sock)
            except BaseException:
                sock.close()
                raise
        except Exception as exc:
            splice.abort()
            log.warning("lanerpc: closing gRPC connection from %s: the server's gRPC side "
                        "is not available (%s)", self._peer, str(exc) or type(exc).__name__)
            transport.abort()
            return
        if self._lost:
            splice.abort()
            return
        head, self._head = self._head, b""
        splice.attach_client(transport, head)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Pipe(asyncio.Protocol):
    """One side of a splice: what arrives is written to the other side; while
    the other side's transport is over its high-water mark, reading here stops."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Pipe | None = None
        self.splice: Splice | None = None
        self.eof = False
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # a stream transport
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)
        else:
            # The gRPC side speaks first (its SETTINGS) while the client's side is
            # still being attached: kept until then, a few bytes.
            self.pending.append(data)

    def flush_pending(self) -> None:
        other = self.other
        pending, self.pending = self.pending, []
        if pending and other is not None and other.transport is not None:
            other.transport.writelines(pending)

    def eof_received(self) -> bool:
        """Half-close: pass the EOF on and keep the other direction open."""
        self.eof = True
        other = self.other
        if other is None or other.transport is None:
            return False
        if other.eof or not other.transport.can_write_eof():
            other.transport.close()
            return False
        other.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.splice is not None:
            self.splice.side_lost(self, exc)


class Splice:
    """A client connection joined to the gRPC side. When either side goes, the
    other is closed (what it still has to write gets a moment to drain, then it is
    aborted: a peer that never reads can't keep it)."""

    LINGER = 2.0

    def __init__(self, registry: set[Splice], on_end: Callable[[], None], peer: str) -> None:
        self.outer = _Pipe()
        self.inner = _Pipe()
        self.outer.other, self.inner.other = self.inner, self.outer
        self.outer.splice = self.inner.splice = self
        self._registry = registry
        self._on_end: Callable[[], None] | None = on_end
        self.peer = peer
        self._name: str | None = None       # our end's name, as grpc reports it
        registry.add(self)

    def inner_socket(self) -> socket.socket:
        """The socket that dials the gRPC side, named (in Linux's abstract namespace:
        no file) so the gRPC side can tell which client a call came from: grpc
        reports it as the call's peer, and :func:`real_peer` maps it back."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        name = f"lanerpc-splice-{os.urandom(8).hex()}"
        try:
            sock.bind("\0" + name)
        except OSError:
            return sock                     # no abstract namespace: handlers see "unix:"
        self._name = "unix-abstract:" + name
        PEERS[self._name] = self.peer
        return sock

    def attach_client(self, client: asyncio.Transport, head: bytes) -> None:
        """Take over the client's transport from the sniffer, with the bytes it read."""
        client.set_protocol(self.outer)
        self.outer.connection_made(client)
        inner = self.inner.transport
        if inner is None or inner.is_closing():
            self.abort()              # the gRPC side hung up already
            return
        inner.write(head)
        self.inner.flush_pending()
        client.resume_reading()

    def buffered(self) -> tuple[int, int]:
        """Bytes waiting in our transports: toward the client, toward the gRPC side."""
        def size(pipe: _Pipe) -> int:
            return pipe.transport.get_write_buffer_size() if pipe.transport is not None else 0
        return size(self.outer), size(self.inner)

    def side_lost(self, pipe: _Pipe, exc: Exception | None) -> None:
        other = pipe.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            transport = other.transport
            if exc is None:
                transport.close()
                asyncio.get_running_loop().call_later(self.LINGER, transport.abort)
            else:
                transport.abort()
        if pipe is self.outer:
            self._end()

    def _end(self) -> None:
        self._registry.discard(self)
        if self._name is not None:
            PEERS.pop(self._name, None)
            self._name = None
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    def abort(self) -> None:
        """The server is gone: both sides at once."""
        for pipe in (self.outer, self.inner):
            if pipe.transport is not None:
                pipe.transport.abort()
        self._end()
