"""The committed *_pb2*.py files are what tools/gen-protos makes from proto/ now."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    out = tmp_path / "out"
    out.mkdir()
    protos = []
    for directory, _, files in os.walk(os.path.join(ROOT, "proto")):
        protos += [os.path.join(directory, f) for f in files if f.endswith(".proto")]
    assert protos, "no .proto files found"
    for proto in protos:
        rel = os.path.relpath(proto, os.path.join(ROOT, "proto"))
        args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}/proto", f"--python_out={out}"]
        if "service " in open(proto).read():
            args += [f"--grpc_python_out={out}", f"--pyi_out={out}"]
        subprocess.run(args + [rel], check=True, cwd=os.path.join(ROOT, "proto"), timeout=60)
    stale = []
    for directory, _, files in os.walk(out):
        for name in files:
            fresh = os.path.join(directory, name)
            committed = os.path.join(ROOT, os.path.relpath(fresh, out))
            if not os.path.exists(committed) or not filecmp.cmp(fresh, committed, shallow=False):
                stale.append(os.path.relpath(committed, ROOT))
    assert not stale, f"run tools/gen-protos: stale or missing {stale}"
