"""Which build of the hot path runs (rpc._compiled): the compiled extensions where
setup.py built them, the pure-Python source with LANERPC_PURE_PYTHON=1 or when an
extension is older than its source. Each case runs in a fresh interpreter: the choice is
made once, at import."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rpc import _compiled

ROOT = Path(__file__).resolve().parent.parent
_REPORT = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
import rpc, rpc._compiled as c
print(json.dumps({name: [sys.modules[name].COMPILED, sys.modules[name].__file__]
                  for name in c.MODULES}))
"""


def _built(root: Path) -> set[str]:
    """The modules of rpc._compiled.MODULES with an extension beside their source."""
    return {name for name in _compiled.MODULES
            if any((root / (name.replace(".", "/") + suffix)).exists()
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES)}


def _which(root: Path, **env: str) -> tuple[dict[str, list], str]:
    environ = {k: v for k, v in os.environ.items() if k != "LANERPC_PURE_PYTHON"}
    result = subprocess.run([sys.executable, "-c", _REPORT], cwd=root, env={**environ, **env},
                            capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout), result.stderr


def test_the_pure_python_source_runs_when_forced() -> None:
    modules, log = _which(ROOT, LANERPC_PURE_PYTHON="1")
    assert set(modules) == set(_compiled.MODULES)
    for name, (compiled, path) in modules.items():
        assert compiled is False, name
        assert path.endswith(".py"), name
    assert "compiled modules: none (LANERPC_PURE_PYTHON is set)" in log


def test_the_extensions_run_where_built() -> None:
    built = _built(ROOT)
    if not built:
        pytest.skip("the hot path is not compiled in this checkout (no C compiler or Cython)")
    modules, log = _which(ROOT)
    assert {name for name, (compiled, _) in modules.items() if compiled} == built
    for name in built:
        assert not modules[name][1].endswith(".py"), name
    assert "compiled modules: " + ", ".join(n for n in _compiled.MODULES if n in built) in log


def test_an_extension_older_than_its_source_is_not_run(tmp_path: Path) -> None:
    """None is run then, not only that one: the compiled modules reach into the C fields
    of each other's classes, so a pure _wire under a compiled _connection can't work."""
    if _built(ROOT) != set(_compiled.MODULES):
        pytest.skip("the hot path is not compiled in this checkout (no C compiler or Cython)")
    for name in ("rpc", "transports"):
        shutil.copytree(ROOT / name, tmp_path / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")    # a checkout, not an install
    source = tmp_path / "rpc" / "_wire.py"
    later = max(p.stat().st_mtime for p in (tmp_path / "rpc").glob("_wire.*")) + 10
    os.utime(source, (later, later))
    modules, log = _which(tmp_path)
    assert modules["rpc._wire"] == [False, str(source)]
    assert {name: compiled for name, (compiled, _) in modules.items()} == \
        dict.fromkeys(_compiled.MODULES, False)
    assert "out of date or incomplete (_wire.py changed since it was built)" in log

    # Installed (no setup.py beside the package), the files' times say nothing: an
    # install writes them in any order. The extensions run.
    (tmp_path / "setup.py").unlink()
    modules, log = _which(tmp_path)
    assert {name: compiled for name, (compiled, _) in modules.items()} == \
        dict.fromkeys(_compiled.MODULES, True)
