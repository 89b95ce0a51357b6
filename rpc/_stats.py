"""Server counters: connections per lane, calls, bytes, errors by code."""

from __future__ import annotations

import collections

from rpc._status import status_code


class Stats:
    """Counters for the SIGUSR1 snapshot: per lane, bytes, and errors by code."""

    def __init__(self) -> None:
        self.connections: collections.Counter = collections.Counter()
        self.connections_total: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.codes: collections.Counter = collections.Counter()
        self._closed_bytes = [0, 0]
        self._live: set = set()

    def connection_opened(self, link) -> None:
        lane = link.lane or "?"
        self.connections[lane] += 1
        self.connections_total[lane] += 1
        self._live.add(link)

    def connection_closed(self, link) -> None:
        if link in self._live:
            self._live.discard(link)
            self.connections[link.lane or "?"] -= 1
            self._closed_bytes[0] += link.bytes_in
            self._closed_bytes[1] += link.bytes_out

    def call_ended(self, lane: str, code: int) -> None:
        self.calls[lane] += 1
        if code:
            self.codes[status_code(code).name] += 1

    def snapshot(self) -> dict:
        bytes_in = self._closed_bytes[0] + sum(link.bytes_in for link in self._live)
        bytes_out = self._closed_bytes[1] + sum(link.bytes_out for link in self._live)
        return {
            "connections_open": {k: v for k, v in self.connections.items() if v},
            "connections_total": dict(self.connections_total),
            "calls_by_lane": dict(self.calls),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "errors_by_code": dict(self.codes),
        }
