"""The unix lane: asyncio's Unix socket transport.

A listener creates its socket file with mode 0600 (owner only) and removes it on
close; a stale file left by a killed process is replaced, a live listener's
path is never taken over.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from typing import Callable

ProtocolFactory = Callable[[], asyncio.Protocol]


async def connect(path: str, factory: ProtocolFactory) -> tuple[asyncio.Transport, asyncio.Protocol]:
    loop = asyncio.get_running_loop()
    return await loop.create_unix_connection(factory, path)


def _claim_path(path: str) -> None:
    """Remove a stale socket file at ``path``; refuse if a live server owns it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)     # nobody listens: a leftover of a dead process
        return
    except OSError:
        raise OSError(errno.EADDRINUSE, f"{path} is in use") from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a live server")


class UnixListener:
    """An asyncio server on a socket file that it removes when closed."""

    def __init__(self, server: asyncio.AbstractServer, path: str, inode: tuple[int, int]) -> None:
        self._server = server
        self.path = path
        self._inode = inode

    def close(self) -> None:
        self._server.close()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:   # still ours, not a successor's
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


async def listen(path: str, factory: ProtocolFactory, *, mode: int = 0o600) -> UnixListener:
    loop = asyncio.get_running_loop()
    _claim_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind under a restrictive umask so the file is never briefly open to others.
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(1024)
        sock.setblocking(False)
        st = os.lstat(path)
        server = await loop.create_unix_server(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return UnixListener(server, path, (st.st_dev, st.st_ino))
