"""Client-side health checking (gRFC A17), side by side with grpc.aio under the same
service config: round_robin stops sending calls to a backend whose health service says
NOT_SERVING and comes back to it on SERVING; a backend with no health service is used
(its Watch is UNIMPLEMENTED); pick_first, and grpc.inhibit_health_checking, ignore it."""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

import rpc
from examples.echo import echo_pb2_grpc
from rpc import _balancer
from tests._support import Echo, msg, serve, wait_until, within

IMPLS = ("grpc.aio", "lanerpc")
SERVICE = "echo.Echo"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _config(policy: str = "round_robin", **health: str) -> str:
    return json.dumps({"loadBalancingConfig": [{policy: {}}],
                       "healthCheckConfig": health or {"serviceName": SERVICE}})


def _channel(impl: str, target: str, options: list) -> grpc.aio.Channel:
    make = grpc.aio.insecure_channel if impl == "grpc.aio" else rpc.insecure_channel
    return make(target, options=options)


@contextlib.asynccontextmanager
async def _backends(impl: str, count: int, *, without_health: int = 0, lanes: str | None = None):
    """``count`` Echo servers of ``impl``'s kind, each with a health service saying
    SERVING for SERVICE, and ``without_health`` more with none. Yields (echoes,
    health servicers, target)."""
    async with contextlib.AsyncExitStack() as stack:
        echoes = [Echo() for _ in range(count + without_health)]
        healths = [health_aio.HealthServicer() for _ in range(count)]
        ports = []
        for i, echo in enumerate(echoes):
            extra = []
            if i < count:
                await healths[i].set(SERVICE, SERVING)
                extra.append(lambda server, h=healths[i]:
                             health_pb2_grpc.add_HealthServicer_to_server(h, server))
            served = await stack.enter_async_context(
                serve(echo, *extra, plain_grpc=impl == "grpc.aio", lanes=lanes))
            ports.append(served.port)
        yield echoes, healths, "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)


async def _spread(stub, echoes, calls: int) -> list[int]:
    """Make ``calls`` calls; how many each backend got."""
    for echo in echoes:
        echo.seen_metadata.clear()
    for _ in range(calls):
        await within(stub.Unary(msg(b"x"), timeout=5))
    return [len(echo.seen_metadata) for echo in echoes]


async def _until_spread(stub, echoes, used: list[bool], timeout: float) -> None:
    """Call until a round of calls reaches exactly the backends ``used`` marks."""
    async def spread_is(expected: list[bool]) -> None:
        while [n > 0 for n in await _spread(stub, echoes, 2 * len(echoes))] != expected:
            await asyncio.sleep(0.01)
    await within(spread_is(used), timeout)


@pytest.mark.parametrize("impl", IMPLS)
async def test_round_robin_skips_a_not_serving_backend_and_comes_back_to_it(impl):
    async with _backends(impl, 3) as (echoes, healths, target):
        options = [("grpc.service_config", _config())]
        async with _channel(impl, target, options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await _until_spread(stub, echoes, [True, True, True], 5)

            await healths[0].set(SERVICE, NOT_SERVING)
            await _until_spread(stub, echoes, [False, True, True], 1.0)
            counts = await _spread(stub, echoes, 30)
            assert counts[0] == 0 and counts[1] == counts[2] == 15, counts

            await healths[0].set(SERVICE, SERVING)
            await _until_spread(stub, echoes, [True, True, True], 1.0)
            counts = await _spread(stub, echoes, 30)
            assert counts == [10, 10, 10], counts


@pytest.mark.parametrize("lanes, lane", [("tcp", "tcp"), ("unix,tcp", "unix"),
                                         ("shm,unix,tcp", "shm")])
async def test_the_watch_runs_on_each_lane(lanes, lane):
    """Each subchannel's Watch goes over that subchannel's own connection, whichever
    lane it took: health is heeded on tcp, unix and shm alike."""
    async with _backends("lanerpc", 2, lanes=lanes) as (echoes, healths, target):
        options = [("grpc.service_config", _config()), ("lanerpc.lanes", lanes)]
        async with rpc.insecure_channel(target, options=options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await _until_spread(stub, echoes, [True, True], 5)
            assert channel.lane == lane
            await healths[1].set(SERVICE, NOT_SERVING)
            await _until_spread(stub, echoes, [True, False], 1.0)
            await healths[1].set(SERVICE, SERVING)
            await _until_spread(stub, echoes, [True, True], 1.0)


@pytest.mark.parametrize("impl", IMPLS)
async def test_a_backend_without_a_health_service_is_used(impl, caplog):
    async with _backends(impl, 2, without_health=1) as (echoes, healths, target):
        options = [("grpc.service_config", _config())]
        async with _channel(impl, target, options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await _until_spread(stub, echoes, [True, True, True], 5)
            assert await _spread(stub, echoes, 30) == [10, 10, 10]
    if impl == "lanerpc":
        assert "has no health service" in caplog.text


@pytest.mark.parametrize("impl", IMPLS)
async def test_every_backend_unhealthy_fails_calls_unavailable(impl):
    async with _backends(impl, 2) as (echoes, healths, target):
        for health in healths:
            await health.set(SERVICE, NOT_SERVING)
        options = [("grpc.service_config", _config())]
        async with _channel(impl, target, options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)

            async def failing() -> grpc.aio.AioRpcError:
                while True:
                    try:
                        await stub.Unary(msg(b"x"), timeout=5)
                    except grpc.aio.AioRpcError as err:
                        if channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                            return err
                    await asyncio.sleep(0.01)

            err = await within(failing())
            assert err.code() is grpc.StatusCode.UNAVAILABLE
            assert "backend unhealthy" in err.details()
            assert [len(echo.seen_metadata) for echo in echoes] == [0, 0]
            # A wait_for_ready call waits for a backend to become healthy again.
            call = stub.Unary(msg(b"x"), timeout=5, wait_for_ready=True)
            await asyncio.sleep(0.1)
            assert not call.done()
            await healths[1].set(SERVICE, SERVING)
            await within(call)
            assert [len(echo.seen_metadata) for echo in echoes] == [0, 1]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("how", ["pick_first", "inhibit", "no serviceName"])
async def test_health_config_ignored_by_pick_first_and_when_inhibited(impl, how):
    options = {
        "pick_first": [("grpc.service_config", _config("pick_first"))],
        "inhibit": [("grpc.service_config", _config()), ("grpc.inhibit_health_checking", 1)],
        "no serviceName": [("grpc.service_config",
                            json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                                        "healthCheckConfig": {}}))],
    }[how]
    async with _backends(impl, 1) as (echoes, healths, target):
        await healths[0].set(SERVICE, NOT_SERVING)
        async with _channel(impl, target, options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            assert await _spread(stub, echoes, 3) == [3]


@pytest.mark.parametrize("impl", IMPLS)
async def test_a_bad_health_check_config_fails_every_call(impl):
    config = json.dumps({"healthCheckConfig": {"serviceName": 5}})
    async with _backends(impl, 1) as (echoes, healths, target):
        async with _channel(impl, target, [("grpc.service_config", config)]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "healthCheckConfig.serviceName" in caught.value.details()


def test_inhibit_health_checking_takes_only_0_or_1():
    with pytest.raises(ValueError, match="grpc.inhibit_health_checking"):
        rpc.insecure_channel("127.0.0.1:1", options=[("grpc.inhibit_health_checking", "yes")])


@pytest.mark.parametrize("service", ["", "echo.Echo", "é" * 100])
def test_health_messages_match_the_protobuf_ones(service):
    request = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert _balancer.health_request(service) == request
    for status in range(4):
        response = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        assert _balancer.serving_status(response) == status
    assert _balancer.serving_status(b"\x12\x03abc\x08\x01\x1d\x00\x00\x00\x00") == 1
    with pytest.raises(ValueError):
        _balancer.serving_status(b"\x08")


async def test_a_watch_that_ends_is_made_again_and_health_goes_on():
    """A Watch the server ends (OK, after answering) is made again at once (it had
    answered: no backoff), and the backend is in use again once it says SERVING."""
    class Ending(health_pb2_grpc.HealthServicer):
        def __init__(self) -> None:
            self.watches = 0
            self.status = SERVING

        async def Watch(self, request, context):
            self.watches += 1
            yield health_pb2.HealthCheckResponse(status=self.status)
            if self.watches < 3:
                return                  # ends OK: the client makes it again
            await asyncio.Event().wait()

    ending = Ending()
    echoes = [Echo(), Echo()]
    register = lambda server: health_pb2_grpc.add_HealthServicer_to_server(ending, server)  # noqa: E731
    async with serve(echoes[0], register) as one, serve(echoes[1]) as two:
        target = f"ipv4:127.0.0.1:{one.port},127.0.0.1:{two.port}"
        options = [("grpc.service_config", _config())]
        async with rpc.insecure_channel(target, options=options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await within(channel.channel_ready())
            await wait_until(lambda: ending.watches >= 3, 5)
            await _until_spread(stub, echoes, [True, True], 5)


async def test_close_with_grace_does_not_wait_for_the_watches():
    """The Watch streams are the channel's own, not calls of the application: a
    close with grace ends them at once, and the servers see them cancelled."""
    async with _backends("lanerpc", 2) as (echoes, healths, target):
        channel = rpc.insecure_channel(target, options=[("grpc.service_config", _config())])
        stub = echo_pb2_grpc.EchoStub(channel)
        await _until_spread(stub, echoes, [True, True], 5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await within(channel.close(grace=5))
        assert loop.time() - start < 1.0
        await wait_until(lambda: not any(h._watcher_count_by_service for h in healths), 2)


@pytest.mark.parametrize("impl", IMPLS)
async def test_a_watch_that_fails_without_answering_is_made_again_after_a_backoff(impl):
    """A backend whose Watch fails (not UNIMPLEMENTED) before any answer gets no calls,
    and its Watch is made again after gRPC's backoff (1 s, give or take 20 %)."""
    class Failing(health_pb2_grpc.HealthServicer):
        def __init__(self) -> None:
            self.times: list[float] = []

        async def Watch(self, request, context):
            self.times.append(asyncio.get_running_loop().time())
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not now")
            yield health_pb2.HealthCheckResponse()     # (a generator: never reached)

    failing = Failing()
    register = lambda server: health_pb2_grpc.add_HealthServicer_to_server(failing, server)  # noqa: E731
    echoes = [Echo(), Echo()]
    healthy = health_aio.HealthServicer()
    register_healthy = lambda server: health_pb2_grpc.add_HealthServicer_to_server(healthy, server)  # noqa: E731
    plain = impl == "grpc.aio"
    async with serve(echoes[0], register, plain_grpc=plain) as one, \
            serve(echoes[1], register_healthy, plain_grpc=plain) as two:
        target = f"ipv4:127.0.0.1:{one.port},127.0.0.1:{two.port}"
        options = [("grpc.service_config", _config(serviceName=""))]
        async with _channel(impl, target, options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await _until_spread(stub, echoes, [False, True], 5)
            await wait_until(lambda: len(failing.times) >= 2, 5)
            assert await _spread(stub, echoes, 10) == [0, 10]
    gap = failing.times[1] - failing.times[0]
    assert 0.7 <= gap <= 2.5, gap


async def test_lanerpc_local_first_heeds_health_too():
    async with _backends("lanerpc", 2) as (echoes, healths, target):
        options = [("grpc.service_config", _config("lanerpc_local_first"))]
        async with rpc.insecure_channel(target, options=options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await _until_spread(stub, echoes, [True, True], 5)
            await healths[0].set(SERVICE, NOT_SERVING)
            await _until_spread(stub, echoes, [False, True], 1.0)


async def test_a_health_answer_that_does_not_parse_is_not_serving():
    def bad_watch(request, context):
        yield b"\x0f"        # wire type 7: no protobuf message

    def register(server) -> None:
        handler = grpc.unary_stream_rpc_method_handler(bad_watch)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Watch": handler}),))

    echoes = [Echo(), Echo()]
    async with serve(echoes[0], register) as one, serve(echoes[1]) as two:
        target = f"ipv4:127.0.0.1:{one.port},127.0.0.1:{two.port}"
        options = [("grpc.service_config", _config())]
        async with rpc.insecure_channel(target, options=options) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await _until_spread(stub, echoes, [False, True], 5)
            first = channel._balancer.policy.subchannels[0]
            # The spread alone does not say the answer was read: a backend is skipped
            # while it waits for its first answer too. That answer comes from a plain
            # handler on the server's thread pool, which waits for the GIL as long as
            # this one process's loop is busy with the other backend's calls.
            await wait_until(lambda: "bad health response" in first.error, 5)
