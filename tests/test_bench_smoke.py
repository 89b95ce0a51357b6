"""tools/bench.py runs end to end and writes sane JSON.

Only a smoke test: it checks that the harness works (server process, client, the four
measurements, the JSON), on the subjects that do not depend on lanerpc. It asserts no
timings: figures only have to be positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
