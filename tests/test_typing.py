"""What a user's ``mypy --strict`` sees of lanerpc: real types, no Any.

tests/typing_program/user_program.py serves and calls the helloworld example; mypy
checks it here and each ``reveal_type`` in it must show the type below. The examples'
typed stubs (``*_pb2_grpc.pyi``, from mypy-protobuf) must be what tools/gen-protos makes.
"""

from __future__ import annotations

import filecmp
import functools
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join("tests", "typing_program", "user_program.py")

HELLO = "examples.helloworld.helloworld_pb2"
CHANNEL = "rpc._channel.Channel | rpc._grpc.GrpcChannel"
STUB_CALL = f"grpc.aio.UnaryUnaryCall[{HELLO}.HelloRequest, {HELLO}.HelloReply]"
# channel.unary_unary(...)(request): grpc.aio's call type, on either channel (a lanerpc
# call, or an interceptor's, is one). The request type is Message's, as the serializer
# given is HelloRequest.SerializeToString (a method of Message).
CHANNEL_CALL = f"grpc.aio.UnaryUnaryCall[google.protobuf.message.Message, {HELLO}.HelloReply]"

EXPECTED = [
    pytest.param("server", "rpc._server.Server"),
    pytest.param("port", "int"),
    pytest.param("channel", CHANNEL),
    pytest.param("lane", "str | None"),
    pytest.param("async with channel", CHANNEL),
    pytest.param("stub call", STUB_CALL),
    pytest.param("stub reply", f"{HELLO}.HelloReply"),
    pytest.param("secure channel", CHANNEL),   # lanerpc's TLS lane or grpcio's, by credentials
    pytest.param("secure stub call", STUB_CALL),
    pytest.param("channel call", CHANNEL_CALL),
    pytest.param("channel reply", f"{HELLO}.HelloReply"),
]

_REVEALED = re.compile(r'^(?P<path>[^:]+):(?P<line>\d+): note: Revealed type is "(?P<type>.*)"$')


@functools.cache
def _mypy() -> tuple[int, dict[str, str], list[str]]:
    """Runs mypy once: (exit status, name -> revealed type, other output lines)."""
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml",
         "--no-error-summary", PROGRAM],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    with open(os.path.join(ROOT, PROGRAM)) as f:
        names = {number: line.split("# reveal:", 1)[1].strip()
                 for number, line in enumerate(f, 1) if "# reveal:" in line}
    revealed: dict[str, str] = {}
    other: list[str] = []
    for line in (proc.stdout + proc.stderr).splitlines():
        found = _REVEALED.match(line)
        if found and int(found["line"]) in names:
            # Older mypy spells builtins in full ("builtins.int").
            revealed[names[int(found["line"])]] = found["type"].replace("builtins.", "")
        elif line.strip():
            other.append(line)
    return proc.returncode, revealed, other


def test_user_program_passes_mypy_strict() -> None:
    status, _, other = _mypy()
    assert other == [] and status == 0, "\n".join(other)


@pytest.mark.parametrize(("name", "expected"), EXPECTED)
def test_revealed_type(name: str, expected: str) -> None:
    _, revealed, _ = _mypy()
    assert name in revealed, f"no reveal_type named {name!r} in {PROGRAM}"
    assert "Any" not in revealed[name]
    assert revealed[name] == expected


def test_every_reveal_is_checked() -> None:
    _, revealed, _ = _mypy()
    assert set(revealed) == {param.values[0] for param in EXPECTED}


def test_examples_typed_stubs_are_up_to_date(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("grpc_tools")
    pytest.importorskip("mypy_protobuf")
    plugin = os.path.join(os.path.dirname(sys.executable), "protoc-gen-mypy_grpc")
    if not os.path.exists(plugin):
        pytest.skip("mypy-protobuf's protoc plugin is not installed next to this python")
    stale = []
    for name in ("helloworld", "echo", "route_guide", "worker_pool"):
        proto = f"examples/{name}/{name}.proto"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
                        f"--plugin=protoc-gen-mypy_grpc={plugin}", f"--mypy_grpc_out={tmp_path}",
                        os.path.join("proto", proto)],
                       check=True, cwd=ROOT, timeout=60, capture_output=True)
        stub = f"examples/{name}/{name}_pb2_grpc.pyi"
        if not filecmp.cmp(os.path.join(tmp_path, stub), os.path.join(ROOT, stub), shallow=False):
            stale.append(stub)
    assert not stale, f"run tools/gen-protos: stale {stale}"
