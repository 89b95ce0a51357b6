"""The shm lane's Linux variant: a sealed memfd and two eventfds, passed over the control socket.

The server makes the segment with ``memfd_create`` (no name in ``/dev/shm``, nothing a
killed process can leave behind), sizes it, and seals it against shrinking and growing
(``F_SEAL_SHRINK | F_SEAL_GROW``) and against further sealing (``F_SEAL_SEAL``): a peer
holding the fd can neither truncate it under our mapping (which would kill us with
SIGBUS) nor add a write seal. The fds travel as ``SCM_RIGHTS`` on the connection's Unix
socket, which the kernel already vouched for (SO_PEERCRED).

What arrives is untrusted. :func:`receive_fds` takes ownership of every fd the kernel
installed, whatever else goes wrong, and :func:`check_received` closes them all unless
each is what it must be: exactly three fds, the first a memfd with exactly our seals and
the announced size, the other two eventfds in semaphore mode.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import stat

__all__ = (
    "DECLINED",
    "FD_MESSAGE_SIZE",
    "GRANTED",
    "MemfdRejected",
    "SEALS",
    "check_received",
    "close_all",
    "create_sealed",
    "memfd_supported",
    "receive_fds",
    "send_fds",
)

SEALS = (
    getattr(fcntl, "F_SEAL_SHRINK", 0)
    | getattr(fcntl, "F_SEAL_GROW", 0)
    | getattr(fcntl, "F_SEAL_SEAL", 0)
)
# The bytes the fds ride on. Fixed size, so the receiver reads exactly this much with
# recvmsg and leaves the frames that follow to the transport.
GRANTED = b"LRPCFDS\x01"
DECLINED = b"LRPCFDS\x00"
FD_MESSAGE_SIZE = len(GRANTED)
SEGMENT_FDS = 3          # the memfd, the server's doorbell, the client's doorbell
_EVENTFD_LINK = "anon_inode:[eventfd]"


class MemfdRejected(Exception):
    """The fds the peer sent are not a sealed segment and two eventfds."""


def memfd_supported() -> bool:
    """Whether this Python and kernel can make sealed memfds and pass fds."""
    if not (hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")
            and hasattr(socket, "SCM_RIGHTS") and hasattr(socket, "MSG_CMSG_CLOEXEC")):
        return False
    try:
        fd = os.memfd_create("lanerpc-probe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def create_sealed(size: int) -> int:
    """A memfd of ``size`` zero bytes, sealed (:data:`SEALS`); the caller owns the fd."""
    fd = os.memfd_create("lanerpc-shm", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _socket_of(fileno: int) -> socket.socket:
    # A socket object of our own over a duplicate of the connection's fd: asyncio's and
    # uvloop's transports lend out socket-like objects without sendmsg/recvmsg. The
    # duplicate shares the connection; closing it leaves the connection open.
    return socket.socket(fileno=os.dup(fileno))


def send_fds(fileno: int, message: bytes, fds: list[int]) -> None:
    """Send ``message`` with ``fds`` attached on the connected Unix socket ``fileno``.

    Raises OSError if the kernel did not take the whole message at once (it always does
    for a few bytes on a connection that carries nothing else at this point)."""
    sock = _socket_of(fileno)
    try:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sent = sock.sendmsg([message], ancillary)
        if sent != len(message):
            raise OSError(f"sent {sent} of {len(message)} bytes with the fds")
    finally:
        sock.close()


def receive_fds(fileno: int, max_fds: int = SEGMENT_FDS) -> tuple[bytes, list[int]]:
    """Read one fd message (at most :data:`FD_MESSAGE_SIZE` bytes) from ``fileno``.

    Returns the bytes and every fd the kernel installed (owned by the caller, even when
    there are more than ``max_fds``). Raises BlockingIOError when nothing is there yet,
    and MemfdRejected, having closed the fds, when the ancillary data was cut short
    (MSG_CTRUNC: the peer sent more fds than fit; the kernel closed the rest)."""
    sock = _socket_of(fileno)
    try:
        # Room for one fd more than expected, so too many fds is seen as such.
        space = socket.CMSG_SPACE((max_fds + 1) * 4)
        data, ancillary, flags, _ = sock.recvmsg(FD_MESSAGE_SIZE, space, socket.MSG_CMSG_CLOEXEC)
    finally:
        sock.close()
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % 4   # the kernel installs whole fds only
            fds.extend(array.array("i", payload[:whole]))
    if flags & socket.MSG_CTRUNC:
        close_all(fds)
        raise MemfdRejected("the peer sent more file descriptors than a segment has")
    return data, fds


def _fd_link(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _check_eventfd(fd: int, which: str) -> str | None:
    """Raise MemfdRejected unless ``fd`` is a non-blocking eventfd in semaphore mode;
    returns its ``eventfd-id`` where the kernel shows one."""
    if _fd_link(fd) != _EVENTFD_LINK:
        raise MemfdRejected(f"the {which} doorbell is not an eventfd ({_fd_link(fd)})")
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
            lines = info.read(4096).splitlines()
    except OSError as exc:
        raise MemfdRejected(f"cannot inspect the {which} doorbell: {exc}") from exc
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
    # Older kernels do not show the mode; those that do must show semaphore mode.
    if fields.get("eventfd-semaphore", "1") != "1":
        raise MemfdRejected(f"the {which} doorbell is not in semaphore mode")
    if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
        raise MemfdRejected(f"the {which} doorbell is blocking: reading it could stall the loop")
    return fields.get("eventfd-id")


def check_received(data: bytes, fds: list[int], size: int) -> tuple[int, int, int]:
    """Check a granting fd message: the (memfd, server bell, client bell) it carries.

    On any failure every fd in ``fds`` is closed and MemfdRejected raised."""
    try:
        if data != GRANTED:
            raise MemfdRejected(f"the fd message is {data!r}, not a grant")
        if len(fds) != SEGMENT_FDS:
            raise MemfdRejected(f"the peer sent {len(fds)} file descriptors, not {SEGMENT_FDS}")
        memfd, server_bell, client_bell = fds
        try:
            seals = fcntl.fcntl(memfd, fcntl.F_GET_SEALS)
        except OSError as exc:
            raise MemfdRejected(f"the segment is not a memfd ({_fd_link(memfd)})") from exc
        if seals != SEALS:
            raise MemfdRejected(f"the segment's seals are {seals:#x}, not {SEALS:#x}")
        info = os.fstat(memfd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            raise MemfdRejected(f"the segment is {info.st_size} bytes, not {size}")
        server_id = _check_eventfd(server_bell, "server's")
        client_id = _check_eventfd(client_bell, "client's")
        if server_id is not None and server_id == client_id:
            # One eventfd for both bells: each side would take the other's wake-ups.
            raise MemfdRejected("the two doorbells are one eventfd")
    except BaseException:
        close_all(fds)
        raise
    return memfd, server_bell, client_bell
