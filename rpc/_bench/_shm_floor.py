"""The bare floors under the shm lane, measured between two processes.

Round trips of a small payload (100 B) through shared memory, woken by POSIX semaphores:

``block``               both sides block in ``sem.acquire()`` for every message
``spin``                poll the sequence counter (AdaptiveSpin, up to 50 us), then sleep
                        with the waiting-flag protocol the lane uses
``thread``              both sides run an asyncio loop; a waiter thread per side only
                        blocks on the semaphore and wakes its loop with
                        call_soon_threadsafe, the loop raises the waiting flag itself:
                        what the shm lane does, so the floor it is compared with
``thread-spin``         the waiter thread and the loop take turns: the waiter spins
                        (AdaptiveSpin) before it raises the flag and blocks
``sockbell``            like ``thread``, but the doorbell is a byte on a Unix socket pair
                        that the loop's selector watches: no waiter thread (not what the
                        lane does; measured to show what the semaphores cost)
``lane``                the real thing: two ShmTransports echoing (transports/shm.py), the
                        variant LANERPC_SHM_VARIANT names (default auto: memfd on Linux)
``lane-nospin``         the same with ``loop_spin_us=0``: no poll on the loop after a
                        write (``lane`` polls, the transport's default)
``lane-posix``          ``lane`` on the posix variant (named objects, a waiter thread)

Prefix a loop kind with ``uvloop-`` (``uvloop-thread``, ``uvloop-lane``...) for uvloop.
``same_cpu=True`` pins both processes to one CPU, where spinning must give up. Each
result also has the CPU time both processes spent per round trip (all threads).

    python -m rpc._bench._shm_floor                 # every kind, 20000 round trips each
    python -m rpc._bench._shm_floor -n 5000 --rounds 7   # each round, then the medians
    python -m rpc._bench._shm_floor -n 5000 block spin --same-cpu

``run_floor(kind, n)`` is what rpc/_bench/_run.py calls (from a worker thread is fine); it
returns p50/p99 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import posix_ipc

from rpc.transports import _memfd
from rpc.transports._ring import StoreLoadFence
from rpc.transports.shm import AdaptiveSpin, ShmOffer, ShmSegment, ShmTransport

# The directory rpc is imported from: the child process imports the same one.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = ("KINDS", "run_floor")

Result = dict[str, Any]   # what run_floor returns (JSON-able)

KINDS = (
    "block",
    "spin",
    "thread",
    "thread-spin",
    "uvloop-thread",
    "uvloop-thread-spin",
    "sockbell",
    "uvloop-sockbell",
    "lane",
    "uvloop-lane",
    "lane-nospin",
    "uvloop-lane-nospin",
    "lane-posix",
    "uvloop-lane-posix",
)

SPIN_US = 50.0
_SEGMENT_SIZE = 4096
# The bare floors' segment, as u64 indexes (one cache line each), and payload offsets.
_PING_SEQ, _PONG_SEQ, _CHILD_WAITING, _PARENT_WAITING, _STOP = 0, 8, 16, 24, 32
_PING_AT, _PONG_AT = 1024, 2048
_IDLE_WAIT = 1.0


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind.startswith("uvloop-"):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _summary(kind: str, n: int, payload: int, same_cpu: bool, samples_ns: list[int]) -> Result:
    samples_ns.sort()
    us = [s / 1000 for s in samples_ns]
    return {
        "kind": kind,
        "n": n,
        "payload": payload,
        "same_cpu": same_cpu,
        "p50_us": round(us[len(us) // 2], 1),
        "p99_us": round(us[min(len(us) - 1, int(len(us) * 0.99))], 1),
        "mean_us": round(statistics.fmean(us), 1),
        "min_us": round(us[0], 1),
    }


# -- the bare floors: one segment, two semaphores, a sequence counter per direction ----


class _Bare:
    """One side's view of the floor segment."""

    def __init__(self, mapping: mmap.mmap, me: posix_ipc.Semaphore, peer: posix_ipc.Semaphore,
                 parent: bool, spin_us: float, bell: socket.socket | None = None) -> None:
        self.mapping = mapping
        self.bell = bell   # sockbell kinds: the doorbell is a byte on this socket
        self.ctl = memoryview(mapping)[:1024].cast("Q")
        self.me, self.peer = me, peer
        self.in_seq, self.out_seq = (_PONG_SEQ, _PING_SEQ) if parent else (_PING_SEQ, _PONG_SEQ)
        self.my_flag, self.peer_flag = (
            (_PARENT_WAITING, _CHILD_WAITING) if parent else (_CHILD_WAITING, _PARENT_WAITING)
        )
        self.in_at, self.out_at = (_PONG_AT, _PING_AT) if parent else (_PING_AT, _PONG_AT)
        self.spin = AdaptiveSpin(spin_us)
        self.fence = StoreLoadFence()          # for the thread that sends
        self.waiter_fence = StoreLoadFence()   # for the thread that waits

    def send(self, seq: int, payload: bytes, always_post: bool) -> None:
        self.mapping[self.out_at : self.out_at + len(payload)] = payload
        self.ctl[self.out_seq] = seq
        if always_post:
            self.peer.release()
            return
        self.fence()
        if self.ctl[self.peer_flag]:
            self.ctl[self.peer_flag] = 0
            self.post_peer()

    def post_peer(self) -> None:
        if self.bell is not None:
            self.bell.send(b"!")
        else:
            self.peer.release()

    def receive(self, size: int) -> bytes:
        return self.mapping[self.in_at : self.in_at + size]

    def wait_changed(self, last: int) -> int:
        """Wait until the inbound counter differs from ``last`` (or stop); return it."""
        ctl, index = self.ctl, self.in_seq

        def ready() -> bool:
            return ctl[index] != last or ctl[_STOP] != 0

        if ready() or self.spin.spin(ready):
            return ctl[index]
        while True:
            ctl[self.my_flag] = 1
            self.waiter_fence()
            if ready():
                ctl[self.my_flag] = 0
                return ctl[index]
            _acquire(self.me, _IDLE_WAIT)
            if ready():
                return ctl[index]


def _acquire(sem: posix_ipc.Semaphore, timeout: float | None) -> bool:
    while True:
        try:
            sem.acquire(timeout)
            return True
        except posix_ipc.BusyError:
            return False
        except posix_ipc.SignalError:
            continue


def _bare_parent(side: _Bare, kind: str, n: int, warmup: int, payload: bytes) -> list[int]:
    samples: list[int] = []
    clock = time.perf_counter_ns
    last = 0
    for i in range(1, n + warmup + 1):
        t0 = clock()
        if kind == "block":
            side.send(i, payload, always_post=True)
            _acquire(side.me, None)
            last = side.ctl[side.in_seq]
        else:
            side.send(i, payload, always_post=False)
            while last != i:
                last = side.wait_changed(last)
        side.receive(len(payload))
        t1 = clock()
        if i > warmup:
            samples.append(t1 - t0)
    return samples


def _bare_child(side: _Bare, kind: str, size: int) -> None:
    last = 0
    while True:
        if kind == "block":
            _acquire(side.me, None)
            if side.ctl[_STOP]:
                return
            last = side.ctl[side.in_seq]
        else:
            last = side.wait_changed(last)
            if side.ctl[_STOP]:
                return
        side.send(last, side.receive(size), always_post=kind == "block")


# -- the event-loop floors: a waiter thread per side wakes the loop --------------------


class _LoopSide:
    """Wakes an event loop when the inbound counter moves, in one of three ways.

    ``handoff`` (spin kinds): the waiter thread and the loop take turns, as in
    ShmTransport with spin_us > 0: the waiter watches (spins, then sleeps) only between
    the loop's ``message_handled()`` and its next wake-up.
    Otherwise the loop itself raises the waiting flag (``message_handled()``) and the
    peer rings when it sees it: on the semaphore, which a waiter thread blocks on, or
    (sockbell kinds) with a byte on a socket the loop's own selector watches, so that
    no thread sits between the doorbell and the loop.
    """

    def __init__(self, bare: _Bare, loop: asyncio.AbstractEventLoop,
                 on_message: Callable[[int], None], handoff: bool) -> None:
        self.bare = bare
        self.loop = loop
        self.on_message = on_message
        self.handoff = handoff
        self.last = 0
        self.rearm = threading.Lock()
        self.thread: threading.Thread | None = None
        if bare.bell is not None:
            bare.bell.setblocking(False)
            loop.add_reader(bare.bell.fileno(), self._bell_readable)
            return
        self.thread = threading.Thread(target=self._main if handoff else self._main_direct,
                                       daemon=True)
        self.thread.start()

    def _bell_readable(self) -> None:
        assert self.bare.bell is not None
        try:
            self.bare.bell.recv(4096)
        except BlockingIOError:
            pass
        self._deliver()

    def _main(self) -> None:
        last = 0
        while True:
            self.rearm.acquire()
            last = self.bare.wait_changed(last)
            stop = self.bare.ctl[_STOP] != 0
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:
                return
            if stop:
                return

    def _main_direct(self) -> None:
        while True:
            woken = _acquire(self.bare.me, _IDLE_WAIT)
            stop = self.bare.ctl[_STOP] != 0
            if woken or stop:
                try:
                    self.loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:
                    return
            if stop:
                return

    def _deliver(self) -> None:
        seq = self.bare.ctl[self.bare.in_seq]
        if seq != self.last or self.bare.ctl[_STOP]:
            self.last = seq
            self.on_message(seq)

    def message_handled(self) -> None:
        """The loop has nothing more to do for now: let the waiter watch again."""
        if self.handoff:
            self.rearm.release()
            return
        bare = self.bare
        bare.ctl[bare.my_flag] = 1
        bare.fence()
        if bare.ctl[bare.in_seq] != self.last:
            bare.ctl[bare.my_flag] = 0
            self.loop.call_soon(self._deliver)

    def stop(self) -> None:
        self.bare.ctl[_STOP] = 1
        if self.thread is not None:
            self.bare.me.release()   # our own waiter, if it sleeps
            self.thread.join(5)


async def _loop_parent(bare: _Bare, n: int, warmup: int, payload: bytes,
                       handoff: bool) -> tuple[list[int], _LoopSide]:
    loop = asyncio.get_running_loop()
    samples: list[int] = []
    clock = time.perf_counter_ns
    waiting: asyncio.Future[int] = loop.create_future()

    def on_message(seq: int) -> None:
        bare.receive(len(payload))
        if handoff:
            side.message_handled()
        if not waiting.done():
            waiting.set_result(seq)

    side = _LoopSide(bare, loop, on_message, handoff)   # a handoff waiter starts armed
    for i in range(1, n + warmup + 1):
        waiting = loop.create_future()
        t0 = clock()
        bare.send(i, payload, always_post=False)
        if not handoff:
            side.message_handled()
        while await waiting != i:
            waiting = loop.create_future()
        t1 = clock()
        if i > warmup:
            samples.append(t1 - t0)
    if bare.bell is not None:
        loop.remove_reader(bare.bell.fileno())
    return samples, side


async def _loop_child(bare: _Bare, size: int, handoff: bool) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def on_message(seq: int) -> None:
        if bare.ctl[_STOP]:
            if not done.done():
                done.set_result(None)
            return
        bare.send(seq, bare.receive(size), always_post=False)
        side.message_handled()

    side = _LoopSide(bare, loop, on_message, handoff)
    if not handoff:
        side.message_handled()
    await done
    if bare.bell is not None:
        loop.remove_reader(bare.bell.fileno())


# -- the lane: two ShmTransports, echoing ------------------------------------------------


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.pending = 0
        self.got: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending <= 0 and self.got is not None and not self.got.done():
            self.got.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def _lane_options(kind: str) -> dict[str, Any]:
    return {"loop_spin_us": 0.0} if kind.endswith("-nospin") else {}


async def _lane_parent(segment: ShmSegment, control: socket.socket, kind: str,
                       n: int, warmup: int, payload: bytes) -> tuple[list[int], Any]:
    loop = asyncio.get_running_loop()
    control_transport, _ = await loop.create_unix_connection(asyncio.Protocol, sock=control)
    protocol = _Collect()
    transport = ShmTransport(loop, segment, "server", protocol, control_transport,
                             **_lane_options(kind))
    samples: list[int] = []
    clock = time.perf_counter_ns
    try:
        for i in range(n + warmup):
            protocol.got = loop.create_future()
            protocol.pending = len(payload)
            t0 = clock()
            transport.write(payload)
            await protocol.got
            t1 = clock()
            if i >= warmup:
                samples.append(t1 - t0)
    finally:
        transport.close()
        await asyncio.wait_for(protocol.lost, 10)
    # Its statistics: the waiter's spin, or the loop's.
    spin: AdaptiveSpin = getattr(transport, "_spin" if kind.endswith("-spin") else "_loop_spin")
    return samples, spin


async def _lane_child(offer: ShmOffer, control: socket.socket, kind: str) -> None:
    loop = asyncio.get_running_loop()
    if offer.variant == "memfd":   # the parent sent the fds before waiting for "A"
        segment = ShmSegment.from_fds(offer, *_memfd.receive_fds(control.fileno()))
    else:
        segment = ShmSegment.open(offer)
    control.sendall(b"A")   # "attached": the parent checks our acknowledgement
    _CHILD_CPU_START[0] = time.process_time()
    control_transport, _ = await loop.create_unix_connection(asyncio.Protocol, sock=control)
    protocol = _Echo()
    ShmTransport(loop, segment, "client", protocol, control_transport, **_lane_options(kind))
    await protocol.lost


# -- the two processes -------------------------------------------------------------------


def run_floor(kind: str, n: int = 20000, *, payload: int = 100, same_cpu: bool = False) -> Result:
    """Measure ``n`` round trips of ``payload`` bytes for one of :data:`KINDS`.

    Returns ``{"kind", "n", "payload", "same_cpu", "p50_us", "p99_us", "mean_us",
    "min_us"}`` (plus spin statistics where a spin is involved). Starts one child
    process and leaves nothing behind in /dev/shm.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    warmup = max(200, n // 10)
    data = bytes(range(256)) * (payload // 256 + 1)
    data = data[:payload]
    old_affinity = os.sched_getaffinity(0)
    if same_cpu:
        os.sched_setaffinity(0, {min(old_affinity)})   # the child inherits it
    try:
        if "lane" in kind:
            return _run_lane(kind, n, warmup, data, same_cpu)
        return _run_bare(kind, n, warmup, data, same_cpu)
    finally:
        if same_cpu:
            os.sched_setaffinity(0, old_affinity)


def _spawn(args: dict[str, Any], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "rpc._bench._shm_floor", "--child", json.dumps(args)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, pass_fds=pass_fds,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [_PACKAGE_PARENT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])},
    )


def _stop_child(child: subprocess.Popen[bytes]) -> float | None:
    """Wait for the child (killing it by pid if it hangs); return the CPU seconds it
    reported for its measured part, if it got that far."""
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(child.pid, 9)
        child.wait()
    cpu = None
    if child.stdout is not None:
        for line in child.stdout.read().splitlines():
            if line.startswith(b"cpu "):
                cpu = float(line.split()[1])
        child.stdout.close()
    return cpu


def _with_cpu(result: Result, parent_cpu: float, child_cpu: float | None,
              round_trips: int) -> Result:
    """CPU time both processes spent per round trip (all threads): what waiting costs."""
    if child_cpu is not None:
        result["cpu_us_per_rt"] = round((parent_cpu + child_cpu) / round_trips * 1e6, 1)
    return result


def _run_bare(kind: str, n: int, warmup: int, payload: bytes, same_cpu: bool) -> Result:
    name = "/lanerpc-" + secrets.token_hex(16)
    sem_names = ["/lanerpc-" + secrets.token_hex(16) for _ in range(2)]
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=_SEGMENT_SIZE)
    sems = [posix_ipc.Semaphore(s, posix_ipc.O_CREX, mode=0o600, initial_value=0)
            for s in sem_names]
    mapping = mmap.mmap(shm.fd, _SEGMENT_SIZE)
    shm.close_fd()
    child = None
    bell: socket.socket | None = None
    try:
        spin_us = SPIN_US if "spin" in kind else 0.0
        args: Result = {"kind": kind, "shm": name, "sems": sem_names, "size": len(payload),
                        "spin_us": spin_us}
        pass_fds: tuple[int, ...] = ()
        if "sockbell" in kind:
            bell, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            args["bell_fd"] = theirs.fileno()
            pass_fds = (theirs.fileno(),)
        child = _spawn(args, pass_fds)
        if pass_fds:
            theirs.close()
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise RuntimeError("floor child failed to start")
        posix_ipc.unlink_shared_memory(name)
        for s in sem_names:
            posix_ipc.unlink_semaphore(s)
        name = ""
        bare = _Bare(mapping, sems[0], sems[1], parent=True, spin_us=spin_us, bell=bell)
        cpu_start = time.process_time()
        if kind in ("block", "spin"):
            samples = _bare_parent(bare, kind, n, warmup, payload)
        else:
            loop = _new_loop(kind)
            try:
                samples, side = loop.run_until_complete(asyncio.wait_for(
                    _loop_parent(bare, n, warmup, payload, handoff="spin" in kind), 60))
            finally:
                loop.close()
            side.stop()
        parent_cpu = time.process_time() - cpu_start
        bare.ctl[_STOP] = 1
        bare.post_peer()
        result = _summary(kind, n, len(payload), same_cpu, samples)
        if spin_us:
            result["spin_catch_rate"] = round(bare.spin.catches / max(1, bare.spin.spins), 3)
        bare.ctl.release()
        child_cpu = _stop_child(child)
        child = None
        return _with_cpu(result, parent_cpu, child_cpu, n + warmup)
    finally:
        if name:
            posix_ipc.unlink_shared_memory(name)
            for s in sem_names:
                posix_ipc.unlink_semaphore(s)
        if child is not None:
            _stop_child(child)
        if bell is not None:
            bell.close()
        mapping.close()
        for s in sems:
            s.close()


def _run_lane(kind: str, n: int, warmup: int, payload: bytes, same_cpu: bool) -> Result:
    # The lane's variant as the RPC layer would pick it (LANERPC_SHM_VARIANT, else auto).
    # "-posix" kinds: the portable variant (named objects, a waiter thread).
    variant = "posix" if kind.endswith("-posix") else os.environ.get("LANERPC_SHM_VARIANT", "auto")
    segment, offer = ShmSegment.create(1 << 20, variant)
    # The control socket is connected by the child, as a lane's is by the client: each
    # side's SO_PEERCRED then names the other process (a socketpair's names its creator
    # on both ends, and a transport whose peer is its own process does not poll).
    where = tempfile.mkdtemp(prefix="lanerpc-floor-")
    address = os.path.join(where, "control")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    child = None
    mine = None
    try:
        listener.bind(address)
        listener.listen(1)
        listener.settimeout(10)
        child = _spawn({"kind": kind, "offer": _offer_to_json(offer), "address": address})
        mine, _ = listener.accept()
        if offer.variant == "memfd":
            segment.send_fds(mine.fileno())
        mine.settimeout(10)
        if mine.recv(1) != b"A":
            raise RuntimeError("lane child failed to attach")
        mine.settimeout(None)
        segment.confirm_attached()
        loop = _new_loop(kind)
        cpu_start = time.process_time()
        try:
            samples, spin = loop.run_until_complete(asyncio.wait_for(
                _lane_parent(segment, mine, kind, n, warmup, payload), 60))
        finally:
            loop.close()
        parent_cpu = time.process_time() - cpu_start
        child_cpu = _stop_child(child)
        child = None
        result = _summary(kind, n, len(payload), same_cpu, samples)
        if spin.spins:
            result["spin_catch_rate"] = round(spin.catches / max(1, spin.spins), 3)
        return _with_cpu(result, parent_cpu, child_cpu, n + warmup)
    finally:
        if not segment.closed:
            segment.close()
        listener.close()
        if mine is not None:
            mine.close()
        if os.path.exists(address):
            os.unlink(address)
        os.rmdir(where)
        if child is not None:
            _stop_child(child)


def _offer_to_json(offer: ShmOffer) -> dict[str, Any]:
    return {"segment": offer.segment, "semaphores": list(offer.semaphores),
            "ring_capacity": offer.ring_capacity, "nonce": offer.nonce.hex(),
            "variant": offer.variant}


def _offer_from_json(raw: dict[str, Any]) -> ShmOffer:
    return ShmOffer(raw["segment"], tuple(raw["semaphores"]), raw["ring_capacity"],
                    bytes.fromhex(raw["nonce"]), raw.get("variant", "posix"))


_CHILD_CPU_START = [0.0]


def _child_main(args: dict[str, Any]) -> None:
    try:
        _child_run(args)
    finally:
        sys.stdout.write(f"cpu {time.process_time() - _CHILD_CPU_START[0]}\n")
        sys.stdout.flush()


def _child_run(args: dict[str, Any]) -> None:
    kind = args["kind"]
    if "offer" in args:
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.settimeout(10)
        control.connect(args["address"])
        control.settimeout(None)
        loop = _new_loop(kind)
        try:
            loop.run_until_complete(
                _lane_child(_offer_from_json(args["offer"]), control, kind)
            )
        finally:
            loop.close()
        return
    shm = posix_ipc.SharedMemory(args["shm"])
    mapping = mmap.mmap(shm.fd, _SEGMENT_SIZE)
    shm.close_fd()
    sems = [posix_ipc.Semaphore(s) for s in args["sems"]]
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    _CHILD_CPU_START[0] = time.process_time()
    bell = socket.socket(fileno=args["bell_fd"]) if "bell_fd" in args else None
    bare = _Bare(mapping, sems[1], sems[0], parent=False, spin_us=args["spin_us"], bell=bell)
    if kind in ("block", "spin"):
        _bare_child(bare, kind, args["size"])
    else:
        loop = _new_loop(kind)
        try:
            loop.run_until_complete(_loop_child(bare, args["size"], handoff="spin" in kind))
        finally:
            loop.close()


def _median_of(results: list[Result]) -> Result:
    """One row from several rounds of one kind: the median of each figure."""
    row = dict(results[0])
    for key in ("p50_us", "p99_us", "mean_us", "min_us", "cpu_us_per_rt", "spin_catch_rate"):
        values = [r[key] for r in results if key in r]
        if values:
            row[key] = statistics.median(values)
    row["rounds"] = len(results)
    row["p50_us_range"] = [min(r["p50_us"] for r in results), max(r["p50_us"] for r in results)]
    return row


def _print_row(result: Result) -> None:
    extra = f"   cpu {result['cpu_us_per_rt']:>6.1f} us/rt" if "cpu_us_per_rt" in result else ""
    if "spin_catch_rate" in result:
        extra += f"   spin caught {result['spin_catch_rate']:.0%}"
    if "p50_us_range" in result:
        low, high = result["p50_us_range"]
        extra += f"   p50 over {result['rounds']} rounds: {low}..{high} us"
    label = result["kind"] + (" (one CPU)" if result["same_cpu"] else "")
    print(f"{label:<28} p50 {result['p50_us']:>7.1f} us   p99 {result['p99_us']:>7.1f} us"
          f"   mean {result['mean_us']:>7.1f} us{extra}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kinds", nargs="*", default=list(KINDS), help="which floors (default: all)")
    parser.add_argument("-n", type=int, default=20000, help="round trips per kind and round")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every kind this many times, interleaved; print the medians")
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--same-cpu", action="store_true", help="pin both processes to one CPU")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return
    unknown = [kind for kind in args.kinds if kind not in KINDS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    results: dict[str, list[Result]] = {kind: [] for kind in args.kinds}
    for round_number in range(1, args.rounds + 1):
        if args.rounds > 1 and not args.json:
            print(f"round {round_number}:", flush=True)
        for kind in args.kinds:
            row = run_floor(kind, args.n, payload=args.payload, same_cpu=args.same_cpu)
            results[kind].append(row)
            if args.json:
                print(json.dumps(row | {"round": round_number}), flush=True)
            else:
                _print_row(row)
    if args.rounds > 1:
        if not args.json:
            print(f"median of {args.rounds} rounds:")
        for kind in args.kinds:
            row = _median_of(results[kind])
            print(json.dumps(row), flush=True) if args.json else _print_row(row)


if __name__ == "__main__":
    main()
