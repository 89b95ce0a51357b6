"""Messages many times the ring's size on the shm lane: one copy out of the ring into the
reader's own buffer, and the ring freed a step at a time, so the writer can refill it
while the reader copies the rest.

Both transports run in this process, on one loop (the two-process paths are in
test_shm.py and tests/e2e); every test runs on both variants of the lane."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("posix_ipc")

import rpc.transports.shm as shm_module  # noqa: E402
from rpc.transports._doorbell import EventfdDoorbell, SemaphoreDoorbell  # noqa: E402
from rpc.transports.shm import ShmSegment, ShmTransport  # noqa: E402
from tests._support import within  # noqa: E402
from tests.transports.test_shm import pass_segment  # noqa: E402

RING = 64 * 1024
PIECE = 256 * 1024          # how the connection hands a big message over (its _BIG_WRITE)


@pytest.fixture(params=("memfd", "posix"))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Sender(asyncio.Protocol):
    """Writes a message as the connection does: PIECE bytes at a time, stopping while
    the transport is paused."""

    def __init__(self, message: bytes, piece: int = PIECE) -> None:
        self.message = memoryview(message)
        self.piece = piece
        self.sent = 0
        self.paused = False
        self.transport: ShmTransport | None = None
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, ShmTransport)
        self.transport = transport

    def send(self) -> None:
        assert self.transport is not None
        while self.sent < len(self.message) and not self.paused:
            piece = self.message[self.sent:self.sent + self.piece]
            self.sent += len(piece)
            self.transport.write(piece)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


class Assembler(asyncio.BufferedProtocol):
    """Lends the rest of one buffer of the message's size, as the connection does for
    an announced big message; notes what the ring had consumed at each report."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self.filled = 0
        self.lends = 0
        self.consumed_at_report: list[tuple[int, int]] = []   # (ring bytes consumed, bytes reported)
        self.transport: ShmTransport | None = None
        self.on_report: Callable[[], None] | None = None
        loop = asyncio.get_running_loop()
        self.complete: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, ShmTransport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        self.lends += 1
        return memoryview(self.buffer)[self.filled:]

    def buffer_updated(self, nbytes: int) -> None:
        assert self.transport is not None
        self.filled += nbytes
        self.consumed_at_report.append(
            (self.transport._inbound.read_counter, self.filled))
        if self.filled == len(self.buffer) and not self.complete.done():
            self.complete.set_result(None)
        if self.on_report is not None:
            self.on_report()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def transfer(variant: str, message: bytes, piece: int = PIECE, *,
                   refill: bool = False) -> tuple[Sender, Assembler]:
    """``message`` from a Sender (writing ``piece`` bytes at a time) to an Assembler
    through a RING-byte ring. ``refill``: the writer's transport refills the ring each
    time the reader reports a step, as a writer in another process does meanwhile."""
    loop = asyncio.get_running_loop()
    segment, offer = ShmSegment.create(RING, variant)
    try:
        client_segment = pass_segment(segment, offer)
    except BaseException:
        segment.close()
        raise
    sender, assembler = Sender(message, piece), Assembler(len(message))
    server = ShmTransport(loop, segment, "server", assembler)
    client = ShmTransport(loop, client_segment, "client", sender)
    if refill:
        assembler.on_report = client._pump.flush
    try:
        await within(asyncio.sleep(0))
        sender.send()
        await within(assembler.complete, 10)
    finally:
        client.abort()
        server.abort()
        await within(asyncio.gather(sender.lost, assembler.lost))
    return sender, assembler


async def test_a_message_many_rings_long_arrives_whole_in_the_readers_own_buffer(
        variant: str) -> None:
    message = os.urandom(64 * RING + 123)
    _, assembler = await transfer(variant, message)
    assert bytes(assembler.buffer) == message
    # Straight from the ring into the lent buffer: a lend per step at most (a record
    # that wraps is one step too), no bytes object between.
    assert assembler.lends <= 2 * len(message) // (RING // 4)


async def test_the_reader_frees_each_step_before_it_reports_it(
        variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer may refill the ring while the reader copies the next step: what the
    reader reports is consumed (freed) already, and the ring is freed in steps, not a
    whole ring-full at a time."""
    step = RING // 4
    monkeypatch.setattr(shm_module, "_DRAIN_STEP", step)
    message = os.urandom(16 * RING)
    _, assembler = await transfer(variant, message, piece=step // 4)   # records of <= step / 4
    assert bytes(assembler.buffer) == message
    consumed = [ring for ring, _ in assembler.consumed_at_report]
    for ring_consumed, reported in assembler.consumed_at_report:
        assert ring_consumed >= reported   # (the ring's count includes record headers)
    steps = [b - a for a, b in zip([0, *consumed], consumed) if b != a]
    # A step is whole records of at most `step` bytes (4 of them, with their headers).
    assert max(steps) <= step + 4 * 4, steps
    assert len(steps) >= len(message) // step


async def test_a_waiting_writer_is_woken_once_per_half_ring_at_most(
        variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader frees the ring a step at a time but rings a waiting writer's doorbell
    only once half of it is free (or when it stops reading): a wake-up per step would
    cost the reader a system call each, and the writer a sleep and a wake-up. The
    writer here refills the ring (and waits again) after every step the reader
    reports, as it would from another process."""
    monkeypatch.setattr(shm_module, "_DRAIN_STEP", RING // 8)
    rung: list[object] = []
    for kind in (EventfdDoorbell, SemaphoreDoorbell):
        def counting_ring(bell: Any, ring: Callable[[Any], None] = kind.ring) -> None:
            rung.append(bell)
            ring(bell)

        monkeypatch.setattr(kind, "ring", counting_ring)
    message = os.urandom(16 * RING)
    _, assembler = await transfer(variant, message, piece=RING // 32, refill=True)
    assert bytes(assembler.buffer) == message
    assert assembler.transport is not None
    writers_bell = assembler.transport._peer_bell
    writer_bells = sum(1 for bell in rung if bell is writers_bell)
    # Twice per ring-full, and once more where a drain stops; not 8 (once per step).
    # (Closing rings it too: twice at most.)
    assert writer_bells <= 3 * len(message) // RING + 2, writer_bells
