"""``lanerpc bench``: lanerpc on every lane next to grpc.aio, in one run (rpc._bench)."""

from __future__ import annotations

import argparse
import sys


EPILOG = """\
examples:
  lanerpc bench                                   every subject, 3 rounds (minutes)
  lanerpc bench --quick                           a smoke test, not a measurement
  lanerpc bench --only grpc-tcp,lanerpc-shm --rounds 5 --json out.json --plot chart.png
  lanerpc bench --busy                            with a busy process beside the run
"""


HELP = "measure lanerpc's lanes against grpc.aio on this machine"
DESCRIPTION = ("lanerpc on each lane, grpc.aio and the bare floors (a plain socket echo, "
               "a shared-memory ping-pong), measured side by side in one run: unary "
               "latency, calls/s with 64 callers, streaming msgs/s, 16 MiB MB/s. Prints "
               "a table and ratios; --json and --plot write them too.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rpc._bench import _run

    _run.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rpc._bench import _run

    args.argv = _bench_argv(sys.argv)
    return _run.run(args)


def _bench_argv(argv: list[str]) -> list[str]:
    """The bench's own arguments (after ``bench``), for the JSON's record of the command."""
    return argv[argv.index("bench") + 1:] if "bench" in argv else []
