"""Connection limits on a real server: max connections, idle connections.

``grpc.max_allowed_incoming_connections`` (alias ``lanerpc.max_connections``): a
connection over the limit, on any lanerpc port, is turned away before its handshake
with a GOAWAY naming the limit (a lanerpc client: UNAVAILABLE), logged at most once an
interval. ``grpc.max_connection_idle_ms``: a connection without calls that long gets
GOAWAY "max_connection_idle"; its channel reconnects on the next call.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from examples.echo import echo_pb2_grpc
from rpc import _server, _wire
from rpc._connection import Connection, GoAwayReceived, Role
from rpc._wire import GoAwayCode
from tests._support import Echo, msg, serve, wait_until, within

CALL_TIMEOUT = 5.0


async def _echo(channel, payload: bytes = b"hi") -> bytes:
    reply = await echo_pb2_grpc.EchoStub(channel).Unary(msg(payload), timeout=CALL_TIMEOUT)
    return bytes(reply.payload)


def _refusal_lines(caplog) -> list[str]:
    # The server's WARNING lines (a client's INFO line on its lane may quote the reason).
    return [r.getMessage() for r in caplog.records
            if r.name == "lanerpc" and r.levelno >= logging.WARNING and "connection" in r.getMessage()
            and "grpc.max_allowed_incoming_connections" in r.getMessage()]


async def _raw_refusal(port: int) -> GoAwayReceived:
    """Connect with a raw socket, send an honest opening, read to EOF: the GOAWAY."""
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
    parser = Connection(Role.CLIENT)
    try:
        writer.write(b"".join(parser.data_to_send()))
        data = bytearray()
        async with asyncio.timeout(CALL_TIMEOUT):
            while chunk := await reader.read(65536):
                data += chunk
    finally:
        writer.close()
    goaways = [e for e in parser.receive_data(bytes(data)) if isinstance(e, GoAwayReceived)]
    assert len(goaways) == 1 and not parser.handshake_done
    return goaways[0]


async def test_connections_over_the_limit_are_refused_on_every_port(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lanerpc")
    sock = tmp_path / "s.sock"
    options = [("lanerpc.max_connections", 2)]
    async with serve(Echo(), address=["127.0.0.1:0", f"unix:{sock}"], options=options) as served:
        tcp_target, unix_target = served.targets
        first = served.channel(tcp_target, lanes="tcp")
        second = served.channel(unix_target, lanes="unix")
        assert await _echo(first) == b"hi"
        assert await _echo(second) == b"hi"
        for target, lanes in ((tcp_target, "tcp"), (unix_target, "unix")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _echo(served.channel(target, lanes=lanes))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "at most 2 at once" in info.value.details()
        # The admitted ones are still served; once one goes, a newcomer is admitted.
        assert await _echo(first) == b"hi"
        await within(first.close())
        await wait_until(lambda: served.server._counted_links == 1)
        assert await _echo(served.channel(tcp_target, lanes="tcp")) == b"hi"
        assert await _echo(second) == b"hi"
    assert not sock.exists()
    lines = _refusal_lines(caplog)
    assert lines and "refusing connection from" in lines[0] and "at most 2" in lines[0]


async def test_a_raw_peer_over_the_limit_gets_a_goaway_naming_it():
    async with serve(Echo(), options=[("grpc.max_allowed_incoming_connections", 1)]) as served:
        channel = served.channel(lanes="tcp")
        assert await _echo(channel) == b"hi"
        goaway = await _raw_refusal(served.port)
        assert goaway.code == GoAwayCode.ENHANCE_YOUR_CALM
        assert goaway.reason == ("too many connections: this server serves at most 1 at once "
                                 "(grpc.max_allowed_incoming_connections)")
        assert await _echo(channel) == b"hi"


async def test_many_refusals_make_one_line_an_interval(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="lanerpc")
    monkeypatch.setattr(_server.Server, "REFUSAL_LOG_INTERVAL", 0.5)
    async with serve(Echo(), options=[("lanerpc.max_connections", 1)]) as served:
        channel = served.channel(lanes="tcp")
        assert await _echo(channel) == b"hi"
        await within(asyncio.gather(*(_raw_refusal(served.port) for _ in range(20))))
        lines = _refusal_lines(caplog)
        assert len(lines) == 1 and lines[0].startswith("lanerpc: refusing connection from ipv4:127.0.0.1:")
        # One more line, after the interval, counting the others.
        await wait_until(lambda: len(_refusal_lines(caplog)) == 2)
        assert _refusal_lines(caplog)[1].startswith(
            "lanerpc: refused 19 more connection(s) since the last line: too many connections")
        assert await _echo(channel) == b"hi"
    assert len(_refusal_lines(caplog)) == 2


async def test_no_limit_by_default():
    async with serve(Echo()) as served:
        channels = [served.channel(lanes="tcp") for _ in range(20)]
        replies = await within(asyncio.gather(*(_echo(c) for c in channels)))
        assert replies == [b"hi"] * 20
        assert served.server._counted_links == 20


async def test_the_upgrade_socket_counts_too(caplog):
    """A same-host tcp client upgrades over a second connection: with room for one,
    that one is refused and the client stays on tcp, served."""
    caplog.set_level(logging.INFO, logger="lanerpc")
    async with serve(Echo(), options=[("lanerpc.max_connections", 1)]) as served:
        channel = served.channel(lanes="unix,tcp")
        assert await _echo(channel) == b"hi"
        assert channel.lane == "tcp"
        assert served.server._counted_links == 1
        assert len(_refusal_lines(caplog)) == 1


# ------------------------------------------------------------------ idle connections

IDLE = 0.2


def _links(served) -> set:
    return set(served.server._links)


async def test_an_idle_connection_is_closed_and_the_channel_reconnects(caplog):
    caplog.set_level(logging.INFO, logger="lanerpc")
    async with serve(Echo(), options=[("grpc.max_connection_idle_ms", int(IDLE * 1000))]) as served:
        channel = served.channel(lanes="tcp")
        loop = asyncio.get_running_loop()
        assert await _echo(channel) == b"hi"
        answered = loop.time()
        (link,) = _links(served)
        await within(asyncio.shield(link.closed))
        assert loop.time() - answered >= IDLE * 0.9
        assert link.conn.goaway_sent and not _links(served)
        # The next call on the same channel opens a new connection.
        assert await _echo(channel) == b"hi"
        (second,) = _links(served)
        assert second is not link
    assert any("idle for 0.2 s" in r.getMessage() for r in caplog.records)


async def test_a_connection_with_a_call_in_flight_is_not_idle():
    async with serve(Echo(), options=[("grpc.max_connection_idle_ms", int(IDLE * 1000))]) as served:
        channel = served.channel(lanes="tcp")
        stub = echo_pb2_grpc.EchoStub(channel)
        call = asyncio.ensure_future(stub.Unary(msg(b"sleep:900"), timeout=CALL_TIMEOUT))
        await wait_until(lambda: any(link.calls for link in _links(served)))
        (link,) = _links(served)
        await asyncio.sleep(IDLE * 3)
        assert not link.conn.goaway_sent and not link.closed.done()
        reply = await within(call)
        assert reply.payload == b"sleep:900"
        # Idle from the call's end on: closed after that.
        ended = asyncio.get_running_loop().time()
        await within(asyncio.shield(link.closed))
        assert asyncio.get_running_loop().time() - ended >= IDLE * 0.9
        assert await _echo(channel) == b"hi"


async def test_idle_is_off_by_default():
    async with serve(Echo()) as served:
        channel = served.channel(lanes="tcp")
        assert await _echo(channel) == b"hi"
        (link,) = _links(served)
        assert link.idle_timer is None
        await asyncio.sleep(IDLE * 2)
        assert not link.conn.goaway_sent
