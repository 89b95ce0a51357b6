"""tools/soak.py runs end to end on every lane and writes sane JSON.

A smoke test of the harness only (a few seconds, not a soak): the verdict on leaks needs
minutes, so the slope limit is lifted here and no figure is judged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "tools" / "soak.py"


def test_a_short_soak_runs_every_lane_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if k != "LANERPC_LANES"}
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "0.05", "--max-slope", "1e12",
         "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), f"soak failed:\n{proc.stdout}\n{proc.stderr}"
    data = json.loads(out.read_text())
    assert data["calls"] > 0
    assert len(data["samples"]) >= 2
    for side in ("server", "client"):
        assert all(n > 0 for n in data[f"{side}_fds"] + data[f"{side}_threads"])
        assert f"{side}: RSS slope" in proc.stdout
