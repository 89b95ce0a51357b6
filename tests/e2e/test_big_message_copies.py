"""A 16 MiB echo allocates its payload no more than protobuf itself makes it.

tools/count_copies.py runs the echoes under strace with every allocation of 32 KiB or
more made by mmap, and divides the bytes allocated by the payload bytes moved. Per
direction, protobuf allocates 4 payloads' worth (serializing: its buffer and the bytes
it returns; parsing: a buffer twice the payload's size); lanerpc reads an announced
message into one buffer of its size, which protobuf's FromString then parses as it
is, and reads the next message of that size into the same buffer once nothing holds
it (after the untimed first echo: nothing of lanerpc's own). Before that buffer,
lanerpc collected a big message in pieces and joined them (7.6 payloads per direction
in all); before the reuse, a new buffer per message (5.0). The shm lane copies its
ring's records into that buffer too; before, it joined each ring-full into bytes
first (6.1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
TOOL = ROOT / "tools" / "count_copies.py"


@pytest.mark.skipif(shutil.which("strace") is None, reason="counting needs strace")
@pytest.mark.parametrize("lanes", ["tcp", "unix,tcp", "shm,unix,tcp"])
def test_a_16_mib_echo_allocates_nothing_per_direction_besides_protobuf(lanes: str) -> None:
    proc = subprocess.run([sys.executable, str(TOOL), "--lanes", lanes, "--echoes", "2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["lane"] == lanes.split(",")[0]
    # protobuf's 4, and a quarter for whatever else runs meanwhile.
    assert result["copies_per_direction"] <= 4.25, result
