"""lanerpc's own side of options, service configs and ports: what it logs where
grpc.aio would say nothing, the service config's parts in isolation, and unix ports
(where lanerpc refuses a live server's socket file that grpc.aio would replace)."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile

import pytest

import rpc
from rpc import _options, _service_config
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve

LOGGER = "lanerpc"


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each test sees its warnings, not swallowed by an earlier test's 'once'."""
    monkeypatch.setattr(_options, "_warned", set())
    monkeypatch.setattr(_service_config, "_WARNED", set())


# ============================================================ options

def test_an_unimplemented_grpc_option_is_logged_once_by_name(caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        _options.parse([("grpc.optimization_target", "latency"), ("grpc.max_receive_message_length", 10)])
        _options.parse([("grpc.optimization_target", "throughput")])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'grpc.optimization_target'" in warnings[0]


def test_an_unknown_lanerpc_option_is_logged(caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        _options.parse([("lanerpc.lanse", "tcp")])
    assert any("'lanerpc.lanse'" in r.getMessage() for r in caplog.records)


def test_implemented_and_foreign_names_are_not_logged(caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        _options.parse([("grpc.enable_retries", 0), ("lanerpc.protocol", "lanerpc"),
                        ("grpc.so_reuseport", 0), ("my.own.key", 1)])
    assert not caplog.records


async def test_a_channel_and_a_server_log_unimplemented_options(caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        channel = rpc.insecure_channel("127.0.0.1:1", options=[("grpc.enable_http_proxy", 0)])
        rpc.server(options=[("grpc.http2.bdp_probe", 0)])
        await channel.close()
    text = caplog.text
    assert "grpc.enable_http_proxy" in text and "grpc.http2.bdp_probe" in text


# ============================================================ service config

def test_hedging_policy_is_logged_as_not_applied_and_lb_config_is_applied(caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        config = _service_config.parse(json.dumps({
            "methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 2}}],
            "loadBalancingConfig": [{"round_robin": {}}]}))
    assert "hedgingPolicy is not implemented" in caplog.text
    assert "loadBalancingConfig" not in caplog.text
    assert config.lb_policy == ("round_robin", {})


def test_max_attempts_over_five_is_clamped_and_logged(caplog):
    policy = {"maxAttempts": "7", "initialBackoff": "1s", "maxBackoff": "2s",
              "backoffMultiplier": 1.5, "retryableStatusCodes": ["ABORTED"]}
    with caplog.at_level(logging.WARNING, LOGGER):
        config = _service_config.parse({"methodConfig": [{"name": [{}], "retryPolicy": policy}]})
    retry = config.lookup("/a.B/C").retry
    assert retry is not None and retry.max_attempts == 5 and retry.codes == {10}
    assert "clamped at 5" in caplog.text


def test_an_invalid_config_is_logged_when_the_channel_is_made(caplog):
    with caplog.at_level(logging.ERROR, LOGGER):
        options = _options.parse([("grpc.service_config", "{")])
    assert options.service_config is None
    assert options.service_config_error and "JSON parsing failed" in options.service_config_error
    assert "every call on a channel made with it fails INVALID_ARGUMENT" in caplog.text


# Every integer option the parser reads; a value that is not an integer is refused with
# the option's name rather than a bare int() error or a float silently truncated.
_INTEGER_OPTIONS = sorted({name for name in _options.IMPLEMENTED if name.endswith((
    "_ms", "_length", "_size", "_streams", "_connections", "_bytes", "_calls", "_bitset",
    "_data", "_strikes"))} | {"grpc.so_reuseport", "grpc.enable_retries"})


@pytest.mark.parametrize("name", _INTEGER_OPTIONS)
@pytest.mark.parametrize("value", ["abc", 1.5, None, b"1"])
def test_an_integer_option_refuses_what_is_not_an_integer(name, value):
    with pytest.raises(ValueError, match=f"{name} must be an integer"):
        _options.parse([(name, value)])


@pytest.mark.parametrize("name, field", [
    ("grpc.so_reuseport", "so_reuseport"), ("grpc.enable_retries", "enable_retries"),
    ("grpc.keepalive_permit_without_calls", "keepalive_permit_without_calls")])
def test_a_boolean_integer_option_is_on_for_any_nonzero_integer(name, field):
    # gRPC reads these integers as bools: 0 off, anything else on; a Python bool is an int.
    for value, expected in ((0, False), (1, True), (2, True), ("0", False), (True, True),
                            (False, False)):
        assert getattr(_options.parse([(name, value)]), field) is expected, value


@pytest.mark.parametrize("text, seconds", [
    ("1.5s", 1.5), ("0s", 0.0), ("0.000000001s", 1e-9), ("20s", 20.0)])
def test_durations(text, seconds):
    config = _service_config.parse({"methodConfig": [{"name": [{}], "timeout": text}]})
    assert config.lookup("/x.Y/Z").timeout == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1", "1.5", "-1s", "1.0000000001s", "1m", "s", " 1s", 1])
def test_bad_durations(text):
    with pytest.raises(_service_config.ServiceConfigError, match="methodConfig.0..timeout"):
        _service_config.parse({"methodConfig": [{"name": [{}], "timeout": text}]})


def test_lookup_prefers_method_then_service_then_default():
    config = _service_config.parse({"methodConfig": [
        {"name": [{}], "timeout": "1s"},
        {"name": [{"service": "p.S"}], "timeout": "2s"},
        {"name": [{"service": "p.S", "method": "M"}, {"service": "q.T", "method": "N"}],
         "timeout": "3s"}]})
    assert config.lookup("/p.S/M").timeout == 3
    assert config.lookup("/q.T/N").timeout == 3
    assert config.lookup("/p.S/Other").timeout == 2
    assert config.lookup("/q.T/Other").timeout == 1


def test_without_a_default_unnamed_methods_get_nothing():
    config = _service_config.parse({"methodConfig": [{"name": [{"service": "p.S"}], "timeout": "1s"}]})
    assert config.lookup("/other.S/M") is _service_config.NO_CONFIG


def test_the_throttle_counts_in_thousandths():
    throttle = _service_config.RetryThrottle(10, 0.5)
    assert [throttle.record_failure() for _ in range(5)] == [True, True, True, True, False]
    assert throttle._tokens == 5_000
    # Successes give nothing back, as on grpc.aio 1.85 (see RetryThrottle); the bucket
    # stops at zero.
    assert [throttle.record_failure() for _ in range(7)] == [False] * 7
    assert throttle._tokens == 0


def test_backoff_stays_within_the_exponential_bound():
    policy = _service_config.RetryPolicy(5, 0.1, 0.3, 2.0, frozenset({14}))
    for attempts, bound in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)):
        assert all(0 <= policy.backoff(attempts) <= bound for _ in range(50))


def test_retries_disabled_still_retry_a_call_the_server_never_started():
    retries = _service_config.Retries(None, enabled=False)
    method = _service_config.NO_CONFIG
    assert retries.delay(method, 14, (), 1, committed=False, not_started=True) == 0.0
    assert retries.delay(method, 14, (), 2, committed=False, not_started=True) is None
    assert retries.delay(method, 14, (), 1, committed=False, not_started=False) is None


# ============================================================ unix ports

@pytest.mark.parametrize("scheme", ["", "grpc://"])
async def test_a_unix_port_a_live_server_holds_is_refused(scheme):
    # grpc.aio would unlink the live server's socket file and take the path;
    # lanerpc refuses, on its own unix ports and on grpc:// ones.
    with tempfile.TemporaryDirectory(prefix="lrpc-cfg-") as tmp_dir:
        path = os.path.join(tmp_dir, "taken.sock")
        with socket.socket(socket.AF_UNIX) as live:
            live.bind(path)
            live.listen()
            server = rpc.server()
            with pytest.raises(RuntimeError, match="Failed to bind to address .*in use"):
                server.add_insecure_port(f"{scheme}unix:{path}")
            await server.stop(None)
            assert os.path.exists(path)


@pytest.mark.parametrize("scheme", ["", "grpc://"])
async def test_a_stale_unix_socket_file_is_replaced(scheme):
    with tempfile.TemporaryDirectory(prefix="lrpc-cfg-") as tmp_dir:
        path = os.path.join(tmp_dir, "stale.sock")
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(path)          # bound, never listening, then closed: a leftover
        async with serve(Echo(), address=f"{scheme}unix:{path}") as served:
            stub = echo_pb2_grpc.EchoStub(served.channel(plain_grpc=bool(scheme)))
            assert (await stub.Unary(msg(b"here"), timeout=5)).payload == b"here"
