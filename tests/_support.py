"""What many tests share: one Echo servicer, and ``serve()``, a bounded server for a test.

``Echo`` echoes, and does what a payload asks (see its docstring); it counts its
handlers and lets a test wait on them instead of sleeping. ``serve()`` builds a server
(lanerpc's ``rpc.server`` or ``grpc.aio.server``), registers servicers, binds, starts,
and on the way out closes the channels it opened and stops the server, even when the
body failed; every await in it is bounded.

Also imported by the server process of tests/e2e/_server_proc.py, so it imports only
the library and the example protos.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc

SETUP_TIMEOUT = 5.0     # the bound on starting or stopping a server and closing a channel
STARTED = (("started", "1"),)


def msg(payload: bytes = b"") -> echo_pb2.EchoMessage:
    return echo_pb2.EchoMessage(payload=payload)


def rss_mb(pid: int | str = "self") -> float:
    """A process's resident memory in MB (``/proc/PID/status``'s VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def within(awaitable: Awaitable[Any], seconds: float = SETUP_TIMEOUT) -> Any:
    """Await with a bound: a hang is a test failure, not a stuck run."""
    return await asyncio.wait_for(awaitable, seconds)


async def wait_until(predicate: Callable[[], bool], timeout: float = SETUP_TIMEOUT,
                     every: float = 0.005) -> None:
    """Wait for ``predicate()`` to hold; fail (AssertionError) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        await asyncio.sleep(every)


async def assert_pending(seconds: float, *futures: asyncio.Future) -> None:
    """Assert that none of ``futures`` (tasks, futures) ends within ``seconds``; a
    failure is seen as soon as one does. They are left running."""
    done, _ = await asyncio.wait(futures, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    assert not done, f"ended within {seconds} s: {done}"


class Tracked:
    """A servicer's record of its handlers, for a test to watch instead of sleeping.

    Handlers run inside ``with self._track():``. ``started_calls``, ``ended_calls``
    (returned, raised or cancelled) and ``cancelled_calls`` (saw ``CancelledError``)
    count them; ``running`` and ``peak`` are how many run now and at most. The events
    ``started``, ``ended`` and ``cancelled`` are set by the first of each.
    """

    def __init__(self) -> None:
        self.started_calls = 0
        self.ended_calls = 0
        self.cancelled_calls = 0
        self.running = 0
        self.peak = 0
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.cancelled = asyncio.Event()

    @contextlib.contextmanager
    def _track(self) -> Iterator[None]:
        self.started_calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.set()
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled_calls += 1
            self.cancelled.set()
            raise
        finally:
            self.running -= 1
            self.ended_calls += 1
            self.ended.set()


class Echo(Tracked, echo_pb2_grpc.EchoServicer):
    """The test Echo service.

    By payload, Unary does:

    * ``fail``: aborts with FAILED_PRECONDITION, "asked to fail";
    * ``wait``: waits until :meth:`release` (or until it is cancelled);
    * ``sleep:MS``: sleeps MS ms, then echoes;
    * ``count:MS``: appends this process's pid to ``counter_file`` (flushed and
      fsynced: it survives SIGKILL), then sleeps MS ms;
    * ``trailer:N``: echoes, with trailing metadata ``big`` of N bytes;
    * ``peer``: answers ``context.peer()|lane|server library|pid``;
    * anything else: echoes, after ``delay`` seconds when one was given.

    ServerStream: ``stream:N:MS`` yields N messages ``0``, ``1``, ... MS ms apart;
    anything else yields the payload with ``0``, ``1``, ``2`` appended.
    ClientStream answers the payloads joined; a first message ``noread`` makes it stop
    reading (the client's writes then block on flow control). Bidi echoes each message,
    after MS ms for a ``sleep:MS`` one.

    A handler that is going to take a while (the waiting Unary payloads, ``stream:``,
    and every ClientStream and Bidi) sends initial metadata ``started: 1`` first, so a
    client can await ``call.initial_metadata()`` to know it runs. Every handler is
    counted (see :class:`Tracked`); ``seen_metadata`` has each Unary call's metadata.
    """

    def __init__(self, delay: float = 0.0, counter_file: str | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.counter_file = counter_file
        self.seen_metadata: list[tuple] = []
        self._release = asyncio.Event()

    def release(self) -> None:
        """Let every ``wait`` call (running or to come) return."""
        self._release.set()

    def _count(self) -> None:
        if self.counter_file is not None:
            with open(self.counter_file, "a") as f:
                f.write(f"{os.getpid()}\n")
                f.flush()
                os.fsync(f.fileno())

    async def Unary(self, request, context):
        with self._track():
            payload = request.payload
            self.seen_metadata.append(tuple(context.invocation_metadata() or ()))
            if payload == b"fail":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
            if payload == b"peer":
                served_by = type(context).__module__.split(".")[0]   # "rpc", or "grpc"
                lane = getattr(context, "lane", None)
                return msg(f"{context.peer()}|{lane}|{served_by}|{os.getpid()}".encode())
            if payload == b"wait" or payload.startswith((b"sleep:", b"count:")):
                if payload.startswith(b"count:"):
                    self._count()
                await context.send_initial_metadata(STARTED)
                if payload == b"wait":
                    await self._release.wait()
                else:
                    await asyncio.sleep(int(payload[6:]) / 1000)
            elif self.delay:
                await asyncio.sleep(self.delay)
            if payload.startswith(b"trailer:"):
                context.set_trailing_metadata((("big", "x" * int(payload[8:])),))
            return request

    async def ServerStream(self, request, context):
        with self._track():
            payload = request.payload
            if payload.startswith(b"stream:"):
                await context.send_initial_metadata(STARTED)
                _, n, ms = payload.split(b":")
                for i in range(int(n)):
                    yield msg(b"%d" % i)
                    await asyncio.sleep(int(ms) / 1000)
                return
            for i in range(3):
                yield msg(payload + b"%d" % i)

    async def ClientStream(self, request_iterator, context):
        with self._track():
            await context.send_initial_metadata(STARTED)
            payloads = []
            async for message in request_iterator:
                if not payloads and message.payload == b"noread":
                    await asyncio.sleep(3600)
                payloads.append(message.payload)
            return msg(b"".join(payloads))

    async def Bidi(self, request_iterator, context):
        with self._track():
            await context.send_initial_metadata(STARTED)
            async for message in request_iterator:
                if message.payload.startswith(b"sleep:"):
                    await asyncio.sleep(int(message.payload[6:]) / 1000)
                yield message


# -- serve() -------------------------------------------------------------------------------

def register(server: Any, servicer: Any) -> None:
    """Add ``servicer`` to ``server``: an Echo, Greeter or conformance TestService
    servicer, or a function that registers what it likes on the server."""
    if isinstance(servicer, echo_pb2_grpc.EchoServicer):
        echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
        return
    from examples.helloworld import helloworld_pb2_grpc

    if isinstance(servicer, helloworld_pb2_grpc.GreeterServicer):
        helloworld_pb2_grpc.add_GreeterServicer_to_server(servicer, server)
        return
    from tests.conformance import conformance_pb2_grpc

    if isinstance(servicer, conformance_pb2_grpc.TestServiceServicer):
        conformance_pb2_grpc.add_TestServiceServicer_to_server(servicer, server)
        return
    if callable(servicer):
        servicer(server)
        return
    raise TypeError(f"don't know how to register {servicer!r}")


def target_of(address: str, port: int) -> str:
    """What a client dials for a server bound at ``address`` (which got ``port``)."""
    address = address.removeprefix("grpc://")
    if address.startswith("unix:"):
        return address
    host = address.rsplit(":", 1)[0]
    return f"{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{port}"


class Served:
    """A started server, what it is bound to, and channels to it closed with it."""

    def __init__(self, server: Any, addresses: Sequence[str], ports: Sequence[int]) -> None:
        self.server = server
        self.ports = list(ports)
        self.targets = [target_of(a, p) for a, p in zip(addresses, ports, strict=True)]
        self._channels: list[Any] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def target(self) -> str:
        return self.targets[0]

    def channel(self, target: str | None = None, *, plain_grpc: bool = False,
                lanes: str | None = None, **kwargs: Any) -> Any:
        """A channel to ``target`` (this server's first one by default), closed at the
        end of ``serve()``: a ``grpc.aio`` one with ``plain_grpc``, else a lanerpc one
        (``lanes`` sets its ``lanerpc.lanes`` option)."""
        if lanes is not None:
            kwargs["options"] = [("lanerpc.lanes", lanes), *(kwargs.get("options") or ())]
        make = grpc.aio.insecure_channel if plain_grpc else rpc.insecure_channel
        return self.keep(make(target or self.target, **kwargs))

    def keep(self, channel: Any) -> Any:
        """Close ``channel`` (opened elsewhere) with this server; returns it."""
        self._channels.append(channel)
        return channel

    async def close_channels(self) -> None:
        """Close the channels opened so far (each bounded; all tried, the first error raised)."""
        channels, self._channels = self._channels, []
        await _all_of([lambda c=c: asyncio.wait_for(c.close(), SETUP_TIMEOUT) for c in reversed(channels)])


async def _all_of(steps: Sequence[Callable[[], Awaitable[Any]]]) -> None:
    """Run every step, even after one fails; then raise the first failure."""
    errors: list[Exception] = []
    for step in steps:
        try:
            await step()
        except Exception as exc:  # keep going, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@contextlib.asynccontextmanager
async def serve(*servicers: Any, address: str | Sequence[str] = "127.0.0.1:0", lanes: str | None = None,
                options: Sequence[tuple[str, Any]] | None = None, plain_grpc: bool = False,
                credentials: Any = None, grace: float | None = 0,
                **server_kwargs: Any) -> AsyncIterator[Served]:
    """``async with serve(Echo()) as served:`` a started server, stopped at the end.

    ``servicers``: servicers or registering functions (see :func:`register`);
    ``address``: one address or several (``grpc://`` ones too); ``lanes``: the
    server's ``lanerpc.lanes`` option; ``plain_grpc``: a ``grpc.aio`` server instead
    of a lanerpc one; ``credentials``: server credentials, making every port a TLS
    one; other keywords go to the server's constructor. On the way out,
    whatever happened in the body, its channels are closed, then the server is
    stopped with ``grace``; each of those, and the start, is bounded.
    """
    addresses = [address] if isinstance(address, str) else list(address)
    options = list(options or ())
    if lanes is not None:
        options.insert(0, ("lanerpc.lanes", lanes))
    make = grpc.aio.server if plain_grpc else rpc.server
    server = make(options=options, **server_kwargs)
    served = None
    try:
        for servicer in servicers:
            register(server, servicer)
        if credentials is None:
            ports = [server.add_insecure_port(a) for a in addresses]
        else:
            ports = [server.add_secure_port(a, credentials) for a in addresses]
        await asyncio.wait_for(server.start(), SETUP_TIMEOUT)
        served = Served(server, addresses, ports)
        yield served
    except BaseException:
        with contextlib.suppress(Exception):   # the body's error is the one to see
            await _shut(served, server, grace)
        raise
    await _shut(served, server, grace)


async def _shut(served: Served | None, server: Any, grace: float | None) -> None:
    """Close the channels, then stop the server: both tried, the first error raised."""
    steps = [] if served is None else [served.close_channels]
    steps.append(lambda: asyncio.wait_for(server.stop(grace), SETUP_TIMEOUT + (grace or 0)))
    await _all_of(steps)
