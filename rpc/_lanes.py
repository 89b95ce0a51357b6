"""Lane choice and the same-host upgrade: the one place that decides which lane
carries a channel. Decides first (from the target and the options), then does I/O.
"""

from __future__ import annotations

import asyncio
import logging

from rpc._target import Endpoint
from transports import tcp, unix

log = logging.getLogger("lanerpc")


async def _dial(channel, endpoint: Endpoint):
    from rpc._channel import ClientLink
    options = channel._options
    factory = lambda: ClientLink(channel, options)  # noqa: E731
    if endpoint.lane == "unix":
        _, link = await unix.connect(endpoint.path, factory)
    else:
        _, link = await tcp.connect(endpoint.host, endpoint.port, factory)
    try:
        await asyncio.wait_for(asyncio.shield(link.ready), options.handshake_timeout)
    except BaseException:
        link.abort("handshake failed")
        raise
    return link


async def connect(channel, endpoint: Endpoint):
    """A ready link to ``endpoint``, on the fastest lane the options allow."""
    return await _dial(channel, endpoint)


# ------------------------------------------------------------------ server side

class _PathListener:
    """An asyncio server whose socket file is removed when it closes."""

    def __init__(self, server: asyncio.AbstractServer, path: str) -> None:
        import os
        self._server = server
        self.path = path
        st = os.lstat(path)
        self._inode = (st.st_dev, st.st_ino)

    def close(self) -> None:
        import os
        self._server.close()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


async def start_listening(server, sockets) -> None:
    """Listen on the sockets bound by add_insecure_port."""
    loop = asyncio.get_running_loop()
    for kind, sock in sockets:
        if kind == "unix":
            sock.listen(1024)
            aserver = await loop.create_unix_server(server._new_link, sock=sock)
            server._listeners.append(_PathListener(aserver, sock.getsockname()))
        else:
            sock.listen(1024)
            aserver = await loop.create_server(
                lambda: _nodelay_link(server._new_link()), sock=sock)
            server._listeners.append(aserver)


def _nodelay_link(link):
    made = link.connection_made

    def connection_made(transport):
        tcp._nodelay(transport)
        made(transport)
    link.connection_made = connection_made
    return link


def admit(server, link, hello) -> bool:
    """Whether a peer that completed the handshake may make calls."""
    return True


def stop_upgrade(server) -> None:
    pass
