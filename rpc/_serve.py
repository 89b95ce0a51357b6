"""The blocking entry point: ``rpc.serve(server)``. The one place lanerpc
installs signal handlers (library code never does)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from rpc._server import Server

log = logging.getLogger("lanerpc")

DEFAULT_GRACE = 10.0

_T = TypeVar("_T")


def run_event_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` to its end in a new event loop: uvloop's when it is installed,
    else asyncio's. How a process that serves (rpc.serve, rpc.serve_stdio, lanerpc
    serve) runs its loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def log_for_operators() -> None:
    """INFO lines with their time on stderr, unless the application has set up
    logging itself: what an operator of a serving process reads."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


def serve(server: Server, *, grace: float = DEFAULT_GRACE) -> None:
    """Start ``server`` and block until it is stopped by a signal.

    SIGTERM or SIGINT: graceful stop (stop accepting, GOAWAY to every
    connection, running calls get ``grace`` seconds, then are cancelled); a
    second one stops at once. SIGUSR1 logs a stats snapshot. Returns when the
    server has stopped, so the process exits 0. Runs on uvloop when installed.
    """
    if grace < 0:
        raise ValueError("grace must be >= 0")
    log_for_operators()
    run_event_loop(serve_async(server, grace=grace))


async def serve_async(server: Server, *, grace: float = DEFAULT_GRACE) -> None:
    """``serve`` for code that runs its own event loop (main thread only)."""
    loop = asyncio.get_running_loop()
    received = 0
    stoppers: list[asyncio.Task[None]] = []

    def on_stop(signum: int) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received == 1:
            log.info("lanerpc: %s: draining, grace %g s (send it again to stop at once)", name, grace)
            stoppers.append(loop.create_task(server.stop(grace)))
        else:
            log.warning("lanerpc: %s again: stopping now", name)
            stoppers.append(loop.create_task(server.stop(0)))

    def on_stats() -> None:
        log.warning("lanerpc stats: %s", json.dumps(server.stats.snapshot(), sort_keys=True))

    handled = (signal.SIGTERM, signal.SIGINT)
    for sig in handled:
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGUSR1, on_stats)
    try:
        if not server.started:
            await server.start()
        log.info("lanerpc: serving")
        await server.wait_for_termination()
        if stoppers:
            await asyncio.gather(*stoppers, return_exceptions=True)
    finally:
        for sig in (*handled, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
    log.info("lanerpc: stopped")
