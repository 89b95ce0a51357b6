"""``lanerpc ps``: the lanerpc servers of this user on this host, from the small file
each keeps in its private runtime directory (rpc._ps)."""

from __future__ import annotations

import argparse
import json
import time


EPILOG = """\
examples:
  lanerpc ps
  lanerpc ps --json
"""


HELP = "list the lanerpc servers you can see on this host"
DESCRIPTION = ("List the running lanerpc servers of your user on this host: pid, "
               "addresses, lanes, and per lane the connections open and the calls "
               "served. Read from the file each server keeps in its private runtime "
               "directory ($LANERPC_RUNTIME_DIR, $XDG_RUNTIME_DIR or the temp dir), "
               "refreshed at most once a second while its counters change.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON array instead of the table")


def run(args: argparse.Namespace) -> int:
    from rpc import _ps

    servers = _ps.live_servers()
    if args.json:
        print(json.dumps([s.as_json() for s in servers], indent=2, sort_keys=True))
        return 0
    if not servers:
        print("no lanerpc servers of yours are running on this host")
        return 0
    rows = [("PID", "UP", "ADDRESSES", "LANES", "CONNECTIONS (open/total)", "CALLS", "ERRORS")]
    now = time.time()
    for s in servers:
        rows.append((str(s.pid), _age(now - s.started), ", ".join(s.addresses) or "-",
                     ",".join(s.lanes), _per_lane(s.connections_open, s.connections_total),
                     _counts(s.calls_by_lane), _counts(s.errors_by_code)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _per_lane(open_now: dict[str, int], total: dict[str, int]) -> str:
    lanes = sorted(set(open_now) | set(total))
    return ", ".join(f"{lane} {open_now.get(lane, 0)}/{total.get(lane, 0)}" for lane in lanes) or "-"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in sorted(counts.items()) if value) or "-"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
