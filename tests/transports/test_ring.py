"""ShmRing against a model, and against a hostile peer scribbling on its header."""

from __future__ import annotations

import mmap
import struct
import threading
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from rpc.transports._ring import (
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    RingCorrupted,
    ShmRing,
    StoreLoadFence,
)

_U64 = st.integers(min_value=0, max_value=2**64 - 1)


class _Region:
    """An anonymous mapping standing in for the shared segment, plus a raw header view."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, ShmRing.region_size(capacity))
        self._view = memoryview(self._map)
        self.ring = ShmRing(self._view, capacity)
        self.ctl = self._view[:HEADER_SIZE].cast("Q")   # what a hostile peer can write
        self.data = self._view[HEADER_SIZE:]

    def close(self) -> None:
        self.ring.release()
        self.ctl.release()
        self.data.release()
        self._view.release()
        self._map.close()


class RingModel(RuleBasedStateMachine):
    """One producer and one consumer in lockstep with a list of records."""

    @initialize(capacity=st.sampled_from([16, 32, 64, 256]))
    def make_ring(self, capacity: int) -> None:
        self.region = _Region(capacity)
        self.records: list[bytes] = []   # published, not yet consumed
        self.written = 0
        self.consumed = 0
        self.counter = 0                 # makes every payload distinct

    def teardown(self) -> None:
        if hasattr(self, "region"):
            self.region.close()

    @property
    def used(self) -> int:
        return sum(RECORD_HEADER_SIZE + len(r) for r in self.records)

    def _payload(self, size: int) -> bytes:
        self.counter += 1
        seed = self.counter.to_bytes(4, "little")
        return (seed * (size // 4 + 1))[:size]

    @rule(size=st.integers(min_value=0, max_value=3 * 256), as_view=st.booleans())
    def write(self, size: int, as_view: bool) -> None:
        payload = self._payload(size)
        free = self.region.capacity - self.used
        if size == 0 or free <= RECORD_HEADER_SIZE:
            expected = 0
        else:
            expected = min(size, free - RECORD_HEADER_SIZE)
        written = self.region.ring.write(memoryview(payload) if as_view else payload)
        assert written == expected
        if written:
            self.records.append(payload[:written])

    @rule()
    def write_until_full(self) -> None:
        """A big message streams in pieces: keep writing the rest until the ring is full."""
        rest = self._payload(2 * self.region.capacity)
        while True:
            written = self.region.ring.write(rest)
            if written == 0:
                break
            self.records.append(rest[:written])
            rest = rest[written:]
        assert self.region.capacity - self.used <= RECORD_HEADER_SIZE

    @rule(max_bytes=st.none() | st.integers(min_value=0, max_value=300))
    def read(self, max_bytes: int | None) -> None:
        expected: list[bytes] = []
        total = 0
        limit = self.region.capacity if max_bytes is None else max_bytes
        for record in self.records:
            if expected and total + len(record) > limit:
                break
            expected.append(record)
            total += len(record)
        got = self.region.ring.read(max_bytes)
        assert got == b"".join(expected)
        del self.records[: len(expected)]

    @precondition(lambda self: not self.records)
    @rule()
    def read_empty(self) -> None:
        assert self.region.ring.read() == b""

    @rule(reader=st.booleans(), writer=st.booleans())
    def flags(self, reader: bool, writer: bool) -> None:
        ring = self.region.ring
        ring.reader_waiting = reader
        ring.writer_waiting = writer
        assert (ring.reader_waiting, ring.writer_waiting) == (reader, writer)

    @invariant()
    def counters_match_model(self) -> None:
        ring = self.region.ring
        assert ring.write_counter - ring.read_counter == self.used
        assert ring.has_data() == bool(self.records)
        assert ring.free_space() == self.region.capacity - self.used


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- hostile peers -------------------------------------------------------------------


def _advance(region: _Region, sizes: list[int]) -> None:
    """Move both counters forward honestly, so the hostile values start mid-stream."""
    for size in sizes:
        assert region.ring.write(b"x" * size) == size
        assert region.ring.read() == b"x" * size


@settings(max_examples=400, deadline=None)
@given(
    capacity=st.sampled_from([16, 64, 4096]),
    warmup=st.lists(st.integers(min_value=1, max_value=12), max_size=5),
    head=_U64 | st.integers(min_value=0, max_value=8192),
    data=st.binary(min_size=0, max_size=64),
    data_at=st.integers(min_value=0, max_value=4095),
    max_bytes=st.none() | st.integers(min_value=0, max_value=5000),
)
def test_hostile_head_and_records(
    capacity: int, warmup: list[int], head: int, data: bytes, data_at: int, max_bytes: int | None
) -> None:
    """Any head and any bytes in the data area: RingCorrupted or a bounded result."""
    region = _Region(capacity)
    try:
        _advance(region, warmup)
        tail = region.ring.read_counter
        for i, byte in enumerate(data):
            region.data[(data_at + i) % capacity] = byte
        region.ctl[0] = head   # offset 0
        invalid = head < tail or head - tail > capacity
        try:
            got = region.ring.read(max_bytes)
        except RingCorrupted:
            return
        assert not invalid, "an impossible head was accepted"
        assert len(got) <= head - tail <= capacity
        assert region.ring.read_counter <= head
    finally:
        region.close()


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.sampled_from([16, 64]),
    warmup=st.lists(st.integers(min_value=1, max_value=10), max_size=4),
    unread=st.integers(min_value=0, max_value=10),
    tail=_U64 | st.integers(min_value=0, max_value=200),
    size=st.integers(min_value=1, max_value=200),
)
def test_hostile_tail(capacity: int, warmup: list[int], unread: int, tail: int, size: int) -> None:
    """The writer accepts a tail only between the last one it saw and its own head."""
    region = _Region(capacity)
    try:
        _advance(region, warmup)
        region.ring.free_space()           # the writer has now seen the real tail
        seen = region.ring.read_counter
        if unread:
            region.ring.write(b"u" * unread)
        head = region.ring.write_counter
        region.ctl[8] = tail   # offset 64
        invalid = tail < seen or tail > head
        try:
            # free_space always refreshes; write only when its cached view is short.
            region.ring.free_space()
            written = region.ring.write(b"w" * size)
        except RingCorrupted:
            assert invalid
            return
        assert not invalid, "an impossible tail was accepted"
        assert 0 <= written <= size
        assert region.ring.write_counter - tail <= capacity
    finally:
        region.close()


@pytest.mark.parametrize("length", [0, 13, 2**31, 2**32 - 1])
def test_lying_length_is_refused_before_allocating(length: int) -> None:
    capacity = 4096
    region = _Region(capacity)
    try:
        struct.pack_into("<I", region.data, 0, length)
        region.ctl[0] = 12   # 4-byte header + 8 bytes: only length 8 would be honest
        tracemalloc.start()
        try:
            with pytest.raises(RingCorrupted, match="claims"):
                region.ring.read()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024
    finally:
        region.close()


@pytest.mark.parametrize(
    ("head", "message"),
    [(5000, "more than the capacity"), (2**64 - 1, "more than the capacity")],
)
def test_head_too_far_ahead(head: int, message: str) -> None:
    region = _Region(4096)
    try:
        region.ctl[0] = head   # offset 0
        with pytest.raises(RingCorrupted, match=message):
            region.ring.read()
    finally:
        region.close()


def test_head_moving_backwards_is_corruption() -> None:
    region = _Region(64)
    try:
        region.ring.write(b"abc")
        region.ring.write(b"def")
        assert region.ring.read(max_bytes=3) == b"abc"   # saw head = 14, consumed 7
        region.ctl[0] = 7                                 # back to where the tail is
        assert region.ring.read() == b""                  # empty is indistinguishable...
        region.ctl[0] = 10                                # ...but this is behind head 14
        with pytest.raises(RingCorrupted, match="backwards"):
            region.ring.read()
    finally:
        region.close()


def test_short_tail_of_record_is_corruption() -> None:
    region = _Region(64)
    try:
        region.ring.write(b"abcdef")
        region.ctl[0] = 3   # fewer bytes than a record header
        with pytest.raises(RingCorrupted, match="too few"):
            region.ring.read()
    finally:
        region.close()


def test_record_wraps_around_the_end() -> None:
    region = _Region(16)
    try:
        assert region.ring.write(b"0123456789") == 10    # 14 bytes used
        assert region.ring.read() == b"0123456789"
        # The next header starts at offset 14 and wraps; so does the payload.
        assert region.ring.write(b"abcdefghij") == 10
        assert region.ring.read() == b"abcdefghij"
        assert region.ring.write(b"Z" * 40) == 12        # capacity minus one header
        assert region.ring.write(b"more") == 0
        assert region.ring.read() == b"Z" * 12
    finally:
        region.close()


@pytest.mark.parametrize("capacity", [0, 8, 100, 2**31])
def test_capacity_must_be_a_sane_power_of_two(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        ShmRing.region_size(capacity)


def test_region_size_must_match() -> None:
    buffer = memoryview(bytearray(HEADER_SIZE + 64))
    with pytest.raises(ValueError, match="expected"):
        ShmRing(buffer, 32)


def test_fence_can_be_called_again_and_again() -> None:
    """The shm transport fences on every write and every wake-up check, with one fence
    per thread. A fence that stayed held after a call would block the next one for
    good: called here from a thread of its own, so that is a failure, not a hung run."""
    fence = StoreLoadFence()
    calls = 0

    def run() -> None:
        nonlocal calls
        for _ in range(10_000):
            fence()
            calls += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), f"the fence blocked after {calls} calls"
    assert calls == 10_000


def test_a_producer_sleeps_only_on_a_full_ring() -> None:
    """sleep_writer raises writer_waiting and keeps it up while the ring is full; room
    freed meanwhile (before the consumer could see the flag) is found, the flag lowered."""
    region = _Region(32)
    try:
        ring = region.ring
        assert ring.write(b"x" * 40) == 28          # fills the ring: 4 + 28 bytes
        assert ring.sleep_writer() is False
        assert ring.writer_waiting                  # the consumer must ring when it frees
        assert ring.read() == b"x" * 28             # it frees (and would take the flag)
        assert ring.sleep_writer() is True          # found at the second look
        assert not ring.writer_waiting
    finally:
        region.close()
