"""The connection-management options' values (bad ones are refused naming the option)
and how max_connection_age and max_connection_idle compose on one server."""

from __future__ import annotations

import asyncio
import logging

import pytest

from examples.echo import echo_pb2_grpc
from rpc import _options
from tests._support import Echo, msg, serve, wait_until, within


@pytest.mark.parametrize("name,value", [
    ("grpc.max_connection_age_ms", "soon"), ("grpc.max_connection_age_grace_ms", 1.5),
    ("grpc.keepalive_time_ms", None), ("grpc.http2.max_pings_without_data", -1),
    ("grpc.http2.max_ping_strikes", -2), ("grpc.keepalive_time_ms", True),
])
def test_a_bad_value_is_refused_naming_the_option(name, value):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        _options.parse([(name, value)])


def test_values_as_grpc_reads_them():
    parse = _options.parse
    assert parse([("grpc.max_connection_age_ms", 1500)]).max_connection_age == 1.5
    assert parse([("grpc.max_connection_age_ms", "1500")]).max_connection_age == 1.5
    # INT_MAX is gRPC's "unlimited"; so is a negative value.
    assert parse([("grpc.max_connection_age_ms", 2**31 - 1)]).max_connection_age is None
    assert parse([("grpc.max_connection_age_grace_ms", 0)]).max_connection_age_grace == 0
    assert parse([]).max_connection_age_grace is None
    defaults = parse([])
    assert (defaults.keepalive_time, defaults.server_keepalive_time) == (None, 7200.0)
    assert defaults.max_pings_without_data == 2 and defaults.max_ping_strikes == 2
    both = parse([("grpc.keepalive_time_ms", 0)])   # off on either side
    assert (both.keepalive_time, both.server_keepalive_time) == (None, None)


def test_the_new_names_are_implemented_so_not_warned_about(caplog):
    with caplog.at_level(logging.WARNING, "lanerpc"):
        _options.parse([("grpc.max_connection_age_ms", 1), ("grpc.max_connection_age_grace_ms", 1),
                        ("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)])
    assert caplog.text == ""


async def test_age_rotates_a_busy_connection_that_idle_never_closes(caplog):
    caplog.set_level(logging.INFO, "lanerpc")
    async with serve(Echo(), lanes="tcp", options=[("grpc.max_connection_idle_ms", 300),
                                                   ("grpc.max_connection_age_ms", 500)]) as served:
        stub = echo_pb2_grpc.EchoStub(served.channel())
        stats = served.server._stats
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.3
        while loop.time() < end:     # busy: never idle 300 ms, but older than 500 ms
            assert (await within(stub.Unary(msg(b"x"), timeout=5), 6)).payload == b"x"
            await asyncio.sleep(0.05)
        assert stats.connections_total["tcp"] >= 2
        assert "max age" in caplog.text and "idle for" not in caplog.text
        # Then quiet: closed by whichever comes first (idle, or age), and not reopened.
        await wait_until(lambda: not served.server._links, 2)
