"""lanerpc next to grpc.aio and the bare floors, measured in one run (DESIGN.md section 7).

    lanerpc bench                      full run: every subject, 3 interleaved rounds, medians
    lanerpc bench --quick              small counts, one round (a smoke test, well under 20 s)
    lanerpc bench --only grpc-tcp,lanerpc-shm --rounds 5 --json bench-now.json --plot chart.png
    lanerpc bench --list               the subjects and what they are

(``python -m rpc bench`` and, in a checkout, ``tools/bench`` run the same.)

Each *subject* (a row: grpc.aio over TCP, lanerpc on one lane, a bare socket echo...)
is measured the same way. Its server runs in a child process (rpc/_bench/_server.py,
started with this interpreter, stopped by pid); the client runs here. Both use uvloop
when it is importable, for every subject alike. Per subject and round:

* unary latency: one caller, 100-byte payload, warm-up calls, then N timed calls; p50/p99;
* calls/s: 64 callers sharing one channel (connection), 100-byte payloads, for a fixed time;
* bidi pipelined msgs/s: one stream, a writer writing 100-byte messages as fast as flow
  control lets it while a reader counts the echoes, for a fixed time;
* 16 MiB echo MB/s: unary calls carrying 16 MiB each way, one at a time. MB/s counts the
  bytes of both directions (request + reply), MB = 10^6 bytes, for every subject.

Rounds interleave the subjects (round r starts r places further down the list) and the
table shows medians over rounds. Ratios are always "higher is better": for latency the
reference's time over the subject's, for throughput the subject's rate over the
reference's. Judge lanerpc by the ratios of one run, not by absolute times.

The ``*-veth-*`` rows run their server in a network namespace the bench makes for the
round and removes after it (rpc/_bench/_netns.py), dialled over a veth pair: TCP between
two network stacks, as between hosts. They need root and ``ip`` (else "n/a: needs ...")
and take their ratios against grpc-veth-tcp and floor-veth-tcp.

The subjects live in rpc/_bench/_rpc.py (grpc.aio, lanerpc) and rpc/_bench/_floor_*.py
(floors; every file matching that name is loaded, see rpc/_bench/_core.py for how to add
one). A subject that cannot start, e.g. a lanerpc that does not import yet, gets an
"n/a: <reason>" row; the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import gc
import glob
import importlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Iterator

from rpc._bench import _netns
from rpc._bench._core import MiB, Client, Config, Ready, Subject, subjects

HERE = os.path.dirname(os.path.abspath(__file__))
# The directory rpc is imported from: the server processes import the same one.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(HERE))
SERVER_MODULE = "rpc._bench._server"
SMALL = 100            # bytes per message, latency / concurrency / pipelined
BIG = 16 * MiB         # bytes per message, each way, for MB/s
CALLERS = 64
SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 5.0

log = logging.getLogger("bench")


FULL = Config(warmup_calls=200, calls=1000, warmup_seconds=0.3, seconds=1.2, big_calls=5,
              rounds=3, step_timeout=60.0)
QUICK = Config(warmup_calls=20, calls=200, warmup_seconds=0.05, seconds=0.2, big_calls=1,
               rounds=1, step_timeout=20.0)

# The figures, in table order: key, column heading, whether lower is better.
METRICS: list[tuple[str, str, bool]] = [
    ("unary_p50_us", "p50 µs", True),
    ("unary_p99_us", "p99 µs", True),
    ("calls_per_s", "calls/s", False),
    ("stream_msgs_per_s", "msgs/s", False),
    ("big_mb_per_s", "MB/s", False),
]
# Which figures each measurement produces.
FIGURES_OF = {"latency": ("unary_p50_us", "unary_p99_us"), "concurrency": ("calls_per_s",),
              "stream": ("stream_msgs_per_s",), "big": ("big_mb_per_s",)}
# The figures the ratio table compares (p99 is too noisy to divide).
RATIO_METRICS = ["unary_p50_us", "calls_per_s", "stream_msgs_per_s", "big_mb_per_s"]
UNITS = {
    "unary_p50_us": "microseconds, one caller, 100-byte payload",
    "unary_p99_us": "microseconds, one caller, 100-byte payload",
    "calls_per_s": f"completed unary calls per second, {CALLERS} concurrent callers on one channel",
    "stream_msgs_per_s": "echoed messages per second on one pipelined bidi stream, 100 bytes each",
    "big_mb_per_s": "10^6 bytes per second, request and reply bytes both counted, 16 MiB each way",
    "ratios": "higher is better: latency reference/subject, throughput subject/reference",
}
REFERENCE = "grpc-tcp"


class Unavailable(Exception):
    """The subject cannot run at all here (its server did not start, its client did not
    connect): the whole row is n/a, and later rounds do not try again."""


# ---------------------------------------------------------------------------- subjects


def load_subjects() -> list[Subject]:
    """Import the subject modules: the RPC rows and every floor file present."""
    importlib.import_module("rpc._bench._rpc")
    for path in sorted(glob.glob(os.path.join(HERE, "_floor_*.py"))):
        name = "rpc._bench." + os.path.splitext(os.path.basename(path))[0]
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken floor must not stop the others
            print(f"bench: skipping {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return subjects()


# ---------------------------------------------------------------------------- the server process


def _last_line(path: str) -> str:
    with open(path, "rb") as f:
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""


@contextlib.asynccontextmanager
async def server_process(subject: Subject, unix_path: str, verbose: bool) -> AsyncIterator[Ready]:
    """Run the subject's server in a child process; yield what its ``ready`` line said.
    A ``netns`` subject's server runs in a namespace made for it (removed afterwards)."""
    if not subject.netns:
        async with _server_process(subject, unix_path, verbose, (), {}) as ready:
            yield ready
        return
    why_not = _netns.why_unavailable()
    if why_not is not None:
        raise Unavailable(why_not)
    try:
        namespace = _netns.veth_namespace()
        name, host = namespace.__enter__()
    except RuntimeError as exc:
        raise Unavailable(f"no network namespace: {exc}") from None
    try:
        # `ip netns exec` execs the command: the child's pid is the server's.
        async with _server_process(subject, unix_path, verbose, ("ip", "netns", "exec", name),
                                   {"host": host}) as ready:
            yield ready
    finally:
        namespace.__exit__(None, None, None)


@contextlib.asynccontextmanager
async def _server_process(subject: Subject, unix_path: str, verbose: bool,
                          prefix: tuple[str, ...], args: dict[str, Any]) -> AsyncIterator[Ready]:
    assert subject.server is not None
    spec = {"server": subject.server,
            "args": {**subject.server_args, **args, "unix_path": unix_path}}
    errlog = unix_path + ".stderr"
    with open(errlog, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-m", SERVER_MODULE, json.dumps(spec), env=_server_env(),
            # stdin stays open while the server is wanted: its EOF stops the server even if
            # this process is killed outright. A session of its own keeps a terminal's
            # Ctrl-C away from it: this process stops it, by pid, in the finally below.
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), SERVER_START_TIMEOUT)
        except asyncio.TimeoutError:
            raise Unavailable(f"server not ready after {SERVER_START_TIMEOUT:.0f} s") from None
        if not line:
            await proc.wait()
            raise Unavailable(f"server exited with {proc.returncode}: {_last_line(errlog)}")
        ready = json.loads(line)
        if "error" in ready:
            raise Unavailable(f"server: {ready['error']}")
        yield ready
    finally:
        await _stop(proc)
        # Show what the server said when asked to (-v) or when it ended unexpectedly: 0 is a
        # graceful stop, 1 a failure to start (already in the row), -SIGTERM a stop by signal.
        if verbose or proc.returncode not in (0, 1, -signal.SIGTERM):
            with open(errlog, "rb") as f:
                text = f.read().decode(errors="replace").strip()
            if text:
                print(f"--- {subject.name} server stderr (exit {proc.returncode}):\n{text}",
                      file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(errlog)


def _server_env() -> dict[str, str]:
    """Our environment, with the directory rpc came from first on the server's path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Graceful stop (stdin EOF + SIGTERM), then SIGKILL after a timeout. Never raises."""
    if proc.returncode is None:
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), SERVER_STOP_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            print(f"bench: server {proc.pid} did not stop within {SERVER_STOP_TIMEOUT:.0f} s; killed",
                  file=sys.stderr)


# ---------------------------------------------------------------------------- measurements


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


async def _echo(client: Client, payload: bytes) -> None:
    n = await client.echo(payload)
    if n != len(payload):
        raise RuntimeError(f"echo returned {n} bytes for {len(payload)}")


async def measure_latency(client: Client, cfg: Config) -> dict[str, float]:
    payload = os.urandom(SMALL)
    for _ in range(cfg.warmup_calls):
        await _echo(client, payload)
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(cfg.calls):
        start = clock()
        await _echo(client, payload)
        samples.append((clock() - start) / 1000.0)
    samples.sort()
    return {"unary_p50_us": _percentile(samples, 0.50), "unary_p99_us": _percentile(samples, 0.99)}


async def _window(tasks: list[asyncio.Task[Any]], seconds: float) -> None:
    """Sleep ``seconds`` unless a task ends first, which only happens when it failed."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()  # raises the task's error
        raise RuntimeError("a worker stopped early")


async def measure_concurrency(client: Client, cfg: Config) -> dict[str, float]:
    payload = os.urandom(SMALL)
    completed = 0
    stop = False

    async def caller() -> None:
        nonlocal completed
        while not stop:
            await _echo(client, payload)
            completed += 1

    tasks = [asyncio.create_task(caller()) for _ in range(CALLERS)]
    try:
        await _window(tasks, cfg.warmup_seconds)
        count0, t0 = completed, time.perf_counter()
        await _window(tasks, cfg.seconds)
        count1, t1 = completed, time.perf_counter()
        stop = True
        await asyncio.gather(*tasks)  # each finishes the call it has in flight
    finally:
        stop = True
        for task in tasks:
            task.cancel()
    return {"calls_per_s": (count1 - count0) / (t1 - t0)}


async def measure_stream(client: Client, cfg: Config) -> dict[str, float]:
    stream = await client.open_stream(os.urandom(SMALL))
    stop = False

    async def writer() -> None:
        while not stop:
            await stream.send()

    task = asyncio.create_task(writer())
    try:
        await _window([task], cfg.warmup_seconds)
        count0, t0 = stream.received, time.perf_counter()
        await _window([task], cfg.seconds)
        count1, t1 = stream.received, time.perf_counter()
        stop = True
        await task
        await stream.close()  # reads what is still in flight, so the next measurement starts clean
    finally:
        stop = True
        task.cancel()
    return {"stream_msgs_per_s": (count1 - count0) / (t1 - t0)}


async def measure_big(client: Client, cfg: Config) -> dict[str, float]:
    payload = os.urandom(BIG)
    await _echo(client, payload)  # untimed: grows buffers and windows on both sides
    start = time.perf_counter()
    for _ in range(cfg.big_calls):
        await _echo(client, payload)
    elapsed = time.perf_counter() - start
    return {"big_mb_per_s": 2 * BIG * cfg.big_calls / elapsed / 1e6}


MEASUREMENTS: list[tuple[str, Callable[[Client, Config], Awaitable[dict[str, float]]]]] = [
    ("latency", measure_latency),
    ("concurrency", measure_concurrency),
    ("stream", measure_stream),
    ("big", measure_big),
]


@dataclasses.dataclass
class RoundResult:
    figures: dict[str, float] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)   # measurement -> reason
    lanes: list[str | None] = dataclasses.field(default_factory=list)  # after each measurement
    unavailable: str | None = None
    seconds: float = 0.0


def _has_figures(result: RoundResult, measurement: str) -> bool:
    return all(key in result.figures for key in FIGURES_OF[measurement])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


NOT_MEASURED = "not measured"  # a self-measuring subject's figures it does not produce


async def run_self_measuring(subject: Subject, cfg: Config, result: RoundResult, verbose: bool) -> None:
    assert subject.measure is not None
    try:
        figures = await asyncio.wait_for(subject.measure(cfg), cfg.step_timeout * len(MEASUREMENTS))
    except Exception as exc:  # noqa: BLE001 - e.g. the shm transport is not there yet
        if verbose:
            traceback.print_exc()
        raise Unavailable(_reason(exc)) from exc
    known = {key for keys in FIGURES_OF.values() for key in keys}
    result.figures.update({k: float(v) for k, v in figures.items() if k in known})
    for name, _ in MEASUREMENTS:
        if not _has_figures(result, name):
            result.errors[name] = NOT_MEASURED
    result.lanes.append(subject.lane)


async def run_round(subject: Subject, cfg: Config, unix_path: str, verbose: bool,
                    step: Callable[[str], None] | None = None) -> RoundResult:
    """One subject's round; ``step(name)`` is told of each measurement as it starts."""
    step = step if step is not None else (lambda _name: None)
    result = RoundResult()
    started = time.perf_counter()
    if subject.measure is not None:
        step("measuring")
        try:
            await run_self_measuring(subject, cfg, result, verbose)
        except Unavailable as exc:
            result.unavailable = str(exc)
        result.seconds = time.perf_counter() - started
        return result
    assert subject.connect is not None
    try:
        async with server_process(subject, unix_path, verbose) as ready:
            try:
                client = await asyncio.wait_for(subject.connect(ready), SERVER_START_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - e.g. lanerpc not importable yet
                if verbose:
                    traceback.print_exc()
                raise Unavailable(f"client: {_reason(exc)}") from exc
            try:
                for name, measure in MEASUREMENTS:
                    step(name)
                    gc.collect()  # not inside anyone's timed section
                    try:
                        result.figures.update(
                            await asyncio.wait_for(measure(client, cfg), cfg.step_timeout))
                    except Exception as exc:  # noqa: BLE001 - one failed figure, not the row
                        if verbose:
                            traceback.print_exc()
                        result.errors[name] = _reason(exc)
                    result.lanes.append(client.lane)
            finally:
                try:
                    await asyncio.wait_for(client.close(), SERVER_STOP_TIMEOUT)
                except Exception as exc:  # noqa: BLE001
                    log.debug("closing %s: %s", subject.name, exc)
    except Unavailable as exc:
        result.unavailable = str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken round is a row's problem, not the run's
        if verbose:
            traceback.print_exc()
        result.errors.update({name: f"round failed: {_reason(exc)}" for name, _ in MEASUREMENTS
                              if name not in result.errors and not _has_figures(result, name)})
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------- aggregation


@dataclasses.dataclass
class Row:
    subject: Subject
    rounds: list[RoundResult] = dataclasses.field(default_factory=list)

    @property
    def unavailable(self) -> str | None:
        if self.rounds and all(r.unavailable for r in self.rounds):
            return self.rounds[0].unavailable
        return None

    def median(self, metric: str) -> float | None:
        values = [r.figures[metric] for r in self.rounds if metric in r.figures]
        return statistics.median(values) if values else None

    def error(self, metric: str) -> str | None:
        """Why a figure is missing (the first failure seen for its measurement)."""
        measurement = next(name for name, keys in FIGURES_OF.items() if metric in keys)
        for r in self.rounds:
            if r.unavailable:
                return r.unavailable
            if measurement in r.errors:
                return r.errors[measurement]
        return None

    @property
    def lane(self) -> str | None:
        """The lane the subject ended on (the last round's), for picking its floor."""
        for r in reversed(self.rounds):
            lanes = [lane for lane in r.lanes if lane]
            if lanes:
                return lanes[-1]
        return self.subject.lane

    def lane_text(self) -> str:
        """Lanes as seen: "shm", or "tcp→shm" if it moved mid-round, "a | b" if rounds differ."""
        seen: list[str] = []
        for r in self.rounds:
            steps: list[str] = []
            for lane in r.lanes:
                name = lane or "?"
                if not steps or steps[-1] != name:
                    steps.append(name)
            text = "→".join(steps)
            if text and text not in seen:
                seen.append(text)
        return " | ".join(seen) or (self.subject.lane or "?")


def ratio(metric: str, value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or value <= 0 or reference <= 0:
        return None
    lower_is_better = dict((k, lower) for k, _, lower in METRICS)[metric]
    return reference / value if lower_is_better else value / reference


def floor_for(row: Row, rows: dict[str, Row]) -> Row | None:
    """The floor measured in this run for the lane a lanerpc row ended on (across
    namespaces when the row is: a veth is not loopback)."""
    if row.subject.family != "lanerpc":
        return None
    for other in rows.values():
        if (other.subject.family == "floor" and other.subject.lane == row.lane
                and other.subject.netns == row.subject.netns and not other.unavailable):
            return other
    return None


def ratios(row: Row, rows: dict[str, Row]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    reference_name = row.subject.reference or REFERENCE
    reference = rows.get(reference_name)
    if reference is not None and reference is not row and not reference.unavailable:
        out[f"vs_{reference_name}"] = {m: ratio(m, row.median(m), reference.median(m))
                                       for m in RATIO_METRICS}
    floor = floor_for(row, rows)
    if floor is not None:
        out["vs_floor"] = {"floor": floor.subject.name,
                           **{m: ratio(m, row.median(m), floor.median(m)) for m in RATIO_METRICS}}
    return out


# ---------------------------------------------------------------------------- output


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 10 else f"{value:.2f}"


def _cell(row: Row, metric: str) -> str:
    value = row.median(metric)
    if value is None and row.error(metric) == NOT_MEASURED:
        return "-"
    return _num(value)


def _x(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def render_table(rows: dict[str, Row], cfg: Config, machine: dict[str, Any]) -> str:
    name_w = max([len("subject")] + [len(n) for n in rows]) + 2
    lane_w = max([len("lane")] + [len(r.lane_text()) for r in rows.values()]) + 2
    out: list[str] = []
    rounds = f"median of {cfg.rounds} interleaved rounds" if cfg.rounds > 1 else "one round"
    out.append(f"lanerpc bench: {machine['nproc']} CPUs ({machine['cpu_model']}), "
               f"Python {machine['python']}, {machine['event_loop']}; {rounds}")
    out.append("")
    # Column widths: latency p50, p99, then one column per throughput figure.
    widths = (10, 10, 12, 12, 12)
    groups = [("unary, 1 caller", widths[0] + widths[1]), (f"{CALLERS} callers", widths[2]),
              ("bidi stream", widths[3]), ("16 MiB echo", widths[4])]
    out.append(" " * (name_w + lane_w) + "".join(f"{title:>{width}}" for title, width in groups))
    out.append(f"{'subject':<{name_w}}{'lane':<{lane_w}}"
               + "".join(f"{heading:>{w}}" for (_, heading, _), w in zip(METRICS, widths)))
    for name, row in rows.items():
        head = f"{name:<{name_w}}{row.lane_text():<{lane_w}}"
        if row.unavailable:
            out.append(head + f"n/a: {row.unavailable}"[:160])
            continue
        out.append(head + "".join(f"{_cell(row, m):>{w}}" for (m, _, _), w in zip(METRICS, widths)))
    notes = [f"  {name} {m}: {row.error(m)}" for name, row in rows.items() if not row.unavailable
             for m, _, _ in METRICS if row.median(m) is None and row.error(m) != NOT_MEASURED]
    if notes:
        out.append("missing figures:")
        out.extend(notes)
    out.append("(100-byte payloads; MB/s counts request + reply bytes, MB = 10^6 bytes)")

    # Ratios: only meaningful when the reference ran.
    ref = rows.get(REFERENCE)
    table = [(name, row, ratios(row, rows)) for name, row in rows.items() if not row.unavailable]
    if not any(r for _, _, r in table):
        return "\n".join(out)
    out.append("")
    out.append("ratios, higher is better (latency: reference/subject; throughput: subject/reference)")
    cols = ("p50", "calls/s", "msgs/s", "MB/s")
    ref_title = f"vs {REFERENCE}" if ref is not None and not ref.unavailable else ""
    out.append(" " * name_w + f"{ref_title:^36}    " + "vs the floor of its lane")
    out.append(f"{'subject':<{name_w}}" + "".join(f"{c:>9}" for c in cols) + "    "
               + f"{'floor':<14}" + "".join(f"{c:>9}" for c in cols))
    references = {REFERENCE} | {row.subject.reference for row in rows.values()
                                if row.subject.reference}
    for name, row, r in table:
        reference = row.subject.reference or REFERENCE
        vs_ref = r.get(f"vs_{reference}")
        vs_floor = r.get("vs_floor")
        if name in references:
            left = f"{'(the reference)':>36}"
        else:
            left = "".join(f"{_x(vs_ref[m]) if vs_ref else '-':>9}" for m in RATIO_METRICS)
        right = ""
        if vs_floor:
            right = f"{vs_floor['floor']:<14}" + "".join(f"{_x(vs_floor[m]):>9}" for m in RATIO_METRICS)
        elif row.subject.family == "lanerpc":
            right = f"(no floor measured for lane {row.lane})"
        if reference != REFERENCE and name != reference:
            right += f"  (left: vs {reference})"
        out.append(f"{name:<{name_w}}{left}    {right}".rstrip())
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(event_loop: str) -> dict[str, Any]:
    try:
        nproc = len(os.sched_getaffinity(0))  # what `nproc` says: the CPUs we may run on
    except AttributeError:
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "event_loop": event_loop,
        "packages": {name: _version(name) for name in
                     ("lanerpc", "grpcio", "protobuf", "uvloop", "posix_ipc")},
    }


def to_json(rows: dict[str, Row], cfg: Config, machine: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    subjects_out: dict[str, Any] = {}
    for name, row in rows.items():
        subjects_out[name] = {
            "label": row.subject.label,
            "family": row.subject.family,
            "lane": row.lane,
            "lanes_seen": row.lane_text(),
            "unavailable": row.unavailable,
            "median": {m: row.median(m) for m, _, _ in METRICS},
            "missing": {m: row.error(m) for m, _, _ in METRICS if row.median(m) is None},
            "ratios": ratios(row, rows) if not row.unavailable else {},
            "rounds": [dataclasses.asdict(r) for r in row.rounds],
        }
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["lanerpc", "bench", *argv]),
        "argv": argv,
        "machine": machine,
        "config": {**dataclasses.asdict(cfg), "small_bytes": SMALL, "big_bytes": BIG,
                   "callers": CALLERS, "reference": REFERENCE},
        "units": UNITS,
        "subjects": subjects_out,
    }


PLOT_NEEDS = ("lanerpc bench --plot needs matplotlib, which is not installed: "
              "pip install 'lanerpc[plot]' (or matplotlib)")


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_png(path: str, rows: dict[str, Row]) -> None:
    """The comparison as bar charts, one per figure: every lanerpc lane, grpc.aio and
    the floors, coloured by family. Needs matplotlib (see :func:`plot_available`)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter

    shown = [(name, row) for name, row in rows.items() if not row.unavailable]
    colors = {"grpc": "tab:gray", "lanerpc": "tab:blue", "floor": "tab:green"}
    titles = {"unary_p50_us": "unary p50, µs (lower is better)", "calls_per_s": f"calls/s, {CALLERS} callers",
              "stream_msgs_per_s": "bidi pipelined msgs/s", "big_mb_per_s": "16 MiB echo, MB/s"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 1.6 + 0.45 * max(4, len(shown)) * 2))
    for ax, metric in zip(axes.flat, RATIO_METRICS):
        names = [name for name, row in shown if row.median(metric)]
        values = [rows[name].median(metric) or 0.0 for name in names]
        labels = [f"{name} ({rows[name].lane_text()})" for name in names]
        ax.barh(labels, values, color=[colors[rows[n].subject.family] for n in names])
        if values:
            ax.set_xscale("log")  # the figures span orders of magnitude
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor tick labels collide
        ax.invert_yaxis()
        ax.set_title(titles[metric])
        for y, v in enumerate(values):
            ax.text(v, y, f" {_num(v)}", va="center", fontsize=8)
    families = sorted({row.subject.family for _, row in shown}, key=list(colors).index)
    family_names = {"grpc": "grpc.aio", "lanerpc": "lanerpc", "floor": "bare floor (no RPC)"}
    fig.legend(handles=[Patch(color=colors[f], label=family_names[f]) for f in families],
               loc="lower center", ncol=len(families) or 1, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- progress


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line a step
    otherwise (``--progress`` into a file or pipe). Silent when off."""

    WIDTH = 24

    def __init__(self, enabled: bool, total: int, stream: Any = None) -> None:
        self.enabled = enabled
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.in_place = enabled and self.stream.isatty()
        self.started = time.monotonic()
        self._drawn = False

    def _draw(self, text: str) -> None:
        filled = self.WIDTH * self.done // self.total
        elapsed = int(time.monotonic() - self.started)
        line = (f"bench [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} "
                f"{elapsed // 60}:{elapsed % 60:02d}  {text}")
        if self.in_place:
            self.stream.write("\r\033[K" + line[:200])
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def step(self, round_no: int, rounds: int, subject: Subject, measurement: str) -> None:
        if self.enabled:
            self._draw(f"round {round_no + 1}/{rounds}  {subject.name}: {measurement}")

    def finished(self, round_no: int, rounds: int, subject: Subject, result: RoundResult) -> None:
        """A subject's round is over: its figures on a line of their own, the bar below."""
        self.done += 1
        if not self.enabled:
            return
        self.clear()
        self.stream.write(_summary(round_no, rounds, subject, result) + "\n")
        if self.in_place:
            self._draw(f"round {round_no + 1}/{rounds}  {subject.name}: done")
        else:
            self.stream.flush()

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False


# ---------------------------------------------------------------------------- main


async def bench(chosen: list[Subject], cfg: Config, verbose: bool,
                progress: Progress | None = None) -> dict[str, Row]:
    rows = {s.name: Row(s) for s in chosen}
    progress = progress if progress is not None else Progress(False, 0)
    # Unix socket paths and server logs. Not named "lanerpc-*": lanerpc sweeps stale
    # directories of that name (its own upgrade sockets) out of the temp dir.
    workdir = tempfile.mkdtemp(prefix="bench-lanerpc-")
    try:
        for round_no in range(cfg.rounds):
            # Rotate the order each round so that no subject always runs first (cold) or last.
            shift = round_no % len(chosen)
            for subject in chosen[shift:] + chosen[:shift]:
                row = rows[subject.name]
                if row.rounds and row.rounds[0].unavailable:
                    row.rounds.append(row.rounds[0])  # it will not start this time either
                    progress.finished(round_no, cfg.rounds, subject, row.rounds[0])
                    continue
                unix_path = os.path.join(workdir, f"{subject.name}-{round_no}.sock")
                result = await run_round(subject, cfg, unix_path, verbose,
                                         _stepper(progress, round_no, cfg.rounds, subject))
                row.rounds.append(result)
                progress.finished(round_no, cfg.rounds, subject, result)
    finally:
        progress.clear()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def _stepper(progress: Progress, round_no: int, rounds: int,
             subject: Subject) -> Callable[[str], None]:
    return lambda measurement: progress.step(round_no, rounds, subject, measurement)


def _summary(round_no: int, rounds: int, subject: Subject, r: RoundResult) -> str:
    if r.unavailable:
        summary = f"n/a: {r.unavailable}"
    else:
        def fig(key: str) -> str:
            if key in r.figures:
                return _num(r.figures[key])
            measurement = next(name for name, keys in FIGURES_OF.items() if key in keys)
            return "-" if r.errors.get(measurement) == NOT_MEASURED else "n/a"

        parts = [f"p50 {fig('unary_p50_us')} µs", f"{fig('calls_per_s')} calls/s",
                 f"{fig('stream_msgs_per_s')} msgs/s", f"{fig('big_mb_per_s')} MB/s",
                 f"lane {'→'.join(dict.fromkeys(str(x) for x in r.lanes)) or '?'}"]
        summary = ", ".join(parts) + "".join(f"; {k}: {v}" for k, v in r.errors.items()
                                             if v != NOT_MEASURED)
    return f"[{round_no + 1}/{rounds}] {subject.name:<18} {r.seconds:5.1f} s  {summary}"


# ---------------------------------------------------------------------------- --busy


BUSY_LOOP = "while True:\n    pass\n"


@contextlib.contextmanager
def busy_process(enabled: bool) -> Iterator[int | None]:
    """With ``enabled``: a pure-Python spin loop in a process of its own beside the
    run (what a busy neighbour on the machine looks like), stopped by its pid at the
    end. Yields its pid (None when not enabled)."""
    if not enabled:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield proc.pid
    finally:
        proc.kill()
        try:
            proc.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"bench: busy process {proc.pid} did not exit after SIGKILL", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options, on ``parser`` (``lanerpc bench``'s, or the standalone one)."""
    parser.add_argument("--quick", action="store_true",
                        help="small counts and one round: a smoke test, not a measurement")
    parser.add_argument("--only", metavar="SUBJECT[,SUBJECT]",
                        help="run these subjects only (default: all; --list names them)")
    parser.add_argument("--rounds", type=int, metavar="K",
                        help=f"interleaved rounds, medians reported (default {FULL.rounds}, "
                             f"{QUICK.rounds} with --quick)")
    parser.add_argument("--json", metavar="PATH", nargs="?", const="-",
                        help="also write every figure as JSON to PATH; --json alone writes it "
                             "to stdout (and the table to stderr)")
    parser.add_argument("--plot", "--png", dest="plot", metavar="PATH",
                        help="also draw the comparison as a bar chart (PNG; needs matplotlib, "
                             "the 'plot' extra)")
    parser.add_argument("--busy", action="store_true",
                        help="run a busy process (a pure-Python spin loop) beside the whole run")
    parser.add_argument("--progress", action="store_true",
                        help="show the progress bar even when stderr is not a terminal")
    parser.add_argument("--list", action="store_true", help="list the subjects and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="tracebacks, servers' stderr, DEBUG logging (lane choices)")


def run(args: argparse.Namespace) -> int:
    """Run the bench as ``args`` says; the exit code (2: a usage error)."""
    all_subjects = load_subjects()
    names = [s.name for s in all_subjects]
    if args.list:
        for s in all_subjects:
            print(f"{s.name:<18} {s.family:<8} {s.label}")
        return 0
    if args.rounds is not None and args.rounds < 1:
        return _usage("--rounds must be at least 1")
    only: list[str] | None = None
    if args.only:
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in only if n not in names]
        if unknown:
            return _usage(f"unknown subject(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if args.plot and not plot_available():
        return _usage(PLOT_NEEDS)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if os.environ.pop("LANERPC_LANES", None) is not None:
        # Each lanerpc row sets its own lanes; a process-wide override would blur them.
        print("bench: ignoring LANERPC_LANES (each subject sets its lanes)", file=sys.stderr)

    cfg = QUICK if args.quick else FULL
    if args.rounds is not None:
        cfg = dataclasses.replace(cfg, rounds=args.rounds)
    chosen = [s for s in all_subjects if only is None or s.name in only]

    try:
        import uvloop
    except ImportError:
        runner: Callable[[Coroutine[Any, Any, dict[str, Row]]], dict[str, Row]] = asyncio.run
        event_loop = "asyncio"
    else:
        runner = uvloop.run
        event_loop = f"uvloop {_version('uvloop')}"

    machine = machine_info(event_loop)
    machine["busy_process"] = bool(args.busy)
    progress = Progress(args.progress or sys.stderr.isatty(), cfg.rounds * len(chosen))
    try:
        with busy_process(args.busy):
            rows = runner(bench(chosen, cfg, args.verbose, progress))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130

    json_to_stdout = args.json == "-"
    table_out = sys.stderr if json_to_stdout else sys.stdout
    print(render_table(rows, cfg, machine), file=table_out)
    argv = list(getattr(args, "argv", []))
    if args.json:
        figures = json.dumps(to_json(rows, cfg, machine, argv), indent=2) + "\n"
        if json_to_stdout:
            sys.stdout.write(figures)
        else:
            with open(args.json, "w") as f:
                f.write(figures)
            print(f"\nfigures written to {args.json}", file=table_out)
    if args.plot:
        write_png(args.plot, rows)
        print(f"chart written to {args.plot}", file=table_out)
    return 0


def _usage(message: str) -> int:
    print(f"lanerpc bench: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """``python -m rpc._bench`` (and tools/bench): the bench without the lanerpc command."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="lanerpc bench", description="lanerpc, grpc.aio and the bare floors, side by side.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = argv
    return run(args)
