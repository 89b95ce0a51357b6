"""``lanerpc serve MODULE:ATTR``: each form of ATTR served, reflection and health on
request, rpc.serve's signal handling (SIGTERM drains, exit 0)."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc
from tests._support import STARTED, within
from tests.cli._cli import ECHO, assert_no_traceback, background, cli, lines, listening, stop


async def echo_once(target: str, payload: bytes = b"hi") -> bytes:
    async with rpc.insecure_channel(target) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoMessage(payload=payload),
                                                            timeout=10)
    return reply.payload


async def test_a_servicer_class_on_tcp_and_unix_with_reflection_and_health(tmp_path):
    socket_path = f"{tmp_path}/echo.sock"
    async with background("serve", "tests._support:Echo", "-a", "127.0.0.1:0",
                          "--address", f"unix:{socket_path}", "--reflection", "--health") as process:
        tcp, unix = await listening(process, 2)
        assert tcp.startswith("127.0.0.1:") and not tcp.endswith(":0")
        assert unix == f"unix:{socket_path}"
        assert await echo_once(tcp) == b"hi"
        assert await echo_once(unix) == b"hi"
        listed = await cli("list", unix)
        healthy = await cli("health", tcp, ECHO)
        code, err = await stop(process)
    assert lines(listed.out) == sorted([ECHO, "grpc.health.v1.Health",
                                        "grpc.reflection.v1alpha.ServerReflection"])
    assert (healthy.code, healthy.out) == (0, "SERVING\n")
    assert code == 0, err
    assert "SIGTERM: draining" in err
    assert not os.path.exists(socket_path)


async def test_sigterm_lets_a_running_call_finish():
    async with background("serve", "tests._support:Echo", "-a", "127.0.0.1:0",
                          "--grace", "10") as process:
        (target,) = await listening(process, 1)
        async with rpc.insecure_channel(target) as channel:
            call = echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoMessage(payload=b"sleep:700"),
                                                         timeout=10)
            assert tuple(await within(call.initial_metadata())) == STARTED   # it runs
            os.kill(process.pid, signal.SIGTERM)
            assert (await within(call)).payload == b"sleep:700"
        code, err = await stop(process, terminate=False)
    assert code == 0, err


async def test_health_turns_not_serving_as_it_drains():
    async with background("serve", "tests._support:Echo", "-a", "127.0.0.1:0", "--health",
                          "--grace", "2") as process:
        (target,) = await listening(process, 1)
        async with rpc.insecure_channel(target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=ECHO), timeout=30)
            assert (await within(watch.read())).status == health_pb2.HealthCheckResponse.SERVING
            os.kill(process.pid, signal.SIGTERM)
            assert (await within(watch.read())).status == health_pb2.HealthCheckResponse.NOT_SERVING
        code, err = await stop(process, terminate=False)
    assert code == 0, err


@pytest.mark.parametrize("spec", ["tests.cli._apps:configure", "tests.cli._apps:make_servicers",
                                  "tests.cli._apps:make_servicer_async",
                                  "tests.cli._apps:make_server"])
async def test_each_form_of_module_attr(spec):
    async with background("serve", spec, "-a", "127.0.0.1:0") as process:
        (target,) = await listening(process, 1)
        assert await echo_once(target, spec.encode()) == spec.encode()
        code, err = await stop(process)
    assert code == 0, err


@pytest.mark.parametrize("args, message", [
    (("nocolon", "-a", "127.0.0.1:0"), "expected MODULE:ATTR"),
    (("no_such_module_here:x", "-a", "127.0.0.1:0"), "cannot import no_such_module_here"),
    (("tests.cli._apps:missing", "-a", "127.0.0.1:0"), "tests.cli._apps has no missing"),
    (("tests.cli._apps:NOT_A_SERVICER", "-a", "127.0.0.1:0"), "is 42"),
    (("tests.cli._apps:NeedsArguments", "-a", "127.0.0.1:0"), "NeedsArguments() needs arguments"),
    (("tests.cli._apps:make_server", "-a", "127.0.0.1:0", "--reflection"), "made its own server"),
    (("tests._support:Echo",), "give --address"),
    (("tests._support:Echo", "-a", "127.0.0.1:0", "--grace", "-1"), "--grace must be 0 or more"),
])
async def test_bad_arguments_are_one_clear_line(args, message):
    result = await cli("serve", *args)
    assert result.code == 64
    assert message in result.err
    assert_no_traceback(result)


async def test_a_port_in_use_fails_to_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await cli("serve", "tests._support:Echo", "-a", f"127.0.0.1:{port}")
    assert result.code == 1
    assert result.err.startswith(f"lanerpc serve: cannot listen on 127.0.0.1:{port}: ")
    assert_no_traceback(result)


async def test_sigterm_at_once_after_listening_still_exits_0():
    async with background("serve", "tests._support:Echo", "-a", "127.0.0.1:0") as process:
        await listening(process, 1)
        code, err = await stop(process)
    assert code == 0, err
