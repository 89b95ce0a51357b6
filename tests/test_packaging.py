"""What an install puts on a user's machine: one import name, ``rpc``, with its
transports inside and a ``py.typed`` marker, and nothing at the top level besides."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import rpc
import rpc.transports

ROOT = Path(__file__).resolve().parent.parent


def test_the_transports_are_rpc_transports() -> None:
    assert rpc.transports.__name__ == "rpc.transports"
    assert "transports" not in sys.modules, "the repository's folder was imported by its own name"


def test_a_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    # Built from a copy of what the project ships, so the checkout gets no build/ folder,
    # with a C compiler that always fails: the install must not (it falls back to the
    # pure-Python modules), and nothing of the attempt (generated C) is shipped.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py"):
        shutil.copy(ROOT / name, source / name)
    for name in ("rpc", "transports"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.html"))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "CC": "/bin/false"}
    env.pop("LANERPC_PURE_PYTHON", None)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(source)],
        check=True, timeout=300, env=env, capture_output=True, text=True)
    assert "installing the pure-Python modules" in built.stdout + built.stderr
    (wheel,) = tmp_path.glob("lanerpc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # The hot path's source and its types are there; no extension, no generated C.
    for module in ("_wire", "_events", "_streams", "_connection", "transports/_ring",
                   "transports/_pump", "_link"):
        assert f"rpc/{module}.py" in names
        assert f"rpc/{module}.pxd" in names
    assert [n for n in names if n.endswith((".so", ".pyd", ".c", ".html"))] == []
    tops = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"rpc"}
    assert "rpc/py.typed" in names
    assert "rpc/transports/shm.py" in names
    assert "rpc/transports/_ring.py" in names
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["rpc"]
