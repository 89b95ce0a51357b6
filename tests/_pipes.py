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

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable

from rpc import _lanes
from rpc._link import Link
from rpc._options import Options
from rpc._proto import handshake_pb2
from rpc._target import Endpoint, parse_target
from rpc.transports import pipe
from tests._support import SETUP_TIMEOUT, Served

_servers: dict[str, object] = {}       # a target's path or host:port -> its lanerpc server
_dial = _lanes.connect


def _key(endpoint: Endpoint) -> str:
    return endpoint.path if endpoint.lane == "unix" else f"{endpoint.host}:{endpoint.port}"


async def _connect(endpoint: Endpoint, options: Options,
                   make_link: Callable[[handshake_pb2.Hello | None], Link]) -> Link:
    server = _servers.get(_key(endpoint))
    if server is None:
        return await _dial(endpoint, options, make_link)
    to_server_r, to_server_w = os.pipe()
    to_client_r, to_client_w = os.pipe()
    # What serve_stdio does for its pipe, less the upgrade offer (the suite runs on the
    # pipe itself; the upgrade over a pipe is tested with real processes in tests/e2e).
    await pipe.connect(to_server_r, to_client_w,
                       lambda: server._new_link(_lanes.Negotiator(server._lanes)),  # type: ignore[attr-defined]
                       peer_pid=os.getpid())
    _, client_link = await pipe.connect(to_client_r, to_server_w, lambda: make_link(None),
                                        peer_pid=os.getpid())
    assert isinstance(client_link, Link)
    await client_link.handshake(options.handshake_timeout)
    return client_link


@contextlib.asynccontextmanager
async def served_over_pipes(serving: contextlib.AbstractAsyncContextManager[Served]
                            ) -> AsyncIterator[Served]:
    """``async with served_over_pipes(serve(...)) as served``: channels dialing
    ``served.target`` are connected to ``served.server`` over pipes."""
    async with serving as served:
        key = _key(parse_target(served.target)[0])
        _servers[key] = served.server
        _lanes.connect = _connect        # channels look it up at each connection
        try:
            yield served
        finally:
            # Channels close before the server stops: unregister after them.
            await asyncio.wait_for(served.close_channels(), SETUP_TIMEOUT)
            del _servers[key]
            if not _servers:
                _lanes.connect = _dial
