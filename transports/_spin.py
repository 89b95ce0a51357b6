"""Spinning before sleeping, and learning when it does not pay.

Used where a process waits for a peer that usually answers within microseconds: the
shm lane's waiters (:mod:`rpc.transports.shm`) and the socket lanes' keep-awake after a
lone call's write (:mod:`rpc._link`). Waking a sleeping CPU costs tens of microseconds
on a VM, more than a whole call's work, so a short poll often pays; when it does not,
it must stop by itself.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

__all__ = ["ANSWER_SLACK_US", "AdaptiveSpin", "AnswerSpin", "DEFAULT_SPIN_US", "cpus_available",
           "involuntary_switches"]

DEFAULT_SPIN_US = 50.0             # AdaptiveSpin's budget, when a waiter spins at all
ANSWER_SLACK_US = 20.0             # AnswerSpin: what it polls past twice the typical answer


def cpus_available() -> int:
    """How many CPUs this process may run on (its affinity mask, and never more than
    the machine has)."""
    machine = os.cpu_count() or 1
    try:
        return min(machine, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return machine


_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def involuntary_switches() -> int:
    """How many times the calling thread has been preempted (made to give up its CPU
    while it could still run): ``getrusage``'s ``ru_nivcsw``, per thread on Linux (per
    process where there is no RUSAGE_THREAD)."""
    return resource.getrusage(_RUSAGE_THREAD).ru_nivcsw


class AdaptiveSpin:
    """How long a waiter polls before it sleeps, learned from how often polling paid.

    A spin that catches the peer's answer saves waking a sleeping CPU (tens of
    microseconds on a VM); a spin that does not catch it is pure waste, and against a
    peer that shares our core it is worse than waste (the peer cannot run while we
    spin). So: spin up to ``max_spin_ns``; keep a moving average of how often a spin
    caught something; while that is below ``min_catch_rate``, stop spinning and only
    probe again after 1, 2, 4, ... up to 1024 waits.

    A process that may run on one CPU only never spins: whatever it waits for needs
    that CPU, so a spin can only delay it (measured: p99 of a unary call ~1 ms instead
    of ~130 us). The CPUs are counted when the spin is made.
    """

    __slots__ = (
        "max_spin_ns",
        "min_catch_rate",
        "_score",
        "_skip",
        "_probe_gap",
        "_max_probe_gap",
        "spins",
        "catches",
        "skipped",
    )

    def __init__(
        self,
        max_spin_us: float = DEFAULT_SPIN_US,
        min_catch_rate: float = 0.3,
        max_probe_gap: int = 1024,
    ) -> None:
        if max_spin_us > 0 and cpus_available() < 2:
            max_spin_us = 0.0
        self.max_spin_ns = int(max_spin_us * 1000)
        self._max_probe_gap = max(1, max_probe_gap)
        self.min_catch_rate = min_catch_rate
        self._score = 0.5      # start undecided: four misses in a row turn spinning off
        self._skip = 0
        self._probe_gap = 1
        self.spins = 0         # statistics, for the benchmark and docs
        self.catches = 0
        self.skipped = 0

    def should_spin(self) -> bool:
        """Whether this wait should spin at all (False while spinning is backed off).

        A caller that spins by itself (in slices, say) asks this first, then reports
        the outcome with :meth:`record`.
        """
        if self.max_spin_ns <= 0:
            return False
        if self._skip:
            self._skip -= 1
            self.skipped += 1
            return False
        return True

    def spin(self, ready: Callable[[], bool]) -> bool:
        """Poll ``ready()`` for up to the current budget; True if it became true."""
        if not self.should_spin():
            return False
        clock = time.perf_counter_ns
        deadline = clock() + self.max_spin_ns
        caught = False
        while True:
            # Several polls per clock read: a poll is ~0.1 us, a clock read as much.
            if ready() or ready() or ready() or ready():
                caught = True
                break
            if clock() >= deadline:
                break
        self.record(caught)
        return caught

    def record(self, caught: bool) -> None:
        """Count one spin that caught something (or not) and adapt."""
        self.spins += 1
        self._score = self._score * 0.875 + (0.125 if caught else 0.0)
        if caught:
            self.catches += 1
            self._probe_gap = 1
        elif self._score < self.min_catch_rate:
            self._skip = self._probe_gap
            self._probe_gap = min(self._probe_gap * 2, self._max_probe_gap)


class AnswerSpin:
    """How long to poll for an answer after a write, sized from how long answers take.

    The caller reports every answer's time since the write that asked for it
    (:meth:`observe`, whether it was caught by a spin or woke a sleeper) and the outcome
    of each spin (:meth:`record`). The budget is twice the typical answer time (a moving
    average of answer times clamped to twice the ceiling, so a few slow calls do not
    switch spinning off for the quick ones) plus ``slack_us``, at least ``min_spin_us``,
    at most ``max_spin_us``; no spin at all while the typical answer comes later than
    ``max_spin_us``. The slack is for the jitter of quick answers: measured on an idle
    2-vCPU VM (shm lane, 100 B unary echo), answers typically 7-16 µs, twice that missed
    4 % of them, and each miss (and the write skipped after it) paid a wake-up of ~100 µs:
    p99 116-118 µs; 20 µs more missed 0.5 %, p99 62-76 µs, and less CPU per call.

    A spin that misses (the answer was late, or we lost the CPU while polling) skips the
    next 1, 2, 4 ... up to ``max_probe_gap`` writes; a catch resets that. Nothing is
    sticky: answers are timed while not spinning too, so when the peer is quick again
    spinning comes back, and after a miss the spin is probed again within
    ``max_probe_gap`` writes.

    A process that may run on one CPU only never spins: the peer needs that CPU to
    answer (counted when the spin is made).
    """

    __slots__ = (
        "max_spin_ns",
        "min_spin_ns",
        "slack_ns",
        "typical_ns",
        "_skip",
        "_probe_gap",
        "_max_probe_gap",
        "spins",
        "catches",
        "skipped",
        "declined",
    )

    def __init__(
        self, max_spin_us: float = 200.0, min_spin_us: float = 10.0, max_probe_gap: int = 64,
        slack_us: float = ANSWER_SLACK_US,
    ) -> None:
        if max_spin_us > 0 and cpus_available() < 2:
            max_spin_us = 0.0
        self.max_spin_ns = max(0, int(max_spin_us * 1000))
        self.min_spin_ns = min(self.max_spin_ns, int(min_spin_us * 1000))
        self.slack_ns = max(0, int(slack_us * 1000))
        self.typical_ns: int | None = None    # moving average of answer times; None: not yet
        self._skip = 0
        self._probe_gap = 1
        self._max_probe_gap = max(1, max_probe_gap)
        self.spins = 0         # statistics, for the benchmark, the tests and docs
        self.catches = 0
        self.skipped = 0       # backed off after a miss
        self.declined = 0      # answers were too slow for a spin

    def budget_ns(self) -> int:
        """How long this wait should poll; 0: do not spin (sleep on the doorbell)."""
        ceiling = self.max_spin_ns
        if ceiling <= 0:
            return 0
        if self._skip:
            self._skip -= 1
            self.skipped += 1
            return 0
        typical = self.typical_ns
        if typical is None:
            return ceiling          # learning: the first answers size the budget
        if typical > ceiling:
            self.declined += 1
            return 0                # answers come later than any spin we would pay for
        # Comparisons, not min()/max(): this runs per write, and the builtins cost
        # 0.2 us each here (measured), more than the rest of the method.
        budget = 2 * typical + self.slack_ns
        if budget < self.min_spin_ns:
            budget = self.min_spin_ns
        return budget if budget < ceiling else ceiling

    def observe(self, answer_ns: int) -> None:
        """An answer arrived ``answer_ns`` after the write that asked for it."""
        cap = 2 * self.max_spin_ns
        sample = answer_ns if answer_ns < cap else cap    # not min(): see budget_ns
        typical = self.typical_ns
        self.typical_ns = sample if typical is None else (7 * typical + sample) // 8

    def record(self, caught: bool) -> None:
        """Count one spin that caught the answer (or not) and adapt."""
        self.spins += 1
        if caught:
            self.catches += 1
            self._probe_gap = 1
        else:
            self._skip = self._probe_gap
            self._probe_gap = min(self._probe_gap * 2, self._max_probe_gap)
