"""The ``grpc.service_config`` channel option as grpc.aio applies it: method configs
matched by name, timeout, waitForReady, message limits, retryPolicy (on statuses the
server returns, never once the response has begun), retryThrottling, and what a
malformed config does (every call fails INVALID_ARGUMENT). Run against every active
implementation with the same assertions."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import time
from typing import Any

import grpc
import pytest
from grpc import aio

from examples.echo import echo_pb2, echo_pb2_grpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc
from tests._support import msg, within

TIMEOUT = 5
ECHO = "lanerpc.echo.Echo"
_C = grpc.StatusCode


def retry_policy(**changes: Any) -> dict[str, Any]:
    """A retryPolicy with short backoffs, retrying UNAVAILABLE."""
    policy: dict[str, Any] = {"maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                              "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
    policy.update(changes)
    return policy


def config(*method_configs: dict[str, Any], **top: Any) -> list[tuple[str, Any]]:
    """Channel options carrying a service config with these methodConfig entries."""
    return [("grpc.service_config", json.dumps({"methodConfig": list(method_configs), **top}))]


def retrying(**changes: Any) -> list[tuple[str, Any]]:
    return config({"name": [{}], "retryPolicy": retry_policy(**changes)})


class Flaky(echo_pb2_grpc.EchoServicer):
    """Fails its first ``fails`` calls with ``code`` (before sending anything, unless
    ``headers``: then after sending initial metadata), then echoes. Records what
    each attempt saw."""

    def __init__(self, fails: int, code: grpc.StatusCode = _C.UNAVAILABLE, *,
                 headers: bool = False, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        self.fails = fails
        self.code = code
        self.headers = headers
        self.trailing = trailing
        self.attempts = 0
        self.payloads: list[bytes] = []
        self.previous: list[str | None] = []

    async def _attempt(self, request: Any, context: Any) -> None:
        self.attempts += 1
        self.payloads.append(request.payload)
        metadata = dict(context.invocation_metadata() or ())
        self.previous.append(metadata.get("grpc-previous-rpc-attempts"))
        if self.attempts <= self.fails:
            if self.headers:
                await context.send_initial_metadata((("attempt", str(self.attempts)),))
            if self.trailing:
                context.set_trailing_metadata(self.trailing)
            await context.abort(self.code, f"failure {self.attempts}")

    async def Unary(self, request, context):
        await self._attempt(request, context)
        return request

    async def ServerStream(self, request, context):
        await self._attempt(request, context)
        for _ in range(2):
            yield request


class FlakyStreams(echo_pb2_grpc.EchoServicer):
    """Streaming requests: fails its first ``fails`` calls UNAVAILABLE (after reading
    all requests, or the first one for Bidi; at once, reading nothing, when ``read``
    is False), then echoes. Records what each attempt read."""

    def __init__(self, fails: int, *, read: bool = True) -> None:
        self.fails = fails
        self.read = read
        self.attempts = 0
        self.seen: list[list[bytes]] = []

    async def ClientStream(self, request_iterator, context):
        self.attempts += 1
        failing = self.attempts <= self.fails
        got = [] if failing and not self.read else [r.payload async for r in request_iterator]
        self.seen.append(got)
        if self.attempts <= self.fails:
            await context.abort(_C.UNAVAILABLE, f"failure {self.attempts}")
        return echo_pb2.EchoMessage(payload=b"".join(got))

    async def Bidi(self, request_iterator, context):
        self.attempts += 1
        first = await request_iterator.__anext__()
        self.seen.append([first.payload])
        if self.attempts <= self.fails:
            await context.abort(_C.UNAVAILABLE, f"failure {self.attempts}")
        yield first
        async for request in request_iterator:
            yield request


async def requests(count: int, size: int = 1, pause: float = 0.0):
    for i in range(count):
        if pause:
            await asyncio.sleep(pause)
        yield echo_pb2.EchoMessage(payload=bytes([97 + i]) * size)


class FlakyGreeter(helloworld_pb2_grpc.GreeterServicer):
    """Always UNAVAILABLE: counts the attempts a config lets through."""

    def __init__(self) -> None:
        self.attempts = 0

    async def SayHello(self, request, context):
        self.attempts += 1
        await context.abort(_C.UNAVAILABLE, "never")


class Hanging(echo_pb2_grpc.EchoServicer):
    """Never answers (until the call ends): for deadlines."""

    def __init__(self) -> None:
        self.attempts = 0

    async def Unary(self, request, context):
        self.attempts += 1
        await asyncio.sleep(60)
        return request


async def fails_with(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await within(call, TIMEOUT)
    return info.value


# ============================================================ retryPolicy

async def test_unary_call_retried_until_the_handler_succeeds(start, connect):
    servicer = Flaky(2)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    reply = await within(stub.Unary(msg(b"again"), timeout=TIMEOUT))
    assert reply.payload == b"again"
    assert servicer.attempts == 3
    assert servicer.payloads == [b"again"] * 3
    # Each retry tells the server how many attempts came before it (gRFC A6).
    assert servicer.previous == [None, "1", "2"]


async def test_server_streaming_call_retried_before_any_response(start, connect):
    servicer = Flaky(2)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    call = stub.ServerStream(msg(b"s"), timeout=TIMEOUT)
    got = await within(_collect(call))
    assert got == [b"s", b"s"]
    assert servicer.attempts == 3


async def _collect(call: Any) -> list[bytes]:
    return [reply.payload async for reply in call]


async def test_retries_stop_at_max_attempts_with_the_last_status(start, connect):
    servicer = Flaky(10)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying(maxAttempts=3)))
    error = await fails_with(stub.Unary(msg(), timeout=TIMEOUT))
    assert error.code() is _C.UNAVAILABLE
    assert error.details() == "failure 3"
    assert servicer.attempts == 3


async def test_max_attempts_above_five_is_clamped_to_five(start, connect):
    servicer = Flaky(10)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying(maxAttempts=9)))
    error = await fails_with(stub.Unary(msg(), timeout=TIMEOUT))
    assert error.code() is _C.UNAVAILABLE
    assert servicer.attempts == 5


async def test_a_call_whose_headers_arrived_is_committed_and_not_retried(start, connect):
    servicer = Flaky(2, headers=True)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    call = stub.Unary(msg(), timeout=TIMEOUT)
    error = await fails_with(call)
    assert error.code() is _C.UNAVAILABLE
    assert servicer.attempts == 1
    assert ("attempt", "1") in tuple(await within(call.initial_metadata()))


async def test_codes_outside_retryable_status_codes_are_not_retried(start, connect):
    servicer = Flaky(2, _C.INTERNAL)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    error = await fails_with(stub.Unary(msg(), timeout=TIMEOUT))
    assert error.code() is _C.INTERNAL
    assert servicer.attempts == 1


async def test_several_retryable_codes(start, connect):
    servicer = Flaky(2, _C.RESOURCE_EXHAUSTED)
    options = retrying(retryableStatusCodes=["UNAVAILABLE", "RESOURCE_EXHAUSTED"])
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    assert (await within(stub.Unary(msg(b"ok"), timeout=TIMEOUT))).payload == b"ok"
    assert servicer.attempts == 3


async def test_enable_retries_0_turns_the_policy_off(start, connect):
    servicer = Flaky(2)
    options = retrying() + [("grpc.enable_retries", 0)]
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    error = await fails_with(stub.Unary(msg(), timeout=TIMEOUT))
    assert error.code() is _C.UNAVAILABLE
    assert servicer.attempts == 1


async def test_a_backoff_longer_than_the_deadline_ends_in_deadline_exceeded(start, connect):
    servicer = Flaky(100)
    options = retrying(initialBackoff="30s", maxBackoff="30s", backoffMultiplier=1)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    # The first retry waits up to 30 s (uniformly random); a call with a 0.5 s deadline
    # almost always ends in it. Several calls make "almost" certain.
    codes = []
    for _ in range(3):
        codes.append((await fails_with(stub.Unary(msg(), timeout=0.5))).code())
    assert _C.DEADLINE_EXCEEDED in codes
    assert set(codes) <= {_C.DEADLINE_EXCEEDED, _C.UNAVAILABLE}


def _slow_retries() -> list[tuple[str, Any]]:
    # A retry waits random(0, initialBackoff) (gRFC A6): long enough that it never comes
    # within a test, not only rarely.
    return retrying(initialBackoff="100000s", maxBackoff="100000s", backoffMultiplier=1)


async def _in_backoff(stub: Any, servicer: Flaky) -> Any:
    """A call whose first attempt failed and whose retry waits. The cases then check
    ``servicer.previous == [None]``: one attempt ran. If one more ever does, the list
    says which way: ``[None, "1"]`` is the retry (it sends grpc-previous-rpc-attempts),
    ``[None, None]`` the first attempt started twice."""
    call = stub.Unary(msg(), timeout=60)
    while servicer.attempts < 1:
        await within(asyncio.sleep(0.01))
    await asyncio.sleep(0.05)
    assert not call.done()
    return call


async def test_cancelling_a_call_between_attempts_ends_it_at_once(start, connect):
    servicer = Flaky(100)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), _slow_retries()))
    call = await _in_backoff(stub, servicer)
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(call, 2)
    assert call.cancelled()
    assert servicer.previous == [None]      # one attempt (see _in_backoff)


async def test_closing_the_channel_ends_a_call_between_attempts(start, connect):
    servicer = Flaky(100)
    channel = connect(await start(servicer), _slow_retries())
    call = await _in_backoff(echo_pb2_grpc.EchoStub(channel), servicer)
    await within(channel.close(), 2)
    with pytest.raises(asyncio.CancelledError):     # as any call a closing channel cancels
        await within(call, 2)
    assert await within(call.code(), 2) is _C.CANCELLED
    assert servicer.previous == [None]      # one attempt (see _in_backoff)


async def test_server_pushback_that_is_negative_stops_retries(start, connect):
    servicer = Flaky(2, trailing=(("grpc-retry-pushback-ms", "-1"),))
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    error = await fails_with(stub.Unary(msg(), timeout=TIMEOUT))
    assert error.code() is _C.UNAVAILABLE
    assert servicer.attempts == 1


async def test_server_pushback_sets_the_delay(start, connect):
    servicer = Flaky(1, trailing=(("grpc-retry-pushback-ms", "300"),))
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    began = time.monotonic()
    assert (await within(stub.Unary(msg(b"p"), timeout=TIMEOUT))).payload == b"p"
    assert servicer.attempts == 2
    assert time.monotonic() - began >= 0.25


async def test_retry_throttling_stops_retries_once_tokens_run_low(start, connect):
    # maxTokens 4: each failed attempt takes one, retries need more than 2 left. The
    # first call fails twice (4 -> 3: retried; 3 -> 2: no more); later ones once.
    servicer = Flaky(100)
    options = config({"name": [{}], "retryPolicy": retry_policy()},
                     retryThrottling={"maxTokens": 4, "tokenRatio": 0.1})
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    attempts = []
    for _ in range(3):
        before = servicer.attempts
        assert (await fails_with(stub.Unary(msg(), timeout=TIMEOUT))).code() is _C.UNAVAILABLE
        attempts.append(servicer.attempts - before)
    assert attempts == [2, 1, 1]


@pytest.mark.parametrize("pause", [0.0, 0.03])
async def test_client_streaming_call_retried_with_every_request_again(start, connect, pause):
    servicer = FlakyStreams(2)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    reply = await within(stub.ClientStream(requests(3, pause=pause), timeout=TIMEOUT))
    assert reply.payload == b"abc"
    assert servicer.seen == [[b"a", b"b", b"c"]] * 3


async def test_client_streaming_retried_while_the_caller_still_writes(impl, start, connect, request):
    if not impl.lanerpc_channel:
        # grpc-core now and then fails a write that crosses its retry with INTERNAL
        # ('Failed "execute_batch"'), under load: its race, not the behaviour pinned here.
        request.applymarker(pytest.mark.xfail(strict=False, reason="grpc-core write/retry race"))
    servicer = FlakyStreams(2, read=False)     # fails before reading: the writes go on
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    call = stub.ClientStream(timeout=TIMEOUT)
    for payload in (b"a", b"b", b"c"):
        await within(call.write(msg(payload)))
        await asyncio.sleep(0.02)
    await within(call.done_writing())
    assert (await within(call)).payload == b"abc"
    assert servicer.seen == [[], [], [b"a", b"b", b"c"]]


async def test_bidi_call_retried_before_any_response(start, connect):
    servicer = FlakyStreams(2)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying()))
    call = stub.Bidi(timeout=TIMEOUT)
    await within(call.write(msg(b"x")))
    assert (await within(call.read())).payload == b"x"
    await within(call.write(msg(b"y")))
    assert (await within(call.read())).payload == b"y"
    await within(call.done_writing())
    assert servicer.seen == [[b"x"]] * 3


@pytest.mark.parametrize("size, options", [
    (100_000, []),                                          # 300 kB: over the default 256 KiB
    (600, [("grpc.per_rpc_retry_buffer_size", 1000)]),      # over a buffer set smaller
])
async def test_requests_larger_than_the_retry_buffer_commit_the_call(start, connect, size, options):
    servicer = FlakyStreams(1)
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), retrying() + options))
    error = await fails_with(stub.ClientStream(requests(3, size=size), timeout=TIMEOUT))
    assert error.code() is _C.UNAVAILABLE
    assert servicer.attempts == 1


# ============================================================ which methodConfig applies

async def test_method_configs_are_matched_exact_then_service_then_default(start, connect):
    echo, greeter = Flaky(100), FlakyGreeter()
    options = config(
        {"name": [{}], "retryPolicy": retry_policy(maxAttempts=2)},
        {"name": [{"service": ECHO}], "retryPolicy": retry_policy(maxAttempts=3)},
        {"name": [{"service": ECHO, "method": "Unary"}], "retryPolicy": retry_policy(maxAttempts=4)},
    )
    channel = connect(await start(echo, greeter), options)
    stub, greeter_stub = echo_pb2_grpc.EchoStub(channel), helloworld_pb2_grpc.GreeterStub(channel)

    await fails_with(stub.Unary(msg(), timeout=TIMEOUT))
    assert echo.attempts == 4                       # {service, method}
    await fails_with(_collect(stub.ServerStream(msg(), timeout=TIMEOUT)))
    assert echo.attempts == 4 + 3                   # {service}
    await fails_with(greeter_stub.SayHello(helloworld_pb2.HelloRequest(), timeout=TIMEOUT))
    assert greeter.attempts == 2                    # {} : the default


async def test_a_config_naming_other_methods_leaves_calls_alone(start, connect):
    servicer = Flaky(1)
    options = config({"name": [{"service": "other.Service"}], "retryPolicy": retry_policy(),
                      "timeout": "0.001s"})
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    assert (await fails_with(stub.Unary(msg(), timeout=TIMEOUT))).code() is _C.UNAVAILABLE
    assert servicer.attempts == 1


# ============================================================ timeout, waitForReady, limits

async def test_config_timeout_bounds_a_call_without_one(start, connect):
    servicer = Hanging()
    options = config({"name": [{"service": ECHO}], "timeout": "0.5s"})
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    error = await fails_with(stub.Unary(msg()))
    assert error.code() is _C.DEADLINE_EXCEEDED


async def test_the_earlier_of_call_timeout_and_config_timeout_wins(start, connect):
    servicer = Hanging()
    options = config({"name": [{}], "timeout": "100s"})
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    began = time.monotonic()
    error = await fails_with(stub.Unary(msg(), timeout=0.3))
    assert error.code() is _C.DEADLINE_EXCEEDED
    assert time.monotonic() - began < TIMEOUT


def _dead_target(impl: Any, tmp_dir: str) -> str:
    """A target where nothing listens, spelt the way ``impl`` dials."""
    if impl.bind in ("unix", "memory", "pipe"):
        return "unix:" + os.path.join(tmp_dir, "nobody.sock")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("call_says, expected", [
    (None, _C.DEADLINE_EXCEEDED),       # the config's waitForReady: waits out the deadline
    (False, _C.UNAVAILABLE),            # the call's own choice wins
])
async def test_wait_for_ready_from_the_config(impl, call_says, expected):
    options = config({"name": [{}], "waitForReady": True})
    with tempfile.TemporaryDirectory(prefix="lrpc-cfg-") as tmp_dir:
        channel = impl.channel(_dead_target(impl, tmp_dir), options)
        try:
            stub = echo_pb2_grpc.EchoStub(channel)
            # Waiting for ready waits out the deadline; not waiting fails at once (a few
            # ms), so its deadline is only a bound, long enough for a pause of the whole
            # process: a full garbage collection of a big test process took 0.7 s on a
            # loaded machine, and a pause over 0.5 s let the old 0.5 s deadline come first.
            timeout = 0.5 if expected is _C.DEADLINE_EXCEEDED else TIMEOUT / 2
            error = await fails_with(stub.Unary(msg(), timeout=timeout, wait_for_ready=call_says))
            assert error.code() is expected
        finally:
            await within(channel.close())


async def test_max_request_message_bytes(start, connect):
    servicer = Flaky(0)
    options = config({"name": [{}], "maxRequestMessageBytes": 10})
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    error = await fails_with(stub.Unary(msg(b"x" * 20), timeout=TIMEOUT))
    assert error.code() is _C.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.details() or "")
    assert servicer.attempts == 0
    assert (await within(stub.Unary(msg(b"small"), timeout=TIMEOUT))).payload == b"small"


async def test_max_response_message_bytes(start, connect):
    servicer = Flaky(0)
    options = config({"name": [{}], "maxResponseMessageBytes": 10})
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    error = await fails_with(stub.Unary(msg(b"x" * 20), timeout=TIMEOUT))
    assert error.code() is _C.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.details() or "")
    assert (await within(stub.Unary(msg(b"small"), timeout=TIMEOUT))).payload == b"small"


async def test_the_channel_limit_applies_when_lower_than_the_config(start, connect):
    servicer = Flaky(0)
    options = config({"name": [{}], "maxResponseMessageBytes": 1000}) + [
        ("grpc.max_receive_message_length", 10)]
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    error = await fails_with(stub.Unary(msg(b"x" * 20), timeout=TIMEOUT))
    assert error.code() is _C.RESOURCE_EXHAUSTED


async def test_hedging_policy_does_not_hedge(start, connect):
    # grpc.aio accepts a hedgingPolicy and sends each call once; so does lanerpc
    # (which also logs that hedging is not implemented).
    servicer = Flaky(0)
    options = config({"name": [{}], "hedgingPolicy": {
        "maxAttempts": 3, "hedgingDelay": "0s", "nonFatalStatusCodes": ["UNAVAILABLE"]}})
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    assert (await within(stub.Unary(msg(b"h"), timeout=TIMEOUT))).payload == b"h"
    assert servicer.attempts == 1


# ============================================================ malformed configs

BAD_CONFIGS = {
    "json": ("{not json", "JSON parsing failed"),
    "empty": ("", "JSON parsing failed"),
    "not-an-object": ("[]", "service config"),
    "method-config-not-array": (json.dumps({"methodConfig": 3}), "field:methodConfig"),
    "max-attempts-1": (json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": retry_policy(
        maxAttempts=1)}]}), "field:methodConfig[0].retryPolicy.maxAttempts"),
    "unknown-code": (json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": retry_policy(
        retryableStatusCodes=["NOPE"])}]}), "field:methodConfig[0].retryPolicy.retryableStatusCodes"),
    "code-as-number": (json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": retry_policy(
        retryableStatusCodes=[14])}]}), "field:methodConfig[0].retryPolicy.retryableStatusCodes"),
    "backoff-no-unit": (json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": retry_policy(
        initialBackoff="1")}]}), "field:methodConfig[0].retryPolicy.initialBackoff"),
    "backoff-zero": (json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": retry_policy(
        initialBackoff="0s")}]}), "field:methodConfig[0].retryPolicy.initialBackoff"),
    "multiplier-zero": (json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": retry_policy(
        backoffMultiplier=0)}]}), "field:methodConfig[0].retryPolicy.backoffMultiplier"),
    "policy-incomplete": (json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": {
        "maxAttempts": 3}}]}), "field:methodConfig[0].retryPolicy.initialBackoff"),
    "timeout-bad": (json.dumps({"methodConfig": [{"name": [{}], "timeout": "soon"}]}),
                    "field:methodConfig[0].timeout"),
    "timeout-negative": (json.dumps({"methodConfig": [{"name": [{}], "timeout": "-1s"}]}),
                         "field:methodConfig[0].timeout"),
    "wait-for-ready-not-bool": (json.dumps({"methodConfig": [{"name": [{}], "waitForReady": "yes"}]}),
                                "field:methodConfig[0].waitForReady"),
    "max-bytes-bad": (json.dumps({"methodConfig": [{"name": [{}], "maxRequestMessageBytes": "ten"}]}),
                      "field:methodConfig[0].maxRequestMessageBytes"),
    "method-without-service": (json.dumps({"methodConfig": [{"name": [{"method": "Unary"}]}]}),
                               "field:methodConfig[0].name[0]"),
    "two-defaults": (json.dumps({"methodConfig": [{"name": [{}]}, {"name": [{}]}]}),
                     "field:methodConfig[1].name"),
    "throttling-zero-tokens": (json.dumps({"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}),
                               "field:retryThrottling.maxTokens"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
async def test_a_malformed_config_fails_every_call_invalid_argument(start, connect, name):
    text, mention = BAD_CONFIGS[name]
    servicer = Flaky(0)
    served = await start(servicer)
    stub = echo_pb2_grpc.EchoStub(connect(served, [("grpc.service_config", text)]))
    for _ in range(2):
        error = await fails_with(stub.Unary(msg(), timeout=TIMEOUT))
        assert error.code() is _C.INVALID_ARGUMENT
        details = error.details() or ""
        assert details.startswith(f"Failed to create channel to '{served.target}'"), details
        assert mention in details, details
    assert servicer.attempts == 0


async def test_unknown_fields_in_a_config_are_ignored(start, connect):
    servicer = Flaky(0)
    options = config({"name": [{}], "someFutureField": 1}, someOtherField=[1, 2])
    stub = echo_pb2_grpc.EchoStub(connect(await start(servicer), options))
    assert (await within(stub.Unary(msg(b"u"), timeout=TIMEOUT))).payload == b"u"
