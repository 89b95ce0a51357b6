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

Compiled build: setup.py compiles this module with Cython (the types are in
``_ring.pxd``, as for the codec; see ``rpc._compiled``). There the counters, flags and
record headers are read and written through C pointers into the mapping: a counter is
one atomic 8-byte load or store (so the C compiler can neither fetch a checked value
twice nor move the data copy past the store that publishes it), and the fence is one
``mfence``-class instruction. The pure-Python build does the same through memoryviews,
``struct`` and a lock. The few primitives that differ are named ``_c_*`` below; each
has a Python body here and a C body in ``_ring.pxd``.
"""

from __future__ import annotations

import _thread
import struct
from typing import Any, Callable

try:
    import cython  # type: ignore[import-untyped]
    _TYPED: bool = cython.compiled
except ImportError:       # Cython is not installed: this runs as plain Python
    _TYPED = False

__all__ = (
    "HEADER_SIZE",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "RECORD_HEADER_SIZE",
    "RingCorrupted",
    "ShmRing",
    "StoreLoadFence",
)

# True when this module runs as the extension setup.py compiles from this source.
COMPILED: bool = not __file__.endswith(".py")

HEADER_SIZE = 256
RECORD_HEADER_SIZE = 4
_RECORD_HEADER = RECORD_HEADER_SIZE    # the name the code uses (a C constant when compiled)
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


# -- the primitives: Python bodies here, C bodies in _ring.pxd -----------------------
# In the compiled build each `_c_*` name below is the C function the .pxd declares
# (the assignments at the end of this block are left out of it); `base` is then a C
# pointer into the mapping, here the memoryview itself.

def _py_base(view: memoryview) -> Any:
    """Where a view's memory starts (C: the buffer's address)."""
    return view


def _py_load_u64(base: Any, index: int) -> int:
    """One fetch of the u64 at ``index`` (C: an atomic acquire load)."""
    value: int = base[index]
    return value


def _py_store_u64(base: Any, index: int, value: int) -> None:
    """Store the u64 at ``index`` (C: an atomic release store)."""
    base[index] = value


def _py_load_u32(base: Any, offset: int) -> int:
    """The little-endian u32 at byte ``offset`` (C: a 4-byte copy into a local)."""
    value: int = _LENGTH.unpack_from(base, offset)[0]
    return value


def _py_store_u32(base: Any, offset: int, value: int) -> None:
    _LENGTH.pack_into(base, offset, value)


def _py_copy_out(base: Any, offset: int, size: int) -> bytes:
    """``size`` bytes at byte ``offset`` as a new bytes object: one copy."""
    return bytes(base[offset : offset + size])


def _py_fence(lock: Any) -> None:
    """A full barrier (C: ``__atomic_thread_fence``, and ``lock`` is not used). See
    :class:`StoreLoadFence` for why an uncontended lock is one here."""
    lock.acquire()
    lock.release()


if not _TYPED:
    globals().update(
        _c_base=_py_base,
        _c_load_u64=_py_load_u64,
        _c_store_u64=_py_store_u64,
        _c_load_u32=_py_load_u32,
        _c_store_u32=_py_store_u32,
        _c_copy_out=_py_copy_out,
        _c_fence=_py_fence,
    )
_c_base: Callable[[memoryview], Any]
_c_load_u64: Callable[[Any, int], int]
_c_store_u64: Callable[[Any, int, int], None]
_c_load_u32: Callable[[Any, int], int]
_c_store_u32: Callable[[Any, int, int], None]
_c_copy_out: Callable[[Any, int, int], bytes]
_c_fence: Callable[[Any], None]


class StoreLoadFence:
    """A full memory barrier, callable from Python.

    Compiled: one fence instruction. Pure Python: acquiring and releasing an
    uncontended ``_thread`` lock runs glibc's ``sem_trywait`` compare-and-swap and
    ``sem_post`` fetch-and-add (CPython uses POSIX semaphores for its locks on Linux);
    on x86-64 both are ``lock``-prefixed instructions, which drain the store buffer: a
    full fence, including store->load. About 0.1 us.

    Use one instance per thread: a lock held by another thread would make ``acquire``
    sleep instead of fence.
    """

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()

    def __call__(self) -> None:
        _c_fence(self._lock)


def _released() -> ValueError:
    # The compiled build reads the mapping through raw pointers: after release() they
    # point at memory that may be unmapped, so every entry point checks first.
    return ValueError("the ring was released")


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check_capacity(capacity: int) -> None:
    if not (MIN_CAPACITY <= capacity <= MAX_CAPACITY and _is_power_of_two(capacity)):
        raise ValueError(
            f"ring capacity must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}],"
            f" not {capacity}"
        )


class ShmRing:
    """One direction of a shared-memory byte stream.

    The same object has a producer half (:meth:`write`, :meth:`free_space`) and a
    consumer half (:meth:`read`, :meth:`has_data`); a process uses one half, its peer
    the other. Not thread-safe within a half, except :meth:`has_data` and
    :meth:`tail_moved`, read-only hints that another thread may call.
    """

    @staticmethod
    def region_size(capacity: int) -> int:
        """Bytes of shared memory a ring of ``capacity`` data bytes occupies."""
        _check_capacity(capacity)
        return HEADER_SIZE + capacity

    def __init__(self, region: memoryview, capacity: int) -> None:
        """Attach to a ring laid out in ``region`` (exactly ``region_size(capacity)`` bytes,
        a writable one-dimensional byte view).

        Both counters start at zero: a ring is attached right after it was created
        (zero-filled), before either side moved a byte, so the private copies are
        exact. ``capacity`` comes from our own code or from a checked header, never
        straight from shared memory.
        """
        _check_capacity(capacity)
        if type(region) is not memoryview:
            raise TypeError(f"region must be a memoryview, not {type(region).__name__}")
        if region.readonly or region.ndim != 1 or region.itemsize != 1 or not region.c_contiguous:
            raise ValueError("region must be a writable, contiguous, one-dimensional byte view")
        if region.nbytes != HEADER_SIZE + capacity:
            raise ValueError(
                f"ring region is {region.nbytes} bytes, expected {HEADER_SIZE + capacity}"
            )
        self._capacity = capacity
        self._mask = capacity - 1
        # The views keep the memory the pointers point into (compiled build) alive.
        self._ctl = region[:HEADER_SIZE].cast("Q")
        self._data = region[HEADER_SIZE:]
        self._ctl_at = _c_base(self._ctl)
        self._data_at = _c_base(self._data)
        self._released = False
        self._lock = _thread.allocate_lock()   # the pure build's fence (one thread uses it)
        self._head = 0        # producer: private, authoritative
        self._seen_tail = 0   # producer: last tail read and checked
        self._tail = 0        # consumer: private, authoritative
        self._seen_head = 0   # consumer: last head read and checked

    @property
    def capacity(self) -> int:
        return self._capacity

    def release(self) -> None:
        """Drop this ring's views of the shared memory (so the mapping can be closed).
        Using the ring afterwards raises ValueError."""
        self._released = True
        self._ctl.release()
        self._data.release()


    # -- producer half -------------------------------------------------------------

    def _refresh_tail(self) -> int:
        tail = _c_load_u64(self._ctl_at, _TAIL)  # one fetch; checked, then only the local
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
        if self._released:
            raise _released()
        return self._capacity - (self._head - self._refresh_tail())

    def tail_moved(self) -> bool:
        """A cheap hint for a waiting producer: did the consumer free space since we
        last looked? Unchecked, safe to call from another thread."""
        if self._released:
            raise _released()
        return _c_load_u64(self._ctl_at, _TAIL) != self._seen_tail

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write as much of ``data`` as fits as one record; return how many bytes of it.

        0 means the ring is full (no room for a header and one byte). ``data`` must be
        a byte-format buffer (``bytes``, ``bytearray``, a ``"B"`` memoryview).
        """
        if self._released:
            raise _released()
        wanted = len(data)
        if wanted == 0:
            return 0
        capacity = self._capacity
        head = self._head
        free = capacity - (head - self._seen_tail)
        if free < _RECORD_HEADER + wanted:
            # Only pay for the shared read when the cached view says it may not fit.
            free = capacity - (head - self._refresh_tail())
            if free <= _RECORD_HEADER:
                return 0
        chunk = min(wanted, free - _RECORD_HEADER)
        mask = self._mask
        out = self._data
        pos = head & mask
        if pos + _RECORD_HEADER <= capacity:
            _c_store_u32(self._data_at, pos, chunk)
        else:
            header = _LENGTH.pack(chunk)
            first = capacity - pos
            out[pos:] = header[:first]
            out[: _RECORD_HEADER - first] = header[first:]
        start = (head + _RECORD_HEADER) & mask
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
        head += _RECORD_HEADER + chunk
        self._head = head
        _c_store_u64(self._ctl_at, _HEAD, head)
        return chunk

    # -- consumer half -------------------------------------------------------------

    def has_data(self) -> bool:
        """A cheap hint: did the producer publish anything we have not consumed?

        Unchecked on purpose (any change wakes the consumer, whose :meth:`read`
        checks it); safe to call from another thread.
        """
        if self._released:
            raise _released()
        return _c_load_u64(self._ctl_at, _HEAD) != self._tail

    def pending(self) -> int:
        """A cheap hint: bytes published and not consumed, record headers included.
        Unchecked (a lying peer only changes which way we read; the read checks)."""
        if self._released:
            raise _released()
        return _c_load_u64(self._ctl_at, _HEAD) - self._tail

    def _fetch_head(self) -> int:
        """The producer's head, fetched once and checked against our tail."""
        head = _c_load_u64(self._ctl_at, _HEAD)
        tail = self._tail
        if head == tail:
            return head
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
        return head

    def _record_length(self, pos: int, head: int) -> int:
        """The length of the record at counter ``pos`` (< ``head``), fetched once and
        checked against what the producer published after its header."""
        available = head - pos
        if available <= _RECORD_HEADER:
            raise RingCorrupted(
                f"ring has {available} bytes at offset {pos} before the head:"
                " too few for a record"
            )
        capacity = self._capacity
        at = pos & self._mask
        if at + _RECORD_HEADER <= capacity:
            length = _c_load_u32(self._data_at, at)
        else:
            data = self._data
            first = capacity - at
            length = int.from_bytes(
                bytes(data[at:]) + bytes(data[: _RECORD_HEADER - first]), "little"
            )
        # `length` is a local copy from here on: checked once, used as checked.
        if length == 0 or length > available - _RECORD_HEADER:
            raise RingCorrupted(
                f"ring record at offset {pos} claims {length} bytes; the producer"
                f" published {available - _RECORD_HEADER} after its header"
            )
        return length

    def read(self, max_bytes: int | None = None) -> bytes:
        """Consume whole records and return their bytes concatenated (b"" if none).

        Stops before the record that would take the result past ``max_bytes`` (but
        returns at least one record when there is one). The result is at most
        ``capacity`` bytes whatever the shared memory says.
        """
        if self._released:
            raise _released()
        head = self._fetch_head()
        tail = self._tail
        if head == tail:
            return b""
        length = self._record_length(tail, head)
        start = (tail + _RECORD_HEADER) & self._mask
        end = tail + _RECORD_HEADER + length
        if end == head and start + length <= self._capacity:
            # The common case, one record that does not wrap: one copy, no join.
            result = _c_copy_out(self._data_at, start, length)
            self.consume(end)
            return result
        pieces, end = self._collect(head, max_bytes)
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
        if self._released:
            raise _released()
        head = self._fetch_head()
        if head == self._tail:
            return [], head
        return self._collect(head, max_bytes)

    def _collect(self, head: int, max_bytes: int | None) -> tuple[list[memoryview], int]:
        limit = self._capacity if max_bytes is None else max_bytes
        capacity = self._capacity
        mask = self._mask
        data = self._data
        pieces: list[memoryview] = []
        total = 0
        pos = self._tail
        try:
            while pos != head:
                length = self._record_length(pos, head)
                if pieces and total + length > limit:
                    break
                start = (pos + _RECORD_HEADER) & mask
                end = start + length
                if end <= capacity:
                    pieces.append(data[start:end])
                else:
                    pieces.append(data[start:])
                    pieces.append(data[: end - capacity])
                total += length
                pos += _RECORD_HEADER + length
        except BaseException:
            for piece in pieces:
                piece.release()
            raise
        return pieces, pos

    def consume(self, end: int) -> None:
        """Consume up to ``end``, a counter :meth:`peek` returned (ours, not the peer's)."""
        if self._released:
            raise _released()
        self._tail = end
        _c_store_u64(self._ctl_at, _TAIL, end)

    # -- waiting flags -------------------------------------------------------------
    # Values read here are hints: any non-zero value means "set"; a peer lying about
    # them can only cause a spurious or a missed wake-up of itself.

    @property
    def reader_waiting(self) -> bool:
        if self._released:
            raise _released()
        return _c_load_u64(self._ctl_at, _READER_WAITING) != 0

    @reader_waiting.setter
    def reader_waiting(self, waiting: bool) -> None:
        if self._released:
            raise _released()
        _c_store_u64(self._ctl_at, _READER_WAITING, 1 if waiting else 0)

    @property
    def writer_waiting(self) -> bool:
        if self._released:
            raise _released()
        return _c_load_u64(self._ctl_at, _WRITER_WAITING) != 0

    @writer_waiting.setter
    def writer_waiting(self, waiting: bool) -> None:
        if self._released:
            raise _released()
        _c_store_u64(self._ctl_at, _WRITER_WAITING, 1 if waiting else 0)

    def wake_reader(self) -> bool:
        """After a write, by the producer: fence (the new head is visible before the
        flag is read), then lower ``reader_waiting``. True if it was raised: the reader
        sleeps, ring its bell."""
        if self._released:
            raise _released()
        _c_fence(self._lock)
        return self._take(_READER_WAITING)

    def wake_writer(self) -> bool:
        """After a read, by the consumer: as :meth:`wake_reader`, for ``writer_waiting``
        (the new tail is visible first)."""
        if self._released:
            raise _released()
        _c_fence(self._lock)
        return self._take(_WRITER_WAITING)

    def _take(self, index: int) -> bool:
        ctl = self._ctl_at
        if _c_load_u64(ctl, index):
            _c_store_u64(ctl, index, 0)
            return True
        return False

    def sleep_reader(self) -> bool:
        """By the consumer about to sleep: raise ``reader_waiting``, fence, then look
        at the ring once more. True if data came meanwhile (the flag is lowered again:
        read it now); False: sleep, the producer rings when it writes."""
        if self._released:
            raise _released()
        ctl = self._ctl_at
        _c_store_u64(ctl, _READER_WAITING, 1)
        _c_fence(self._lock)
        if _c_load_u64(ctl, _HEAD) != self._tail:
            _c_store_u64(ctl, _READER_WAITING, 0)
            return True
        return False

    def sleep_writer(self) -> bool:
        """By the producer that found the ring full: raise ``writer_waiting``, fence,
        then look at the free space once more. True if room came meanwhile (the flag is
        lowered again: write now); False: wait, the consumer rings when it frees space.
        Raises RingCorrupted as :meth:`free_space` does."""
        if self._released:
            raise _released()
        ctl = self._ctl_at
        _c_store_u64(ctl, _WRITER_WAITING, 1)
        _c_fence(self._lock)
        if self.free_space() > _RECORD_HEADER:
            _c_store_u64(ctl, _WRITER_WAITING, 0)
            return True
        return False

    # -- for tests and diagnostics -------------------------------------------------

    @property
    def write_counter(self) -> int:
        """The producer's private head (bytes it has published)."""
        return self._head

    @property
    def read_counter(self) -> int:
        """The consumer's private tail (bytes it has consumed)."""
        return self._tail
