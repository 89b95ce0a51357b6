"""tools/bench.py runs end to end and writes sane JSON.

Only a smoke test: it checks that the harness works (server process, client, the four
measurements, the JSON), on the subjects that do not depend on lanerpc, and that the
rows across network namespaces run (as root) or say why not. It asserts no timings:
figures only have to be positive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "tools" / "bench.py"
SUBJECTS = ("grpc-tcp", "floor-tcp")
METRICS = ("unary_p50_us", "unary_p99_us", "calls_per_s", "stream_msgs_per_s", "big_mb_per_s")


def test_quick_bench_writes_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "LANERPC_LANES"}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", ",".join(SUBJECTS), "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,  # generous: --quick takes a few seconds; this only catches a hang
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"

    data = json.loads(out.read_text())
    assert data["machine"]["nproc"] >= 1
    assert data["machine"]["python"]
    assert "--quick" in data["command"]
    assert set(data["subjects"]) == set(SUBJECTS)
    for name in SUBJECTS:
        subject = data["subjects"][name]
        assert subject["unavailable"] is None, f"{name}: {subject['unavailable']}"
        for metric in METRICS:
            value = subject["median"][metric]
            assert isinstance(value, (int, float)) and value > 0, f"{name} {metric}: {value!r}"
    # The floor is compared with the reference, which ran in the same process.
    assert data["subjects"]["floor-tcp"]["ratios"]["vs_grpc-tcp"]["calls_per_s"] > 0
    # The table went to stdout.
    assert "grpc-tcp" in proc.stdout and "floor-tcp" in proc.stdout


VETH_SUBJECTS = ("grpc-veth-tcp", "lanerpc-veth-tcp")


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def _run_bench(out: Path, subjects: tuple[str, ...], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", ",".join(subjects), "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def test_veth_rows_measure_across_namespaces_and_remove_theirs(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip for the namespace the veth rows make")
    before = _namespaces()
    env = {k: v for k, v in os.environ.items() if k != "LANERPC_LANES"}
    data = _run_bench(tmp_path / "bench.json", VETH_SUBJECTS, env)
    for name in VETH_SUBJECTS:
        subject = data["subjects"][name]
        assert subject["unavailable"] is None, f"{name}: {subject['unavailable']}"
        assert subject["lanes_seen"] == "tcp"
        for metric in METRICS:
            value = subject["median"][metric]
            assert isinstance(value, (int, float)) and value > 0, f"{name} {metric}: {value!r}"
    # lanerpc across namespaces is compared with grpc.aio across the same namespaces.
    assert data["subjects"]["lanerpc-veth-tcp"]["ratios"]["vs_grpc-veth-tcp"]["calls_per_s"] > 0
    assert not {n for n in _namespaces() - before if n.startswith("lrbench-")}


def test_veth_rows_say_why_they_cannot_run(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LANERPC_LANES"}
    env["PATH"] = str(empty)     # no ip (and, when not root, no namespaces anyway)
    data = _run_bench(tmp_path / "bench.json", VETH_SUBJECTS, env)
    for name in VETH_SUBJECTS:
        reason = data["subjects"][name]["unavailable"]
        assert reason is not None and ("needs root" in reason or "needs iproute2" in reason), reason


def test_the_shm_floor_polls_as_the_lane_does_between_two_processes() -> None:
    """floor-shm is the lane's own transport echoing between two processes: its parent
    must see the child as its peer (not itself), or it would not poll for the answer as
    the lane does (a transport whose peer is its own process never polls)."""
    from rpc._bench._shm_floor import run_floor
    from rpc.transports import _spin

    if _spin.cpus_available() < 2:
        pytest.skip("one CPU: no transport polls")

    def floor_dirs() -> set[str]:
        return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("lanerpc-floor-")}

    before = floor_dirs()
    result = run_floor("lane", 300)
    assert result["p50_us"] > 0
    # It polled (a catch rate is reported only then); how often a poll caught the
    # answer depends on the machine's load.
    assert "spin_catch_rate" in result, result
    assert floor_dirs() <= before       # its control socket's directory is gone
