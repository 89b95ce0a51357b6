"""The ``lanerpc`` command (a console script; ``python -m rpc`` runs the same).

Each subcommand is a module of this package with ``register(subparsers)``, which adds
its parser and sets ``func`` to its ``run(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = ("bench", "ps", "stats")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lanerpc", description="Tools for lanerpc services: see each command's --help.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"rpc._cli.{name}").register(subparsers)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    code: int = args.func(args)
    return code
