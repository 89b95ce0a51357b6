"""The vocabulary shared by rpc/_bench/_run.py, its server process and its subject modules.

A *subject* is one implementation under test (one row of the table): how to start its
server (run in a separate process by rpc/_bench/_server.py) and how to connect a client
to it (in the bench process). Every subject offers the same client interface, so the
measurements in rpc/_bench/_run.py are written once and are the same for all rows.

Subjects register themselves when their module is imported:

* rpc/_bench/_rpc.py          grpc.aio and lanerpc over the Echo service
* rpc/_bench/_floor_*.py      the floors: the fastest bare echo on each lane, no RPC on top.
                               bench.py imports every file matching this pattern, so a new
                               floor (e.g. shared memory) is one new file that calls
                               ``register(Subject(family="floor", lane="shm", ...))``.

Adding a floor
--------------
Write ``rpc/_bench/_floor_<name>.py`` with

* ``async def serve(args: dict) -> ServeResult`` running in the server process: start
  listening, return ``(ready, stop)`` where ``ready`` is a JSON-able dict handed to the
  client (ports, paths, segment names...) and ``stop`` an async callable that closes
  everything (it must leave nothing behind in /tmp or /dev/shm). ``args`` holds
  ``unix_path``, a fresh path in a private temporary directory the bench removes at exit,
  and whatever the subject's ``server_args`` added.
* ``async def connect(ready: dict) -> Client`` running in the bench process.
* a call ``register(Subject(name="floor-<lane>", family="floor", lane="<lane>",
  server="rpc._bench._floor_<name>:serve", connect=connect, ...))`` at import.

The floor whose ``lane`` equals the lane a lanerpc row ended on is that row's reference.

Self-measuring subjects
-----------------------
A subject that runs its own processes (e.g. the shm floor of rpc/_bench/_shm_floor.py,
which needs its two sides to share a segment) gives ``measure`` instead of ``server`` and
``connect``: ``async def measure(cfg: Config) -> dict[str, float]`` returns any of the
figures (``unary_p50_us``, ``unary_p99_us``, ``calls_per_s``, ``stream_msgs_per_s``,
``big_mb_per_s``); those it leaves out show as "-" (not measured). It must not block the
event loop for long (run blocking work with ``asyncio.to_thread``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Awaitable, Callable, Protocol

MiB = 1 << 20
# 16 MiB messages exceed gRPC's 4 MiB default receive limit; every RPC subject raises
# both limits on both sides, with gRPC's option names (lanerpc honours the same names).
MAX_MESSAGE = 64 * MiB
SIZE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]

Ready = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Config:
    """How much to measure (rpc/_bench/_run.py has the full and the --quick settings)."""

    warmup_calls: int       # unary calls before the timed ones (connection, upgrade, caches)
    calls: int              # timed unary calls, one at a time
    warmup_seconds: float   # run-in of the timed-window measurements, not counted
    seconds: float          # the timed window of calls/s and msgs/s
    big_calls: int          # timed 16 MiB echoes (after one untimed)
    rounds: int
    step_timeout: float     # one measurement that takes longer than this is reported as n/a

ServeResult = tuple[Ready, Callable[[], Awaitable[None]]]


class Stream(Protocol):
    """One open pipelined echo stream (a bidi call, or a bare connection)."""

    @property
    def received(self) -> int:
        """Echoes read back so far."""

    async def send(self) -> None:
        """Write one more message (the payload given to ``open_stream``).

        Returns when flow control allows the next write, and yields to the event loop
        at least once so the reading side interleaves with the writer.
        """

    async def close(self) -> None:
        """Stop writing, read every echo still in flight, release the stream.

        The connection must be ready for ``echo`` calls afterwards.
        """


class Client(Protocol):
    """The client side of one subject, connected to its server."""

    @property
    def lane(self) -> str | None:
        """The lane carrying the calls now ("tcp", "unix", "shm"...), if known."""

    async def echo(self, payload: bytes) -> int:
        """One round trip: send ``payload``, wait for the echo, return its length.

        Must be safe to call from many tasks at once (the concurrency measurement).
        """

    async def open_stream(self, payload: bytes) -> Stream:
        """Open a pipelined stream whose every message is ``payload``."""

    async def close(self) -> None:
        """Close the connection."""


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str                    # the row's key, used by --only: "grpc-tcp", "floor-unix"...
    label: str                   # what the row says in words
    family: str                  # "grpc", "lanerpc" or "floor"
    # Either a server and a client, measured by rpc/_bench/_run.py...
    server: str | None = None    # "module:function" run by rpc/_bench/_server.py
    connect: Callable[[Ready], Awaitable[Client]] | None = None
    server_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    # ... or a subject that measures itself (see "Self-measuring subjects" above).
    measure: Callable[[Config], Awaitable[dict[str, float]]] | None = None
    lane: str | None = None      # the lane it uses, when fixed (None: ask the client)
    # The server runs in a network namespace of its own, reached over a veth pair (see
    # rpc/_bench/_netns.py); its ``args`` get ``host``, the address to listen on.
    netns: bool = False
    # The row its ratios are taken against (None: rpc/_bench/_run.py's REFERENCE): a row
    # across namespaces is compared with grpc.aio across the same namespaces.
    reference: str | None = None


FAMILIES = ("grpc", "lanerpc", "floor")
LANE_ORDER = ("tcp", "unix", "shm", "pipe")

_REGISTRY: dict[str, Subject] = {}


def register(subject: Subject) -> Subject:
    if subject.family not in FAMILIES:
        raise ValueError(f"{subject.name}: unknown family {subject.family!r}")
    if (subject.measure is None) == (subject.server is None or subject.connect is None):
        raise ValueError(f"{subject.name}: give either server and connect, or measure")
    if subject.name in _REGISTRY:
        raise ValueError(f"subject {subject.name!r} registered twice")
    _REGISTRY[subject.name] = subject
    return subject


def subjects() -> list[Subject]:
    """Every registered subject, in table order: grpc, lanerpc, floors; by lane within."""
    order = {name: i for i, name in enumerate(_REGISTRY)}

    def key(s: Subject) -> tuple[int, int, int]:
        lane_rank = LANE_ORDER.index(s.lane) if s.lane in LANE_ORDER else len(LANE_ORDER)
        # Floors sort by lane (registration order of their files is alphabetical, not
        # meaningful); the RPC rows keep the order their module registered them in.
        return (FAMILIES.index(s.family), lane_rank if s.family == "floor" else 0, order[s.name])

    return sorted(_REGISTRY.values(), key=key)
