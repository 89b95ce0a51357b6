"""The event loop behind the blocking API (rpc.sync), and the thread its callbacks run on.

One loop per process, in a daemon thread started at first use: every blocking channel
and server of the process shares it. One, not one per channel, because a thread and a
loop cost memory and a wake-up each, a process typically has a few channels and a
server, and calls between a sync server and a sync channel of the same process then
need no hop between loops. The thread is a daemon: it never keeps the process alive;
at exit the servers still running are stopped (bounded) so their upgrade sockets are
removed, and the loop is left to die with the process.

Fork: the thread does not exist in a child. The child starts its own loop at its
first use (the parent's channels and servers are unusable there, as in the async API).

User callbacks (a future's done callbacks, connectivity callbacks) never run on the
loop: one blocking call in them would stop every channel of the process. They run,
in order, on one daemon "callbacks" thread, as grpc runs them off its polling thread.

The two hops of every blocking call (the caller's thread to the loop and back) are
made with eventfds, written with the GIL released: the thread woken can take the GIL
at once. A wake-up made while holding the GIL (``call_soon_threadsafe``, a lock's
release) lets the woken thread run only to wait for the GIL, and then be woken a
second time; on a busy machine the two threads preempt each other that way on every
call (measured: about twice the context switches per call).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

log = logging.getLogger("lanerpc")

T = TypeVar("T")

# How long exit waits for the servers left running to stop.
EXIT_BOUND = 2.0


# (Linux: the two hops use eventfds; elsewhere call_soon_threadsafe and a lock.)
HAS_EVENTFD = hasattr(os, "eventfd")


class Closable(Protocol):
    def _close_at_exit(self) -> Coroutine[Any, Any, None]:
        """What ends this object at interpreter exit (run on the loop, bounded)."""


class _Inbox:
    """Functions other threads give the loop to run, in order: a deque and an eventfd
    the loop reads (the loop's reader runs everything queued)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.items: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = \
            collections.deque()
        loop.add_reader(self.fd, self._run)

    def put(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.items.append((fn, args))
        os.eventfd_write(self.fd, 1)      # (the GIL released meanwhile: see the docstring)

    def _run(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:    # (read by an earlier run that took the items too)
            pass
        items = self.items
        while items:
            fn, args = items.popleft()
            try:
                fn(*args)
            except Exception as exc:     # as call_soon_threadsafe's callbacks: reported
                self.loop.call_exception_handler({
                    "message": f"Exception in callback {fn!r}", "exception": exc})


class _LoopThread:
    def __init__(self) -> None:
        try:
            import uvloop
        except ImportError:
            self.loop = asyncio.new_event_loop()
        else:
            self.loop = uvloop.new_event_loop()
        self.inbox = _Inbox(self.loop) if HAS_EVENTFD else None
        self.thread = threading.Thread(target=self._run, name="lanerpc-sync-loop", daemon=True)
        self.callbacks: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self.callback_thread: threading.Thread | None = None
        self.closables: weakref.WeakSet[Any] = weakref.WeakSet()
        self.thread.start()

    def _run(self) -> None:
        global _loop_thread_id
        _loop_thread_id = threading.get_ident()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start_callback_thread(self) -> None:
        if self.callback_thread is None:
            self.callback_thread = threading.Thread(
                target=self._run_callbacks, name="lanerpc-sync-callbacks", daemon=True)
            self.callback_thread.start()

    def _run_callbacks(self) -> None:
        while True:
            item = self.callbacks.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("lanerpc: a callback raised")


_lock = threading.Lock()
_current: _LoopThread | None = None
_loop_thread_id: int | None = None      # the loop thread's threading.get_ident()


def _runner() -> _LoopThread:
    global _current
    runner = _current
    if runner is None:
        with _lock:
            runner = _current
            if runner is None:
                runner = _current = _LoopThread()
    return runner


def loop() -> asyncio.AbstractEventLoop:
    """The process's loop for blocking code, started at first use."""
    return _runner().loop


def on_loop_thread() -> bool:
    return threading.get_ident() == _loop_thread_id


def refuse_on_loop_thread() -> None:
    """Raise RuntimeError on the loop's own thread, where a blocking wait would never end."""
    if on_loop_thread():
        raise RuntimeError("a blocking rpc.sync call was made on the event loop that runs "
                           "rpc.sync (from an async handler or callback): it would wait "
                           "for itself. Use the async API (rpc.insecure_channel) there.")


def call(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on the loop and return what it returns (or raise what it raises)."""
    refuse_on_loop_thread()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as exc:
            done.set_exception(exc)

    call_soon(run)
    return done.result()


def run(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the loop; a future of its result."""
    refuse_on_loop_thread()
    return asyncio.run_coroutine_threadsafe(coro, loop())


def call_soon(fn: Callable[..., Any], *args: Any) -> None:
    """Have the loop run ``fn(*args)`` (from any thread), after what was given before."""
    runner = _current or _runner()
    inbox = runner.inbox
    if inbox is not None:
        inbox.put(fn, args)
    else:
        runner.loop.call_soon_threadsafe(fn, *args)


class ThreadWaker:
    """A thread's own eventfd, for what wakes it from a blocking wait: the waker
    writes it with the GIL released, so the thread woken takes the GIL at once.
    Its count is read whole; a wake-up left from a wait that was given up (an
    interrupt) makes the next wait return early, so waiters wait in a loop on what
    they wait for. Closed when the last holder lets go of it (a waker being woken
    holds it)."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC)

    def wait(self) -> None:
        os.eventfd_read(self.fd)

    def wake(self) -> None:
        os.eventfd_write(self.fd, 1)

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (AttributeError, OSError):    # half-made
            pass


_local = threading.local()


def thread_waker() -> ThreadWaker:
    """The calling thread's waker (made at its first use)."""
    try:
        waker: ThreadWaker = _local.waker
    except AttributeError:
        waker = _local.waker = ThreadWaker()
    return waker


def deliver(fn: Callable[..., Any], *args: Any) -> None:
    """Run a user's callback ``fn(*args)`` on the callbacks thread, in order."""
    runner = _runner()
    runner.start_callback_thread()
    runner.callbacks.put((fn, args))


_exit_hooked = False


def keep_for_exit(obj: Closable) -> None:
    """Stop ``obj`` (a server) at interpreter exit if it still runs then."""
    global _exit_hooked
    _runner().closables.add(obj)
    if not _exit_hooked:
        _exit_hooked = True
        # Before concurrent.futures shuts the handlers' pools down at exit (its hook is
        # threading's, run last-registered first): stopped then, a running handler is
        # cancelled, not failed by a pool that takes no more work. The atexit hook below
        # is the fallback where threading has no such hook.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            try:
                register(_at_exit)
            except RuntimeError:    # already shutting down
                pass


def _at_exit() -> None:
    runner = _current
    if runner is None or not runner.thread.is_alive() or on_loop_thread():
        return
    closables = list(runner.closables)
    if not closables:
        return

    async def close_all() -> None:
        await asyncio.gather(*(c._close_at_exit() for c in closables), return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(close_all(), runner.loop).result(EXIT_BOUND)
    except Exception:   # exiting anyway: a server that did not stop in time is left to die
        log.debug("lanerpc: rpc.sync servers not stopped within %s s at exit", EXIT_BOUND)


def _forget_in_child() -> None:
    """After fork: the parent's loop thread is not in the child; a new one starts at
    first use."""
    global _current, _lock, _loop_thread_id
    _current = None
    _loop_thread_id = None
    _lock = threading.Lock()
    # The forking thread's waker is the parent's eventfd too: the child makes its own.
    _local.__dict__.pop("waker", None)


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
