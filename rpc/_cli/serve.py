"""``lanerpc serve MODULE:ATTR --address ADDR``: serve what MODULE:ATTR names, with
``rpc.serve``'s signal handling (SIGTERM or SIGINT drains, a second one stops at once,
SIGUSR1 logs the stats).

What ATTR may be (MODULE is imported with the current directory on ``sys.path``):

- a servicer instance, or a servicer class (made with no arguments): every base class
  it has from a grpcio-tools ``*_pb2_grpc`` module is added with that module's
  generated ``add_<Base>_to_server``;
- a function taking one argument, ``configure(server)``: called with a new server to
  add servicers to;
- a function taking none, a factory: it returns a servicer, a list of servicers, or an
  ``rpc.Server`` of its own (``async def`` factories are awaited in the server's loop);
- an ``rpc.Server``.

``--reflection`` and ``--health`` add grpc's reflection and health services for the
services added (health: SERVING, NOT_SERVING once the server starts to stop); they need
lanerpc to add them, so not with a server made elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import rpc
from rpc._cli._common import UsageError
from rpc._serve import DEFAULT_GRACE, log_for_operators, run_event_loop

_SERVING = 1      # grpc.health.v1's HealthCheckResponse.SERVING

# The server could not start (a port in use, say): a plain failure, not bad usage.
EXIT_START_FAILED = 1

EPILOG = """\
examples:
  lanerpc serve examples.helloworld.server:Greeter --address 127.0.0.1:50051
  lanerpc serve myapp.services:configure -a '[::]:50051' -a unix:/run/myapp/app.sock \\
      --reflection --health
  lanerpc serve myapp.main:make_server            a factory whose server has its ports

MODULE:ATTR may be a servicer class or instance (added with its generated
add_*Servicer_to_server, found in the *_pb2_grpc module of its base class), a function
configure(server) that adds servicers to the server it is given, a function of no
arguments returning servicer(s) or an rpc.Server, or an rpc.Server. MODULE is
imported with the current directory on sys.path.

Prints "listening on ADDRESS" (with the real port for port 0) once it accepts calls.
SIGTERM or Ctrl-C drains (calls get --grace seconds), a second one stops at once;
SIGUSR1 logs the stats. Exit status: 0 once stopped; 64 bad arguments; 1 could not
start.
"""


HELP = "serve servicers from a Python module"
DESCRIPTION = ("Serve MODULE:ATTR (servicers, a configure(server) function, a factory\n"
               "or a server) on each --address, until SIGTERM or Ctrl-C.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="MODULE:ATTR", help="what to serve, e.g. pkg.module:Servicer")
    parser.add_argument("-a", "--address", action="append", default=[], dest="addresses",
                        metavar="ADDR",
                        help="listen here (repeatable): host:port (port 0: any free one), "
                             "unix:/path, grpc://host:port (plain gRPC, through grpcio)")
    parser.add_argument("--reflection", action="store_true",
                        help="serve grpc's reflection service (for list, describe, call)")
    parser.add_argument("--health", action="store_true",
                        help="serve grpc.health.v1: every service SERVING, NOT_SERVING once "
                             "it drains")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                        metavar="SECONDS",
                        help="how long running calls get after SIGTERM (default %(default)g)")


def run(args: argparse.Namespace) -> int:
    if args.grace < 0:
        raise UsageError("--grace must be 0 or more")
    target = _load(args.app)
    log_for_operators()                      # as rpc.serve
    return run_event_loop(_serve(target, args))


def _load(spec: str) -> Any:
    """Import MODULE and follow ATTR (dotted) in it."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"{spec!r}: expected MODULE:ATTR, e.g. myapp.services:Greeter")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())     # as `python -m` does; a console script lacks it
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name}: {exc}") from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(f"{module_name} has no {attribute}") from None
    return found


class _NotingServer(rpc.Server):
    """A server that notes the names of the services added to it (for --reflection and
    --health, which must name them), and with --health turns every service NOT_SERVING
    as it starts to stop, so health watchers (gRPC's client-side health checking) take it
    out of their turn while it drains."""

    def __init__(self) -> None:
        super().__init__()
        self.service_names: list[str] = []
        self.health: Any = None      # grpc_health's aio HealthServicer, with --health

    async def stop(self, grace: float | None) -> None:
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        await super().stop(grace)

    def _note(self, name: str) -> None:
        if name not in self.service_names:
            self.service_names.append(name)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        generic_rpc_handlers = tuple(generic_rpc_handlers)
        for handler in generic_rpc_handlers:
            service_name = getattr(handler, "service_name", None)    # grpc's generated ones
            if callable(service_name):
                self._note(service_name())
        super().add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._note(service_name)
        super().add_registered_method_handlers(service_name, method_handlers)


def _adders(servicer_class: type) -> list[Callable[[Any, Any], None]]:
    """The generated ``add_<Base>_to_server`` of each generated base of ``servicer_class``."""
    found = []
    for base in servicer_class.__mro__:
        module = sys.modules.get(base.__module__)
        if module is not None and base.__module__.endswith("_pb2_grpc"):
            adder = getattr(module, f"add_{base.__name__}_to_server", None)
            if callable(adder):
                found.append(adder)
    return found


def _add_servicer(server: rpc.Server, servicer: object, spec: str) -> None:
    adders = _adders(type(servicer))
    if not adders:
        raise UsageError(
            f"{spec}: {servicer!r} is not a servicer of a generated service (none of its base "
            "classes comes from a *_pb2_grpc module with add_<Base>_to_server); see "
            "`lanerpc serve --help` for what MODULE:ATTR may be")
    for adder in adders:
        adder(servicer, server)


def _takes_one_argument(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [p for p in parameters if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) == 1


async def _build(target: Any, spec: str) -> tuple[rpc.Server, _NotingServer | None]:
    """The server to run, and the same when lanerpc made it (and knows its services)."""
    if isinstance(target, rpc.Server):
        return target, None
    if isinstance(target, type) and _adders(target):
        try:
            target = target()
        except TypeError as exc:
            raise UsageError(f"{spec}: {target.__name__}() needs arguments ({exc}): name an "
                             "instance, or a function that makes one") from None
    if _adders(type(target)):
        server = _NotingServer()
        _add_servicer(server, target, spec)
        return server, server
    if not callable(target):
        raise UsageError(f"{spec} is {target!r}: see `lanerpc serve --help` for what it may be")
    if _takes_one_argument(target):
        server = _NotingServer()
        result = target(server)
        if inspect.isawaitable(result):
            await result
        return server, server
    made = target()
    if inspect.isawaitable(made):
        made = await made
    if isinstance(made, rpc.Server):
        return made, None
    server = _NotingServer()
    for servicer in made if isinstance(made, (list, tuple)) else (made,):
        _add_servicer(server, servicer, spec)
    return server, server


async def _serve(target: Any, args: argparse.Namespace) -> int:
    server, noted = await _build(target, args.app)
    if args.health or args.reflection:
        if noted is None:
            raise UsageError(f"{args.app} made its own server: --reflection and --health need "
                             "lanerpc to add the services (give servicers or configure(server)), "
                             "or turn them on in that server")
        if args.health:
            from grpc_health.v1 import health as grpc_health, health_pb2_grpc

            noted.health = grpc_health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(noted.health, server)
        if args.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection(
                [*noted.service_names, reflection.SERVICE_NAME], server)
    if noted is not None and not args.addresses:
        raise UsageError("where to listen: give --address (e.g. --address 127.0.0.1:50051)")
    listening = []
    try:
        for address in args.addresses:
            listening.append(_shown(address, server.add_insecure_port(address)))
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"lanerpc serve: cannot listen on {address}: {exc}", file=sys.stderr)
        return EXIT_START_FAILED

    # rpc.serve_async installs the signal handlers; until it runs, a signal is noted here
    # so that one sent as soon as "listening" is printed still drains (and exits 0).
    loop = asyncio.get_running_loop()
    early: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, early.append, signum)
    try:
        await server.start()
    except (RuntimeError, OSError) as exc:
        print(f"lanerpc serve: cannot start: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    if noted is not None and noted.health is not None:
        for name in ("", *noted.service_names):
            await noted.health.set(name, _SERVING)
    for shown in listening:
        print(f"listening on {shown}", flush=True)
    if early:
        await server.stop(args.grace)
        return 0
    await rpc.serve_async(server, grace=args.grace)   # replaces the handlers above
    return 0


def _shown(address: str, port: int) -> str:
    """``address`` with the port it got (port 0 asks for any)."""
    scheme, bare = ("grpc://", address[7:]) if address.startswith("grpc://") else ("", address)
    if bare.startswith("unix"):
        return address
    return f"{scheme}{bare.rpartition(':')[0]}:{port}"
