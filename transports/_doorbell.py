"""The shm lane's doorbells: how one side wakes the other when it has gone to sleep.

A doorbell is rung only when the ring's waiting flag says the peer sleeps (see
:mod:`rpc.transports.shm`), so a busy stream rings none. Two kinds:

* :class:`EventfdDoorbell` (Linux): an ``eventfd`` in semaphore mode. The event loop's
  own selector watches it (``loop.add_reader``), so a ring wakes the loop directly, with
  no thread between the ring and the loop. Ringing adds one to the kernel counter; the
  loop takes one per wake-up.
* :class:`SemaphoreDoorbell` (portable): a POSIX named semaphore, which no selector can
  watch, so a waiter thread blocks on it and wakes the loop (``call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

__all__ = ("EventfdDoorbell", "SemaphoreDoorbell", "eventfd_supported")

_log = logging.getLogger("lanerpc.shm")

_EVENTFD_FLAGS = (
    getattr(os, "EFD_SEMAPHORE", 0) | getattr(os, "EFD_NONBLOCK", 0) | getattr(os, "EFD_CLOEXEC", 0)
)


def eventfd_supported() -> bool:
    """Whether this Python and kernel give us eventfds."""
    if not hasattr(os, "eventfd"):
        return False
    try:
        os.close(os.eventfd(0, _EVENTFD_FLAGS))
    except OSError:
        return False
    return True


class EventfdDoorbell:
    """An ``eventfd`` in semaphore mode (``EFD_SEMAPHORE | EFD_NONBLOCK``).

    Both processes hold the same eventfd (one made it, the other received it over the
    control socket), the sleeper reads it, the other side rings it. Reads and writes are
    non-blocking: a counter at its maximum (a peer ringing without ever reading) makes a
    ring a no-op, and an empty counter (a spurious readiness, or the peer reading our
    bell) makes :meth:`take` return False.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd   # owned: closed by close()

    @classmethod
    def create(cls) -> EventfdDoorbell:
        return cls(os.eventfd(0, _EVENTFD_FLAGS))

    def ring(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass   # the counter is at its maximum: the sleeper has wake-ups enough
        except OSError as exc:
            _log.debug("cannot ring the peer's doorbell: %s", exc)

    def take(self) -> bool:
        """Take one ring; False if none was pending."""
        try:
            os.eventfd_read(self.fd)
        except (BlockingIOError, InterruptedError):
            return False
        return True

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class SemaphoreDoorbell:
    """A POSIX named semaphore (``posix_ipc.Semaphore``), waited on by a thread."""

    __slots__ = ("_semaphore", "_busy", "_interrupted", "_errors")

    def __init__(self, semaphore: Any, posix_ipc: Any) -> None:
        self._semaphore = semaphore
        self._busy = posix_ipc.BusyError
        self._interrupted = posix_ipc.SignalError
        self._errors = (posix_ipc.Error, OSError, ValueError)

    def ring(self) -> None:
        try:
            self._semaphore.release()
        except self._errors as exc:
            # Only a peer that sets its flags without ever sleeping can push the count
            # to the semaphore's maximum; that peer just loses wake-ups.
            _log.debug("cannot post the peer's doorbell: %s", exc)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if it was rung."""
        deadline = time.monotonic() + timeout
        remaining = timeout
        while True:
            try:
                self._semaphore.acquire(remaining)
                return True
            except self._busy:
                return False
            except self._interrupted:
                # A signal interrupted the wait: wait for what is left of it.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False

    def close(self) -> None:
        self._semaphore.close()
