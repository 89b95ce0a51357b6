"""Load balancing on real servers, side by side with grpc.aio under the same options:
round_robin spreads calls, pick_first gets past an address that never answers, the
service config chooses the policy (and its errors read as grpc.aio's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, wait_until, within

IMPLS = ("grpc.aio", "lanerpc")


def _channel(impl: str, target: str, options: list) -> grpc.aio.Channel:
    make = grpc.aio.insecure_channel if impl == "grpc.aio" else rpc.insecure_channel
    return make(target, options=options)


@contextlib.asynccontextmanager
async def _backends(impl: str, count: int, **serve_kwargs):
    """``count`` Echo servers of ``impl``'s kind on 127.0.0.1; yields (servicers, target)."""
    async with contextlib.AsyncExitStack() as stack:
        servicers = [Echo() for _ in range(count)]
        served = [await stack.enter_async_context(
            serve(s, plain_grpc=impl == "grpc.aio", **serve_kwargs)) for s in servicers]
        yield servicers, "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in served)


@contextlib.asynccontextmanager
async def _silent_server():
    """A TCP port that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await within(server.wait_closed())


async def _until_all_served(stub, servicers) -> None:
    while not all(s.seen_metadata for s in servicers):
        await stub.Unary(msg(b"x"), timeout=5)
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("how", ["lb_policy_name", "loadBalancingConfig", "loadBalancingPolicy"])
async def test_round_robin_spreads_sixty_calls_over_three_servers(impl, how):
    options = {
        "lb_policy_name": [("grpc.lb_policy_name", "round_robin")],
        "loadBalancingConfig": [("grpc.service_config",
                                 json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))],
        "loadBalancingPolicy": [("grpc.service_config",
                                 json.dumps({"loadBalancingPolicy": "ROUND_ROBIN"}))],
    }[how]
    async with _backends(impl, 3) as (servicers, target):
        async with _channel(impl, target, options) as channel:
            await within(channel.channel_ready())
            stub = echo_pb2_grpc.EchoStub(channel)
            # Until every subchannel is READY, round_robin spreads over fewer: warm up.
            await within(_until_all_served(stub, servicers))
            for s in servicers:
                s.seen_metadata.clear()
            for _ in range(60):
                await within(stub.Unary(msg(b"x"), timeout=5))
    counts = [len(s.seen_metadata) for s in servicers]
    assert sum(counts) == 60
    assert all(15 <= count <= 25 for count in counts), counts


@pytest.mark.parametrize("impl", IMPLS)
async def test_pick_first_goes_on_to_the_next_address_when_the_first_is_silent(impl):
    async with _silent_server() as silent, _backends(impl, 1) as (servicers, target):
        target = target.replace("ipv4:", f"ipv4:127.0.0.1:{silent},")
        async with _channel(impl, target, []) as channel:
            loop = asyncio.get_running_loop()
            start = loop.time()
            await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))
            took = loop.time() - start
    assert took < 1.0, took
    assert len(servicers[0].seen_metadata) == 1


@pytest.mark.parametrize("impl", IMPLS)
async def test_pick_first_sends_every_call_to_the_first_address_that_answers(impl):
    async with _backends(impl, 3) as (servicers, target):
        async with _channel(impl, target, []) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(10):
                await within(stub.Unary(msg(b"x"), timeout=5))
    assert [len(s.seen_metadata) for s in servicers] == [10, 0, 0]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("policy", ["pick_first", "round_robin"])
async def test_a_dead_address_among_live_ones_leaves_the_channel_ready(impl, policy):
    async with _silent_server() as port:
        pass     # a port nobody listens on now: refused
    async with _backends(impl, 1) as (servicers, target):
        target = target.replace("ipv4:", f"ipv4:127.0.0.1:{port},")
        async with _channel(impl, target, [("grpc.lb_policy_name", policy)]) as channel:
            await within(channel.channel_ready())
            assert channel.get_state() is grpc.ChannelConnectivity.READY
            for _ in range(4):
                await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))
    assert len(servicers[0].seen_metadata) == 4


@pytest.mark.parametrize("impl", IMPLS)
async def test_with_no_server_up_calls_fail_unavailable_and_the_state_is_transient_failure(impl):
    async with _silent_server() as port:
        pass
    target = f"ipv4:127.0.0.1:{port},127.0.0.1:{port}"
    async with _channel(impl, target, [("grpc.lb_policy_name", "round_robin")]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE


@pytest.mark.parametrize("config, error", [
    ({"loadBalancingConfig": [{"bogus": {}}]},
     "field:loadBalancingConfig error:No known policies in list: bogus"),
    ({"loadBalancingConfig": []}, "field:loadBalancingConfig error:No known policies in list: "),
    ({"loadBalancingConfig": {"round_robin": {}}},
     "field:loadBalancingConfig error:type should be array"),
    ({"loadBalancingPolicy": "BOGUS"}, 'field:loadBalancingPolicy error:unknown LB policy "bogus"'),
    ({"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": 3}}]},
     "field:loadBalancingConfig error:errors validating pick_first LB policy config: "
     "[field:shuffleAddressList error:is not a boolean]"),
])
async def test_a_bad_lb_config_fails_every_call_invalid_argument_as_grpc_aio_does(config, error):
    details = {}
    for impl in IMPLS:
        options = [("grpc.service_config", json.dumps(config))]
        async with _channel(impl, "127.0.0.1:1", options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await within(channel.unary_unary("/a/b")(b"", timeout=5))
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        details[impl] = failed.value.details()
    wanted = f"errors validating service config: [{error}]"
    assert all(text.endswith(wanted) for text in details.values()), details


@pytest.mark.parametrize("impl", IMPLS)
async def test_an_unknown_lb_policy_name_option_is_logged_and_pick_first_is_used(impl, caplog):
    async with _backends(impl, 2) as (servicers, target):
        with caplog.at_level(logging.ERROR, "lanerpc"):
            channel = _channel(impl, target, [("grpc.lb_policy_name", "bogus")])
        async with channel:
            for _ in range(4):
                await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))
    assert [len(s.seen_metadata) for s in servicers] == [4, 0]
    if impl == "lanerpc":    # (grpc.aio's core logs it to stderr, outside Python's logging)
        assert "'bogus' passed through grpc.lb_policy_name does not exist" in caplog.text


async def test_the_first_known_policy_in_the_list_is_used():
    config = {"loadBalancingConfig": [{"weighted_round_robin": {}}, {"round_robin": {}}]}
    async with _backends("lanerpc", 2) as (servicers, target):
        async with _channel("lanerpc", target,
                            [("grpc.service_config", json.dumps(config))]) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await within(_until_all_served(stub, servicers))
            for s in servicers:
                s.seen_metadata.clear()
            for _ in range(4):
                await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))
    assert [len(s.seen_metadata) for s in servicers] == [2, 2]


# ------------------------------------------------------------ lanes per subchannel

async def test_each_subchannel_has_its_own_lane_and_local_first_prefers_the_local_ones():
    """A server taking only tcp stays on tcp; one that offers the upgrade is reached
    over shm. round_robin uses both; lanerpc_local_first only the shm one while it is
    READY; ``channel.lane`` is the lane of the connection the last call went on."""
    async with serve(Echo(), lanes="tcp") as tcp_only, serve(Echo()) as upgraded:
        target = f"ipv4:127.0.0.1:{tcp_only.port},127.0.0.1:{upgraded.port}"
        for policy, lanes_wanted in (("round_robin", {"tcp", "shm"}),
                                     ("lanerpc_local_first", {"shm"})):
            async with rpc.insecure_channel(
                    target, options=[("grpc.lb_policy_name", policy)]) as channel:
                await within(channel.channel_ready())
                await wait_until(lambda: len(channel._balancer.links()) == 2)
                stub = echo_pb2_grpc.EchoStub(channel)
                seen = set()
                for _ in range(6):
                    reply = await within(stub.Unary(msg(b"peer"), timeout=5))
                    lane = reply.payload.decode().split("|")[1]
                    assert channel.lane == lane
                    seen.add(lane)
                assert seen == lanes_wanted, policy


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("policy, after", [
    ("pick_first", {grpc.ChannelConnectivity.IDLE}),
    ("round_robin", {grpc.ChannelConnectivity.CONNECTING,
                     grpc.ChannelConnectivity.TRANSIENT_FAILURE}),
])
async def test_the_state_when_the_only_server_goes_away(impl, policy, after):
    """pick_first goes IDLE (the next call connects again); round_robin reconnects at
    once, so it is CONNECTING or, refused, TRANSIENT_FAILURE."""
    async with _backends(impl, 1) as (servicers, target):
        channel = _channel(impl, target, [("grpc.lb_policy_name", policy)])
        assert channel.get_state() is grpc.ChannelConnectivity.IDLE
        await within(channel.channel_ready())
    try:
        await within(_until_state(channel, after))
    finally:
        await within(channel.close())


async def _until_state(channel, states) -> None:
    state = channel.get_state()
    while state not in states:
        await channel.wait_for_state_change(state)
        state = channel.get_state()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("form", ["dns:///localhost:{}", "localhost:{}"])
async def test_a_name_is_resolved_and_its_addresses_tried(impl, form):
    """localhost has 127.0.0.1 (and often ::1, where nothing listens here): a call
    gets through whichever record comes first."""
    async with _backends(impl, 1) as (servicers, target):
        port = target.rsplit(":", 1)[1]
        async with _channel(impl, form.format(port), [("grpc.lb_policy_name", "round_robin")]) \
                as channel:
            for _ in range(3):
                await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))
    assert len(servicers[0].seen_metadata) == 3


async def test_a_dns_server_in_the_target_is_refused_when_the_channel_is_made():
    with pytest.raises(ValueError, match="names a DNS server"):
        rpc.insecure_channel("dns://8.8.8.8/localhost:1")


@pytest.mark.parametrize("impl", IMPLS)
async def test_a_wait_for_ready_call_waits_out_the_backoff_until_the_server_is_up(impl):
    """The first attempt is refused; the address is tried again after
    grpc.initial_reconnect_backoff_ms, by then the server is up and the call goes."""
    async with _silent_server() as port:
        pass
    options = [("grpc.initial_reconnect_backoff_ms", 300)]
    async with _channel(impl, f"127.0.0.1:{port}", options) as channel:
        call = echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5, wait_for_ready=True)
        await within(_until_state(channel, {grpc.ChannelConnectivity.TRANSIENT_FAILURE}))
        async with serve(Echo(), address=f"127.0.0.1:{port}", plain_grpc=impl == "grpc.aio"):
            loop = asyncio.get_running_loop()
            start = loop.time()
            assert (await within(call)).payload == b"x"
            assert loop.time() - start < 1.0
            assert channel.get_state() is grpc.ChannelConnectivity.READY
