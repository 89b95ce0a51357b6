"""lanerpc calls over real pipes in one process: a Channel's connections reach a Server
through two ``os.pipe()`` pairs wrapped by the pipe lane's transport (what ``rpc.spawn``
and ``rpc.serve_stdio`` do across two processes), so the conformance suite runs on the
pipe transport without a child process per test.

``served_over_pipes(served)`` registers a started lanerpc server under its first target;
while it is registered, a lanerpc channel that dials that target is connected to it over
a fresh pair of pipes (lane ``"pipe"``). The server still binds its port (start() wants
one), but no byte goes through it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from rpc import _lanes
from rpc._link import Link
from rpc._options import Options
from rpc._proto import handshake_pb2
from rpc.transports import pipe
from tests._memory import served_through
from tests._support import Served


async def _over_pipes(server: Any, options: Options,
                      make_link: Callable[[handshake_pb2.Hello | None], Link]) -> Link:
    to_server_r, to_server_w = os.pipe()
    to_client_r, to_client_w = os.pipe()
    # What serve_stdio does for its pipe, less the upgrade offer (the suite runs on the
    # pipe itself; the upgrade over a pipe is tested with real processes in tests/e2e).
    await pipe.connect(to_server_r, to_client_w,
                       lambda: server._new_link(_lanes.Negotiator(server._lanes)),
                       peer_pid=os.getpid())
    _, client_link = await pipe.connect(to_client_r, to_server_w, lambda: make_link(None),
                                        peer_pid=os.getpid())
    assert isinstance(client_link, Link)
    await client_link.handshake(options.handshake_timeout)
    return client_link


def served_over_pipes(serving: contextlib.AbstractAsyncContextManager[Served]
                      ) -> contextlib.AbstractAsyncContextManager[Served]:
    """``async with served_over_pipes(serve(...)) as served``: channels dialing
    ``served.target`` are connected to ``served.server`` over pipes."""
    return served_through(serving, _over_pipes)
