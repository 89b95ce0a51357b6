"""The ``lanerpc`` command as a whole: its help, the console script, bad usage."""

from __future__ import annotations

import importlib
import tomllib

import pytest

import rpc
from rpc import _cli
from tests.cli._cli import ROOT, assert_no_traceback, cli


async def test_help_lists_every_command_with_examples():
    result = await cli("--help")
    assert result.code == 0
    assert result.out.startswith("usage: lanerpc ")
    for name in _cli.COMMANDS:
        assert f"\n    {name} " in result.out, name
    assert "examples:" in result.out


@pytest.mark.parametrize("name", _cli.COMMANDS)
def test_each_command_has_help_with_examples(name, capsys):
    with pytest.raises(SystemExit) as exited:
        _cli.main([name, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lanerpc {name} ")
    assert "examples:\n  lanerpc " in out


def test_the_console_script_is_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["lanerpc"].partition(":")
    assert getattr(importlib.import_module(module), function) is _cli.main


async def test_version_and_bad_usage():
    version = await cli("--version")
    assert (version.code, version.out) == (0, f"lanerpc {rpc.__version__}\n")
    nothing = await cli()
    assert nothing.code == 64
    assert "required: COMMAND" in nothing.err
    unknown = await cli("frobnicate")
    assert unknown.code == 64
    assert "invalid choice: 'frobnicate'" in unknown.err
    assert_no_traceback(unknown)
