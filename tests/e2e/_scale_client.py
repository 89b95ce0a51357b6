"""A client for tests/e2e/test_scale_up.py: calls a name with round_robin until killed.

    python -m tests.e2e._scale_client TARGET --kind lanerpc|grpc --dns-min-ms MS

Run behind a mount namespace whose /etc/hosts the test rewrites: the name's addresses
change under it, and the channel only learns of them by resolving again (on GOAWAY or
a failed connection, no sooner than ``--dns-min-ms`` after the last lookup). Prints
``{"ready": true, "pid": ...}``, then one JSON line per server process it has not
heard from before (``{"server": PID, "t": SECONDS}``, monotonic time), so the test
can see when each server got its first call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import grpc

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc


def _channel(kind: str, target: str, dns_min_ms: int) -> grpc.aio.Channel:
    options = [("grpc.lb_policy_name", "round_robin"),
               ("grpc.dns_min_time_between_resolutions_ms", dns_min_ms)]
    if kind == "grpc":
        return grpc.aio.insecure_channel(target, options=options)
    return rpc.insecure_channel(target, options=options)


async def _call_forever(target: str, kind: str, dns_min_ms: int) -> None:
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    seen: set[int] = set()
    request = echo_pb2.EchoMessage(payload=b"peer")
    async with _channel(kind, target, dns_min_ms) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        while True:
            try:
                reply = await stub.Unary(request, timeout=2)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
                continue
            pid = int(reply.payload.decode().rsplit("|", 1)[1])
            if pid not in seen:
                seen.add(pid)
                print(json.dumps({"server": pid, "t": time.monotonic()}), flush=True)
            await asyncio.sleep(0.01)    # a steady trickle, not a busy loop on 2 cores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--kind", choices=("lanerpc", "grpc"), required=True)
    parser.add_argument("--dns-min-ms", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(_call_forever(args.target, args.kind, args.dns_min_ms))


if __name__ == "__main__":
    main()
