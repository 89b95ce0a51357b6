"""The pipe lane: one connection over a pair of pipes, a spawned child's stdin and stdout.

A pipe carries bytes one way, so a connection is two of them: the event loop's read-pipe
transport for what comes in and its write-pipe transport for what goes out, joined
here into one transport with the lanes' seam (:mod:`rpc.transports._seam`). There is
nothing to listen on and nothing to dial: the parent made the pipes when it spawned the
child, and each side wraps its two ends with :func:`connect`.

The other end going away shows on both pipes: its write end closes (our reads see EOF)
and its read end closes (our writes fail with EPIPE). Either ends the connection, once;
there is no half-closed state (``can_write_eof()`` is False), as on the shm lane.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, cast

from ._seam import PeerInfo

# The link is a BufferedProtocol that also takes ``data_received`` (as every lane's
# link does); a pipe hands it bytes that way.
ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class PipeTransport(asyncio.Transport):
    """A duplex transport made of a read pipe and a write pipe (both the event loop's
    own transports). ``close()`` flushes what is queued, then closes the write pipe and
    only then the read pipe (input meanwhile is dropped); ``abort()`` drops what is
    queued and closes both; either way ``connection_lost`` reaches the protocol once,
    after both pipes are closed."""

    def __init__(self, protocol: asyncio.Protocol, peer: PeerInfo) -> None:
        super().__init__()
        self._protocol = protocol
        self._reader: asyncio.ReadTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._closing = False
        self._open_pipes = 2
        self._exc: Exception | None = None
        self._lost_called = False
        self._early: list[bytes] | None = []   # read before the protocol was told of us
        self._early_eof = False
        self._writer_lost = False
        self._extra: dict[str, Any] = {"lanerpc_peer": peer}

    # -- wiring (connect's): the two pipe transports' protocols call these

    def _reader_made(self, transport: asyncio.BaseTransport) -> None:
        self._reader = transport  # type: ignore[assignment]  # the loop's read pipe

    def _writer_made(self, transport: asyncio.BaseTransport) -> None:
        self._writer = transport  # type: ignore[assignment]  # the loop's write pipe

    def _data(self, data: bytes) -> None:
        if self._early is not None:
            self._early.append(data)
        elif not self._closing:
            self._protocol.data_received(data)

    def _start(self) -> None:
        """Tell the protocol of us, then hand it what was read meanwhile."""
        self._protocol.connection_made(self)
        early, self._early = self._early or [], None
        for data in early:
            self._data(data)
        if self._early_eof:
            self._eof()
        if self._open_pipes <= 0 and not self._lost_called:
            self._lost_called = True
            self._protocol.connection_lost(self._exc)

    def _eof(self) -> None:
        # The peer closed its end (exited, or hung up): no half-close on this lane.
        if self._early is not None:
            self._early_eof = True
        elif not self._closing:
            self._protocol.eof_received()
            self.close()

    def _pipe_lost(self, exc: Exception | None, writer: bool) -> None:
        if writer:
            self._writer_lost = True
        if exc is not None and self._exc is None:
            self._exc = exc
        self._open_pipes -= 1
        if not self._closing:
            # One pipe broke (EPIPE on a write, a read error): the other goes too.
            self._closing = True
            if self._reader is not None and not self._reader.is_closing():
                self._reader.close()       # (a read pipe holds nothing to drop)
            self._abort_writer()
        elif writer and self._reader is not None and not self._reader.is_closing():
            # close(): what we wrote is out; now the read side. (Closed earlier, the
            # peer's write pipe would see it at once and drop what we still send.)
            self._reader.close()
        if self._open_pipes <= 0 and not self._lost_called and self._early is None:
            self._lost_called = True
            self._protocol.connection_lost(self._exc)

    def _abort_writer(self) -> None:
        # (The loop's write pipe must not be aborted once its connection_lost ran.)
        if self._writer is not None and not self._writer_lost:
            self._writer.abort()

    def _pause(self) -> None:
        self._protocol.pause_writing()

    def _resume(self) -> None:
        self._protocol.resume_writing()

    # -- the seam

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._writer is None:
            return
        self._writer.write(data)

    def writelines(self, list_of_data: Any) -> None:
        if self._closing or self._writer is None:
            return
        self._writer.writelines(list_of_data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("the pipe lane has no half-close")

    def get_write_buffer_size(self) -> int:
        return self._writer.get_write_buffer_size() if self._writer is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._writer is not None:
            self._writer.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        if self._writer is None:
            return (0, 0)
        return self._writer.get_write_buffer_limits()

    def pause_reading(self) -> None:
        if self._reader is not None:
            self._reader.pause_reading()

    def resume_reading(self) -> None:
        if self._reader is not None:
            self._reader.resume_reading()

    def is_reading(self) -> bool:
        return self._reader is not None and self._reader.is_reading()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._writer is not None and not self._writer_lost:
            self._writer.close()      # after what is queued is written; then the reader
        elif self._reader is not None:
            self._reader.close()

    def abort(self) -> None:
        self._closing = True
        if self._reader is not None and not self._reader.is_closing():
            self._reader.close()
        self._abort_writer()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        # (A stream protocol: the only kind the lanes hand a transport, shm's control
        # channel watch included.)
        self._protocol = cast(asyncio.Protocol, protocol)

    def __repr__(self) -> str:
        peer = self._extra["lanerpc_peer"]
        return f"<PipeTransport {peer.address}{' closing' if self._closing else ''}>"


class _ReadSide(asyncio.Protocol):
    def __init__(self, owner: PipeTransport) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner._reader_made(transport)

    def data_received(self, data: bytes) -> None:
        self._owner._data(data)

    def eof_received(self) -> bool:
        self._owner._eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._pipe_lost(exc, writer=False)


class _WriteSide(asyncio.Protocol):
    def __init__(self, owner: PipeTransport) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner._writer_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._pipe_lost(exc, writer=True)

    def pause_writing(self) -> None:
        self._owner._pause()

    def resume_writing(self) -> None:
        self._owner._resume()


async def connect(read_fd: int, write_fd: int, factory: ProtocolFactory, *,
                  peer_pid: int | None = None) -> tuple[PipeTransport, asyncio.BaseProtocol]:
    """One connection over the pipe ``read_fd`` (bytes in) and the pipe ``write_fd``
    (bytes out); takes ownership of both fds (closed with the connection). The peer is
    ``peer_pid`` (the spawned child, or the parent that spawned us): it runs as our
    uid, since one of us started the other."""
    loop = asyncio.get_running_loop()
    peer = PeerInfo("pipe", f"pipe:{peer_pid if peer_pid is not None else '?'}",
                    peer_pid, os.getuid(), os.getgid())
    protocol = factory()
    if not hasattr(protocol, "data_received"):
        raise TypeError(f"{type(protocol).__name__} can't take a pipe's bytes (no data_received)")
    transport = PipeTransport(cast(asyncio.Protocol, protocol), peer)
    reader = os.fdopen(read_fd, "rb", buffering=0)
    try:
        writer = os.fdopen(write_fd, "wb", buffering=0)
    except BaseException:
        reader.close()
        raise
    try:
        await loop.connect_read_pipe(lambda: _ReadSide(transport), reader)
    except BaseException:
        reader.close()
        writer.close()
        raise
    try:
        await loop.connect_write_pipe(lambda: _WriteSide(transport), writer)
    except BaseException:
        transport.abort()
        writer.close()
        raise
    transport._start()
    return transport, protocol
