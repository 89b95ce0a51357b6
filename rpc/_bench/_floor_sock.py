"""The socket floors of rpc/_bench/_run.py: a bare event-loop echo over TCP and a Unix socket.

No RPC, no protobuf: messages are a 4-byte big-endian length and the bytes, and the
server sends back every complete message it has. This is as fast as a socket lane can
be from Python on this event loop, so a lanerpc row divided by its floor says how much
the RPC layer costs on top of moving the bytes.

Choices that keep the floor honest (fast, but doing the same work as an RPC):

* the server echoes only *complete* messages (it parses the lengths), and answers all
  the complete messages of one read with one write, as an RPC server batching its
  replies may;
* the client parses every reply's length and matches replies to callers in order (one
  connection, many concurrent callers: the same multiplexing an RPC channel does);
* the pipelined writer writes one message per ``write`` and yields to the loop after
  each one, as ``await call.write(...)`` does; when the transport's buffer is over its
  high-water mark it waits for ``resume_writing`` (flow control);
* the server stops reading while its own writes are paused, so a slow reader holds the
  writer back across the socket instead of letting buffers grow;
* TCP_NODELAY on every TCP socket (asyncio and uvloop set it already; we make sure).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
from typing import Any, cast

from rpc._bench._core import Ready, ServeResult, Subject, register

LENGTH = struct.Struct(">I")
DRAIN_TIMEOUT = 30.0


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _complete(buf: bytearray) -> tuple[int, list[int]]:
    """Where the last complete message in ``buf`` ends, and the lengths of all of them."""
    pos, lengths, size = 0, [], len(buf)
    while size - pos >= LENGTH.size:
        (n,) = LENGTH.unpack_from(buf, pos)
        if size - pos - LENGTH.size < n:
            break
        lengths.append(n)
        pos += LENGTH.size + n
    return pos, lengths


# ---------------------------------------------------------------------------- server


class _EchoServer(asyncio.Protocol):
    def __init__(self, live: set[asyncio.Transport]) -> None:
        self._live = live
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        _nodelay(transport)
        self._live.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._live.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buf += data
        end, _ = _complete(self._buf)
        if end == 0:
            return
        if end == len(self._buf):
            # The usual case: hand the whole buffer over and start a new one (no copy).
            self._transport.write(self._buf)
            self._buf = bytearray()
        else:
            self._transport.write(self._buf[:end])  # a copy: the rest stays in self._buf
            del self._buf[:end]

    def pause_writing(self) -> None:
        assert self._transport is not None
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._transport.resume_reading()


async def _stopper(server: asyncio.AbstractServer, live: set[asyncio.Transport]) -> None:
    server.close()
    for transport in list(live):
        transport.abort()
    await server.wait_closed()


async def serve(args: dict[str, Any]) -> ServeResult:
    loop = asyncio.get_running_loop()
    live: set[asyncio.Transport] = set()
    if args["transport"] == "unix":
        path = args["unix_path"]
        server = await loop.create_unix_server(lambda: _EchoServer(live), path)
        ready: Ready = {"unix_path": path}
    else:
        host = args.get("host", "127.0.0.1")   # a netns row's veth address
        server = await loop.create_server(lambda: _EchoServer(live), host, 0)
        ready = {"host": host, "port": server.sockets[0].getsockname()[1]}
    return ready, lambda: _stopper(server, live)


# ---------------------------------------------------------------------------- client


class _EchoClient(asyncio.Protocol):
    """One connection; replies go to waiting callers in order, or count as stream echoes."""

    def __init__(self, lane: str) -> None:
        self.lane = lane
        self._buf = bytearray()
        self._waiters: collections.deque[asyncio.Future[int]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost: Exception | None = None
        self.stream_received = 0   # replies nobody waited for: the pipelined stream's echoes
        self.changed = asyncio.Event()  # set whenever stream_received moves (for draining)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end, lengths = _complete(self._buf)
        if end == 0:
            return
        if end == len(self._buf):
            self._buf = bytearray()
        else:
            del self._buf[:end]
        for n in lengths:
            if self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(n)
            else:
                self.stream_received += 1
        self.changed.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("connection closed")
        self._writable.set()
        self.changed.set()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self._lost)

    # what the clients use

    def write(self, *parts: bytes) -> None:
        if self._lost is not None:
            raise self._lost
        assert self._transport is not None
        self._transport.writelines(parts)

    @property
    def paused(self) -> bool:
        return not self._writable.is_set()

    @property
    def lost(self) -> Exception | None:
        return self._lost

    async def writable(self) -> None:
        """Wait for flow control (returns at once if the transport is not paused)."""
        await self._writable.wait()

    def expect_reply(self) -> asyncio.Future[int]:
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _FloorStream:
    def __init__(self, conn: _EchoClient, payload: bytes) -> None:
        self._conn = conn
        self._frame = LENGTH.pack(len(payload)) + payload
        self._sent = 0
        self._start = conn.stream_received

    @property
    def received(self) -> int:
        return self._conn.stream_received - self._start

    async def send(self) -> None:
        self._conn.write(self._frame)
        self._sent += 1
        if self._conn.paused:
            await self._conn.writable()
        else:
            await asyncio.sleep(0)  # one loop turn per message, like an awaited call.write

    async def close(self) -> None:
        async def drain() -> None:
            while self.received < self._sent:
                self._conn.changed.clear()
                await self._conn.changed.wait()
                if self._conn.lost is not None:
                    raise self._conn.lost

        await asyncio.wait_for(drain(), DRAIN_TIMEOUT)


class FloorClient:
    def __init__(self, conn: _EchoClient) -> None:
        self._conn = conn

    @property
    def lane(self) -> str | None:
        return self._conn.lane

    async def echo(self, payload: bytes) -> int:
        reply = self._conn.expect_reply()
        self._conn.write(LENGTH.pack(len(payload)), payload)
        await self._conn.writable()
        return await reply

    async def open_stream(self, payload: bytes) -> _FloorStream:
        return _FloorStream(self._conn, payload)

    async def close(self) -> None:
        self._conn.close()


async def connect_tcp(ready: Ready) -> FloorClient:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _EchoClient("tcp"), ready["host"], ready["port"])
    return FloorClient(conn)


async def connect_unix(ready: Ready) -> FloorClient:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_unix_connection(lambda: _EchoClient("unix"), ready["unix_path"])
    return FloorClient(conn)


register(Subject(
    name="floor-tcp", label="floor: bare event-loop echo, TCP", family="floor", lane="tcp",
    server="rpc._bench._floor_sock:serve", server_args={"transport": "tcp"}, connect=connect_tcp,
))
register(Subject(
    name="floor-unix", label="floor: bare event-loop echo, Unix socket", family="floor", lane="unix",
    server="rpc._bench._floor_sock:serve", server_args={"transport": "unix"}, connect=connect_unix,
))
register(Subject(
    name="floor-veth-tcp", label="floor: bare event-loop echo, TCP over veth to another netns",
    family="floor", lane="tcp", server="rpc._bench._floor_sock:serve", server_args={"transport": "tcp"},
    connect=connect_tcp, netns=True, reference="grpc-veth-tcp",
))
