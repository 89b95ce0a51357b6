"""The implementations the conformance suite runs against, side by side.

Every test is written against the ``grpc.aio`` API only; an :class:`Impl` hides the
two things that differ between implementations: how a server is built and bound, and
how a channel is opened. A test may serve any servicer on any implementation
(``impl.serve``), not only the conformance TestService. ``grpc-tcp`` is the
reference: a test that fails there is a wrong test.

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
from collections.abc import Callable, Sequence
from typing import Any

import grpc

import rpc
from tests._memory import served_in_memory
from tests._pipes import served_over_pipes
from tests._support import serve

Options = Sequence[tuple[str, Any]]
OpenChannel = Callable[..., Any]

ENV_VAR = "LANERPC_CONFORMANCE_IMPLS"

DEFAULT_IMPLS: tuple[str, ...] = (
    "grpc-tcp", "lanerpc-tcp", "lanerpc-unix", "lanerpc-upgraded", "lanerpc-shm",
    "lanerpc-shm-posix",
    "lanerpc-grpc-port", "lanerpc-one-port", "lanerpc-grpc-dial", "lanerpc-memory",
    "lanerpc-tls", "lanerpc-pipe",
)
# Defined and runnable through the environment variable; not yet on by default.
LATER_IMPLS: tuple[str, ...] = ("lanerpc-tls-upgraded",)


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation under test.

    The server: a ``grpc.aio`` one (``grpc_server``) or a lanerpc one with the
    ``server_lanes`` option, bound as ``bind`` says: ``"tcp"`` (a lanerpc or gRPC port on
    127.0.0.1), ``"grpc"`` (a lanerpc server's ``grpc://`` port) or ``"unix"`` (a socket
    file). ``channel(target, options, **kwargs)`` returns an unopened channel to
    ``target``. ``lanerpc_channel``: the channel is lanerpc's own (not grpc.aio's, nor
    lanerpc's plain-gRPC one). ``expected_lane``: when set, the channel's ``lane``
    attribute must name it once a call has gone through (None asserts nothing).
    """

    name: str
    grpc_server: bool
    server_lanes: str | None
    bind: str
    channel: OpenChannel
    expected_lane: str | None = None
    lanerpc_channel: bool = False
    tls: bool = False      # the server's ports are TLS ones (lanerpc-tls: rpc's credentials)
    server_options: Options = ()   # given to every server of this implementation

    def address(self, port: int = 0) -> str:
        """Where a server of this implementation binds (a fresh socket file for unix)."""
        if self.bind in ("unix", "memory", "pipe"):
            return "unix:" + _socket_path()
        return f"{'grpc://' if self.bind == 'grpc' else ''}127.0.0.1:{port}"

    def serve(self, *servicers: Any, options: Options = (), address: str | None = None,
              **server_kwargs: Any) -> Any:
        """``async with impl.serve(servicer) as served``: see tests._support.serve; any
        servicer, or a function that registers on the server, may be served."""
        if self.tls:
            server_kwargs.setdefault("credentials", _tls_server_credentials())
        serving = serve(*servicers, address=address or self.address(), lanes=self.server_lanes,
                        options=[*self.server_options, *options], plain_grpc=self.grpc_server,
                        **server_kwargs)
        if self.bind == "pipe":
            return served_over_pipes(serving)
        return served_in_memory(serving) if self.bind == "memory" else serving


def _grpc_channel(target: str, options: Options, **kwargs: Any) -> Any:
    return grpc.aio.insecure_channel(target, options=list(options), **kwargs)


def _lanerpc_channel(lanes: str | None, extra: Options = ()) -> OpenChannel:
    def channel(target: str, options: Options, **kwargs: Any) -> Any:
        head = [] if lanes is None else [("lanerpc.lanes", lanes)]
        return rpc.insecure_channel(target, options=head + list(extra) + list(options), **kwargs)

    return channel


def _tls_server_credentials() -> Any:
    from tests._tls import certs

    made = certs()
    return rpc.ssl_server_credentials([(made.server.key, made.server.cert)])


def _lanerpc_tls_channel(lanes: str) -> OpenChannel:
    def channel(target: str, options: Options, **kwargs: Any) -> Any:
        from tests._tls import certs

        return rpc.secure_channel(target, rpc.ssl_channel_credentials(certs().ca),
                                  options=[("lanerpc.lanes", lanes), *options], **kwargs)

    return channel


def _lanerpc_grpc_dial(target: str, options: Options, **kwargs: Any) -> Any:
    return rpc.insecure_channel("grpc://" + target, options=list(options), **kwargs)


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


def _lanerpc(name: str, lanes: str, bind: str, lane: str) -> Impl:
    return Impl(name, False, lanes, bind, _lanerpc_channel(lanes), lane, lanerpc_channel=True)


ALL_IMPLS: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        # grpc.aio, the reference.
        Impl("grpc-tcp", True, None, "tcp", _grpc_channel),
        # The reference on a Unix socket; handy next to lanerpc-unix, off by default.
        Impl("grpc-unix", True, None, "unix", _grpc_channel),
        _lanerpc("lanerpc-tcp", "tcp", "tcp", "tcp"),
        # Lanes pinned to "unix": a unix: target could otherwise be moved on to shm.
        _lanerpc("lanerpc-unix", "unix", "unix", "unix"),
        # A TCP target, upgraded to the unix lane (shm left out: lanerpc-shm covers it).
        _lanerpc("lanerpc-upgraded", "unix,tcp", "tcp", "unix"),
        # Dials TCP and must end up on shm (its control channel is a Unix socket).
        _lanerpc("lanerpc-shm", "shm,unix,tcp", "tcp", "shm"),
        # The same on the shm lane's portable variant (named shared memory and
        # semaphores, a waiter thread) that other systems get; lanerpc-shm has the
        # memfd one on Linux.
        Impl("lanerpc-shm-posix", False, "shm,unix,tcp", "tcp",
             _lanerpc_channel("shm,unix,tcp", [("lanerpc.shm_variant", "posix")]), "shm",
             lanerpc_channel=True, server_options=(("lanerpc.shm_variant", "posix"),)),
        # grpc.aio clients served by a lanerpc server's grpc:// port (interop, server side).
        Impl("lanerpc-grpc-port", False, None, "grpc", _grpc_channel),
        # grpc.aio clients on a lanerpc server's own TCP port: spliced to its gRPC side.
        Impl("lanerpc-one-port", False, None, "tcp", _grpc_channel),
        # A lanerpc channel dialing a plain grpc.aio server (interop, client side).
        Impl("lanerpc-grpc-dial", True, None, "tcp", _lanerpc_grpc_dial, "tcp"),
        # lanerpc's channel and server connected in memory: the calls' and contexts'
        # logic with no socket under it (the server binds a socket file it never uses).
        _lanerpc("lanerpc-memory", "unix", "memory", "memory"),
        # The same over two real pipes in one process (the pipe lane's transport, as
        # rpc.spawn and rpc.serve_stdio use it; the server binds a socket file it never uses).
        _lanerpc("lanerpc-pipe", "unix", "pipe", "pipe"),
        # lanerpc's TLS lane: a TLS port (rpc.ssl_server_credentials) and a secure
        # channel kept on it (lanes=tcp).
        Impl("lanerpc-tls", False, None, "tcp", _lanerpc_tls_channel("tcp"), "tcp",
             lanerpc_channel=True, tls=True),
        # The same, upgraded on this host to the unix lane, keeping the TLS identity.
        Impl("lanerpc-tls-upgraded", False, None, "tcp", _lanerpc_tls_channel("unix,tcp"),
             "unix", lanerpc_channel=True, tls=True),
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
