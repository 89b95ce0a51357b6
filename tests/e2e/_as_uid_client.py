"""Makes one call as another uid (started as root by tests/e2e/test_unix_lane.py).

Everything is imported while still root; only then does the process drop to the
uid, so the unix lane's SO_PEERCRED check sees that uid.

usage: python -m tests.e2e._as_uid_client UID TARGET
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import grpc  # noqa: F401  (imported before the uid drop)

import rpc
from examples.helloworld import helloworld_pb2, helloworld_pb2_grpc


async def call(target: str) -> dict:
    async with rpc.insecure_channel(target) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        try:
            reply = await stub.SayHello(helloworld_pb2.HelloRequest(name="x"), timeout=5)
        except rpc.AioRpcError as err:
            return {"code": err.code().name, "details": err.details()}
        return {"code": "OK", "reply": reply.message}


def main() -> None:
    uid, target = int(sys.argv[1]), sys.argv[2]
    loop = asyncio.new_event_loop()
    os.setgid(uid)
    os.setuid(uid)
    result = loop.run_until_complete(call(target))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
