"""A deadline storm from its own process (uvloop when installed, as fast as a client can
go): ``python -m tests.e2e._storm_client TARGET CALLERS SECONDS`` makes CALLERS callers
call Unary(b"sleep:20") with deadlines of 5-50 ms for SECONDS, then measures how long a
fresh call takes, and prints one JSON line: the status counts and ``fresh_s``."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import grpc  # noqa: E402

import rpc  # noqa: E402
from examples.echo import echo_pb2, echo_pb2_grpc  # noqa: E402


async def storm(target: str, callers: int, seconds: float) -> dict[str, object]:
    async with rpc.insecure_channel(target, options=[("lanerpc.lanes", "tcp")]) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Unary(echo_pb2.EchoMessage(payload=b"warm"), timeout=5)
        stop = time.monotonic() + seconds
        codes: dict[str, int] = {}

        async def caller(rng: random.Random) -> None:
            while time.monotonic() < stop:
                try:
                    await stub.Unary(echo_pb2.EchoMessage(payload=b"sleep:20"),
                                     timeout=rng.uniform(0.005, 0.05))
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1

        await asyncio.gather(*(caller(random.Random(i)) for i in range(callers)))
        started = time.monotonic()
        fresh = None
        while fresh is None and time.monotonic() - started < 20:
            try:
                await stub.Unary(echo_pb2.EchoMessage(payload=b"fresh"), timeout=0.5)
                fresh = time.monotonic() - started
            except grpc.aio.AioRpcError:
                pass
        return {"codes": codes, "fresh_s": fresh}


def main() -> None:
    target, callers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        import uvloop
        result = uvloop.run(storm(target, callers, seconds))
    except ImportError:
        result = asyncio.run(storm(target, callers, seconds))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
