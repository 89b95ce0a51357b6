"""A lanerpc server on plain asyncio whose file limit leaves room for a few
connections only (tests/e2e/test_accept_errors.py). Prints its port, serves until a
line arrives on stdin, then stops."""

from __future__ import annotations

import asyncio
import os
import resource
import sys

import rpc
from tests._support import Echo, register

ROOM = 6     # descriptors left over for connections


async def main() -> None:
    server = rpc.server()
    register(server, Echo())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + ROOM, hard))
    print(port, flush=True)
    await reader.readline()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
