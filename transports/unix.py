"""The unix lane: asyncio's Unix socket transport.

A server's socket file is created with the mode it asks for (0600, owner only, by
default) and removed when its listener closes; a stale file left by a killed process
is replaced, a live listener's path is never taken over. As with tcp, :func:`bind`
(synchronous) comes first and :func:`listen` (in the event loop) later.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from collections.abc import Callable

# An asyncio.Protocol, or a BufferedProtocol (read straight into its buffer).
ProtocolFactory = Callable[[], asyncio.BaseProtocol]
# Called with the connected socket before any protocol exists; raising ends the attempt.
ConnectCheck = Callable[[socket.socket], None]

BACKLOG = 1024


async def connect(path: str, factory: ProtocolFactory, *,
                  check: ConnectCheck | None = None) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """Connect to ``path``. With ``check``, the socket is connected first and handed to
    ``check`` before the protocol is made, so nothing is written when it raises (the
    socket is closed and its exception propagates)."""
    loop = asyncio.get_running_loop()
    if check is None and not path.startswith("\0"):
        # (An abstract name is dialled below on our own socket: uvloop's dialler
        # refuses names that start with NUL.)
        return await loop.create_unix_connection(factory, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, path)
        if check is not None:
            check(sock)
        return await loop.create_unix_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise


def claim_path(path: str) -> None:
    """Make ``path`` free for a socket: a stale socket file is removed; OSError if a
    live server owns it or it is not a socket (also used for grpcio's ``grpc://``
    unix ports, which bind it themselves)."""
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


def bind(path: str, *, mode: int = 0o600) -> socket.socket:
    """A socket bound to the file ``path``, created with ``mode``. Raises OSError
    (a live server there, a file that is not a socket, no such directory). A path
    starting with NUL is a name in Linux's abstract namespace: no file, nothing to
    remove later, EADDRINUSE while another socket holds the name."""
    if path.startswith("\0"):
        return _bind_abstract(path)
    claim_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind under a restrictive umask so the file is never briefly open to others.
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_abstract(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UnixListener:
    """An asyncio server on a socket file that it removes when closed."""

    def __init__(self, server: asyncio.AbstractServer, path: str,
                 inode: tuple[int, int] | None) -> None:
        self._server = server
        self.path = path
        self._inode = inode

    def close(self) -> None:
        self._server.close()
        if self._inode is None:
            return          # an abstract name: it goes with the socket
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:   # still ours, not a successor's
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


async def listen(sock: socket.socket, factory: ProtocolFactory) -> UnixListener:
    """Accept connections on a socket from :func:`bind`; each gets a protocol from
    ``factory``. Closing the listener closes the socket and removes its file."""
    loop = asyncio.get_running_loop()
    path = sock.getsockname()
    inode: tuple[int, int] | None = None
    if isinstance(path, str) and not path.startswith("\0"):
        st = os.lstat(path)
        inode = (st.st_dev, st.st_ino)
    sock.listen(BACKLOG)
    server = await loop.create_unix_server(factory, sock=sock)
    return UnixListener(server, path if isinstance(path, str) else path.decode(errors="replace"), inode)
