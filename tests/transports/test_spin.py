"""AdaptiveSpin: spins while spinning pays, backs off when it does not, comes back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpc.transports import _spin
from rpc.transports._spin import AdaptiveSpin


@pytest.fixture(autouse=True)
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine of two CPUs or more (the one-CPU rule has a test of its own)."""
    monkeypatch.setattr(_spin, "cpus_available", lambda: 2)


def test_one_cpu_never_spins(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever we wait for needs our only CPU: spinning could only delay it.
    monkeypatch.setattr(_spin, "cpus_available", lambda: 1)
    spin = AdaptiveSpin(50.0)
    assert spin.max_spin_ns == 0
    assert not spin.should_spin()
    assert spin.spin(lambda: True) is False


def test_cpus_available_follows_the_affinity_mask() -> None:
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from rpc.transports._spin import cpus_available, AdaptiveSpin; "
            "print(cpus_available(), AdaptiveSpin(50.0).max_spin_ns)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["1", "0"]


def test_a_zero_budget_never_spins() -> None:
    spin = AdaptiveSpin(0.0)
    assert not spin.should_spin()
    assert spin.spin(lambda: True) is False
    assert spin.spins == 0


def test_spin_reports_what_it_caught() -> None:
    spin = AdaptiveSpin(1_000.0)
    polls = iter([False, False, True])
    assert spin.spin(lambda: next(polls)) is True
    assert (spin.spins, spin.catches) == (1, 1)
    assert spin.spin(lambda: False) is False     # runs out its 1 ms budget
    assert (spin.spins, spin.catches) == (2, 1)


def skip_runs(spin: AdaptiveSpin, waits: int, caught: bool = False) -> list[int]:
    """Lengths of the runs of skipped waits between spins, over ``waits`` waits."""
    runs, run = [], 0
    for _ in range(waits):
        if spin.should_spin():
            if run:
                runs.append(run)
            run = 0
            spin.record(caught)
        else:
            run += 1
    return runs


def test_misses_back_off_with_doubling_gaps_up_to_the_cap() -> None:
    spin = AdaptiveSpin(10.0, max_probe_gap=8)
    runs = skip_runs(spin, 200)
    assert runs[:4] == [1, 2, 4, 8]
    assert set(runs[4:]) == {8}
    assert spin.catches == 0


def test_answers_that_come_keep_it_spinning() -> None:
    spin = AdaptiveSpin(10.0)
    assert skip_runs(spin, 200, caught=True) == []
    assert spin.spins == spin.catches == 200


def test_one_catch_brings_probing_back_to_every_wait() -> None:
    spin = AdaptiveSpin(10.0, max_probe_gap=64)
    for _ in range(40):                # long run of misses: gaps grown to the cap
        if spin.should_spin():
            spin.record(False)
    while not spin.should_spin():
        pass
    spin.record(True)
    # The gap is back to 1: after one catch the next miss cannot skip more than one wait.
    spin.record(False)
    skipped = 0
    while not spin.should_spin():
        skipped += 1
    assert skipped <= 1


@given(st.lists(st.booleans(), max_size=300), st.integers(1, 1024))
def test_skips_never_exceed_the_cap(outcomes: list[bool], cap: int) -> None:
    spin = AdaptiveSpin(10.0, max_probe_gap=cap)
    run = 0
    for caught in outcomes:
        if spin.should_spin():
            run = 0
            spin.record(caught)
        else:
            run += 1
            assert run <= cap
    assert spin.spins + spin.skipped == len(outcomes)
    assert spin.catches <= spin.spins


# -- AnswerSpin: the shm lane's spin after a write, sized from answer times ----------

from rpc.transports._spin import ANSWER_SLACK_US, AnswerSpin  # noqa: E402


def test_answer_spin_never_spins_on_one_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_spin, "cpus_available", lambda: 1)
    spin = AnswerSpin(200.0)
    spin.observe(5_000)
    assert spin.budget_ns() == 0


def test_cpus_available_counts_no_more_than_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()                          # the real function, not the two_cpus stand-in
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert _spin.cpus_available() == 1
    assert AnswerSpin(200.0).budget_ns() == 0


def test_answer_spin_budget_follows_the_answer_times() -> None:
    spin = AnswerSpin(200.0, min_spin_us=10.0, slack_us=0.0)
    assert spin.budget_ns() == 200_000          # nothing measured yet: the ceiling
    for _ in range(50):
        spin.observe(20_000)                    # answers in 20 us
    assert spin.budget_ns() == 40_000           # twice the typical answer
    for _ in range(50):
        spin.observe(2_000)
    assert spin.budget_ns() == 10_000           # never below the floor
    for _ in range(50):
        spin.observe(5_000_000)                 # a handler that takes 5 ms
    assert spin.budget_ns() == 0                # answers too slow: sleep
    assert spin.declined == 1


def test_answer_spin_polls_a_slack_past_twice_the_typical_answer() -> None:
    """The default slack: an answer a little late (jitter) is still caught, not paid
    for with a wake-up; the ceiling still bounds it."""
    spin = AnswerSpin(200.0, min_spin_us=10.0)
    for _ in range(50):
        spin.observe(8_000)
    assert spin.budget_ns() == 16_000 + int(ANSWER_SLACK_US * 1000)
    for _ in range(50):
        spin.observe(95_000)                    # twice this plus the slack: past the ceiling
    assert spin.budget_ns() == 200_000
    assert AnswerSpin(200.0, slack_us=50.0).slack_ns == 50_000


def test_answer_spin_comes_back_when_answers_are_quick_again() -> None:
    """Not sticky: answers are timed while not spinning too."""
    spin = AnswerSpin(200.0)
    for _ in range(50):
        spin.observe(1_000_000)
    assert spin.budget_ns() == 0
    for _ in range(40):
        spin.observe(15_000)                    # woken by the doorbell, quickly
    assert 0 < spin.budget_ns() <= 200_000


def test_answer_spin_misses_back_off_but_always_probe_again() -> None:
    spin = AnswerSpin(200.0, max_probe_gap=64)
    for _ in range(20):
        spin.observe(10_000)
    gaps = []
    for _ in range(12):                         # every spin misses
        skipped = 0
        while not spin.budget_ns():
            skipped += 1
            assert skipped <= 64                # re-probed within 64 writes, whatever happened
        gaps.append(skipped)
        spin.record(False)
    assert gaps[:8] == [0, 1, 2, 4, 8, 16, 32, 64]
    assert gaps[8:] == [64] * 4
    while not spin.budget_ns():                 # the probe after the last miss...
        pass
    spin.record(True)                           # ...catches: the back-off is reset
    assert spin.budget_ns() and spin.budget_ns()
