"""Run in another "host" (network + mount namespace) by tests/e2e/test_tls_hosts.py:
calls a lanerpc TLS server with the client certificate named and prints what it saw
as one JSON line.

usage: python -m tests.e2e._tls_client TARGET CERT_DIR CLIENT  (CLIENT: a file stem, or none)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import rpc
from examples.echo import echo_pb2, echo_pb2_grpc


def _read(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


async def main() -> None:
    target, directory, client = sys.argv[1:4]
    key = chain = None
    if client != "none":
        key, chain = _read(directory, f"{client}.key"), _read(directory, f"{client}.pem")
    creds = rpc.ssl_channel_credentials(_read(directory, "ca.pem"), key, chain)
    replies, errors = [], []
    async with rpc.secure_channel(target, creds,
                                  options=[("grpc.ssl_target_name_override", "localhost")]
                                  ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for message in (b"a", b"b"):
            try:
                reply = await stub.Unary(echo_pb2.EchoMessage(payload=message), timeout=5)
                replies.append(reply.payload.decode())
            except rpc.AioRpcError as err:
                errors.append(f"{err.code().name}: {err.details()}")
        lane = channel.lane
    print(json.dumps({"lane": lane, "replies": replies, "errors": errors}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
