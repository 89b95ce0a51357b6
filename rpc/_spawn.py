"""Spawned workers: the pipe lane. ``rpc.spawn(argv)`` starts a child process and returns
a channel to the servicers it serves over its stdin/stdout with ``rpc.serve_stdio(server)``.

The pipe is the child's lifeline as well as its first connection:

* the child serves that one connection and stops when it ends: the parent closed the
  channel, or died (the kernel closes the parent's ends, so the child reads EOF);
* the parent's calls over it end UNAVAILABLE as soon as the child dies (EOF on its
  stdout), and later calls fail UNAVAILABLE: a spawned channel never restarts its
  worker (grpc has no such notion; start another with ``rpc.spawn``);
* like a TCP client, the parent is offered the same-host upgrade in the child's HELLO
  (``serve_stdio`` opens the private upgrade socket for it): when the lanes allow,
  calls move to the unix lane and on to shm, while the pipe stays open, idle, as the
  lifeline. If that local connection ends while the child lives, calls go over the
  pipe itself.

The child's stdout is the wire, so ``serve_stdio`` takes it away from the rest of the
process: the wire moves to private copies of fds 0 and 1, fd 1 (and ``sys.stdout``)
then point at stderr and fd 0 at /dev/null, so a print, a C library or a grandchild
writing to "stdout" can't corrupt the stream. The child's stderr is the parent's
unless ``spawn(stderr=...)`` says otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any, cast

import grpc

from rpc import _grpc, _lanes
from rpc._channel import Channel, ClientLink
from rpc._link import Link
from rpc._serve import DEFAULT_GRACE, run_event_loop, serve_async
from rpc._server import Server
from rpc._target import Endpoint
from rpc.transports import pipe

log = logging.getLogger("lanerpc")

DEFAULT_CLOSE_GRACE = 5.0     # seconds a worker gets to exit after its pipe closes
DEFAULT_START_TIMEOUT = 30.0  # seconds a worker has to start and complete its handshake

_Stderr = int | IO[Any] | None


class SpawnedChannel(Channel):
    """A channel to a worker process started by :func:`spawn`: a :class:`Channel` in
    every way (stubs, calls, ``lane``), plus the worker's ``process`` and ``pid``.
    ``close()`` also ends the worker: its pipe closes (it reads EOF and stops), it gets
    ``close_grace`` seconds to exit, then SIGKILL."""

    def __init__(self, process: asyncio.subprocess.Process, options: _grpc.Options | None,
                 interceptors: _grpc.ClientInterceptors | None, close_grace: float) -> None:
        # The target names the worker; it is never resolved (no resolver knows
        # "pipe:"): every connection comes from _dial below.
        super().__init__(f"pipe:///{process.pid}", options, interceptors)
        self.process = process
        self.close_grace = close_grace
        self._pipe: ClientLink | None = None
        self._upgrade_tried = False

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    async def _start_pipe(self, read_fd: int, write_fd: int, start_timeout: float) -> None:
        """The pipe connection to the worker, its handshake done within ``start_timeout``
        seconds of the start (the worker's imports included: a busy machine takes
        seconds; raises ConnectionError)."""
        options = dataclasses.replace(self._options, handshake_timeout=start_timeout)
        _, protocol = await pipe.connect(read_fd, write_fd,
                                         lambda: ClientLink(self, options, hello=None),
                                         peer_pid=self.process.pid)
        link = cast(ClientLink, protocol)
        self._pipe = link
        try:
            await link.handshake(start_timeout)
        except asyncio.TimeoutError:
            raise ConnectionError(f"worker pid {self.pid} did not complete the handshake "
                                  f"within {start_timeout:g} s of its start") from None
        except ConnectionError as exc:
            if "bad preface" in str(exc):
                raise ConnectionError(
                    f"worker pid {self.pid}: {exc} (the worker wrote to stdout before "
                    "rpc.serve_stdio took it over: print to stderr, or only after serving "
                    "starts)") from None
            try:       # it may have exited (an import error, say): say how, if it did
                await asyncio.wait_for(asyncio.shield(self.process.wait()), 1.0)
            except asyncio.TimeoutError:
                raise ConnectionError(f"worker pid {self.pid}: {exc}") from None
            raise ConnectionError(f"{self._gone()} before its handshake (its stderr may "
                                  "say why)") from None

    async def _dial(self, endpoint: Endpoint, make_link: Any) -> Link:
        """The subchannel's connection: the local lane the worker offered (tried once),
        else the pipe itself; never a new worker."""
        link = self._pipe
        if link is None or link.conn.closed or link.draining:
            raise ConnectionError(f"{self._gone()}; a spawned channel does not restart "
                                  "its worker")
        if not self._upgrade_tried:
            self._upgrade_tried = True
            local = await _lanes.move_local(link, self._options, make_link)
            if local is not None:
                return local
        return link

    def _gone(self) -> str:
        code = self.process.returncode
        if code is None:
            reason = self._pipe.close_reason if self._pipe is not None else None
            return f"worker pid {self.pid}: its pipe is closed ({reason or 'not connected'})"
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        return f"worker pid {self.pid} exited ({how})"

    async def close(self, grace: float | None = None) -> None:
        """As :meth:`Channel.close`, then the worker ends: EOF on its stdin, up to
        ``close_grace`` seconds to exit, then SIGKILL. Returns once it has exited."""
        try:
            await super().close(grace)
        finally:
            await self._end_worker()

    async def _end_worker(self) -> None:
        link = self._pipe
        if link is not None:
            link.close("channel closed")
        process = self.process
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), self.close_grace)
            except asyncio.TimeoutError:
                log.warning("lanerpc: worker pid %d did not exit within %g s of its pipe "
                            "closing; killing it", process.pid, self.close_grace)
                try:
                    process.kill()
                except ProcessLookupError:
                    pass
                await process.wait()
        if link is not None and link.transport is not None and not link.closed.done():
            link.abort("worker ended")
        if process.returncode is not None and process.returncode < 0:
            # Killed: its private upgrade directory stayed behind (its lock is free
            # now); remove it rather than leave it for the next server to sweep.
            _lanes.sweep_stale(_lanes.runtime_dir())


async def spawn(argv: Sequence[str], *, options: _grpc.Options | None = None,
                interceptors: _grpc.ClientInterceptors | None = None,
                env: Mapping[str, str] | None = None, cwd: str | None = None,
                stderr: _Stderr = None, start_timeout: float = DEFAULT_START_TIMEOUT,
                close_grace: float = DEFAULT_CLOSE_GRACE) -> SpawnedChannel:
    """Start ``argv`` (a program that calls :func:`serve_stdio`) and return a channel to
    it, connected: the handshake is done, and the same-host upgrade too when the lanes
    allow it (``channel.lane`` is ``"shm"``, ``"unix"``, or ``"pipe"``).

    ``options`` and ``interceptors`` are the channel's, as for ``insecure_channel``;
    ``env``, ``cwd`` are the child's (default: ours); ``stderr`` is where the child's
    stderr goes (default: ours; or a file, an fd, ``subprocess.DEVNULL``);
    ``start_timeout`` bounds its start-up and handshake. Raises ConnectionError, the
    worker killed, when it exits, fails its handshake or takes longer."""
    argv = list(argv)
    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise ValueError(f"argv must be a non-empty list of strings; got {argv!r}")
    if close_grace < 0 or start_timeout <= 0:
        raise ValueError("close_grace must be >= 0 and start_timeout > 0")
    # Our ends are made non-inheritable (os.pipe's default), so another child we
    # spawn later doesn't hold this worker's lifeline open.
    child_in, to_child = os.pipe()
    from_child, child_out = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=child_in, stdout=child_out, stderr=stderr,
            env=dict(env) if env is not None else None, cwd=cwd)
    except BaseException:
        for fd in (child_in, to_child, from_child, child_out):
            os.close(fd)
        raise
    os.close(child_in)
    os.close(child_out)
    try:
        channel = SpawnedChannel(process, options, interceptors, close_grace)
    except BaseException:
        os.close(to_child)
        os.close(from_child)
        process.kill()
        await process.wait()
        raise
    try:
        await channel._start_pipe(from_child, to_child, start_timeout)
        await asyncio.wait_for(_connected(channel), channel._options.upgrade_timeout
                               + channel._options.handshake_timeout)
    except BaseException:
        channel.close_grace = 0
        await channel.close()
        raise
    return channel


async def _connected(channel: SpawnedChannel) -> None:
    """Wait for the channel's first connection (the upgrade tried); ConnectionError
    when it fails (the worker died meanwhile)."""
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise ConnectionError(channel._gone())
        await channel.wait_for_state_change(state)
        state = channel.get_state()


# ------------------------------------------------------------------ the child's side

def serve_stdio(server: Server, *, grace: float = DEFAULT_GRACE) -> None:
    """Serve ``server``'s handlers to the parent that spawned this process (with
    :func:`spawn`), over stdin/stdout, and block until done. Like :func:`rpc.serve`, a
    worker's whole ``main``; returns (so the process exits 0) when the parent closes
    the pipe or dies, or on SIGTERM/SIGINT (a graceful stop: calls get ``grace``
    seconds). The server needs no port; ports added before are served too. From here
    on this process's stdout is its stderr (see :mod:`rpc._spawn`). Runs on uvloop
    when installed; :func:`serve_stdio_async` is for code with its own event loop."""
    if grace < 0:
        raise ValueError("grace must be >= 0")
    run_event_loop(serve_stdio_async(server, grace=grace))


async def serve_stdio_async(server: Server, *, grace: float = DEFAULT_GRACE) -> None:
    """:func:`serve_stdio` in a running event loop (main thread only: it handles
    SIGTERM and SIGINT as ``rpc.serve_async`` does)."""
    _refuse_connection_limits(server)
    read_fd, write_fd = _take_stdio()
    link = await server._serve_pipe(read_fd, write_fd, os.getppid())
    serving = asyncio.ensure_future(serve_async(server, grace=grace))
    lifeline = asyncio.ensure_future(asyncio.shield(link.closed))
    try:
        await asyncio.wait([serving, lifeline], return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():
            log.info("lanerpc: the parent's pipe closed (%s); stopping", link.close_reason)
            await server.stop(grace)
        await serving
    finally:
        lifeline.cancel()
        if not serving.done():
            serving.cancel()


def _refuse_connection_limits(server: Server) -> None:
    """The pipe is the worker's one connection and its lifeline: a server option that
    ends idle or old connections would end the worker, so it is refused, not ignored."""
    options = server._options
    for name, value in (("grpc.max_connection_idle_ms", options.max_connection_idle),
                        ("grpc.max_connection_age_ms", options.max_connection_age)):
        if value is not None:
            raise ValueError(f"serve_stdio: the server option {name} would end the pipe, "
                             "which is the worker's lifeline; leave it unset")


def _take_stdio() -> tuple[int, int]:
    """Move the wire off fds 0 and 1: returns private copies of them (not inherited by
    our own children), then points fd 1 and ``sys.stdout`` at stderr and fd 0 at
    /dev/null. Text printed but not yet flushed goes to stderr."""
    for fd, name in ((0, "stdin"), (1, "stdout")):
        if os.isatty(fd):
            raise RuntimeError(f"serve_stdio: {name} is a terminal; run this program "
                               "through rpc.spawn, which connects its stdin and stdout")
    read_fd = os.dup(0)
    write_fd = os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if sys.stdout is not None:
        try:
            sys.stdout.flush()      # into fd 1, which is stderr now
        except (OSError, ValueError):
            pass
    sys.stdout = sys.stderr
    return read_fd, write_fd
