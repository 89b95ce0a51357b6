"""The ``shm`` lane: a connection's bytes move through two rings in one shared-memory segment.

Two variants (docs/shm-lane.md), chosen with :func:`resolve_variant`:

* ``memfd`` (Linux): the server makes the segment with ``memfd_create``, sealed against
  shrinking and growing, and two ``eventfd`` doorbells (:mod:`rpc.transports._memfd`,
  :mod:`rpc.transports._doorbell`); the offer names nothing. When the client asks for the
  lane, the server sends the three fds over the connection's Unix socket
  (:meth:`ShmSegment.send_fds`), the client receives them (:func:`receive_segment_fds`)
  and checks them (:meth:`ShmSegment.from_fds`). Nothing is ever named in ``/dev/shm``.
* ``posix`` (portable): POSIX named shared memory and two named semaphores. The client
  maps the names (``open``), checks the nonce the offer carries against the one the server
  wrote in the segment and writes it back as its acknowledgement; the server checks it
  (``confirm_attached``). Every name is unlinked as soon as both sides hold the objects.

Then each side wraps its segment in a :class:`ShmTransport`, which implements the lanes'
seam (:mod:`rpc.transports._seam`). What the transport does per message (ring writes,
wake-ups, the drain into the protocol, the poll for an answer) is its
:class:`~rpc.transports._pump.RingPump`'s, which ``setup.py`` compiles with the ring.

Layout of a segment (offsets in bytes; ``cap`` is the ring capacity, a power of two)::

    0            8    magic b"LANERPC1"
    8            4    layout version (1)
    16           8    ring capacity
    64           8    server closed flag   (one cache line each)
    128          8    client closed flag
    192          32   nonce, written by the server at creation (posix)
    256          32   acknowledgement, the client writes the nonce here once it has mapped
    512          256 + cap   ring client -> server   (layout in rpc.transports._ring)
    768 + cap    256 + cap   ring server -> client

Waking up. Each side has one *doorbell* it sleeps on; the other side rings it when it
publishes data the sleeper waits for (the ring's ``reader_waiting`` flag) or frees space
it waits for (``writer_waiting``), or when it closes. A ring (a system call) is paid only
when the flag says the peer sleeps: the sleeper sets its flag, fences, re-checks the ring,
and only then sleeps; the producer publishes, fences, then reads the flag (a Dekker
handshake; :class:`StoreLoadFence`). A busy stream rings nothing.

memfd: the doorbell is an eventfd the event loop's own selector watches (``add_reader``):
no thread between a ring and the loop, and an idle connection runs nothing at all.
posix: a semaphore, which only a thread can wait on: a waiter thread per connection
blocks on it (5 s timeout) and wakes the loop with ``call_soon_threadsafe``.

On top of that, after a write (a request, a response) the loop itself polls the inbound
ring for the answer, with its ``reader_waiting`` flag lowered, in 10 us slices between
which other callbacks run; a catch costs no wake-up at all on either side, a miss raises
the flag and re-checks (the same Dekker order) before sleeping. :class:`AnswerSpin` sizes
that poll from measured answer times (at most ``loop_spin_us``, 200 us by default), backs
off after a miss and probes again within 64 writes, and never spins on one CPU; nothing
spins without a write, so idle costs nothing.

Only x86-64 Linux is supported: the rings rely on its store order (see
:mod:`rpc.transports._ring`); elsewhere :class:`ShmUnavailable` tells the caller to stay on
the Unix socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import mmap
import os
import platform
import re
import secrets
import struct
import sys
import threading
import time
import weakref
from typing import Any, Literal

from . import _memfd
from ._doorbell import EventfdDoorbell, SemaphoreDoorbell, eventfd_supported
from ._memfd import MemfdRejected
from ._pump import RingPump
from ._ring import (
    MAX_CAPACITY,
    MIN_CAPACITY,
    RingCorrupted,
    ShmRing,
    StoreLoadFence,
)
from ._seam import PeerInfo, is_this_process, peer_info
from ._spin import AdaptiveSpin, AnswerSpin

try:
    import posix_ipc
except ImportError:  # pragma: no cover - posix_ipc is a Linux dependency of the project
    posix_ipc = None

__all__ = (
    "AdaptiveSpin",
    "AnswerSpin",
    "DEFAULT_RING_CAPACITY",
    "MemfdRejected",
    "RingCorrupted",
    "SHM_VARIANTS",
    "SegmentLayout",
    "ShmForkError",
    "ShmOffer",
    "ShmSegment",
    "ShmTransport",
    "ShmUnavailable",
    "receive_segment_fds",
    "resolve_variant",
    "send_decline",
)

_log = logging.getLogger("lanerpc.shm")

Side = Literal["server", "client"]
# "memfd": a sealed memfd and two eventfds passed over the control socket (Linux);
# "posix": POSIX named shared memory and named semaphores (portable). "auto": the first
# this system supports.
Variant = Literal["memfd", "posix"]
SHM_VARIANTS = ("auto", "memfd", "posix")

DEFAULT_RING_CAPACITY = 1 << 20    # per direction; a 16 MiB message streams in 16 pieces
# A sleeping posix waiter re-checks its connection this often: it bounds a lost wake-up
# and notices a loop closed under a live connection. At 1 s, 100 idle connections cost
# 1.3-1.7 % of a core (measured); at 5 s, a fifth of that.
IDLE_WAIT_SECONDS = 5.0
DEFAULT_LOOP_SPIN_US = 200.0       # the ceiling of the loop's poll for an answer (0: off)
# The least the loop polls after a write, as long as the socket lanes keep awake
# (rpc._link.Link._AWAKE_US): on an idle 2-vCPU VM, with answers typically 6-7 µs,
# p99 of a unary echo 41-50 µs against 45-56 with a 10 µs floor (three pairs of runs of
# 10,000 calls; beside a busy process no difference).
LOOP_SPIN_MIN_US = 50.0
LOOP_SPIN_MAX_PROBE_GAP = 64       # backed off, the loop still spins after every 64th write
# The reader frees the ring after copying about this many bytes out (whole records), so
# a message bigger than the ring streams: the writer refills one part while the reader
# copies the next.
_DRAIN_STEP = 256 * 1024
# Less than this many bytes waiting, and a buffered protocol that also takes bytes (the
# link's): one read() into bytes (one C call), data_received. More: straight into the
# protocol's buffers (RingPump._drain_into): a copy fewer, but two protocol calls a step.
_DIRECT_COPY = 64 * 1024
LOOP_SPIN_SLICE_US = 10.0          # the loop polls this long per callback, then yields
NAME_PREFIX = "/lanerpc-"
_NAME_PATTERN = re.compile(r"/lanerpc-[0-9a-f]{32,64}")
# glibc's sem_open(O_CREAT) writes a new semaphore under a temporary name (sem.XXXXXX),
# then links it to the real one and unlinks the temporary: a process killed in between
# leaves the temporary, which no one can ever open by name. One older than this is such
# an orphan (the window is microseconds).
_SEM_TEMP_PATTERN = re.compile(r"sem\.[A-Za-z0-9]{6}")
_SEM_TEMP_AGE = 0.5
NONCE_SIZE = 32

_MAGIC = b"LANERPC1"
_LAYOUT_VERSION = 1
_SEGMENT_HEADER = struct.Struct("<8sII Q")   # magic, version, reserved, ring capacity
SEGMENT_HEADER_SIZE = 512
# Indexes into the segment header seen as u64s (offset / 8).
_SERVER_CLOSED = 64 // 8
_CLIENT_CLOSED = 128 // 8
_NONCE_OFFSET = 192
_ACK_OFFSET = 256


class ShmUnavailable(Exception):
    """The shm lane cannot be used for this connection; stay on the lane you have."""


class ShmForkError(RuntimeError):
    """A segment or transport inherited through ``os.fork()`` was used in the child."""


# The pid of this process, refreshed in a forked child, so the hot path compares two
# ints instead of making a getpid() system call.
_this_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _this_pid
    _this_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _fork_error(what: str, owner_pid: int) -> ShmForkError:
    return ShmForkError(
        f"this {what} belongs to process {owner_pid} and was inherited by fork() into"
        f" process {_this_pid}; shared-memory connections cannot be shared with a child:"
        " open a new connection in the child"
    )


def _require_support(variant: Variant = "posix") -> None:
    if variant == "posix" and posix_ipc is None:
        raise ShmUnavailable("posix_ipc is not installed")
    if variant == "memfd" and not _memfd_available():
        raise ShmUnavailable("this system has no sealed memfds, eventfds or fd passing")
    if not sys.platform.startswith("linux"):
        raise ShmUnavailable(f"the shm lane needs Linux, not {sys.platform}")
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        # The rings publish with plain stores, which is only correct under x86-64's
        # total store order; see rpc.transports._ring.
        raise ShmUnavailable(f"the shm lane needs x86-64 memory ordering, not {machine}")


_memfd_support: bool | None = None


def _memfd_available() -> bool:
    global _memfd_support
    if _memfd_support is None:
        _memfd_support = _memfd.memfd_supported() and eventfd_supported()
    return _memfd_support


def resolve_variant(choice: str) -> Variant:
    """The variant the lane uses for ``choice`` (one of :data:`SHM_VARIANTS`).

    ``"auto"`` is ``"memfd"`` where the system has sealed memfds and eventfds, else
    ``"posix"``. Raises ValueError for any other name."""
    if choice == "auto":
        return "memfd" if _memfd_available() else "posix"
    if choice == "memfd":
        return "memfd"
    if choice == "posix":
        return "posix"
    raise ValueError(f"shm variant must be one of {', '.join(SHM_VARIANTS)}; got {choice!r}")


def _random_name() -> str:
    # The creator's pid (8 hex digits), then 128 random bits: sweep_orphans() can tell
    # whose a name is, and the name still matches what any client accepts.
    return f"{NAME_PREFIX}{os.getpid() & 0xFFFFFFFF:08x}{secrets.token_hex(16)}"


SHM_DIR = "/dev/shm"               # where Linux keeps POSIX named segments and semaphores
_SWEEP_INTERVAL = 1.0              # seconds: create() looks for orphans at most this often
_last_sweep = -_SWEEP_INTERVAL


def sweep_orphans(directory: str = SHM_DIR) -> int:
    """Unlink this lane's names whose creator is dead, and half-made semaphores a
    killed sem_open left (see ``_SEM_TEMP_PATTERN``); returns how many.

    A server killed (SIGKILL: nothing runs) between making a segment and the client
    opening it leaves its names behind: both sides unlink them as soon as both hold
    them, so only that window can leak. Names carry the creator's pid; a name of our
    uid whose pid is gone is removed. Names of other uids, of live pids and of the
    older format (no pid) are left alone. A creator in another pid namespace that
    shares this ``/dev/shm`` can look dead: its pending offer then fails and that one
    connection stays on the Unix socket (the names live only for the handshake)."""
    prefix = NAME_PREFIX.lstrip("/")
    uid = os.geteuid()
    removed = 0
    try:
        entries = os.listdir(directory)
    except OSError:
        return 0
    for entry in entries:
        if _SEM_TEMP_PATTERN.fullmatch(entry):
            removed += _unlink_sem_temp(os.path.join(directory, entry), uid)
            continue
        name = entry[4:] if entry.startswith("sem.") else entry
        digits = name[len(prefix):]
        if not name.startswith(prefix) or len(digits) != 40 or not _NAME_PATTERN.fullmatch("/" + name):
            continue
        pid = int(digits[:8], 16)
        if pid == os.getpid() or _alive(pid):
            continue
        path = os.path.join(directory, entry)
        try:
            if os.lstat(path).st_uid != uid:
                continue
            os.unlink(path)
            removed += 1
        except OSError:
            continue
    if removed:
        _log.info("removed %d shared-memory name(s) left by dead processes", removed)
    return removed


def _unlink_sem_temp(path: str, uid: int) -> int:
    """Unlink a half-made semaphore of our uid that sem_open's killed caller left."""
    try:
        info = os.lstat(path)
        if info.st_uid != uid or time.time() - info.st_mtime < _SEM_TEMP_AGE:
            return 0
        os.unlink(path)
        return 1
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True          # not a pid we could have written: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True          # exists, another uid's
    return True


def _sweep_now_and_then() -> None:
    global _last_sweep
    now = time.monotonic()
    if now - _last_sweep >= _SWEEP_INTERVAL:
        _last_sweep = now
        sweep_orphans()


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentLayout:
    """Where things are in a segment of a given ring capacity."""

    ring_capacity: int
    c2s_offset: int        # the client -> server ring's region
    s2c_offset: int        # the server -> client ring's region
    size: int              # the whole segment

    @classmethod
    def for_capacity(cls, ring_capacity: int) -> SegmentLayout:
        ring_size = ShmRing.region_size(ring_capacity)   # raises ValueError if insane
        return cls(
            ring_capacity=ring_capacity,
            c2s_offset=SEGMENT_HEADER_SIZE,
            s2c_offset=SEGMENT_HEADER_SIZE + ring_size,
            size=SEGMENT_HEADER_SIZE + 2 * ring_size,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ShmOffer:
    """What the server tells the client over the control channel.

    ``semaphores`` is (the server's doorbell, the client's doorbell). The nonce lets
    the client check that the segment it mapped is the one this server created, not a
    namesake in another ``/dev/shm``; the client then writes it into the segment, which
    proves to the server that the client mapped the same memory.
    """

    segment: str
    semaphores: tuple[str, ...]
    ring_capacity: int
    nonce: bytes
    # "posix": the names above. "memfd": no names and no nonce; the segment and the
    # doorbells follow as fds over the control socket once the client asks for the lane.
    variant: Variant = "posix"

    def check(self) -> None:
        """Raise ShmUnavailable unless every field is one the lane could have made."""
        capacity = self.ring_capacity
        if not (
            isinstance(capacity, int)
            and MIN_CAPACITY <= capacity <= MAX_CAPACITY
            and capacity & (capacity - 1) == 0
        ):
            raise ShmUnavailable(f"shm offer has an impossible ring capacity: {capacity!r}")
        if self.variant == "memfd":
            if self.segment or self.semaphores or self.nonce:
                raise ShmUnavailable("a memfd shm offer names nothing and carries no nonce")
            return
        if self.variant != "posix":
            raise ShmUnavailable(f"shm offer of an unknown variant: {self.variant!r}")
        if not isinstance(self.semaphores, tuple) or len(self.semaphores) != 2:
            raise ShmUnavailable("shm offer must name two semaphores, as a tuple")
        names = (self.segment, *self.semaphores)
        for name in names:
            if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
                raise ShmUnavailable(f"shm offer has a name the lane never makes: {name!r}")
        if len(set(names)) != 3:
            raise ShmUnavailable("shm offer must name three different objects")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_SIZE:
            raise ShmUnavailable(f"shm offer nonce must be {NONCE_SIZE} bytes")


Doorbell = EventfdDoorbell | SemaphoreDoorbell


def _close_parts(mapping: mmap.mmap | None, bells: list[Any]) -> None:
    """Close what a failed create() or open() had made so far."""
    for bell in bells:
        bell.close()
    if mapping is not None:
        mapping.close()


def _unlink_names(segment: str, semaphores: tuple[str, ...]) -> None:
    """Remove the names (never the objects, which live while mapped/open). Idempotent."""
    if posix_ipc is None:
        return
    names = [(posix_ipc.unlink_shared_memory, segment)]
    names += [(posix_ipc.unlink_semaphore, name) for name in semaphores]
    for unlink, name in names:
        try:
            unlink(name)
        except posix_ipc.ExistentialError:
            pass
        except posix_ipc.Error as exc:
            _log.debug("cannot unlink %s: %s", name, exc)


def _unlink_if_owner(owner_pid: int, segment: str, semaphores: tuple[str, ...]) -> None:
    # Finalizer safety net for a segment dropped without close(); a forked child must
    # not remove names its parent still relies on.
    if os.getpid() == owner_pid:
        _unlink_names(segment, semaphores)


class ShmSegment:
    """One connection's shared memory: the two rings, the flags and the two doorbells.

    Made by :meth:`create` (server), then :meth:`open` (client, the posix variant) or
    :meth:`from_fds` (client, the memfd variant). A :class:`ShmTransport` takes
    ownership of it; otherwise call :meth:`close` when done (also on failure paths: it
    unlinks whatever names are still there).
    """

    def __init__(
        self,
        side: Side,
        offer: ShmOffer,
        mapping: mmap.mmap,
        bells: list[Doorbell],
        memfd: int = -1,
    ) -> None:
        # Use create(), open() or from_fds(); this only assembles the parts they made.
        self.side: Side = side
        self.offer = offer
        self.variant: Variant = offer.variant
        self.layout = SegmentLayout.for_capacity(offer.ring_capacity)
        self.pid = _this_pid
        self._mapping = mapping
        self._memfd = memfd      # the server keeps it until it has sent it
        self._view = memoryview(mapping)
        self._flags = self._view[:SEGMENT_HEADER_SIZE].cast("Q")
        layout = self.layout
        ring_size = ShmRing.region_size(offer.ring_capacity)
        self.c2s = ShmRing(
            self._view[layout.c2s_offset : layout.c2s_offset + ring_size], offer.ring_capacity
        )
        self.s2c = ShmRing(
            self._view[layout.s2c_offset : layout.s2c_offset + ring_size], offer.ring_capacity
        )
        self.server_bell, self.client_bell = bells
        self._closed = False
        # Names exist only in the posix variant; a memfd segment has none to leak.
        self._unlinked = self.variant == "memfd"
        self._finalizer = weakref.finalize(
            self, _unlink_if_owner, self.pid, offer.segment, offer.semaphores
        )
        if self._unlinked:
            self._finalizer.detach()

    # -- making one ----------------------------------------------------------------

    @classmethod
    def create(
        cls, ring_capacity: int = DEFAULT_RING_CAPACITY, variant: str = "auto"
    ) -> tuple[ShmSegment, ShmOffer]:
        """Server side: a fresh segment and doorbells, and the offer describing them.

        ``variant`` is one of :data:`SHM_VARIANTS`. Raises ShmUnavailable when shared
        memory cannot be used here (no posix_ipc, not x86-64 Linux, ``/dev/shm`` full or
        not writable, no memfd for ``"memfd"``), ValueError for a capacity that is not a
        power of two in range or an unknown variant.
        """
        chosen = resolve_variant(variant)
        if chosen == "memfd":
            return cls._create_memfd(ring_capacity)
        return cls._create_posix(ring_capacity)

    @classmethod
    def _create_memfd(cls, ring_capacity: int) -> tuple[ShmSegment, ShmOffer]:
        _require_support("memfd")
        layout = SegmentLayout.for_capacity(ring_capacity)
        offer = ShmOffer(segment="", semaphores=(), ring_capacity=ring_capacity, nonce=b"",
                         variant="memfd")
        memfd = -1
        mapping: mmap.mmap | None = None
        bells: list[Any] = []
        try:
            try:
                memfd = _memfd.create_sealed(layout.size)
                mapping = mmap.mmap(memfd, layout.size)
                bells = [EventfdDoorbell.create(), EventfdDoorbell.create()]
            except OSError as exc:
                raise ShmUnavailable(f"cannot make a sealed shared-memory segment: {exc}") from exc
            _SEGMENT_HEADER.pack_into(mapping, 0, _MAGIC, _LAYOUT_VERSION, 0, ring_capacity)
            segment = cls("server", offer, mapping, bells, memfd)
        except BaseException:
            _close_parts(mapping, bells)
            if memfd >= 0:
                os.close(memfd)
            raise
        return segment, offer

    @classmethod
    def _create_posix(cls, ring_capacity: int) -> tuple[ShmSegment, ShmOffer]:
        _require_support("posix")
        _sweep_now_and_then()      # what killed servers left in their setup window
        layout = SegmentLayout.for_capacity(ring_capacity)
        offer = ShmOffer(
            segment=_random_name(),
            semaphores=(_random_name(), _random_name()),
            ring_capacity=ring_capacity,
            nonce=secrets.token_bytes(NONCE_SIZE),
        )
        mapping: mmap.mmap | None = None
        bells: list[Any] = []
        try:
            try:
                shm = posix_ipc.SharedMemory(
                    offer.segment, posix_ipc.O_CREX, mode=0o600, size=0
                )
            except (posix_ipc.Error, OSError) as exc:
                raise ShmUnavailable(f"cannot create a shared-memory segment: {exc}") from exc
            try:
                # Reserve every page now: on a full tmpfs a plain ftruncate'd segment is
                # created fine and the process dies of SIGBUS on first touch instead.
                os.posix_fallocate(shm.fd, 0, layout.size)
                mapping = mmap.mmap(shm.fd, layout.size)
            except OSError as exc:
                raise ShmUnavailable(
                    f"cannot reserve {layout.size} bytes of shared memory: {exc.strerror or exc}"
                ) from exc
            finally:
                shm.close_fd()
            for name in offer.semaphores:
                try:
                    bells.append(SemaphoreDoorbell(
                        posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=0),
                        posix_ipc,
                    ))
                except (posix_ipc.Error, OSError) as exc:
                    raise ShmUnavailable(f"cannot create a semaphore: {exc}") from exc
            _SEGMENT_HEADER.pack_into(mapping, 0, _MAGIC, _LAYOUT_VERSION, 0, ring_capacity)
            mapping[_NONCE_OFFSET : _NONCE_OFFSET + NONCE_SIZE] = offer.nonce
            segment = cls("server", offer, mapping, bells)
        except BaseException:
            _unlink_names(offer.segment, offer.semaphores)
            _close_parts(mapping, bells)
            raise
        return segment, offer

    @classmethod
    def open(cls, offer: ShmOffer) -> ShmSegment:
        """Client side: map what the offer names, check it, acknowledge, unlink the names.

        Raises ShmUnavailable for anything that makes the lane unusable: a malformed
        offer, names missing from our ``/dev/shm`` (another mount namespace), a segment
        of the wrong size or content, a nonce that does not match.
        """
        _require_support("posix")
        offer.check()
        if offer.variant != "posix":
            raise ShmUnavailable("a memfd offer is opened with the fds it sends (from_fds)")
        layout = SegmentLayout.for_capacity(offer.ring_capacity)
        mapping: mmap.mmap | None = None
        bells: list[Any] = []
        try:
            try:
                shm = posix_ipc.SharedMemory(offer.segment)
            except posix_ipc.ExistentialError as exc:
                raise ShmUnavailable(
                    f"offered segment {offer.segment} does not exist here (is /dev/shm shared"
                    " with the server?)"
                ) from exc
            except (posix_ipc.Error, OSError) as exc:
                raise ShmUnavailable(f"cannot open the offered segment: {exc}") from exc
            try:
                if shm.size != layout.size:
                    raise ShmUnavailable(
                        f"offered segment is {shm.size} bytes, expected {layout.size}"
                    )
                mapping = mmap.mmap(shm.fd, layout.size)
            except OSError as exc:
                raise ShmUnavailable(f"cannot map the offered segment: {exc}") from exc
            finally:
                shm.close_fd()
            # Each header value is copied out once, then compared.
            magic, version, _, capacity = _SEGMENT_HEADER.unpack_from(mapping, 0)
            nonce = mapping[_NONCE_OFFSET : _NONCE_OFFSET + NONCE_SIZE]
            if magic != _MAGIC or version != _LAYOUT_VERSION or capacity != offer.ring_capacity:
                raise ShmUnavailable("offered segment does not hold a lanerpc ring pair")
            if not hmac.compare_digest(nonce, offer.nonce):
                raise ShmUnavailable("offered segment holds another nonce: not this server's")
            for name in offer.semaphores:
                try:
                    bells.append(SemaphoreDoorbell(posix_ipc.Semaphore(name), posix_ipc))
                except (posix_ipc.Error, OSError) as exc:
                    raise ShmUnavailable(f"cannot open offered semaphore {name}: {exc}") from exc
            # The proof the server checks: only a process with this memory mapped can
            # write into it.
            mapping[_ACK_OFFSET : _ACK_OFFSET + NONCE_SIZE] = offer.nonce
            segment = cls("client", offer, mapping, bells)
        except BaseException:
            _close_parts(mapping, bells)
            raise
        # Both sides hold everything open now: the names have done their job.
        segment.unlink()
        return segment

    @classmethod
    def from_fds(cls, offer: ShmOffer, message: bytes, fds: list[int]) -> ShmSegment:
        """Client side of the memfd variant: the segment the server sent as fds.

        Takes ownership of ``fds`` (what :func:`rpc.transports._memfd.receive_fds`
        returned): every one is closed unless it becomes part of the segment. Raises
        ShmUnavailable (a MemfdRejected as its cause) unless they are exactly a memfd
        sealed against resizing, of this offer's size, holding a ring pair of its
        capacity, and two eventfds in semaphore mode.
        """
        try:
            offer.check()
            if offer.variant != "memfd":
                raise ShmUnavailable("fds were sent for an offer of named objects")
            _require_support("memfd")
        except BaseException:
            _memfd.close_all(fds)
            raise
        layout = SegmentLayout.for_capacity(offer.ring_capacity)
        try:
            memfd, server_fd, client_fd = _memfd.check_received(message, fds, layout.size)
        except MemfdRejected as exc:
            raise ShmUnavailable(f"the shm segment's fds are refused: {exc}") from exc
        mapping: mmap.mmap | None = None
        try:
            try:
                mapping = mmap.mmap(memfd, layout.size)
            except OSError as exc:
                raise ShmUnavailable(f"cannot map the shm segment: {exc}") from exc
            magic, version, _, capacity = _SEGMENT_HEADER.unpack_from(mapping, 0)
            if magic != _MAGIC or version != _LAYOUT_VERSION or capacity != offer.ring_capacity:
                raise ShmUnavailable("the shm segment does not hold a lanerpc ring pair")
            segment = cls("client", offer, mapping,
                          [EventfdDoorbell(server_fd), EventfdDoorbell(client_fd)])
        except BaseException:
            if mapping is not None:
                mapping.close()
            _memfd.close_all([server_fd, client_fd])
            raise
        finally:
            os.close(memfd)       # the mapping keeps the memory
        return segment

    def fds_to_send(self) -> list[int]:
        """Server side of the memfd variant: the memfd and the two doorbells, in the
        order :meth:`from_fds` takes them (still ours: sending duplicates them)."""
        if self._memfd < 0:
            raise ShmUnavailable("this segment has no fds to send (posix variant, or closed)")
        server_bell, client_bell = self.server_bell, self.client_bell
        assert isinstance(server_bell, EventfdDoorbell) and isinstance(client_bell, EventfdDoorbell)
        return [self._memfd, server_bell.fd, client_bell.fd]

    def send_fds(self, fileno: int) -> None:
        """Server side of the memfd variant: send the segment's fds (and the grant marker
        they ride on) on the connected Unix socket ``fileno``, then drop our memfd fd.
        Raises ShmUnavailable if the socket does not take them."""
        try:
            _memfd.send_fds(fileno, _memfd.GRANTED, self.fds_to_send())
        except OSError as exc:
            raise ShmUnavailable(f"cannot send the segment's fds: {exc}") from exc
        self.fds_sent()

    def fds_sent(self) -> None:
        """The client holds its copies now: our memfd fd is no longer needed (the
        mapping keeps the memory)."""
        if self._memfd >= 0:
            fd, self._memfd = self._memfd, -1
            os.close(fd)

    @staticmethod
    def discard(offer: ShmOffer) -> None:
        """Client side: unlink the names of an offer it will not open.

        A client that received an offer and gives up on it (timeout, lanes option, the
        server's control channel closed) calls this, so a server that died after
        sending the offer leaves nothing behind either.
        """
        try:
            offer.check()
        except ShmUnavailable:
            return   # never unlink names we did not recognise as the lane's
        if offer.variant != "posix":
            return   # nothing named
        _unlink_names(offer.segment, offer.semaphores)

    def confirm_attached(self) -> None:
        """Server side: check the client's acknowledgement in the segment, then unlink.

        Call it when the client says (over the control channel) that it opened the
        offer. Raises ShmUnavailable if the client did not map this segment; the
        names are unlinked either way.
        """
        self._check_owner()
        if self.variant == "memfd":
            return   # the fds went over the proven socket: there is no namesake to rule out
        try:
            ack = self._mapping[_ACK_OFFSET : _ACK_OFFSET + NONCE_SIZE]
            if not hmac.compare_digest(ack, self.offer.nonce):
                raise ShmUnavailable(
                    "the client did not acknowledge in the segment: it mapped other memory"
                )
        finally:
            self.unlink()

    # -- releasing it --------------------------------------------------------------

    def unlink(self) -> None:
        """Remove the segment's and doorbells' names; mappings stay valid. Idempotent."""
        self._check_owner()
        if self._unlinked:
            return
        self._unlinked = True
        _unlink_names(self.offer.segment, self.offer.semaphores)
        self._finalizer.detach()

    def close(self) -> None:
        """Unlink, unmap and close the doorbells. Idempotent.

        Only when no thread can still be inside a ring or blocked on a doorbell: a
        :class:`ShmTransport` that owns the segment calls it after its waiter thread
        has ended.
        """
        if self._closed:
            return
        self._check_owner()
        self.unlink()
        self._closed = True
        self.c2s.release()
        self.s2c.release()
        self._flags.release()
        self._view.release()
        self._mapping.close()
        self.server_bell.close()
        self.client_bell.close()
        self.fds_sent()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def name(self) -> str:
        return self.offer.segment or "memfd"

    # -- for the transport ---------------------------------------------------------

    def _check_owner(self) -> None:
        if self.pid != _this_pid:
            raise _fork_error("shared-memory segment", self.pid)

    def _closed_flag_index(self, side: Side) -> int:
        return _SERVER_CLOSED if side == "server" else _CLIENT_CLOSED

    def _set_closed(self, side: Side) -> None:
        self._flags[self._closed_flag_index(side)] = 1

    def _is_closed(self, side: Side) -> bool:
        return self._flags[self._closed_flag_index(side)] != 0


# What a finished transport points to instead of its protocol.
_DETACHED = asyncio.BaseProtocol()


class _ControlChannelWatch(asyncio.Protocol):
    """Takes over the control channel after the upgrade: its EOF means the peer is gone."""

    def __init__(self, owner: ShmTransport) -> None:
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        # After the handover nothing travels on the control channel; a peer that
        # writes there is not following the protocol.
        self._owner._control_channel_misused(len(data))

    def eof_received(self) -> bool:
        self._owner._control_channel_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._control_channel_lost(exc)


class ShmTransport(asyncio.Transport):
    """One side of a shared-memory connection, as an asyncio transport (the lanes' seam).

    Takes ownership of ``segment`` (closed when the connection ends) and of
    ``control_transport`` if given: that one's protocol is replaced, it must carry
    nothing more, and its EOF or loss ends this connection (with ConnectionResetError,
    unless the peer had closed the rings cleanly first). Without a control channel, a
    peer that dies without closing is not noticed.

    Anything wrong in the rings ends the connection with
    ``connection_lost(RingCorrupted(...))`` and nothing else.

    Threads: everything runs on the event loop. memfd variant: the loop watches this
    side's eventfd itself. posix variant: one waiter thread blocks on this side's
    semaphore and calls ``loop.call_soon_threadsafe``. The loop raises the
    ``reader_waiting`` flag itself when it has drained the inbound ring, and
    ``writer_waiting`` when the outbound ring is full. ``loop_spin_us`` (0 turns it
    off) is the longest the loop polls the inbound ring for an answer right after a
    write before it goes back to sleeping on the doorbell (:class:`AnswerSpin`).

    A :class:`asyncio.BufferedProtocol` is filled from the ring straight into the
    buffers it gives; any other protocol gets ``data_received(bytes)``, one ring-full
    (at most the capacity) at a time.

    ``high_water``/``low_water`` bound the transport's own buffer (bytes that did not
    fit in the ring), as ``set_write_buffer_limits`` does.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        segment: ShmSegment,
        side: Side,
        protocol: asyncio.BaseProtocol,
        control_transport: asyncio.BaseTransport | None = None,
        *,
        high_water: int = 64 * 1024,
        low_water: int | None = None,
        loop_spin_us: float = DEFAULT_LOOP_SPIN_US,
    ) -> None:
        segment._check_owner()
        if side != segment.side:
            raise ValueError(f"segment was made for the {segment.side} side, not {side}")
        if segment.closed:
            raise ValueError("segment is closed")
        super().__init__()
        self._loop = loop
        self._segment = segment
        self._side: Side = side
        self._peer_side: Side = "client" if side == "server" else "server"
        self._protocol: asyncio.BaseProtocol = protocol
        self._pid = segment.pid
        if side == "server":
            self._inbound, self._outbound = segment.c2s, segment.s2c
            self._my_bell, self._peer_bell = segment.server_bell, segment.client_bell
        else:
            self._inbound, self._outbound = segment.s2c, segment.c2s
            self._my_bell, self._peer_bell = segment.client_bell, segment.server_bell

        self._control = control_transport
        if control_transport is not None:
            known = peer_info(control_transport)
            self._peer = PeerInfo("shm", known.address, known.pid, known.uid, known.gid)
        else:
            self._peer = PeerInfo("shm", f"shm:{segment.name}")
        self._extra_info: dict[str, Any] = {"lanerpc_peer": self._peer}

        # After a write, the loop itself polls the inbound ring for an answer (see the
        # module docstring); this sizes the poll, loop_spin_us at most (0: never). Not
        # when the peer is this very process: its answer needs this process's CPU (on
        # this loop, or on another thread, with the GIL the poll holds), so a poll can
        # only hold it up (client and server on one loop: 31 µs of CPU per unary call
        # with the poll, 17 without).
        if is_this_process(self._peer):
            loop_spin_us = 0.0
        self._loop_spin = AnswerSpin(loop_spin_us, min_spin_us=LOOP_SPIN_MIN_US,
                                     max_probe_gap=LOOP_SPIN_MAX_PROBE_GAP)
        # The per-message work and the state it keeps (closing, finished, paused,
        # the buffer): the pump, compiled where the hot path is.
        self._pump = RingPump(
            self, loop, self._inbound, self._outbound, segment._flags,
            segment._closed_flag_index(self._peer_side), self._peer_bell, self._my_bell,
            protocol, self._loop_spin,
            spin_slice_ns=int(LOOP_SPIN_SLICE_US * 1000),
            drain_step=_DRAIN_STEP, direct_copy=_DIRECT_COPY,
        )
        self.set_write_buffer_limits(high_water, low_water)

        # One fence per thread (see StoreLoadFence): closing fences its flag before
        # the last ring; the rings fence their own handshakes.
        self._fence = StoreLoadFence()
        self._stopping = False        # tells the waiter thread to end
        self._wake_scheduled = False  # a wake-up from the waiter is queued on the loop
        if control_transport is not None:
            # Only now, with the pump made: the watch reports the peer's going to it.
            control_transport.set_protocol(_ControlChannelWatch(self))

        # The memfd variant's doorbell is an eventfd the loop watches itself; the posix
        # variant's is a semaphore, which only a thread can wait on.
        self._watched_bell = isinstance(self._my_bell, EventfdDoorbell)
        self._waiter: threading.Thread | None = None
        if not self._watched_bell:
            self._waiter = threading.Thread(
                target=self._waiter_main,
                name=f"lanerpc-shm-waiter-{side}",
                daemon=True,
            )
            self._waiter.start()
        loop.call_soon(self._start)

    # -- the seam: writing ---------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; never blocks. What does not fit in the ring is buffered."""
        if self._pid != _this_pid:
            raise _fork_error("shm transport", self._pid)
        self._pump.write(data)

    def writelines(self, list_of_data: Any) -> None:
        """A batch of up to ``_JOIN_LIMIT`` bytes is joined into one record (one ring
        write, one wake-up check). In a bigger batch small buffers are joined in runs of
        about ``_JOIN_LIMIT`` bytes and each buffer of ``_OWN_RECORD`` bytes or more goes
        into the ring as it is (no join: the ring copy is the only one). What does not
        fit is buffered, in order, as write() does."""
        if self._pid != _this_pid:
            raise _fork_error("shm transport", self._pid)
        self._pump.writelines(list_of_data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("the shm lane has no half-close")

    def get_write_buffer_size(self) -> int:
        return self._pump.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._pump.low_water, self._pump.high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._pump.high_water, self._pump.low_water = high, low
        self._pump.maybe_pause_writing()

    # -- the seam: reading, closing, facts -----------------------------------------

    def pause_reading(self) -> None:
        """Stop delivering data; the peer's writes back up into its ring, then its buffer."""
        self._pump.reading_paused = True

    def resume_reading(self) -> None:
        pump = self._pump
        if pump.reading_paused:
            pump.reading_paused = False
            if not pump.finished:
                self._loop.call_soon(pump.on_wake)

    def is_reading(self) -> bool:
        return not self._pump.reading_paused and not self._pump.closing

    def close(self) -> None:
        """Send what is buffered, then close; ``connection_lost(None)`` follows."""
        if self._pid != _this_pid:
            raise _fork_error("shm transport", self._pid)
        pump = self._pump
        if pump.closing:
            return
        pump.closing = True
        if not pump.buffer:
            self._finish(None)
        # else: the pump's flush() finishes once the buffer has gone into the ring.

    def abort(self) -> None:
        """Close at once, dropping what is buffered; ``connection_lost(None)`` follows."""
        if self._pid != _this_pid:
            raise _fork_error("shm transport", self._pid)
        self._pump.closing = True
        self._finish(None)

    def is_closing(self) -> bool:
        return self._pump.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra_info.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._pump.set_protocol(protocol)

    def __repr__(self) -> str:
        pump = self._pump
        state = "closed" if pump.finished else "closing" if pump.closing else "open"
        return (
            f"<ShmTransport {self._side} {state} ring={self._segment.layout.ring_capacity}"
            f" buffered={pump.buffered}>"
        )

    # -- the loop's side of the rings (the rest is the pump's) ---------------------

    def _start(self) -> None:
        # connection_made comes first even if the connection already ended: asyncio's
        # order is made, [data...], lost, and connection_lost is queued behind us.
        self._protocol.connection_made(self)
        pump = self._pump
        if self._watched_bell and not pump.finished:
            bell = self._my_bell
            assert isinstance(bell, EventfdDoorbell)
            self._loop.add_reader(bell.fd, pump.on_doorbell)
        pump.on_wake()

    @staticmethod
    def _ring_bell(bell: Doorbell) -> None:
        bell.ring()

    def _on_bell(self) -> None:
        """The waiter thread's wake-up."""
        self._wake_scheduled = False
        self._pump.on_wake()

    def _control_channel_lost(self, exc: Exception | None) -> None:
        pump = self._pump
        if pump.finished:
            return
        if self._segment._is_closed(self._peer_side):
            pump.on_wake()   # it closed the rings first: a clean close, not a death
            return
        reason = ConnectionResetError("shm peer is gone: its control channel closed")
        reason.__cause__ = exc
        self._finish(reason)

    def _control_channel_misused(self, size: int) -> None:
        self._fatal(
            ConnectionError(
                f"shm peer sent {size} bytes on the control channel, which carries none"
            )
        )

    def _fatal(self, exc: BaseException, message: str | None = None) -> None:
        if self._pump.finished:
            return
        if message is not None:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        else:
            _log.warning("closing shm connection (%s side): %s", self._side, exc)
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        """Stop using the rings, tell the peer and the waiter, schedule connection_lost."""
        pump = self._pump
        if pump.finished:
            return
        pump.finished = True
        pump.closing = True
        pump.clear_buffer()
        self._segment._set_closed(self._side)
        self._fence()
        self._ring_bell(self._peer_bell)   # whatever its flags say: it must see we closed
        self._stopping = True
        if self._watched_bell:
            bell = self._my_bell
            assert isinstance(bell, EventfdDoorbell)
            if not self._loop.is_closed():
                self._loop.remove_reader(bell.fd)
        else:
            self._ring_bell(self._my_bell)      # our waiter may be asleep on it
        if self._control is not None:
            self._control.close()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            # asyncio's own transports pass on whatever ended them, BaseException included.
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            # Let go of the protocol (as asyncio's transports do): it holds us too, and
            # the cycle would keep both, rings and buffers included, until a full gc.
            self._control = None
            self._protocol = _DETACHED
            self._pump.detach(_DETACHED)
            if self._watched_bell:
                # No thread uses the segment: it goes as soon as the protocol knows.
                self._release_segment()

    # -- the waiter thread ---------------------------------------------------------

    def _waiter_main(self) -> None:
        """Block on our doorbell; wake the loop when it rings. Never touches the rings'
        state except to read (`_has_work`)."""
        try:
            while not self._stopping:
                rung = self._sleep(IDLE_WAIT_SECONDS)
                if self._stopping:
                    return
                # A timeout looks too: it bounds the cost of any lost wake-up, and
                # notices a loop that was closed under a live connection.
                if (rung or self._has_work()) and not self._wake_scheduled:
                    self._wake_scheduled = True
                    try:
                        self._loop.call_soon_threadsafe(self._on_bell)
                    except RuntimeError:   # the loop is closed: nobody left to wake
                        return
                elif self._loop.is_closed():
                    return
        finally:
            self._release_segment_soon()

    def _has_work(self) -> bool:
        """Anything for the loop to do? Read-only hints, safe from the waiter thread."""
        pump = self._pump
        return (
            (not pump.reading_paused and self._inbound.has_data())
            or (pump.buffered > 0 and self._outbound.tail_moved())
            or self._segment._is_closed(self._peer_side)
        )

    def _sleep(self, timeout: float) -> bool:
        """Block on our doorbell up to ``timeout`` seconds; True if it was rung."""
        bell = self._my_bell
        assert isinstance(bell, SemaphoreDoorbell)
        return bell.wait(timeout)

    def _release_segment_soon(self) -> None:
        # The waiter thread was the last one that could block on a doorbell, so the
        # segment can go now. The loop owns it, unless the loop is gone already.
        try:
            self._loop.call_soon_threadsafe(self._release_segment)
        except RuntimeError:
            self._release_segment()

    def _release_segment(self) -> None:
        segment = self._segment
        if segment.pid != _this_pid or segment.closed:
            return
        pump = self._pump
        if not pump.finished:
            # The loop was closed under a live connection: tell the peer we are gone.
            pump.finished = True
            segment._set_closed(self._side)
            self._ring_bell(self._peer_bell)
        segment.close()


def send_decline(fileno: int) -> None:
    """Server side of the memfd variant: tell a client that asked for the lane and waits
    for fds that none are coming (the marker without fds). Raises OSError."""
    _memfd.send_fds(fileno, _memfd.DECLINED, [])


async def receive_segment_fds(
    loop: asyncio.AbstractEventLoop, fileno: int, timeout: float
) -> tuple[bytes, list[int]] | None:
    """Client side of the memfd variant: wait up to ``timeout`` seconds for the server's
    fd message on the Unix socket ``fileno`` (whose transport must not be reading).

    Returns the marker and the fds (owned by the caller, to hand to
    :meth:`ShmSegment.from_fds`), or None if the server declined. Raises
    ShmUnavailable for a message that is neither (fds closed), TimeoutError, or
    ConnectionError if the socket ends first."""
    watch = os.dup(fileno)   # its own fd: the transport's stays registered with the loop
    arrived: asyncio.Future[tuple[bytes, list[int]]] = loop.create_future()

    def readable() -> None:
        if arrived.done():
            return
        try:
            arrived.set_result(_memfd.receive_fds(watch))
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, MemfdRejected) as exc:
            arrived.set_exception(exc)

    loop.add_reader(watch, readable)
    try:
        try:
            message, fds = await asyncio.wait_for(asyncio.shield(arrived), timeout)
        except BaseException:
            if arrived.done() and not arrived.cancelled() and arrived.exception() is None:
                _memfd.close_all(arrived.result()[1])   # came too late: never leak an fd
            raise
    except MemfdRejected as exc:
        raise ShmUnavailable(f"the shm segment's fds are refused: {exc}") from exc
    finally:
        loop.remove_reader(watch)
        os.close(watch)
    if not message:
        _memfd.close_all(fds)
        raise ConnectionError("the server closed the connection during the shm switch")
    if message == _memfd.DECLINED and not fds:
        return None
    return message, fds
