"""``lanerpc stats TARGET``: a running server's counters through grpc's channelz service
(rpc._channelz says how a lanerpc server maps its counters onto channelz's messages)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

HOW_TO_ENABLE = ("turn channelz on in the server: "
                 "grpc_channelz.v1.channelz.add_channelz_servicer(server)")


EPILOG = """\
examples:
  lanerpc stats 127.0.0.1:50051
  lanerpc stats unix:/run/app/app.sock --json
"""


HELP = "a running server's counters per lane, through channelz"
DESCRIPTION = ("A running server's counters: calls, connections and calls per lane, "
               "bytes, errors by code, and its open connections with their lanes. Asked "
               "through grpc's channelz service, which the server must serve ("
               + HOW_TO_ENABLE + ").")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET",
                        help="the server: host:port, unix:/path, or grpc://host:port for a "
                             "plain gRPC server (grpc core's channelz then)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up after this long (default 10)")


def run(args: argparse.Namespace) -> int:
    try:
        from grpc_channelz.v1 import channelz_pb2  # noqa: F401
    except ImportError:
        print("lanerpc stats: needs grpcio-channelz (pip install grpcio-channelz)", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("lanerpc stats: error: --timeout must be positive", file=sys.stderr)
        return 2
    import grpc

    try:
        report = asyncio.run(_gather(args.target, args.timeout))
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            print(f"lanerpc stats: {args.target} does not serve channelz; {HOW_TO_ENABLE}",
                  file=sys.stderr)
        else:
            print(f"lanerpc stats: {args.target}: {code.name}: {details}", file=sys.stderr)
        return int(code.value[0]) or 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(args.target, report))
    return 0


async def _gather(target: str, timeout: float) -> dict[str, Any]:
    """Everything channelz says about the target's servers and their sockets."""
    import rpc
    from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc

    from rpc import _channelz

    async with rpc.insecure_channel(target) as channel:
        stub = channelz_pb2_grpc.ChannelzStub(channel)  # type: ignore[arg-type]  # its stubs say grpc.Channel; grpc.aio's work
        servers = await stub.GetServers(channelz_pb2.GetServersRequest(), timeout=timeout)
        lane = getattr(channel, "lane", None)
        out: dict[str, Any] = {"target": target, "lane": lane, "servers": []}
        for server in servers.server[:16]:
            data = server.data
            entry: dict[str, Any] = {
                "server_id": server.ref.server_id, "name": server.ref.name,
                "calls_started": data.calls_started, "calls_succeeded": data.calls_succeeded,
                "calls_failed": data.calls_failed, "lanerpc": None, "connections": []}
            for event in data.trace.events:
                text = event.description
                if text.startswith(_channelz.STATS_EVENT + " "):
                    entry["lanerpc"] = _lanerpc_stats(text[len(_channelz.STATS_EVENT) + 1:])
            sockets = await stub.GetServerSockets(channelz_pb2.GetServerSocketsRequest(
                server_id=server.ref.server_id, max_results=100), timeout=timeout)
            for ref in sockets.socket_ref:
                try:
                    found = await stub.GetSocket(channelz_pb2.GetSocketRequest(
                        socket_id=ref.socket_id), timeout=timeout)
                except Exception:    # it closed meanwhile
                    continue
                entry["connections"].append(_connection(found.socket))
            out["servers"].append(entry)
        return out


def _lanerpc_stats(text: str) -> dict[str, Any] | None:
    """The server's lanerpc counters, checked (an answer from the network is untrusted)."""
    from rpc import _ps

    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            return None
        return {
            "connections_open": _ps._counters(raw.get("connections_open", {})),
            "connections_total": _ps._counters(raw.get("connections_total", {})),
            "calls_by_lane": _ps._counters(raw.get("calls_by_lane", {})),
            "errors_by_code": _ps._counters(raw.get("errors_by_code", {})),
            "bytes_in": _ps._count(raw.get("bytes_in", 0)),
            "bytes_out": _ps._count(raw.get("bytes_out", 0)),
        }
    except (ValueError, TypeError, RecursionError):
        return None


def _connection(socket: Any) -> dict[str, Any]:
    options = {option.name: option.value for option in socket.data.option}
    lane = options.get("lanerpc_lane")
    return {
        "socket_id": socket.ref.socket_id, "name": socket.ref.name, "lane": lane,
        "peer": socket.remote_name,
        "calls_started": socket.data.streams_started,
        "calls_succeeded": socket.data.streams_succeeded,
        "calls_failed": socket.data.streams_failed,
        "bytes_in": _int(options.get("lanerpc_bytes_in")),
        "bytes_out": _int(options.get("lanerpc_bytes_out")),
    }


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() and len(text) < 20 else None


def render(target: str, report: dict[str, Any]) -> str:
    lines: list[str] = []
    for server in report["servers"]:
        lines.append(f"server {server['name'] or server['server_id']} at {target}"
                     + (f" (asked over {report['lane']})" if report["lane"] else ""))
        lines.append(f"calls: {server['calls_started']:,} started, {server['calls_succeeded']:,} OK, "
                     f"{server['calls_failed']:,} failed")
        stats = server["lanerpc"]
        if stats is None:
            lines.append("(no lanerpc counters: not a lanerpc server, or an older one)")
        else:
            lanes = sorted(set(stats["connections_total"]) | set(stats["calls_by_lane"]))
            table: list[tuple[str, ...]] = [("LANE", "CONNECTIONS open/total", "CALLS")]
            for lane in lanes:
                table.append((lane, f"{stats['connections_open'].get(lane, 0)}/"
                                    f"{stats['connections_total'].get(lane, 0)}",
                              f"{stats['calls_by_lane'].get(lane, 0):,}"))
            lines.extend(_table(table))
            lines.append(f"bytes: {stats['bytes_in']:,} in, {stats['bytes_out']:,} out")
            errors = ", ".join(f"{code} {count:,}" for code, count in sorted(stats["errors_by_code"].items()))
            lines.append(f"errors: {errors or 'none'}")
        if server["connections"]:
            lines.append("")
            table = [("ID", "LANE", "PEER", "CALLS ok/failed/running", "BYTES in/out")]
            for c in server["connections"]:
                running = c["calls_started"] - c["calls_succeeded"] - c["calls_failed"]
                table.append((str(c["socket_id"]), c["lane"] or "?", c["peer"] or "?",
                              f"{c['calls_succeeded']}/{c['calls_failed']}/{running}",
                              f"{_maybe(c['bytes_in'])}/{_maybe(c['bytes_out'])}"))
            lines.extend(_table(table))
    return "\n".join(lines) if lines else f"{target} reports no servers"


def _maybe(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
