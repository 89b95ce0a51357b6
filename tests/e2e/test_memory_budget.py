"""The memory budget: a peer that parks pieces of messages on many streams and never
finishes them can make a server hold only a bounded amount, and an honest client beside
it is served as usual. The attacker speaks the wire protocol by hand (lanerpc's own
sans-IO client connection for the handshake and the windows, MESSAGE frames with
FLAG_MORE written directly); the server runs in a process of its own so its RSS is what
the test reads."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest

from examples.echo import echo_pb2_grpc
from rpc import _wire
from rpc._connection import RESOURCE_EXHAUSTED, Connection, Limits, Role
from rpc._events import StreamEnded
from rpc._wire import FLAG_MORE, FrameType
from tests._support import msg, rss_mb, within
from tests.e2e._server_proc import ServerProc
import rpc

STREAMS = 100
PIECE = 64 * 1024
PARTIAL = 4 * 1024 * 1024 - 64        # just under the default largest message
ATTACK_SECONDS = 3.0
RSS_BOUND_MB = 64


class PartialAttacker:
    """One connection that opens ``STREAMS`` client-streaming calls and feeds each a
    message that never ends, as fast as the server's windows let it."""

    def __init__(self) -> None:
        self.conn = Connection(Role.CLIENT, Limits(stream_window=_wire.MAX_WINDOW,
                                                   connection_window=_wire.MAX_WINDOW))
        self.sent = 0                 # message bytes written
        self.shed: dict[int, int] = {}    # stream id -> the status the server ended it with
        self._window = asyncio.Event()

    async def run(self, connect: "asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]",
                  seconds: float) -> None:
        reader, writer = await connect
        try:
            writer.write(b"".join(self.conn.data_to_send()))
            while not self.conn.handshake_done:
                data = await within(reader.read(65536))
                assert data, "server closed during the handshake"
                self._absorb(data)
            reading = asyncio.ensure_future(self._read(reader))
            try:
                await asyncio.wait_for(self._feed(writer), seconds)
            except asyncio.TimeoutError:
                pass
            finally:
                reading.cancel()
        finally:
            writer.close()

    def _absorb(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, StreamEnded):
                self.shed[event.stream_id] = event.code
        self._window.set()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            self._absorb(data)

    async def _feed(self, writer: asyncio.StreamWriter) -> None:
        sids = [self.conn.start_request("/lanerpc.echo.Echo/ClientStream", None, ())
                for _ in range(STREAMS)]
        writer.write(b"".join(self.conn.data_to_send()))
        parked = dict.fromkeys(sids, 0)
        piece = b"\x00" * PIECE
        while True:
            progressed = False
            for sid in sids:
                stream = self.conn.streams.get(sid)
                if stream is None or sid in self.shed:
                    # Shed: open another in its place, as a persistent attacker would.
                    sids.remove(sid)
                    new = self.conn.start_request("/lanerpc.echo.Echo/ClientStream", None, ())
                    sids.append(new)
                    parked[new] = 0
                    writer.write(b"".join(self.conn.data_to_send()))
                    progressed = True
                    break
                room = min(stream.send_window, self.conn.send_window, PARTIAL - parked[sid], PIECE)
                if room <= 0:
                    continue
                # MESSAGE with FLAG_MORE: a message that goes on; never its last piece.
                writer.write(_wire.frame(FrameType.MESSAGE, FLAG_MORE, sid, piece[:room]))
                stream.send_window -= room
                self.conn.send_window -= room
                parked[sid] += room
                self.sent += room
                progressed = True
            await writer.drain()
            if not progressed:
                self._window.clear()
                await self._window.wait()


async def _attack(server: ServerProc, lane: str, address: str, connections: int) -> tuple[
        list[PartialAttacker], list[float], float, float]:
    """Run ``connections`` attackers for ATTACK_SECONDS while an honest client calls
    Unary in a loop; returns the attackers, the honest latencies, base and peak RSS."""
    target = f"127.0.0.1:{server.port}" if lane == "tcp" else address
    async with rpc.insecure_channel(target, options=[("lanerpc.lanes", lane)]) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(200):
            await within(stub.Unary(msg(b"warm")))
        base = peak = rss_mb(server.pid)
        attackers = [PartialAttacker() for _ in range(connections)]

        def connect() -> Any:
            return (asyncio.open_connection("127.0.0.1", server.port) if lane == "tcp"
                    else asyncio.open_unix_connection(address[len("unix:"):]))

        attacks = [asyncio.ensure_future(a.run(asyncio.ensure_future(connect()), ATTACK_SECONDS))
                   for a in attackers]
        latencies: list[float] = []
        try:
            await asyncio.sleep(0.5)     # let the attack get going
            while not all(a.done() for a in attacks):
                started = time.perf_counter()
                reply = await within(stub.Unary(msg(b"honest")), 5)
                latencies.append(time.perf_counter() - started)
                assert reply.payload == b"honest"
                peak = max(peak, rss_mb(server.pid))
                await asyncio.sleep(0.01)
            await within(asyncio.gather(*attacks), 10)
        finally:
            for a in attacks:
                a.cancel()
        peak = max(peak, rss_mb(server.pid))
    return attackers, latencies, base, peak


def _p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else max(latencies)


@pytest.mark.parametrize("lane", ["tcp", "unix"])
async def test_parked_partial_messages_cost_a_bounded_amount(lane: str, tmp_path: Any) -> None:
    """One connection: its window bounds what it can park; past that, its largest
    unfinished message is refused (RESOURCE_EXHAUSTED) and the rest go on."""
    address = "127.0.0.1:0" if lane == "tcp" else f"unix:{tmp_path}/s.sock"
    server = await ServerProc("--address", address, "--lanes", lane).start()
    try:
        [attacker], latencies, base, peak = await _attack(server, lane, address, 1)
        base = min(base, rss_mb(server.pid))
        # Attack and close, again: what a closed connection held is given back at once
        # (no garbage collection is forced; the server process runs as it would).
        for _ in range(2):
            [again], more, _, peak_again = await _attack(server, lane, address, 1)
            latencies += more
            peak = max(peak, peak_again)
            attacker.sent += again.sent
            attacker.shed.update(again.shed)
        await asyncio.sleep(0.5)
        after = rss_mb(server.pid)
        p99 = _p99(latencies)
        print(f"\n{lane}: {attacker.sent / 2**20:.0f} MiB offered, {len(attacker.shed)} messages "
              f"refused; server RSS {base:.0f} -> {peak:.0f} MB, {after:.0f} MB after; honest p99 {p99 * 1000:.1f} ms "
              f"over {len(latencies)} calls")
        # The attack was real: far more than the bound was offered, and refused.
        assert attacker.sent > 2 * RSS_BOUND_MB * 1024 * 1024, attacker.sent
        assert attacker.shed and set(attacker.shed.values()) == {RESOURCE_EXHAUSTED}
        assert peak - base <= RSS_BOUND_MB, f"server RSS {base:.0f} -> {peak:.0f} MB"
        assert p99 <= 0.050, f"honest p99 {p99 * 1000:.1f} ms over {len(latencies)} calls"
        assert after - base <= RSS_BOUND_MB, f"server RSS {base:.0f} -> {after:.0f} MB after"
    finally:
        await server.stop()


async def test_many_connections_share_the_server_budget() -> None:
    """Twelve connections could park 16 MiB each; with a 16 MiB budget the server holds
    about that much in all, and an honest connection that holds nothing is served."""
    server = await ServerProc("--address", "127.0.0.1:0", "--lanes", "tcp",
                              "--option", f"lanerpc.memory_budget_bytes={16 * 2**20}").start()
    try:
        attackers, latencies, base, peak = await _attack(server, "tcp", "", 12)
        sent = sum(a.sent for a in attackers)
        print(f"\n12 connections: {sent / 2**20:.0f} MiB offered, server RSS {base:.0f} -> "
              f"{peak:.0f} MB; honest p99 {_p99(latencies) * 1000:.1f} ms over {len(latencies)} calls")
        assert sent > 12 * 16 * 2**20, sent      # each could fill its whole window
        assert peak - base <= RSS_BOUND_MB, f"server RSS {base:.0f} -> {peak:.0f} MB"
    finally:
        await server.stop()
