"""Which lane a connection and a call took, as a user sees it: the INFO line a
connection logs when it upgrades or stays (and why), ``call.lane`` on the four call
kinds (intercepted too), ``context.lane`` in async and threaded handlers."""

from __future__ import annotations

import logging
import os

import grpc
import pytest

import rpc
from rpc import _lanes
from examples.echo import echo_pb2, echo_pb2_grpc
from tests._support import Echo, msg, serve, within


def _lane_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "lanerpc" and r.levelno == logging.INFO
            and r.getMessage().startswith("lanerpc: connection to ")]


async def _one_call(channel: rpc.Channel) -> None:
    await within(echo_pb2_grpc.EchoStub(channel).Unary(msg(b"x"), timeout=5))


@pytest.mark.parametrize("server_lanes,client_lanes,expected", [
    (None, None, "upgraded tcp -> shm"),
    (None, "unix,tcp", "upgraded tcp -> unix: option lanerpc.lanes excludes shm"),
    (None, "tcp", "stays on tcp: option lanerpc.lanes excludes unix"),
    ("tcp", None, "stays on tcp: no upgrade offer"),
    ("unix,tcp", None, "upgraded tcp -> unix: no shm offer"),
])
async def test_connection_says_which_lane_and_why(server_lanes, client_lanes, expected, caplog):
    caplog.set_level(logging.INFO, logger="lanerpc")
    async with serve(Echo(), lanes=server_lanes) as served:
        channel = served.channel(lanes=client_lanes)
        await _one_call(channel)
    lines = _lane_lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"lanerpc: connection to {served.target} {expected}"), lines


async def test_unix_target_says_it_moved_to_shm(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lanerpc")
    path = tmp_path / "s.sock"
    async with serve(Echo(), address=f"unix:{path}") as served:
        await _one_call(served.channel())
    assert _lane_lines(caplog) == [f"lanerpc: connection to unix:{path} upgraded unix -> shm"]


async def test_a_decoy_that_cannot_prove_the_token_is_named(monkeypatch, caplog):
    # The socket at the offered path answers, but not with the proof of the token.
    monkeypatch.setattr(_lanes._UpgradeSocket, "answer",
                        lambda self, claim: (b"\0" * 32, None, None))
    caplog.set_level(logging.INFO, logger="lanerpc")
    async with serve(Echo()) as served:
        channel = served.channel()
        await _one_call(channel)
        assert channel.lane == "tcp"
    [line] = _lane_lines(caplog)
    assert "stays on tcp" in line and "did not prove it is the same server (a decoy)" in line


async def test_an_unreachable_upgrade_socket_is_named(monkeypatch, caplog):
    # As a client in another mount namespace sees it: the path is not there.
    real_offer = _lanes._UpgradeSocket.offer

    def offer_elsewhere(self, into, peer_address, tls=None):
        token_id = real_offer(self, into, peer_address, tls)
        into.unix_path = self.path + ".elsewhere"
        return token_id

    monkeypatch.setattr(_lanes._UpgradeSocket, "offer", offer_elsewhere)
    caplog.set_level(logging.INFO, logger="lanerpc")
    async with serve(Echo()) as served:
        channel = served.channel()
        await _one_call(channel)
        assert channel.lane == "tcp"
    [line] = _lane_lines(caplog)
    assert "stays on tcp" in line and "another mount namespace" in line


async def test_nothing_is_logged_at_warning_level(caplog):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    async with serve(Echo()) as served:
        await _one_call(served.channel())
    assert _lane_lines(caplog) == []


# ------------------------------------------------------------ call.lane, context.lane


class LaneEcho(echo_pb2_grpc.EchoServicer):
    """Answers each call with the lane its context says it came on."""

    async def Unary(self, request, context):
        return msg(str(context.lane).encode())

    async def ServerStream(self, request, context):
        yield msg(str(context.lane).encode())

    async def ClientStream(self, request_iterator, context):
        async for _ in request_iterator:
            pass
        return msg(str(context.lane).encode())

    async def Bidi(self, request_iterator, context):
        async for _ in request_iterator:
            yield msg(str(context.lane).encode())


class ThreadedLaneEcho(echo_pb2_grpc.EchoServicer):
    def Unary(self, request, context):   # a plain function: runs in a thread
        return msg(str(context.lane).encode())


async def _requests():
    yield msg(b"a")


@pytest.mark.parametrize("lanes,lane", [("tcp", "tcp"), ("unix,tcp", "unix"), (None, "shm")])
async def test_every_call_kind_tells_its_lane_on_both_sides(lanes, lane):
    async with serve(LaneEcho()) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes=lanes))
        unary = stub.Unary(msg(), timeout=5)
        assert unary.lane is None           # not on a connection yet
        assert (await within(unary)).payload == lane.encode()
        assert unary.lane == lane
        server_stream = stub.ServerStream(msg(), timeout=5)
        assert [m.payload async for m in server_stream] == [lane.encode()]
        assert server_stream.lane == lane
        client_stream = stub.ClientStream(_requests(), timeout=5)
        assert (await within(client_stream)).payload == lane.encode()
        assert client_stream.lane == lane
        bidi = stub.Bidi(_requests(), timeout=5)
        assert [m.payload async for m in bidi] == [lane.encode()]
        assert bidi.lane == lane


async def test_a_threaded_handler_context_tells_its_lane():
    async with serve(ThreadedLaneEcho()) as served:
        reply = await within(echo_pb2_grpc.EchoStub(served.channel()).Unary(msg(), timeout=5))
        assert reply.payload == b"shm"


class _Passing(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(details, request)

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(details, request_iterator)


async def test_an_intercepted_call_tells_the_lane_of_the_call_it_made():
    async with serve(LaneEcho()) as served:
        channel = served.keep(rpc.insecure_channel(served.target, interceptors=[_Passing()]))
        stub = echo_pb2_grpc.EchoStub(channel)
        unary = stub.Unary(msg(), timeout=5)
        assert (await within(unary)).payload == b"shm"
        assert unary.lane == "shm"
        bidi = stub.Bidi(_requests(), timeout=5)
        assert [m.payload async for m in bidi] == [b"shm"]
        assert bidi.lane == "shm"


async def test_a_call_that_never_reached_a_connection_has_no_lane():
    channel = rpc.insecure_channel("127.0.0.1:1")    # nothing listens there
    try:
        call = echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoMessage(), timeout=0.5)
        with pytest.raises(grpc.aio.AioRpcError):
            await within(call)
        assert call.lane is None
    finally:
        await within(channel.close())


async def test_a_server_of_a_uid_not_listed_is_named(caplog):
    caplog.set_level(logging.INFO, logger="lanerpc")
    other_uid = os.geteuid() + 4242
    async with serve(Echo()) as served:
        channel = served.channel(options=[("lanerpc.server_uids", str(other_uid))])
        await _one_call(channel)
        assert channel.lane == "tcp"
    [line] = _lane_lines(caplog)
    assert "stays on tcp: peer uid refused" in line and str(other_uid) in line
