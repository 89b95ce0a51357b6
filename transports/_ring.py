"""A single-producer/single-consumer byte ring over shared memory.

One :class:`ShmRing` is one direction of the ``shm`` lane. The memory it works on is
shared with another process that we do not trust: every value read from it is checked
before it is used, and each is fetched once (copied into a local, then checked, then
used), so a peer that changes the memory under our feet cannot make a checked value
change after the check.

Layout of a ring region (all integers native little-endian on x86-64)::

    offset   size  field            written by
    0        8     head             producer   bytes ever written (monotonic counter)
    64       8     tail             consumer   bytes ever consumed (monotonic counter)
    128      8     reader_waiting   consumer sets, producer clears  (0 / 1)
    192      8     writer_waiting   producer sets, consumer clears  (0 / 1)
    256      cap   data             producer   records, wrapping at ``cap``

Each counter and flag has a 64-byte cache line of its own, so the producer's stores to
``head`` do not bounce the line the consumer writes ``tail`` on (false sharing).
``cap`` is a power of two, so a counter maps to an offset with ``counter & (cap - 1)``.

A record is a 4-byte little-endian length ``n`` (1 <= n <= cap - 4) followed by ``n``
bytes; both the length and the bytes wrap around the end of the data area. A write
larger than the free space writes what fits as one record and says how much, so a
message larger than the ring streams through it in pieces.

Trust: each side keeps a private copy of the counter it owns and never reads it back
from shared memory (the shared copy is output only). The consumer reads only ``head``
and checks ``tail <= head <= tail + cap`` and that head never moves backwards; the
producer reads only ``tail`` and checks ``previous tail <= tail <= head``. So the tail
only ever moves forward by what the consumer itself consumed, whatever the peer writes.
A record's length is checked against what the producer published before anything is
allocated. Any violation raises :class:`RingCorrupted`; nothing else is raised for any
content of the shared memory.

Memory ordering: the producer copies the record into the data area, then stores
``head`` (one aligned 8-byte store: a ``memoryview`` of format ``"Q"`` writes through a
fixed-size ``memcpy`` that compilers emit as a single ``mov``). On x86-64 (total store
order) stores become visible in program order and loads are not reordered with older
loads, so the consumer that sees the new ``head`` sees the bytes before it; plain
stores from Python are enough. glibc's ``memcpy`` ends its non-temporal-store path with
an ``sfence``, so large copies keep that order too. A weakly ordered CPU (aarch64)
would need a release barrier (``dmb ish`` / ``stlr``) between the data and the index,
and an acquire barrier after loading it; Python cannot emit those, so the ``shm`` lane
refuses to run on anything but x86-64 (see :mod:`rpc.transports.shm`).

The waiting flags are a Dekker-style handshake (store my flag, then load your counter),
which needs store->load ordering that even x86-64 does not give for free: a store can
sit in the store buffer while a later load runs. :class:`StoreLoadFence` provides it.
"""

from __future__ import annotations

import _thread
import struct
from typing import overload

__all__ = (
    "HEADER_SIZE",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "RECORD_HEADER_SIZE",
    "RingCorrupted",
    "ShmRing",
    "StoreLoadFence",
)

HEADER_SIZE = 256
RECORD_HEADER_SIZE = 4
MIN_CAPACITY = 16           # tiny rings exist for the tests; the lane uses far larger ones
MAX_CAPACITY = 1 << 30      # record lengths are u32, and a ring is at most 1 GiB

# Indexes into the header seen as an array of u64: one 64-byte line each.
_HEAD = 0
_TAIL = 8
_READER_WAITING = 16
_WRITER_WAITING = 24

_LENGTH = struct.Struct("<I")


class RingCorrupted(Exception):
    """The shared ring holds values an honest peer never writes; the ring is unusable."""


class StoreLoadFence:
    """A full memory barrier, callable from Python.

    Acquiring and releasing an uncontended ``_thread`` lock runs glibc's ``sem_trywait``
    compare-and-swap and ``sem_post`` fetch-and-add (CPython uses POSIX semaphores for
    its locks on Linux); on x86-64 both are ``lock``-prefixed instructions, which drain
    the store buffer: a full fence, including store->load. About 0.1 us.

    Use one instance per thread: a lock held by another thread would make ``acquire``
    sleep instead of fence.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()

    def __call__(self) -> None:
        self._lock.acquire()
        self._lock.release()


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


class _WaitingFlag:
    """A waiting flag in a ring's control block. Read as a hint: any non-zero value
    means "set"; a peer lying about it can only cause a spurious or a missed wake-up
    of itself."""

    __slots__ = ("_index",)

    def __init__(self, index: int) -> None:
        self._index = index

    @overload
    def __get__(self, ring: None, owner: type) -> _WaitingFlag: ...
    @overload
    def __get__(self, ring: ShmRing, owner: type | None = None) -> bool: ...

    def __get__(self, ring: ShmRing | None, owner: type | None = None) -> bool | _WaitingFlag:
        if ring is None:
            return self        # on the class: the flag itself (for take())
        return ring._ctl[self._index] != 0

    def __set__(self, ring: ShmRing, waiting: bool) -> None:
        ring._ctl[self._index] = 1 if waiting else 0

    def take(self, ring: ShmRing) -> bool:
        """Lower the flag; True if it was raised (the peer sleeps: ring its bell)."""
        ctl, index = ring._ctl, self._index
        if ctl[index]:
            ctl[index] = 0
            return True
        return False


class ShmRing:
    """One direction of a shared-memory byte stream.

    The same object has a producer half (:meth:`write`, :meth:`free_space`) and a
    consumer half (:meth:`read`, :meth:`has_data`); a process uses one half, its peer
    the other. Not thread-safe within a half, except :meth:`has_data`, which is a
    read-only hint that another thread may call.
    """

    __slots__ = (
        "_capacity",
        "_mask",
        "_ctl",
        "_data",
        "_head",
        "_seen_tail",
        "_tail",
        "_seen_head",
    )

    @staticmethod
    def region_size(capacity: int) -> int:
        """Bytes of shared memory a ring of ``capacity`` data bytes occupies."""
        ShmRing._check_capacity(capacity)
        return HEADER_SIZE + capacity

    @staticmethod
    def _check_capacity(capacity: int) -> None:
        if not (MIN_CAPACITY <= capacity <= MAX_CAPACITY and _is_power_of_two(capacity)):
            raise ValueError(
                f"ring capacity must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}],"
                f" not {capacity}"
            )

    def __init__(self, region: memoryview, capacity: int) -> None:
        """Attach to a ring laid out in ``region`` (exactly ``region_size(capacity)`` bytes).

        Both counters start at zero: a ring is attached right after it was created
        (zero-filled), before either side moved a byte, so the private copies are
        exact. ``capacity`` comes from our own code or from a checked header, never
        straight from shared memory.
        """
        self._check_capacity(capacity)
        if region.nbytes != HEADER_SIZE + capacity:
            raise ValueError(
                f"ring region is {region.nbytes} bytes, expected {HEADER_SIZE + capacity}"
            )
        self._capacity = capacity
        self._mask = capacity - 1
        self._ctl = region[:HEADER_SIZE].cast("Q")
        self._data = region[HEADER_SIZE:]
        self._head = 0        # producer: private, authoritative
        self._seen_tail = 0   # producer: last tail read and checked
        self._tail = 0        # consumer: private, authoritative
        self._seen_head = 0   # consumer: last head read and checked

    @property
    def capacity(self) -> int:
        return self._capacity

    def release(self) -> None:
        """Drop this ring's views of the shared memory (so the mapping can be closed)."""
        self._ctl.release()
        self._data.release()

    # -- producer half -------------------------------------------------------------

    def _refresh_tail(self) -> int:
        tail = self._ctl[_TAIL]   # one fetch; checked, then only the local is used
        if tail < self._seen_tail:
            raise RingCorrupted(
                f"ring tail moved backwards from {self._seen_tail} to {tail}"
            )
        if tail > self._head:
            raise RingCorrupted(
                f"ring tail {tail} is past the head {self._head}: the reader consumed"
                " bytes that were never written"
            )
        self._seen_tail = tail
        return tail

    def free_space(self) -> int:
        """Bytes the producer could write now, record headers included."""
        return self._capacity - (self._head - self._refresh_tail())

    def tail_moved(self) -> bool:
        """A cheap hint for a waiting producer: did the consumer free space since we
        last looked? Unchecked, safe to call from another thread."""
        return self._ctl[_TAIL] != self._seen_tail

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write as much of ``data`` as fits as one record; return how many bytes of it.

        0 means the ring is full (no room for a header and one byte). ``data`` must be
        a byte-format buffer (``bytes``, ``bytearray``, a ``"B"`` memoryview).
        """
        wanted = len(data)
        if wanted == 0:
            return 0
        capacity = self._capacity
        head = self._head
        free = capacity - (head - self._seen_tail)
        if free < RECORD_HEADER_SIZE + wanted:
            # Only pay for the shared read when the cached view says it may not fit.
            free = capacity - (head - self._refresh_tail())
            if free <= RECORD_HEADER_SIZE:
                return 0
        chunk = min(wanted, free - RECORD_HEADER_SIZE)
        mask = self._mask
        out = self._data
        pos = head & mask
        if pos + RECORD_HEADER_SIZE <= capacity:
            _LENGTH.pack_into(out, pos, chunk)
        else:
            header = _LENGTH.pack(chunk)
            first = capacity - pos
            out[pos:] = header[:first]
            out[: RECORD_HEADER_SIZE - first] = header[first:]
        start = (head + RECORD_HEADER_SIZE) & mask
        end = start + chunk
        src = data if chunk == wanted else memoryview(data)[:chunk]
        if end <= capacity:
            out[start:end] = src
        else:
            first = capacity - start
            view = memoryview(src)
            out[start:] = view[:first]
            out[: end - capacity] = view[first:]
        # Publish: the record is in place before the counter that exposes it (see the
        # module docstring on store order).
        head += RECORD_HEADER_SIZE + chunk
        self._head = head
        self._ctl[_HEAD] = head
        return chunk

    # -- consumer half -------------------------------------------------------------

    def has_data(self) -> bool:
        """A cheap hint: did the producer publish anything we have not consumed?

        Unchecked on purpose (any change wakes the consumer, whose :meth:`read`
        checks it); safe to call from another thread.
        """
        return self._ctl[_HEAD] != self._tail

    def read(self, max_bytes: int | None = None) -> bytes:
        """Consume whole records and return their bytes concatenated (b"" if none).

        Stops before the record that would take the result past ``max_bytes`` (but
        returns at least one record when there is one). The result is at most
        ``capacity`` bytes whatever the shared memory says.
        """
        pieces, end = self.peek(max_bytes)
        if not pieces:
            return b""
        try:
            # One copy out of shared memory; the total is <= head - tail <= capacity.
            result = b"".join(pieces)
        finally:
            for piece in pieces:
                piece.release()
        self.consume(end)
        return result

    def peek(self, max_bytes: int | None = None) -> tuple[list[memoryview], int]:
        """The bytes of the whole records published and not consumed, as views of the
        shared memory (two for a record that wraps), and the counter :meth:`consume`
        takes to consume them; ([], tail) if there are none.

        Checked as :meth:`read` checks (RingCorrupted), with the same ``max_bytes``.
        The views show memory the peer can still write to: copy them out once (into a
        buffer of our own), then release them. Nothing is consumed until ``consume``.
        """
        head = self._ctl[_HEAD]   # one fetch
        tail = self._tail
        if head == tail:
            return [], tail
        if head < self._seen_head:
            raise RingCorrupted(f"ring head moved backwards from {self._seen_head} to {head}")
        if head < tail:
            raise RingCorrupted(f"ring head {head} is behind the tail {tail}")
        if head - tail > self._capacity:
            raise RingCorrupted(
                f"ring head {head} is {head - tail} bytes ahead of the tail {tail},"
                f" more than the capacity {self._capacity}"
            )
        self._seen_head = head
        limit = self._capacity if max_bytes is None else max_bytes
        capacity = self._capacity
        mask = self._mask
        data = self._data
        pieces: list[memoryview] = []
        total = 0
        pos = tail
        try:
            while pos != head:
                available = head - pos
                if available <= RECORD_HEADER_SIZE:
                    raise RingCorrupted(
                        f"ring has {available} bytes at offset {pos} before the head:"
                        " too few for a record"
                    )
                at = pos & mask
                if at + RECORD_HEADER_SIZE <= capacity:
                    (length,) = _LENGTH.unpack_from(data, at)
                else:
                    first = capacity - at
                    length = int.from_bytes(
                        bytes(data[at:]) + bytes(data[: RECORD_HEADER_SIZE - first]),
                        "little",
                    )
                # `length` is a local copy from here on: checked once, used as checked.
                if length == 0 or length > available - RECORD_HEADER_SIZE:
                    raise RingCorrupted(
                        f"ring record at offset {pos} claims {length} bytes; the producer"
                        f" published {available - RECORD_HEADER_SIZE} after its header"
                    )
                if pieces and total + length > limit:
                    break
                start = (pos + RECORD_HEADER_SIZE) & mask
                end = start + length
                if end <= capacity:
                    pieces.append(data[start:end])
                else:
                    pieces.append(data[start:])
                    pieces.append(data[: end - capacity])
                total += length
                pos += RECORD_HEADER_SIZE + length
        except BaseException:
            for piece in pieces:
                piece.release()
            raise
        return pieces, pos

    def consume(self, end: int) -> None:
        """Consume up to ``end``, a counter :meth:`peek` returned (ours, not the peer's)."""
        self._tail = end
        self._ctl[_TAIL] = end

    # -- waiting flags -------------------------------------------------------------
    # Values read here are hints: any non-zero value means "set"; a peer lying about
    # them can only cause a spurious or a missed wake-up of itself.

    reader_waiting = _WaitingFlag(_READER_WAITING)
    writer_waiting = _WaitingFlag(_WRITER_WAITING)

    # -- for tests and diagnostics -------------------------------------------------

    @property
    def write_counter(self) -> int:
        """The producer's private head (bytes it has published)."""
        return self._head

    @property
    def read_counter(self) -> int:
        """The consumer's private tail (bytes it has consumed)."""
        return self._tail
