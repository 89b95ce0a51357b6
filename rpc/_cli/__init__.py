"""The ``lanerpc`` command (``python -m rpc`` runs the same): a shell's way into lanerpc
services. Each subcommand is a module of this package named in :data:`COMMANDS`; it has
``HELP`` (its line in ``lanerpc --help``), ``DESCRIPTION`` and ``EPILOG`` (its own
``--help``, printed as written), ``add_arguments(parser)`` and ``run(args)``, which
returns the exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rpc._cli._common import EXIT_INTERRUPTED, EXIT_USAGE, UsageError

# The subcommands, in the order ``lanerpc --help`` lists them: each is the module
# rpc._cli.<name> (a name that is a Python builtin gets a "_": list -> list_).
COMMANDS = ("list", "describe", "call", "health", "serve", "bench", "ps", "stats")
_MODULES = {"list": "list_"}

EPILOG = """\
examples:
  lanerpc serve examples.helloworld.server:Greeter --address 127.0.0.1:50051 --reflection
  lanerpc list 127.0.0.1:50051
  lanerpc describe 127.0.0.1:50051 helloworld.Greeter
  lanerpc call 127.0.0.1:50051 helloworld.Greeter/SayHello '{"name": "you"}'
  lanerpc health 127.0.0.1:50051

TARGET is any lanerpc target (host:port, unix:/path, dns:///name:port, ...); a
grpc://host:port target calls a plain gRPC server. `lanerpc COMMAND --help` for more.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with EX_USAGE (64) on bad arguments: its own 2 is gRPC's
    UNKNOWN, which `call` exits with when a call ends so."""

    def error(self, message: str) -> None:   # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    """The whole command line: one subparser per module of :data:`COMMANDS`."""
    from rpc import __version__

    top = _Parser(prog="lanerpc", epilog=EPILOG,
                  formatter_class=argparse.RawDescriptionHelpFormatter,
                  description="Call, inspect and serve lanerpc (and gRPC) services.")
    top.add_argument("--version", action="version", version=f"lanerpc {__version__}")
    subparsers = top.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                    parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"rpc._cli.{_MODULES.get(name, name)}")
        command = subparsers.add_parser(
            name, help=module.HELP, description=module.DESCRIPTION, epilog=module.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as error:
        print(f"lanerpc {args.command}: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout went away (`lanerpc list ... | head -1`): not an error of ours. Point
        # stdout at nothing so the interpreter's last flush doesn't complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


__all__ = ("COMMANDS", "main", "parser")
