"""Bad input on real sockets: each bad connection is closed with a logged reason,
and an honest client on the same server is answered before, during and after.

The server runs in-process (rpc.server() with the helloworld Greeter) with a 500 ms
handshake timeout; bad peers are raw asyncio streams. The honest channel is kept on
TCP (``lanerpc.lanes=tcp``) so it shares the listener the bad peers hit.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import pytest

from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc
from examples.helloworld.server import Greeter
from rpc import _wire
from rpc._connection import Connection, GoAwayReceived, Role
from rpc._wire import GoAwayCode
from tests._support import serve

HANDSHAKE_TIMEOUT = 0.5
MARGIN = 2.0                # scheduling slack on a loaded machine
SETUP_TIMEOUT = 5.0
CALL_TIMEOUT = 5.0


@dataclass
class Greeted:
    stub: helloworld_pb2_grpc.GreeterStub
    port: int
    answered: list[float] = field(default_factory=list)   # loop times of honest answers

    async def hello(self, name: str) -> None:
        reply = await self.stub.SayHello(helloworld_pb2.HelloRequest(name=name), timeout=CALL_TIMEOUT)
        assert reply.message == f"Hello, {name}!"
        self.answered.append(asyncio.get_running_loop().time())


@pytest.fixture
async def greeter():
    options = [("lanerpc.handshake_timeout_ms", int(HANDSHAKE_TIMEOUT * 1000))]
    async with serve(Greeter(), options=options) as served:
        greeted = Greeted(helloworld_pb2_grpc.GreeterStub(served.channel(lanes="tcp")), served.port)
        await greeted.hello("before")                      # answered before any bad input
        yield greeted
        await greeted.hello("after")                       # and after it


# ------------------------------------------------------------------ bad peers

def _random_bytes(seed: int, n: int = 1024) -> bytes:
    data = random.Random(seed).randbytes(n)
    assert data[:1] != _wire.MAGIC[:1]
    return data


def _magic_and_half_a_hello() -> bytes:
    """The magic and the first half of an honest client's HELLO frame."""
    opening = b"".join(Connection(Role.CLIENT).data_to_send())
    hello_frame = opening[len(_wire.MAGIC):]
    assert hello_frame[4] == _wire.HELLO and len(hello_frame) > _wire.HEADER_SIZE + 2
    return _wire.MAGIC + hello_frame[:len(hello_frame) // 2]


# name -> (what to send after connecting, GOAWAY code expected, words in the reason)
BAD_INPUTS = {
    "random-bytes": (_random_bytes(1), GoAwayCode.PROTOCOL_ERROR, "not a lanerpc peer"),
    "magic-then-random-bytes": (_wire.MAGIC + _random_bytes(2), GoAwayCode.PROTOCOL_ERROR, ""),
    "http1-request": (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", GoAwayCode.PROTOCOL_ERROR, "HTTP/1"),
    # The whole preface goes to the server's gRPC side (tests/rpc/test_one_port.py, which
    # also has it refused with lanerpc.grpc_on_lanerpc_ports off); one that breaks off
    # inside is refused by lanerpc, naming HTTP/2.
    "http2-preface-broken": (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", GoAwayCode.PROTOCOL_ERROR,
                             "HTTP/2"),
    "tls-client-hello": (bytes.fromhex("16030100a5010000a10303") + bytes(32), GoAwayCode.PROTOCOL_ERROR, "TLS"),
    "half-hello-then-silence": (_magic_and_half_a_hello(), GoAwayCode.HANDSHAKE_TIMEOUT,
                                "handshake timeout"),
    "handshake-then-4GiB-frame": (None, GoAwayCode.PROTOCOL_ERROR, "exceeds the limit"),
    # A 1 MiB HELLO announced and begun: refused from the header, not waited for.
    "1MiB-hello-before-the-handshake": (
        _wire.MAGIC + _wire.frame_header(_wire.HELLO, 0, 0, 2**20) + bytes(1000),
        GoAwayCode.PROTOCOL_ERROR, "before the handshake; at most 16384"),
}


@dataclass
class Outcome:
    local_port: int
    closed_after: float       # seconds from sending the bad bytes to EOF
    goaway: GoAwayReceived | None


async def _read_to_eof(reader: asyncio.StreamReader, timeout: float) -> bytes:
    data = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        pass                  # closed, less politely; still closed
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for more than {timeout} s") from None
    return bytes(data)


async def _bad_peer(greeted: Greeted, name: str) -> Outcome:
    payload, _, _ = BAD_INPUTS[name]
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", greeted.port), SETUP_TIMEOUT)
    local_port = writer.get_extra_info("sockname")[1]
    parser = Connection(Role.CLIENT)          # reads what the server says back
    events = []
    try:
        await greeted.hello(f"during-{name}")     # the bad connection is open: still answered
        if payload is None:
            # An honest handshake first, then a header announcing 2**32 - 1 bytes.
            writer.write(b"".join(parser.data_to_send()))
            async with asyncio.timeout(SETUP_TIMEOUT):
                while not parser.handshake_done:
                    chunk = await reader.read(65536)
                    assert chunk, "server closed during an honest handshake"
                    events += parser.receive_data(chunk)
            payload = _wire.frame_header(_wire.MESSAGE, 0, 1, 2**32 - 1)
        sent_at = loop.time()
        writer.write(payload)
        await writer.drain()
        data = await _read_to_eof(reader, HANDSHAKE_TIMEOUT + MARGIN)
        closed_after = loop.time() - sent_at
    finally:
        writer.close()
    events += parser.receive_data(data)
    goaways = [e for e in events if isinstance(e, GoAwayReceived)]
    return Outcome(local_port, closed_after, goaways[-1] if goaways else None)


def _close_reasons(caplog, local_port: int) -> list[str]:
    marker = f"127.0.0.1:{local_port}: "
    return [r.getMessage().split(marker, 1)[1] for r in caplog.records
            if r.name == "lanerpc" and r.levelno >= logging.WARNING and marker in r.getMessage()]


def _check(name: str, outcome: Outcome, caplog) -> None:
    _, code, words = BAD_INPUTS[name]
    reasons = _close_reasons(caplog, outcome.local_port)
    assert len(reasons) == 1, f"{name}: expected one logged reason, got {reasons}"
    assert words in reasons[0]
    # The peer was told why, in a GOAWAY that matches the log.
    assert outcome.goaway is not None, f"{name}: no GOAWAY before the close"
    assert outcome.goaway.code == code
    assert outcome.goaway.reason == reasons[0]
    if code == GoAwayCode.HANDSHAKE_TIMEOUT:
        assert outcome.closed_after >= HANDSHAKE_TIMEOUT * 0.8


@pytest.mark.parametrize("name", list(BAD_INPUTS))
async def test_bad_connection_is_closed_with_a_logged_reason(greeter, caplog, name):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    outcome = await _bad_peer(greeter, name)
    _check(name, outcome, caplog)
    await greeter.hello(f"after-{name}")


async def test_many_bad_connections_at_once_while_honest_calls_go_on(greeter, caplog):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    stop = asyncio.Event()

    async def honest_loop() -> int:
        n = 0
        while not stop.is_set():
            await greeter.hello(f"loop-{n}")
            n += 1
            await asyncio.sleep(0.01)       # pace, so the loop doesn't crowd out the bad peers
        return n

    caller = asyncio.create_task(honest_loop())
    try:
        names = list(BAD_INPUTS) * 3
        started = asyncio.get_running_loop().time()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(_bad_peer(greeter, name) for name in names)),
            HANDSHAKE_TIMEOUT + MARGIN + SETUP_TIMEOUT)
        finished = asyncio.get_running_loop().time()
    finally:
        stop.set()
        honest_calls = await asyncio.wait_for(caller, CALL_TIMEOUT)
    for name, outcome in zip(names, outcomes, strict=True):
        _check(name, outcome, caplog)
    assert honest_calls >= 3
    # Answers kept coming while the bad connections were open.
    assert any(started < t < finished for t in greeter.answered)
