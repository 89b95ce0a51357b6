"""``python -m examples.route_guide``: the server and the client in one command. Starts
the server (``examples.route_guide.server``) on a free port as a child process, runs
the client against it, then stops the server by its pid (SIGTERM: a graceful stop)."""

from __future__ import annotations

import asyncio
import sys

from examples.route_guide import client


async def main() -> int:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.route_guide.server", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE)
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip()
        if not line.startswith("listening on "):
            print(f"the server did not start: {line!r}", file=sys.stderr)
            return 1
        await client.main(line.removeprefix("listening on "))
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 10)
            except asyncio.TimeoutError:
                server.kill()
                await server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
