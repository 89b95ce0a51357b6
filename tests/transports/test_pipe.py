"""The pipe transport alone (transports/pipe.py): two real pipes in one process, a
recording protocol on each end, and the seam's contract (rpc/transports/_seam.py)."""

from __future__ import annotations

import asyncio
import os

import pytest

from rpc.transports import pipe
from rpc.transports import PeerInfo
from tests._support import within, wait_until


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert data and self.events[0] == "made"
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


async def _pair() -> tuple[pipe.PipeTransport, Recorder, pipe.PipeTransport, Recorder]:
    a_to_b_r, a_to_b_w = os.pipe()
    b_to_a_r, b_to_a_w = os.pipe()
    ta, pa = await pipe.connect(b_to_a_r, a_to_b_w, Recorder, peer_pid=1234)
    tb, pb = await pipe.connect(a_to_b_r, b_to_a_w, Recorder)
    assert isinstance(pa, Recorder) and isinstance(pb, Recorder)
    return ta, pa, tb, pb


async def test_bytes_go_both_ways_in_order_and_the_peer_is_described() -> None:
    ta, pa, tb, pb = await _pair()
    try:
        ta.write(b"hello ")
        ta.writelines([b"pipe ", memoryview(b"lane")])
        tb.write(b"back")
        await wait_until(lambda: bytes(pb.data) == b"hello pipe lane" and pa.data == b"back")
        info = ta.get_extra_info("lanerpc_peer")
        assert info == PeerInfo("pipe", "pipe:1234", 1234, os.getuid(), os.getgid())
        assert tb.get_extra_info("lanerpc_peer").address == "pipe:?"
        assert not ta.can_write_eof() and not ta.is_closing()
    finally:
        ta.abort()
        tb.abort()


async def test_close_flushes_then_both_ends_lose_the_connection_once() -> None:
    ta, pa, tb, pb = await _pair()
    big = os.urandom(1 << 20)         # more than a pipe holds: queued in the transport
    ta.write(big)
    ta.close()
    assert ta.is_closing()
    ta.write(b"ignored after close")
    assert await within(pa.lost) is None
    await wait_until(lambda: len(pb.data) == len(big))
    assert bytes(pb.data) == big
    assert await within(pb.lost) is None     # EOF on its read pipe ended it
    assert pb.events[-2:] == ["eof", "lost"]
    assert pa.events.count("lost") == 1 and pb.events.count("lost") == 1


async def test_abort_drops_what_is_queued() -> None:
    ta, pa, tb, pb = await _pair()
    tb.pause_reading()
    ta.write(os.urandom(4 << 20))
    ta.abort()
    await within(pa.lost)
    await within(pb.lost)
    assert len(pb.data) < 4 << 20
    assert pa.events.count("lost") == 1


async def test_a_peer_that_stops_reading_pauses_the_writer() -> None:
    ta, pa, tb, pb = await _pair()
    try:
        tb.pause_reading()
        ta.set_write_buffer_limits(high=64 * 1024)
        ta.write(os.urandom(1 << 20))
        assert "pause" in pa.events
        assert ta.get_write_buffer_size() > 0
        tb.resume_reading()
        await wait_until(lambda: "resume" in pa.events)
        await wait_until(lambda: len(pb.data) == 1 << 20)
    finally:
        ta.abort()
        tb.abort()


async def test_bytes_read_before_the_protocol_is_made_are_kept() -> None:
    """The peer may write before our write pipe is connected: nothing is lost, and
    the protocol hears of the transport first."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"early bytes")
    os.close(in_w)                            # and EOF right after them
    try:
        transport, protocol = await pipe.connect(in_r, out_w, Recorder)
        assert isinstance(protocol, Recorder)
        await within(protocol.lost)
        assert protocol.data == b"early bytes"
        assert protocol.events == ["made", "eof", "lost"]
        assert transport.is_closing()
    finally:
        os.close(out_r)


async def test_a_broken_pipe_ends_the_connection() -> None:
    """The peer's read end closed (it died): our write fails, the connection is lost."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    transport, protocol = await pipe.connect(in_r, out_w, Recorder)
    assert isinstance(protocol, Recorder)
    os.close(out_r)
    transport.write(b"into a closed pipe")
    exc = await within(protocol.lost)
    assert isinstance(exc, (BrokenPipeError, ConnectionResetError)) or exc is None
    assert transport.is_closing()
    os.close(in_w)


async def test_connect_takes_ownership_of_the_fds() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    transport, protocol = await pipe.connect(in_r, out_w, Recorder)
    assert isinstance(protocol, Recorder)
    transport.close()
    await within(protocol.lost)
    for fd in (in_r, out_w):
        with pytest.raises(OSError):
            os.fstat(fd)
    os.close(in_w)
    os.close(out_r)
