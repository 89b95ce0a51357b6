"""Server counters: connections per lane, calls, bytes, errors by code."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable

from rpc._status import status_code

if TYPE_CHECKING:
    from rpc._link import Link


class Stats:
    """Counters for the SIGUSR1 snapshot: per lane, bytes, and errors by code."""

    def __init__(self) -> None:
        self.connections: collections.Counter[str] = collections.Counter()
        self.connections_total: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.codes: collections.Counter[str] = collections.Counter()
        self._closed_bytes = [0, 0]
        self._live: set[Link] = set()
        self._per_link: dict[object, list[int]] = {}   # by link    # calls ended [OK, not OK], while open
        # Who is told of changes (the server's status file for `lanerpc ps`: rpc._ps),
        # and whether it was told since it last looked (then a call costs it nothing).
        self._on_change: Callable[[], None] | None = None
        self._told = True

    def watch(self, on_change: Callable[[], None] | None) -> None:
        """Call ``on_change`` at the next change, and then at the first change after
        each :meth:`changes_seen` (None: tell no one)."""
        self._on_change = on_change
        self._told = on_change is None

    def changes_seen(self) -> None:
        """The watcher read the counters: tell it of the next change."""
        self._told = self._on_change is None

    def _tell(self) -> None:
        on_change = self._on_change
        self._told = True
        if on_change is not None:
            on_change()

    def connection_opened(self, link: Link) -> None:
        lane = link.lane or "?"
        self.connections[lane] += 1
        self.connections_total[lane] += 1
        self._live.add(link)
        self._per_link[link] = [0, 0]
        if not self._told:
            self._tell()

    def connection_closed(self, link: Link) -> None:
        self._per_link.pop(link, None)
        if link in self._live:
            self._live.discard(link)
            self.connections[link.lane or "?"] -= 1
            self._closed_bytes[0] += link.bytes_in
            self._closed_bytes[1] += link.bytes_out
            if not self._told:
                self._tell()

    def call_ended(self, lane: str, code: int, link: object = None) -> None:
        self.calls[lane] += 1
        counts = self._per_link.get(link)
        if code:
            self.codes[status_code(code).name] += 1
            if counts is not None:
                counts[1] += 1
        elif counts is not None:
            counts[0] += 1
        if not self._told:
            self._tell()

    def calls_of(self, link: object) -> tuple[int, int]:
        """Calls ended on an open connection: (OK, not OK)."""
        ok, failed = self._per_link.get(link, (0, 0))
        return ok, failed

    def snapshot(self) -> dict[str, Any]:
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
