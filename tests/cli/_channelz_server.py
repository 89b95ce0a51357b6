"""A lanerpc server process for the command tests: Echo on 127.0.0.1:0 (and, with
``--channelz``, grpc's channelz service), served by ``rpc.serve_async`` (its signal
handling); prints its port once it serves."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import rpc  # noqa: E402
from tests._support import Echo, register  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channelz", action="store_true")
    args = parser.parse_args()
    server = rpc.server()
    register(server, Echo())
    if args.channelz:
        from grpc_channelz.v1 import channelz

        channelz.add_channelz_servicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)            # once it serves (and its file for lanerpc ps is written)
    await rpc.serve_async(server, grace=1)


if __name__ == "__main__":
    asyncio.run(main())
