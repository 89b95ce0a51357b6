"""floor-shm: the shared-memory floor, as a row of rpc/_bench/_run.py.

The measurement itself is rpc/_bench/_shm_floor.py's ``run_floor`` (two processes, a
shared segment, POSIX semaphores); this file only adapts it to the bench's registry.
It is a self-measuring subject (see rpc/_bench/_core.py): ``run_floor`` starts its own
child process, because both sides must map the same segment.

Kind "lane": each side runs an event loop over the lane's own ShmTransport and echoes
bytes with no RPC layer: the same wake-up strategy as the lane (a spin in the loop after
a write, else a waiter thread that blocks on the semaphore and wakes the loop), so it is
the floor the lane is compared with; "uvloop-lane" when uvloop is importable, as every
other subject then runs on uvloop too. floor-shm-block and floor-shm-spin are the bare
two-process ping-pongs with no event loop at all.

It measures unary round trips only (p50/p99); the other figures show as "-".
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Awaitable, Callable

from rpc._bench._core import Config, Subject, register

KIND = "uvloop-lane" if importlib.util.find_spec("uvloop") is not None else "lane"


def _measure_kind(kind: str) -> Callable[[Config], Awaitable[dict[str, float]]]:
    async def measure(cfg: Config) -> dict[str, float]:
        # Imported here, not at the top: if the shm transport does not import yet, the
        # row says "n/a: <why>" and the rest of the run goes on.
        from rpc._bench._shm_floor import run_floor

        # run_floor blocks (it drives its own child process): keep it off our loop.
        result = await asyncio.to_thread(run_floor, kind, cfg.calls)
        return {"unary_p50_us": result["p50_us"], "unary_p99_us": result["p99_us"]}
    return measure


# The floor the lane is compared with: the same wake-up strategy (waiter thread + loop).
register(Subject(
    name="floor-shm", label=f"floor: shm ring + semaphores, {KIND} (rpc/_bench/_shm_floor.py)",
    family="floor", lane="shm", measure=_measure_kind(KIND),
))
# The bare ping-pongs with no event loop: both sides block on the semaphore, or spin first.
register(Subject(
    name="floor-shm-block", label="floor: shm ring + semaphores, both sides block, no loop",
    family="floor", lane="shm", measure=_measure_kind("block"),
))
register(Subject(
    name="floor-shm-spin", label="floor: shm ring, spin up to 50 us then block, no loop",
    family="floor", lane="shm", measure=_measure_kind("spin"),
))
