"""The shm lane's per-message work: one side of a connection, between its rings and its protocol.

:class:`rpc.transports.shm.ShmTransport` is the ``asyncio.Transport``: it sets a connection
up, closes it, watches the control channel and, in the posix variant, runs the waiter
thread. Everything it does per message it hands to a :class:`RingPump`, which holds the
state that work reads and writes:

* writing: a write into the outbound ring, the check whether the reader sleeps (and its
  doorbell if it does), the transport's own buffer for what did not fit, and the
  decision to poll for the answer (:class:`~rpc.transports._spin.AnswerSpin` decides how
  long);
* reading: a wake-up (the doorbell, a poll that caught data, a call from the loop),
  the inbound ring drained into the protocol (``data_received``, or straight into the
  buffers a ``BufferedProtocol`` lends), the writer woken when it waits for space, and
  the reader's flag raised before it sleeps;
* the poll for an answer after a write, in slices between which the loop runs.

Why a class of its own: with many calls in flight or a stream flowing nobody sleeps, and
what decides a lane's speed is the CPU each message costs. A socket lane's transport is
C (uvloop's); this one is compiled too. Like :mod:`rpc.transports._ring` it is plain
Python that ``setup.py`` also compiles with Cython (pure-Python mode, the types in
``_pump.pxd``: C fields, the ring as a typed ``ShmRing`` whose methods are C calls, C
integers for the clock and the counters). Two steps differ between the builds: the
clock (``_c_now_ns``: ``clock_gettime(CLOCK_MONOTONIC)`` in C, which is what
``time.perf_counter_ns`` reads on Linux) and, in the compiled poll only, the CPU's
spin-wait hint between polls (``_c_spin_pause``). The transport owns the pump and the
pump calls back into it only to end the connection (``_fatal``, ``_finish``).

Every safety property of the rings stays theirs: the pump reads shared memory only
through :class:`~rpc.transports._ring.ShmRing` (bounded, checked, ``RingCorrupted``), and
the peer's closed flag through the segment's own view of it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Callable

from ._ring import RingCorrupted, ShmRing
from ._spin import AnswerSpin

try:
    import cython  # type: ignore[import-untyped]
    _TYPED: bool = cython.compiled
except ImportError:       # Cython is not installed: this runs as plain Python
    _TYPED = False

__all__ = ("JOIN_LIMIT", "OWN_RECORD", "PREEMPTED_NS", "RingPump")

# True when this module runs as the extension setup.py compiles from this source.
COMPILED: bool = not __file__.endswith(".py")

JOIN_LIMIT = 64 * 1024      # writelines joins batches up to this size (cheap copy)
OWN_RECORD = 16 * 1024      # a buffer this big goes into the ring as it is, unjoined
PREEMPTED_NS = 20_000       # a gap this long between two polls: we lost the CPU
_JOIN_LIMIT = JOIN_LIMIT    # the names the code uses (C constants when compiled)
_OWN_RECORD = OWN_RECORD
_PREEMPTED_NS = PREEMPTED_NS


# -- the one primitive that differs: a Python body here, a C body in _pump.pxd ---------

def _py_spin_pause() -> None:
    """Between two polls (C: the CPU's spin-wait hint, ``pause`` on x86-64)."""


if not _TYPED:
    globals().update(_c_now_ns=time.perf_counter_ns, _c_spin_pause=_py_spin_pause)
_c_now_ns: Callable[[], int]
_c_spin_pause: Callable[[], None]


class _NoOwner:
    """The owner of a detached pump: its transport has finished, and what reports to it
    has nobody left to tell."""

    def _fatal(self, exc: BaseException, message: str | None = None) -> None:
        pass

    def _finish(self, exc: BaseException | None) -> None:
        pass


_NO_OWNER = _NoOwner()


class RingPump:
    """The per-message half of one :class:`~rpc.transports.shm.ShmTransport`.

    Runs on the event loop only. ``owner`` is the transport: the pump calls its
    ``_fatal(exc, message=None)`` and ``_finish(exc)`` to end the connection, and nothing
    else of it. The public fields are the transport's state, which both read and write:
    ``closing`` (close() or abort() called, or the peer is gone), ``finished`` (the
    rings are no longer touched), ``reading_paused``, ``buffer`` and ``buffered`` (what
    did not fit in the ring), ``spinning`` (a poll for an answer is queued).
    """

    def __init__(
        self,
        owner: Any,
        loop: asyncio.AbstractEventLoop,
        inbound: ShmRing,
        outbound: ShmRing,
        flags: memoryview,
        peer_closed_index: int,
        peer_bell: Any,
        my_bell: Any,
        protocol: asyncio.BaseProtocol,
        spin: AnswerSpin,
        *,
        spin_slice_ns: int,
        drain_step: int,
        direct_copy: int,
    ) -> None:
        self._owner = owner
        self._loop = loop
        self._call_soon = loop.call_soon
        self._inbound = inbound
        self._outbound = outbound
        # The segment's header as u64s, where the peer's closed flag is.
        self._flags = flags
        self._peer_closed_index = peer_closed_index
        self._peer_bell = peer_bell
        self._my_bell = my_bell
        self._protocol: Any = protocol
        self._buffered_protocol = False
        self._bytes_protocol = False
        self.set_protocol(protocol)
        self.buffer: collections.deque[bytes | memoryview] = collections.deque()
        self.buffered = 0
        self.writing_paused = False
        self.high_water = 0
        self.low_water = 0
        self.reading_paused = False
        self.closing = False
        self.finished = False
        # After a write the loop polls the inbound ring for the answer, with
        # reader_waiting lowered, in slices of spin_slice_ns between which other
        # callbacks run (`loop_spin_slice`); `spin` sizes the poll.
        self._spin = spin
        self.spin_ns = spin.max_spin_ns     # 0: never spins
        self._slice_ns = spin_slice_ns
        self._asked_at = 0       # the clock at the write still waiting for an answer
        self.spinning = False    # a loop_spin_slice is queued
        self._spin_deadline = 0
        self._spin_budget = 0
        self._drain_step = drain_step
        self._direct_copy = direct_copy

    def detach(self, protocol: asyncio.BaseProtocol) -> None:
        """Let go of the transport and its protocol once the connection is over: the
        transport holds the pump, and a pump holding it back would be a cycle that keeps
        both (rings, buffers and all) until a full garbage collection."""
        self._owner = _NO_OWNER
        self.set_protocol(protocol)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        # Decided once per protocol, not per read: how it takes bytes.
        self._buffered_protocol = isinstance(protocol, asyncio.BufferedProtocol)
        self._bytes_protocol = hasattr(protocol, "data_received")

    def peer_has_closed(self) -> bool:
        """The peer's closed flag (a hint from shared memory: set means it closed).
        Raises ValueError once the segment is released (its view of the flags is)."""
        closed: bool = self._flags[self._peer_closed_index] != 0
        return closed

    # -- writing -------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """The transport's write(), after its fork check."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if self.closing:
            return   # like asyncio's transports: writes after close are dropped
        if isinstance(data, memoryview) and (data.format != "B" or not data.c_contiguous):
            data = data.cast("B") if data.c_contiguous else data.tobytes()
        size = len(data)
        if not size:
            return
        if self.buffer:   # keep the order: behind what is already waiting
            self._enqueue(data, 0)
            self.flush()
            return
        try:
            written = self._write_ring(data)
        except RingCorrupted as exc:
            self._owner._fatal(exc)
            return
        if written < size:
            self._enqueue(data, written)
            self.flush()
        elif self.spin_ns:
            self._spin_for_answer()

    def writelines(self, list_of_data: Any) -> None:
        """The transport's writelines(), after its fork check: a batch of up to
        ``JOIN_LIMIT`` bytes is joined into one record (one ring write, one wake-up
        check); in a bigger one small buffers are joined in runs of about ``JOIN_LIMIT``
        bytes and each buffer of ``OWN_RECORD`` bytes or more goes into the ring as it
        is (no join: the ring copy is the only one). What does not fit is buffered, in
        order, as write() does."""
        if self.closing:
            return
        if not isinstance(list_of_data, (list, tuple)):
            list_of_data = list(list_of_data)
        total = 0
        for data in list_of_data:
            total += len(data)
        if total <= _JOIN_LIMIT:
            self.write(b"".join(list_of_data))
            return
        spin = self.spin_ns
        self.spin_ns = 0       # one answer spin for the whole batch, after it
        try:
            # A batch of thousands of small frames (a pipelined stream's backlog)
            # written one by one would cost a ring write, a fence and a record per
            # frame, on both sides.
            run: list[bytes | bytearray | memoryview] = []
            run_size = 0
            for data in list_of_data:
                size = len(data)
                if size >= _OWN_RECORD:
                    if run:
                        self.write(b"".join(run))
                        run, run_size = [], 0
                    self.write(data)
                    continue
                run.append(data)
                run_size += size
                if run_size >= _JOIN_LIMIT:
                    self.write(b"".join(run))
                    run, run_size = [], 0
            if run:
                self.write(b"".join(run))
        finally:
            self.spin_ns = spin
        if spin and not self.buffer and not self.closing:
            self._spin_for_answer()

    def _write_ring(self, data: bytes | bytearray | memoryview) -> int:
        """Put as much of ``data`` in the outbound ring as fits now; wake the peer."""
        ring = self._outbound
        size = len(data)
        written = ring.write(data)
        if not written:
            return 0
        if ring.wake_reader():    # fences, then takes the reader's flag
            self._peer_bell.ring()
        # The reader may be draining concurrently: keep going while it makes room.
        while written < size:
            more = ring.write(memoryview(data)[written:])
            if not more:
                break
            written += more
            if ring.wake_reader():
                self._peer_bell.ring()
        return written

    def _enqueue(self, data: bytes | bytearray | memoryview, start: int) -> None:
        rest: bytes | memoryview
        if type(data) is bytes:
            # Immutable: kept as it is, or viewed from `start`, never copied.
            rest = data if start == 0 else memoryview(data)[start:]
        elif isinstance(data, memoryview) and type(data.obj) is bytes:
            rest = data[start:]               # a view of immutable bytes: no copy either
        else:
            rest = bytes(data[start:])        # the caller may reuse its buffer
        self.buffer.append(rest)
        self.buffered += len(rest)
        self.maybe_pause_writing()

    def flush(self) -> None:
        """Move buffered bytes into the ring; finish a pending close when they are out."""
        buffer = self.buffer
        ring = self._outbound
        try:
            while buffer:
                chunk = buffer[0]
                size = len(chunk)
                written = self._write_ring(chunk)
                if written == size:
                    buffer.popleft()
                    self.buffered -= written
                    continue
                if written:
                    buffer[0] = memoryview(chunk)[written:]
                    self.buffered -= written
                    continue
                # Full. Ask the reader to ring our bell when it frees space, then look
                # once more, in case it freed some before it could see the flag.
                if not ring.sleep_writer():
                    break
        except RingCorrupted as exc:
            self._owner._fatal(exc)
            return
        if not buffer:
            self.maybe_resume_writing()
            if self.closing and not self.finished:
                self._owner._finish(None)

    def maybe_pause_writing(self) -> None:
        if not self.writing_paused and self.buffered > self.high_water:
            self.writing_paused = True
            self._call_protocol("pause_writing")

    def maybe_resume_writing(self) -> None:
        if self.writing_paused and self.buffered <= self.low_water:
            self.writing_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, method: str) -> None:
        try:
            getattr(self._protocol, method)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {
                    "message": f"protocol.{method}() failed",
                    "exception": exc,
                    "transport": self._owner,
                    "protocol": self._protocol,
                }
            )

    # -- polling for an answer -----------------------------------------------------

    def _spin_for_answer(self) -> None:
        """We just wrote (a request, a response): the answer may come back within
        microseconds. Poll for it on the loop rather than pay a wake-up for it.
        Nothing is spun without a write before it."""
        now = _c_now_ns()
        if not self._asked_at:
            self._asked_at = now      # the answer's time is measured from here
        if self.spinning:
            # Already polling: the budget counts from the latest write.
            self._spin_deadline = now + self._spin_budget
            return
        if self.reading_paused or self.closing or self._inbound.has_data():
            return   # nothing to wait for, or it is here already (a wake-up is due)
        budget = self._spin.budget_ns()
        if not budget:
            return   # answers come too late for a spin, or it missed lately: sleep
        self._spin_budget = budget
        self.spinning = True
        self._spin_deadline = now + budget
        # While we poll, the peer need not ring our bell: a ring would only wake us
        # for nothing. (A ring already on its way is a spurious wake-up.)
        self._inbound.reader_waiting = False
        # Not from inside write(): the caller may have more to do, and data_received
        # must not run re-entrantly.
        self._call_soon(self.loop_spin_slice)

    def loop_spin_slice(self) -> None:
        """Poll the inbound ring for one slice; then deliver, go on later, or sleep."""
        if self.finished:
            self.spinning = False
            return
        if self.closing or self.reading_paused:
            self.spinning = False
            self.on_wake()   # it knows what to do in those states
            return
        ring = self._inbound
        now = _c_now_ns()
        slice_end = min(self._spin_deadline, now + self._slice_ns)
        caught = True
        while True:
            # Several polls per clock read: a poll is cheap, a clock read less so.
            if ring.has_data() or ring.has_data() or ring.has_data() or ring.has_data():
                break
            if _TYPED:
                _c_spin_pause()    # the pure build's polls are slow enough as they are
            before = now
            now = _c_now_ns()
            if now - before > _PREEMPTED_NS:
                # We were off the CPU: the peer (or something else) needed this one
                # more than we needed to poll. Spinning does not pay here.
                caught = False
                break
            if now >= slice_end:
                if self.peer_has_closed():
                    break
                if now < self._spin_deadline:
                    # Let the loop run what else is ready (timers, other
                    # connections), then poll on.
                    self._call_soon(self.loop_spin_slice)
                    return
                caught = False
                break
        self.spinning = False
        self._spin.record(caught)
        if caught or ring.has_data():
            self.on_wake()
        else:
            # Nothing came: sleep on the doorbell (raise the flag, then re-check).
            self._go_idle()

    # -- reading -------------------------------------------------------------------

    def on_doorbell(self) -> None:
        """Our eventfd is readable: the peer rang (the loop's selector saw it)."""
        if self._my_bell.take():
            self.on_wake()

    def on_wake(self) -> None:
        """Refill the outbound ring, drain the inbound one, then go idle."""
        if self.finished:
            return
        if self.buffer:
            self.flush()
            if self.finished:
                return
        more = False
        if self.closing:
            self.discard_inbound()
        elif not self.reading_paused:
            more = self.drain_once()
        if self.finished:
            return
        if self.peer_has_closed():
            if self.closing or not self.reading_paused:
                self.peer_closed()
            # else: like a socket's EOF, this one waits for resume_reading().
        elif more:
            # Keep draining from the loop itself, one ring-full per turn so other
            # callbacks interleave: no wake-up while the stream is busy.
            self._call_soon(self.on_wake)
        else:
            self._go_idle()

    def _go_idle(self) -> None:
        """Nothing left to read: ask the peer to ring our bell when it writes."""
        if self.reading_paused:
            return   # we want no data; resume_reading() looks at the ring itself
        if self.spinning:
            return   # the loop is polling the ring; it goes idle itself when it stops
        ring = self._inbound
        # Raise our flag, fence, look at the ring again: data that came meanwhile is
        # read now (the flag lowered again), else the peer rings when it writes.
        if ring.sleep_reader():
            self._call_soon(self.on_wake)
        elif self.peer_has_closed():
            ring.reader_waiting = False
            self._call_soon(self.on_wake)

    def drain_once(self) -> bool:
        """One read of the inbound ring; True if more data is already waiting."""
        ring = self._inbound
        if self._buffered_protocol and (
            not self._bytes_protocol or ring.pending() >= self._direct_copy
        ):
            return self._drain_into()
        try:
            data = ring.read()
        except RingCorrupted as exc:
            self._owner._fatal(exc)
            return False
        if not data:
            return False
        if self._asked_at:
            self._spin.observe(_c_now_ns() - self._asked_at)
            self._asked_at = 0
        if ring.wake_writer():
            self._peer_bell.ring()
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._owner._fatal(exc, "protocol.data_received() failed")
            return False
        return not self.finished and ring.has_data()

    def _drain_into(self) -> bool:
        """drain_once for a BufferedProtocol: the records are copied straight from the
        ring into the buffers it lends (``get_buffer``; a big message's own buffer), the
        one copy out of shared memory.

        Whole records of about ``drain_step`` bytes at a time are copied, consumed
        (the writer may refill their space while we copy the next ones) and then
        reported (``buffer_updated``), up to one ring-full per call. A writer waiting
        for space is woken once half the ring is free, or when we stop: it refills one
        half while we copy the other, for one wake-up per half ring."""
        protocol = self._protocol
        ring = self._inbound
        budget = ring.capacity
        half = budget // 2
        unannounced = 0   # bytes consumed since we last looked whether the writer waits
        while True:
            try:
                pieces, end = ring.peek(self._drain_step)
            except RingCorrupted as exc:
                self._owner._fatal(exc)
                return False
            if not pieces:
                if unannounced and ring.wake_writer():
                    self._peer_bell.ring()
                return False
            if self._asked_at:
                self._spin.observe(_c_now_ns() - self._asked_at)
                self._asked_at = 0
            try:
                filled, moved = self._copy_out(protocol, pieces)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._owner._fatal(exc, "protocol.get_buffer() or buffer_updated() failed")
                return False
            finally:
                for piece in pieces:
                    piece.release()
            if self.finished:
                return False
            # All of it is in our memory: free the ring before the protocol works on it.
            ring.consume(end)
            unannounced += moved
            if unannounced >= half:
                unannounced = 0
                if ring.wake_writer():
                    self._peer_bell.ring()
            if filled:
                try:
                    protocol.buffer_updated(filled)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._owner._fatal(exc, "protocol.buffer_updated() failed")
                    return False
            if self.finished:
                return False
            budget -= moved
            if budget <= 0 or self.reading_paused or self.closing:
                if unannounced and ring.wake_writer():
                    self._peer_bell.ring()
                return ring.has_data()

    def _copy_out(self, protocol: Any, pieces: list[memoryview]) -> tuple[int, int]:
        """Copy ``pieces`` into the buffers ``protocol`` lends, reporting each buffer
        (``buffer_updated``) but the last: returns the bytes copied into that one, not
        reported yet, and the bytes copied in all. Stops early if the protocol ends the
        connection."""
        left = 0
        for piece in pieces:
            left += piece.nbytes
        out: memoryview | None = None
        room = filled = 0
        moved = 0
        for piece in pieces:
            offset = 0
            size = piece.nbytes
            while offset < size:
                if out is None:
                    out = memoryview(protocol.get_buffer(left - moved))
                    room = out.nbytes
                    filled = 0
                    if room <= 0:
                        raise RuntimeError("get_buffer() returned an empty buffer")
                count = min(room - filled, size - offset)
                out[filled : filled + count] = piece[offset : offset + count]
                filled += count
                offset += count
                moved += count
                if filled == room and moved < left:
                    out.release()
                    out = None
                    protocol.buffer_updated(filled)
                    filled = 0
                    if self.finished:
                        return 0, moved
        if out is not None:
            out.release()
        return filled, moved

    def discard_inbound(self) -> None:
        """After close(): drop what arrives, as a closed socket would, so a peer blocked
        on a full ring can finish and close too."""
        ring = self._inbound
        try:
            while ring.read():
                if ring.wake_writer():
                    self._peer_bell.ring()
        except RingCorrupted as exc:
            self._owner._fatal(exc)

    def peer_closed(self) -> None:
        """The peer closed cleanly: all it sent is in the ring. Deliver it, then end."""
        while not self.finished and not self.closing and self.drain_once():
            pass
        if self.finished:
            return
        if not self.closing:
            try:
                self._protocol.eof_received()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._owner._fatal(exc, "protocol.eof_received() failed")
                return
        self._owner._finish(None)

    def clear_buffer(self) -> None:
        self.buffer.clear()
        self.buffered = 0
