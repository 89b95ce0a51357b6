"""round_robin over three server processes, one SIGKILLed mid-run: only the calls in
flight on it fail (UNAVAILABLE), the next calls go to the two left. Side by side with
grpc.aio (whose servers here are lanerpc servers' grpc:// ports)."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import msg, within
from tests.e2e._server_proc import ServerProc

IMPLS = ("grpc.aio", "lanerpc")
WAVE = 30


def _pid(reply) -> int:
    return int(reply.payload.decode().split("|")[3])


@pytest.mark.parametrize("impl", IMPLS)
async def test_sigkill_of_one_backend_fails_only_the_calls_in_flight_on_it(impl):
    address = "grpc://127.0.0.1:0" if impl == "grpc.aio" else "127.0.0.1:0"
    servers: list[ServerProc] = []
    try:
        for _ in range(3):
            servers.append(await ServerProc("--address", address).start())
        target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
        make = grpc.aio.insecure_channel if impl == "grpc.aio" else rpc.insecure_channel
        async with make(target, options=[("grpc.lb_policy_name", "round_robin")]) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            pids: set[int] = set()
            while len(pids) < 3:     # every subchannel READY: the wave spreads evenly
                pids.add(_pid(await within(stub.Unary(msg(b"peer"), timeout=5))))
                await asyncio.sleep(0.01)
            calls = [stub.Unary(msg(b"sleep:1500"), timeout=10) for _ in range(WAVE)]
            # (grpc.aio's initial_metadata() comes with the response here: wait instead.)
            await asyncio.sleep(0.5)
            assert not any(call.done() for call in calls)
            victim = servers[0]
            victim.signal(signal.SIGKILL)
            results = await within(asyncio.gather(*calls, return_exceptions=True), 10)
            failed = [r for r in results if isinstance(r, BaseException)]
            assert len(failed) == WAVE // 3, results
            assert all(isinstance(r, grpc.aio.AioRpcError)
                       and r.code() is grpc.StatusCode.UNAVAILABLE for r in failed), failed
            after = [_pid(await within(stub.Unary(msg(b"peer"), timeout=5))) for _ in range(10)]
            assert victim.pid not in after and len(set(after)) == 2
    finally:
        for server in servers:
            await server.stop()
