"""The implementations the conformance suite runs against, side by side.

Every test is written against the ``grpc.aio`` API only; an :class:`Impl` hides the
two things that differ between implementations: how a server is built and bound, and
how a channel is opened. ``grpc-tcp`` is the reference: a test that fails there is a
wrong test.

Which implementations run:

- ``LANERPC_CONFORMANCE_IMPLS=grpc-tcp,lanerpc-unix`` (comma-separated names) picks
  them for one run;
- otherwise ``DEFAULT_IMPLS``. To switch a later implementation on for good, move its
  name from ``LATER_IMPLS`` to ``DEFAULT_IMPLS``.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from tests.conformance import conformance_pb2_grpc

Options = Sequence[tuple[str, Any]]
StartServer = Callable[[Any, Options], Awaitable[tuple[Any, str]]]
OpenChannel = Callable[[str, Options], Any]

ENV_VAR = "LANERPC_CONFORMANCE_IMPLS"

DEFAULT_IMPLS: tuple[str, ...] = (
    "grpc-tcp", "lanerpc-tcp", "lanerpc-unix", "lanerpc-upgraded", "lanerpc-shm",
    "lanerpc-grpc-port", "lanerpc-grpc-dial",
)
# Defined and runnable through the environment variable; not yet on by default.
LATER_IMPLS: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation under test.

    ``start_server(servicer, options)`` builds a server with ``options``, registers the
    TestService ``servicer``, binds it, starts it and returns ``(server, target)``.
    ``channel(target, options)`` returns an unopened channel to ``target``.
    ``expected_lane``: when set, the channel's ``lane`` attribute must name it once a
    call has gone through (lanerpc only; None asserts nothing).
    """

    name: str
    start_server: StartServer
    channel: OpenChannel
    expected_lane: str | None = None


# -- grpc.aio, the reference ---------------------------------------------------------


async def _grpc_tcp_server(servicer: Any, options: Options) -> tuple[Any, str]:
    server = grpc.aio.server(options=list(options))
    conformance_pb2_grpc.add_TestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _grpc_unix_server(servicer: Any, options: Options) -> tuple[Any, str]:
    server = grpc.aio.server(options=list(options))
    conformance_pb2_grpc.add_TestServiceServicer_to_server(servicer, server)
    target = "unix:" + _socket_path()
    server.add_insecure_port(target)
    await server.start()
    return server, target


def _grpc_channel(target: str, options: Options) -> Any:
    return grpc.aio.insecure_channel(target, options=list(options))


# -- lanerpc -------------------------------------------------------------------------
# `rpc` is imported when a lanerpc implementation is used, so a run limited to the
# reference does not need the library to import.


def _lanes(lanes: str | None, options: Options) -> list[tuple[str, Any]]:
    head = [] if lanes is None else [("lanerpc.lanes", lanes)]
    return head + list(options)


def _lanerpc_server(lanes: str | None, unix: bool) -> StartServer:
    async def start_server(servicer: Any, options: Options) -> tuple[Any, str]:
        import rpc

        server = rpc.server(options=_lanes(lanes, options))
        conformance_pb2_grpc.add_TestServiceServicer_to_server(servicer, server)
        if unix:
            target = "unix:" + _socket_path()
            server.add_insecure_port(target)
        else:
            port = server.add_insecure_port("127.0.0.1:0")
            target = f"127.0.0.1:{port}"
        await server.start()
        return server, target

    return start_server


def _lanerpc_channel(lanes: str | None) -> OpenChannel:
    def channel(target: str, options: Options) -> Any:
        import rpc

        return rpc.insecure_channel(target, options=_lanes(lanes, options))

    return channel


# -- plain gRPC at the edges: a lanerpc server's grpc:// port, a lanerpc grpc:// channel


async def _lanerpc_grpc_port_server(servicer: Any, options: Options) -> tuple[Any, str]:
    import rpc

    server = rpc.server(options=list(options))
    conformance_pb2_grpc.add_TestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("grpc://127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _lanerpc_grpc_dial(target: str, options: Options) -> Any:
    import rpc

    return rpc.insecure_channel("grpc://" + target, options=list(options))


# -- socket files --------------------------------------------------------------------
# One private directory per test process, short enough for sun_path (108 bytes),
# removed at exit; one socket name per server.

_socket_dir: str | None = None


def _socket_path() -> str:
    global _socket_dir
    if _socket_dir is None:
        _socket_dir = tempfile.mkdtemp(prefix="lrpc-conf-", dir="/tmp")
        atexit.register(shutil.rmtree, _socket_dir, ignore_errors=True)
    return os.path.join(_socket_dir, uuid.uuid4().hex[:12] + ".sock")


ALL_IMPLS: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl("grpc-tcp", _grpc_tcp_server, _grpc_channel),
        # The reference on a Unix socket; handy next to lanerpc-unix, off by default.
        Impl("grpc-unix", _grpc_unix_server, _grpc_channel),
        Impl("lanerpc-tcp", _lanerpc_server("tcp", unix=False), _lanerpc_channel("tcp"), "tcp"),
        # Lanes pinned to "unix": a unix: target could otherwise be moved on to shm.
        Impl("lanerpc-unix", _lanerpc_server("unix", unix=True), _lanerpc_channel("unix"), "unix"),
        # A TCP target, upgraded to the unix lane (shm left out: lanerpc-shm covers it).
        Impl("lanerpc-upgraded", _lanerpc_server("unix,tcp", unix=False),
             _lanerpc_channel("unix,tcp"), "unix"),
        Impl(
            "lanerpc-shm",
            # Dials TCP and must end up on shm (its control channel is a Unix socket).
            _lanerpc_server("shm,unix,tcp", unix=False),
            _lanerpc_channel("shm,unix,tcp"),
            "shm",
        ),
        # grpc.aio clients served by a lanerpc server's grpc:// port (interop, server side).
        Impl("lanerpc-grpc-port", _lanerpc_grpc_port_server, _grpc_channel),
        # A lanerpc channel dialing a plain grpc.aio server (interop, client side).
        Impl("lanerpc-grpc-dial", _grpc_tcp_server, _lanerpc_grpc_dial, "tcp"),
    )
}


def active_impls() -> list[Impl]:
    """The implementations this run covers: ``$LANERPC_CONFORMANCE_IMPLS`` or the default."""
    raw = os.environ.get(ENV_VAR, "").strip()
    names = [n.strip() for n in raw.split(",") if n.strip()] if raw else list(DEFAULT_IMPLS)
    unknown = [n for n in names if n not in ALL_IMPLS]
    if unknown:
        raise ValueError(f"{ENV_VAR}: unknown implementation(s) {unknown}; known: {sorted(ALL_IMPLS)}")
    return [ALL_IMPLS[n] for n in names]
