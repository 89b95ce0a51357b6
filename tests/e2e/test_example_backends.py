"""The multi-backend example runs as the README says, with one command: its calls spread
over three backend processes, and after one is SIGKILLed over the two left, none failing;
it stops its backends by pid."""

from __future__ import annotations

import asyncio
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_round_robin_example_spreads_calls_and_survives_a_kill() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.backends", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, (text, err.decode()[-2000:])
    before, _, after = text.partition("killed (SIGKILL)")
    rows = re.compile(r"backend pid\s+(\d+)\s+lane (\w+)\s+(\d+) calls")
    first = [(pid, lane, int(n)) for pid, lane, n in rows.findall(before)]
    second = [(pid, lane, int(n)) for pid, lane, n in rows.findall(after)]
    assert len(first) == 3 and sum(n for *_, n in first) == 30, text
    assert all(n >= 5 for *_, n in first), text          # spread, not all on one
    assert len(second) == 2 and sum(n for *_, n in second) == 30, text
    assert "failed" not in text, text
    killed = re.search(r"backend pid (\d+) killed", text)
    assert killed and killed.group(1) not in {pid for pid, *_ in second}, text
    assert {lane for _, lane, _ in first} <= {"shm", "unix", "tcp"}
