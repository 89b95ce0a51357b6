"""Keepalive against a frozen peer, next to grpc.aio under the same options.

A server pings a client that has a call in flight but sends nothing; frozen
(SIGSTOP), the client answers no more and the server closes the connection within
keepalive time + timeout. A client pings a frozen server the same way and ends its
call UNAVAILABLE within keepalive time + timeout of the last bytes it received.
The other process is ``tests/e2e/_keepalive_peer.py``, stopped by its pid
(SIGCONT + SIGKILL) in a ``finally``.

grpc.aio 1.85 waits for a keepalive PING's ACK for ``grpc.http2.ping_timeout_ms``
(default 60 s; its trace says "Set ping timeout timer of 60000ms"), not for
``grpc.keepalive_timeout_ms``: it is given the same value there so that both wait
as long.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, wait_until, within
from tests.e2e._keepalive_peer import QUIET_STREAM, KeepalivePeer

_C = grpc.StatusCode
SLACK = 0.5


def _keepalive_options(impl: str, keepalive: float, timeout: float) -> list[tuple[str, int]]:
    options = [("grpc.keepalive_time_ms", int(keepalive * 1000)),
               ("grpc.keepalive_timeout_ms", int(timeout * 1000))]
    if impl == "grpc":     # see the module's docstring
        options.append(("grpc.http2.ping_timeout_ms", int(timeout * 1000)))
    return options


def _established(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is ``port`` (the
    server's side of its clients' connections), from /proc/net/tcp and tcp6."""
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


# (name, grpc.aio or lanerpc, the lanes of a lanerpc server and its client)
PEERS = [("grpc.aio", "grpc", None), ("lanerpc-tcp", "lanerpc", "tcp"),
         ("lanerpc-shm", "lanerpc", None)]


@pytest.mark.parametrize("name,impl,lanes", PEERS, ids=[p[0] for p in PEERS])
async def test_server_keepalive_closes_the_connection_of_a_frozen_client(name, impl, lanes, runtime_dir):
    keepalive, timeout = 0.5, 0.5
    servicer = Echo()
    lane_option = [("lanerpc.lanes", lanes)] if lanes else []
    async with serve(servicer, plain_grpc=impl == "grpc",
                     options=lane_option + _keepalive_options(impl, keepalive, timeout)) as served:
        options = [f"--option=lanerpc.lanes={lanes}"] if lanes else []
        client = KeepalivePeer("client", served.target, "--impl", impl, *options)
        try:
            await client.start()
            if impl == "grpc":
                def connected() -> bool:
                    return _established(served.port) > 0
            else:
                def connected() -> bool:
                    return bool(served.server._links)
            assert connected()
            await asyncio.sleep(keepalive * 2)         # pings answered: still connected
            assert connected() and servicer.running == 1
            frozen_at = time.monotonic()
            client.signal(signal.SIGSTOP)
            await wait_until(lambda: not connected(), keepalive + timeout + 3)
            closed_in = time.monotonic() - frozen_at
            print(f"{name}: server closed the frozen client's connection in {closed_in:.2f} s")
            assert closed_in < keepalive + timeout + SLACK
            await wait_until(lambda: servicer.cancelled_calls == 1, 3)   # its handler too
        finally:
            await client.stop()


@pytest.mark.parametrize("name,impl,lanes", PEERS, ids=[p[0] for p in PEERS])
async def test_client_keepalive_detects_a_frozen_server_within_time_and_timeout(name, impl, lanes, runtime_dir):
    keepalive, timeout = 1.0, 1.0
    options = [f"--option=lanerpc.lanes={lanes}"] if lanes else []
    server = KeepalivePeer("server", "--impl", impl, *options,
                           "--option=grpc.http2.min_ping_interval_without_data_ms=100",
                           "--option=grpc.http2.max_ping_strikes=0")
    channel = None
    try:
        await server.start()
        make = grpc.aio.insecure_channel if impl == "grpc" else rpc.insecure_channel
        lane_option = [("lanerpc.lanes", lanes)] if lanes else []
        channel = make(f"127.0.0.1:{server.port}",
                       options=lane_option + _keepalive_options(impl, keepalive, timeout))
        stub = echo_pb2_grpc.EchoStub(channel)
        assert (await within(stub.Unary(msg(b"hi"), timeout=5), 6)).payload == b"hi"
        call = stub.ServerStream(msg(QUIET_STREAM), timeout=30)
        await within(call.read(), 5)
        last_input = time.monotonic()        # the server's last word
        # Frozen a while later: a ping on a fixed beat from the handshake would be late.
        await asyncio.sleep(0.6)
        server.signal(signal.SIGSTOP)
        code = await within(call.code(), keepalive + timeout + 3)
        detected_in = time.monotonic() - last_input
        print(f"{name}: the client ended its call {code} {detected_in:.2f} s after the last input")
        assert code == _C.UNAVAILABLE
        assert detected_in < keepalive + timeout + SLACK
    finally:
        if channel is not None:
            await within(channel.close(), 5)
        await server.stop()
