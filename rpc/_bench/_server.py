"""The server process of the bench: ``python -m rpc._bench._server SPEC_JSON``.

SPEC_JSON is ``{"server": "module:function", "args": {...}}``; the function (see
rpc/_bench/_core.py) starts a server and returns what the client needs to reach it.
This process prints exactly one JSON line on stdout: that ``ready`` dict once the server
listens, or ``{"error": "..."}`` if it could not start (rpc/_bench/_run.py turns that into an
"n/a" row instead of failing the run).

It stops gracefully (the subject's own ``stop``, so lanerpc removes its upgrade socket
directory and shm segments) on SIGTERM or SIGINT, and also when its stdin reaches EOF:
the bench holds the other end of that pipe, so even a bench killed with SIGKILL takes
its servers down with it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import traceback


STOP_TIMEOUT = 5.0


class _StdinWatch(asyncio.Protocol):
    """Sets ``gone`` when the bench closes our stdin (or dies)."""

    def __init__(self, gone: asyncio.Event) -> None:
        self._gone = gone

    def eof_received(self) -> bool | None:
        self._gone.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()


def _say(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _serve(spec: dict[str, object]) -> int:
    loop = asyncio.get_running_loop()
    try:
        module_name, _, function_name = str(spec["server"]).partition(":")
        serve = getattr(importlib.import_module(module_name), function_name)
        args = dict(spec.get("args") or {})  # type: ignore[call-overload]
        ready, stop = await serve(args)
    except Exception as exc:  # noqa: BLE001 - any failure to start is reported, not raised
        traceback.print_exc()
        _say({"error": f"{type(exc).__name__}: {exc}".strip()})
        return 1

    done = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    await loop.connect_read_pipe(lambda: _StdinWatch(done), sys.stdin)

    _say(dict(ready))
    await done.wait()
    try:
        await asyncio.wait_for(stop(), STOP_TIMEOUT)
    except Exception:  # noqa: BLE001 - we are exiting anyway; say why stop failed
        traceback.print_exc()
        return 1
    return 0


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        import uvloop  # the same loop as the client, for every subject alike
    except ImportError:
        return asyncio.run(_serve(spec))
    return uvloop.run(_serve(spec))


if __name__ == "__main__":
    sys.exit(main())
