"""lanerpc's side of what a handler learns about its client: the user-agent a client
sends once in its HELLO (and a client that sends none), how status codes given as
ints are read, and how TCP peers are spelled. grpc.aio's behaviour itself is pinned
by tests/conformance/test_server_corners.py."""

from __future__ import annotations

import grpc
import pytest

from examples.echo import echo_pb2_grpc
from rpc import _link, _options
from rpc._status import wire_code
from rpc.transports._seam import ip_peer
from tests._support import Echo, msg, serve


async def test_a_client_without_user_agent_passes_the_calls_own(monkeypatch):
    """A client of an older lanerpc names no user agent in its HELLO: its calls'
    metadata reaches the handler as sent, a user-agent entry included."""
    monkeypatch.setattr(_link, "_with_user_agent", lambda hello, user_agent: hello)
    servicer = Echo()
    async with serve(servicer, lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        await stub.Unary(msg(b"x"), timeout=5, metadata=(("user-agent", "old/1"), ("k", "v")))
    assert servicer.seen_metadata[-1] == (("user-agent", "old/1"), ("k", "v"))


def test_user_agent_options_surround_lanerpcs_own():
    assert _options.parse(()).user_agent == _options.USER_AGENT
    assert _options.USER_AGENT.startswith(f"lanerpc-python/{_options.VERSION} ")
    agent = _options.parse([("grpc.primary_user_agent", "a/1"),
                            ("grpc.secondary_user_agent", "b/2")]).user_agent
    assert agent == f"a/1 {_options.USER_AGENT} b/2"


@pytest.mark.parametrize("given, sent", [
    (grpc.StatusCode.NOT_FOUND, 5), (5, 5), (0, 0), (15, 15),
    (16, 2), (-1, 2), (99, 2), ("bogus", 2), (None, 2),
])
def test_wire_code_reads_codes_as_grpc_aio(given, sent):
    assert wire_code(given) == sent


@pytest.mark.parametrize("host, port, spelled", [
    ("127.0.0.1", 5, "ipv4:127.0.0.1:5"),
    ("::ffff:10.0.0.1", 6, "ipv4:10.0.0.1:6"),
    ("::1", 7, "ipv6:%5B::1%5D:7"),
    ("fe80::1%eth0", 8, "ipv6:%5Bfe80::1%25eth0%5D:8"),
])
def test_tcp_peers_are_spelled_as_grpc(host, port, spelled):
    assert ip_peer(host, port) == spelled
