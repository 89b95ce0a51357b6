"""The import rules of docs/structure.md, read from the source: the protocol core does
no I/O, the transports know nothing of RPC, and no module of rpc imports one that
imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rpc"
TRANSPORTS = ROOT / "transports"

CORE = ("_wire", "_events", "_streams", "_settings", "_connection")
# What the sans-IO core may import besides its own modules ("cython": Cython's pure-Python
# mode, which _wire asks whether it runs compiled; optional at run time).
CORE_ALLOWED = {"__future__", "collections", "dataclasses", "enum", "os", "struct", "sys", "typing",
                "collections.abc", "rpc._proto", "cython"}


def _module_name(path: Path) -> str:
    if path.is_relative_to(TRANSPORTS):
        parts = ("rpc", "transports", *path.relative_to(TRANSPORTS).with_suffix("").parts)
    else:
        parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*PACKAGE.glob("*.py"), *TRANSPORTS.glob("*.py")]
    return {_module_name(path): path for path in files}


SOURCES = _sources()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # "from rpc import _lanes" imports the module rpc._lanes
            found.update(f"{module}.{alias.name}" for alias in node.names
                         if f"{module}.{alias.name}" in SOURCES)
    return found


def _internal_imports(name: str) -> set[str]:
    return {imported for imported in _imports(SOURCES[name])
            if imported in SOURCES and imported != name and imported != "rpc"}


def test_the_sources_are_found() -> None:
    assert {"rpc", "rpc._connection", "rpc._lanes", "rpc.transports", "rpc.transports.shm"} \
        <= set(SOURCES)


@pytest.mark.parametrize("module", CORE)
def test_the_protocol_core_does_no_io(module: str) -> None:
    imported = _imports(SOURCES[f"rpc.{module}"])
    outside = {name for name in imported
               if not name.startswith(tuple(f"rpc.{core}" for core in CORE))
               and name not in CORE_ALLOWED and name != "rpc"}
    assert outside == set(), f"rpc.{module} imports {sorted(outside)}"


@pytest.mark.parametrize("module", sorted(n for n in SOURCES if n.startswith("rpc.transports")))
def test_the_transports_know_nothing_of_rpc(module: str) -> None:
    above = {name for name in _imports(SOURCES[module])
             if name.startswith("rpc") and not name.startswith("rpc.transports")}
    assert above == set()


def test_the_lanes_import_nothing_above_them() -> None:
    above = {"rpc._channel", "rpc._server", "rpc._context", "rpc._stream", "rpc._interceptors",
             "rpc._serve", "rpc._stats", "rpc._grpc"}
    assert _internal_imports("rpc._lanes") & above == set()


def test_no_import_cycles() -> None:
    graph = {name: _internal_imports(name) for name in SOURCES}
    # rpc/__init__ is the top: everything may be imported through it, it imports all.
    graph.pop("rpc", None)
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done or name not in graph:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_balancer_dials_only_through_the_function_it_is_given() -> None:
    """Subchannels and policies reach the network through the channel's ``dial`` (the
    lanes layer), never on their own, and know nothing of calls."""
    imported = _internal_imports("rpc._balancer")
    assert imported & {"rpc._lanes", "rpc._channel", "rpc._server", "rpc._stream"} == set()
    assert not any(name.startswith("rpc.transports") for name in imported)
