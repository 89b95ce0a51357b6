"""tools/demo's main job, run as a user runs it: every way of dialing succeeds and
lands on the lane it should."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_dials_every_way_and_reports_each_lane():
    proc = subprocess.run([sys.executable, "-m", "examples.demo", "--calls", "30"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"(\S+)\s+(grpc\.aio|lanes=\S+|default)\s+(\S+)\s+([\d,]+) µs", line)
        if match:
            rows[(match[1].split(":")[0], match[2])] = match[3]
    assert rows[("grpc", "grpc.aio")] == "tcp"
    assert rows[("127.0.0.1", "lanes=tcp")] == "tcp"
    assert rows[("127.0.0.1", "lanes=unix,tcp")].endswith("unix")
    assert rows[("127.0.0.1", "default")].endswith("shm")
    assert rows[("unix", "default")] == "shm"
    assert "failed" not in proc.stdout
