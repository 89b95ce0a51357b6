"""Which build of the hot path runs: compiled or pure Python.

The codec, the connection state machine, the link, the shm lane's ring and its transport's
per-message work (:data:`MODULES`) are plain Python
source that ``pip install`` also compiles with Cython where a C compiler exists
(``setup.py``; the ``.pxd`` file beside each ``.py`` gives the types). Python
imports the compiled extension in preference to the ``.py`` of the same name; this
module, imported first by ``rpc/__init__``, decides per module instead:

- ``LANERPC_PURE_PYTHON=1`` in the environment: the ``.py`` source;
- an extension missing, or in a source checkout (``setup.py`` beside the package)
  older than its ``.py`` (the source was edited or checked out after the build): the
  ``.py`` source of all of them, with a warning when some were built, so a stale build
  never runs code that is no longer in the source. All or none: a compiled module
  reaches into the C fields of those below it. (An installed package is not checked
  so: installing writes its files in any order.)
- otherwise the extensions.

Each of :data:`MODULES` has ``COMPILED``, true when its extension runs;
:func:`compiled_modules` names those that do.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ("MODULES", "PURE_PYTHON_FORCED", "compiled_modules")

log = logging.getLogger("lanerpc")

# Compiled by setup.py, in this order (each imports only those before it).
MODULES = ("rpc._wire", "rpc._events", "rpc._streams", "rpc._connection",
           "rpc.transports._ring", "rpc.transports._pump", "rpc._link")

# The folder of the rpc package; a module of MODULES lives in the folder its dotted name
# says (rpc.transports._ring in <rpc>/transports).
_PACKAGE = os.path.dirname(os.path.abspath(__file__))

PURE_PYTHON_FORCED = os.environ.get("LANERPC_PURE_PYTHON", "") not in ("", "0")


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the ``.py`` of :data:`MODULES` when they must run instead of extensions."""

    def __init__(self) -> None:
        self._source: bool | None = None     # decided at the first of MODULES imported

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES or not path:
            return None
        if self._source is None:
            self._source = PURE_PYTHON_FORCED or not _all_built()
        if not self._source:
            return None           # the usual machinery, which prefers the extension
        source = os.path.join(path[0], fullname.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def _all_built() -> bool:
    """Whether every module of MODULES has an extension beside its source (in a
    checkout: built since its source last changed); warns about a build that is there
    but out of date or incomplete."""
    checkout = os.path.isfile(os.path.join(os.path.dirname(_PACKAGE), "setup.py"))
    stale = []
    missing = []
    for name in MODULES:
        folder = os.path.join(_PACKAGE, *name.split(".")[1:-1])
        stem = name.rpartition(".")[2]
        built = _extension(folder, stem)
        if built is None:
            missing.append(stem)
        elif checkout and os.path.getmtime(built) < os.path.getmtime(
                os.path.join(folder, stem + ".py")):
            stale.append(stem)
    if stale or (missing and len(missing) < len(MODULES)):
        log.warning("lanerpc: the compiled hot path is out of date or incomplete (%s); running "
                    "the pure-Python source (rebuild: pip install)",
                    ", ".join([f"{m}.py changed since it was built" for m in stale]
                              + [f"{m} not built" for m in missing]))
    return not stale and not missing


def _extension(folder: str, stem: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = os.path.join(folder, stem + suffix)
        if os.path.isfile(candidate):
            return candidate
    return None


def compiled_modules() -> tuple[str, ...]:
    """The modules of :data:`MODULES` that run compiled (imports them)."""
    return tuple(name for name in MODULES
                 if getattr(importlib.import_module(name), "COMPILED", False))


if not any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
    sys.meta_path.insert(0, _SourceFirst())
