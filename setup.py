"""Compiles lanerpc's hot path where it can; everything else is in pyproject.toml.

The codec, the connection state machine, the link, the shm ring and the shm transport's
per-message work (rpc._compiled.MODULES) are pure Python
that Cython also compiles, typed by the .pxd file beside each .py. Where Cython or a
C compiler is missing, or compiling fails, the install goes on with the pure-Python
modules and says so: an install never fails for want of a compiler.
LANERPC_PURE_PYTHON=1 at install time skips compiling.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The same list as rpc._compiled.MODULES (setup.py can't import the package it builds).
COMPILED = ("rpc._wire", "rpc._events", "rpc._streams", "rpc._connection",
            "rpc.transports._ring", "rpc.transports._pump", "rpc._link")

# Typing comes from the .pxd files alone: the .py annotations are for mypy and readers
# (to Cython an `int` annotation would mean an exact Python int).
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "boundscheck": False,
    "wraparound": True,        # negative indexes mean what they mean in Python
    "embedsignature": True,
}


def _warn(message: str) -> None:
    print(f"lanerpc: {message}; installing the pure-Python modules", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the pure-Python source is the fallback."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:      # no compiler, no Python headers, ...
            _warn(f"could not compile the hot path ({exc})")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"could not compile {ext.name} ({exc})")


def extensions() -> list[Extension]:
    if os.environ.get("LANERPC_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed")
        return []
    modules = [Extension(name, [name.replace(".", "/") + ".py"]) for name in COMPILED]
    try:
        return list(cythonize(modules, compiler_directives=DIRECTIVES, quiet=True))
    except Exception as exc:          # a Cython version that can't read the source
        _warn(f"Cython could not translate the hot path ({exc})")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
