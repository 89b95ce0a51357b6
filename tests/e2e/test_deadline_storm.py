"""Load shedding: a storm of calls with deadlines far too short for the handler (1000
callers, 5-50 ms, a handler that sleeps 20 ms), from a client process as fast as a client
can go, leaves the server answering a fresh call at once when it stops (no backlog of
stale calls to work through first) and its memory bounded. Server and client each run in
a process of their own, as a user's would."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from tests._support import rss_mb
from tests.e2e._server_proc import ServerProc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALLERS = 1000
STORM_SECONDS = 5.0


async def test_after_a_deadline_storm_a_fresh_call_is_served_at_once() -> None:
    server = await ServerProc("--address", "127.0.0.1:0", "--lanes", "tcp").start()
    client = None
    try:
        base = peak = rss_mb(server.pid)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e._storm_client", f"127.0.0.1:{server.port}",
            str(CALLERS), str(STORM_SECONDS), cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        assert client.stdout is not None
        line = asyncio.ensure_future(client.stdout.readline())
        deadline = asyncio.get_running_loop().time() + STORM_SECONDS + 40
        while not line.done() and asyncio.get_running_loop().time() < deadline:
            peak = max(peak, rss_mb(server.pid))
            await asyncio.wait([line], timeout=0.1)
        result = json.loads(await asyncio.wait_for(line, STORM_SECONDS + 40))
        print("storm:", json.dumps(result))     # (with -s: the codes and fresh_s of each run)
        assert await asyncio.wait_for(client.wait(), 10) == 0
        client = None
        codes = result["codes"]
        assert codes.get("DEADLINE_EXCEEDED", 0) > CALLERS, codes   # it was a storm
        assert result["fresh_s"] is not None and result["fresh_s"] < 1.0, result
        assert peak - base < 150, f"server RSS {base:.0f} -> {peak:.0f} MB"
    finally:
        if client is not None and client.returncode is None:
            client.kill()
            await client.wait()
        await server.stop()
