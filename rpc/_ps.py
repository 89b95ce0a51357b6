"""What ``lanerpc ps`` reads: a small JSON file each running server keeps in its private
runtime directory (the upgrade socket's, ``<runtime dir>/lanerpc-up-*/``, mode 0700, so
only its uid reads it), and the reader that lists the live ones.

The server writes the file when it starts (pid, addresses, lanes), then again at most
once a second while its counters change: a change arms one timer if none is armed, so
an idle server does no work at all. The file goes with the directory when the server
stops; a killed server's directory is left behind with its lock free, and the reader
skips it (the next server's sweep removes it).

Files read are untrusted: at most :data:`MAX_BYTES`, no symlinks, regular files only,
and a shape checked field by field; anything else is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rpc import _lanes
from rpc._stats import Stats

FILE_NAME = "server.json"
MAX_BYTES = 64 * 1024         # a real file is well under 4 KiB
MAX_ADDRESSES = 64
MAX_TEXT = 512                # an address, a lane name, a counter's key
REFRESH_SECONDS = 1.0
VERSION = 1


class StatusFile:
    """A running server's file: written at start, refreshed while counters change."""

    def __init__(self, directory: str, addresses: Sequence[str], lanes: Sequence[str],
                 stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self.path = os.path.join(directory, FILE_NAME)
        self._head = {"version": VERSION, "pid": os.getpid(), "started": time.time(),
                      "addresses": list(addresses), "lanes": list(lanes)}
        self._stats = stats
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.write()
        stats.watch(self._changed)

    def _changed(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = self._loop.call_later(REFRESH_SECONDS, self._refresh)

    def _refresh(self) -> None:
        self._timer = None
        self._stats.changes_seen()      # the next change arms the timer again
        try:
            self.write()
        except OSError:
            pass          # the directory is going (a stop racing us): nothing to report

    def write(self) -> None:
        """Replace the file at once (a reader never sees half of it)."""
        body = json.dumps({**self._head, "updated": time.time(), **self._stats.snapshot()},
                          sort_keys=True).encode()
        temporary = self.path + ".new"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)

    def close(self) -> None:
        """Stop refreshing and remove the file (the directory goes with the server)."""
        self._closed = True
        self._stats.watch(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for path in (self.path, self.path + ".new"):
            try:
                os.unlink(path)
            except OSError:
                pass


# ------------------------------------------------------------------ reading


@dataclass(frozen=True)
class ServerInfo:
    """One live server, as its file says."""

    pid: int
    addresses: tuple[str, ...]
    lanes: tuple[str, ...]
    started: float
    updated: float
    connections_open: dict[str, int]
    connections_total: dict[str, int]
    calls_by_lane: dict[str, int]
    errors_by_code: dict[str, int]
    bytes_in: int
    bytes_out: int
    directory: str

    def as_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "addresses": list(self.addresses), "lanes": list(self.lanes),
                "started": self.started, "updated": self.updated,
                "connections_open": self.connections_open,
                "connections_total": self.connections_total,
                "calls_by_lane": self.calls_by_lane, "errors_by_code": self.errors_by_code,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


def runtime_dirs() -> list[str]:
    """Where servers of this user may keep their directories: the runtime dir this
    process would use, then the others a server may have been started with."""
    candidates = [_lanes.runtime_dir(), os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir()]
    seen: list[str] = []
    for candidate in candidates:
        if candidate and os.path.isdir(candidate) and candidate not in seen:
            seen.append(candidate)
    return seen


def live_servers(bases: Sequence[str] | None = None) -> list[ServerInfo]:
    """The servers whose directories are ours and whose lock is held (they run), and
    whose file reads as valid; sorted by pid."""
    found = {info.pid: info for info in _read_all(bases if bases is not None else runtime_dirs())}
    return [found[pid] for pid in sorted(found)]


def _read_all(bases: Sequence[str]) -> Iterator[ServerInfo]:
    for base in bases:
        for directory, _ in _lanes.private_directories(base):
            if _lanes._lock_is_free(os.path.join(directory, _lanes._LOCK_NAME)) is not False:
                continue      # no server holds it: dead (or not started yet)
            info = read_file(os.path.join(directory, FILE_NAME), directory)
            if info is not None and _alive(info.pid):
                yield info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_file(path: str, directory: str = "") -> ServerInfo | None:
    """The file at ``path`` as a :class:`ServerInfo`, or None if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            return None
        data = os.read(fd, MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        return None
    try:
        raw = json.loads(data)
        return _validated(raw, directory)
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


def _validated(raw: Any, directory: str) -> ServerInfo:
    """Raises ValueError, TypeError or KeyError for anything out of shape."""
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise ValueError("not a version 1 file")
    pid = _count(raw["pid"])
    if pid < 1:
        raise ValueError("bad pid")
    addresses = _texts(raw["addresses"], MAX_ADDRESSES)
    lanes = _texts(raw["lanes"], 8)
    return ServerInfo(
        pid=pid, addresses=addresses, lanes=lanes,
        started=_time(raw["started"]), updated=_time(raw.get("updated", raw["started"])),
        connections_open=_counters(raw.get("connections_open", {})),
        connections_total=_counters(raw.get("connections_total", {})),
        calls_by_lane=_counters(raw.get("calls_by_lane", {})),
        errors_by_code=_counters(raw.get("errors_by_code", {})),
        bytes_in=_count(raw.get("bytes_in", 0)), bytes_out=_count(raw.get("bytes_out", 0)),
        directory=directory)


def _count(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 1 << 63:
        raise ValueError(f"not a count: {value!r}")
    return value


def _time(value: Any) -> float:
    if type(value) not in (int, float) or not 0 <= value < 1e11:
        raise ValueError(f"not a time: {value!r}")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise ValueError("not a short printable string")
    return value


def _texts(value: Any, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError("not a short list")
    return tuple(_text(item) for item in value)


def _counters(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > 64:
        raise ValueError("not a small table of counts")
    return {_text(key): _count(count) for key, count in value.items()}
