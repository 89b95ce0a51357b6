"""A spawned worker for the pipe lane's tests: the test Echo service over stdin/stdout.

Each Unary call prints a line to stdout (fd 1 and sys.stdout), which must land on
stderr, not in the wire."""

from __future__ import annotations

import argparse
import os
import sys

import rpc
from tests._support import Echo, register


class NoisyEcho(Echo):
    async def Unary(self, request, context):
        print(f"worker: Unary {request.payload[:16]!r}")      # sys.stdout
        os.write(1, b"worker: fd 1\n")                       # what C code would do
        return await super().Unary(request, context)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lanes", default=None)
    args = parser.parse_args()
    options = [("lanerpc.lanes", args.lanes)] if args.lanes else None
    server = rpc.server(options=options)
    register(server, NoisyEcho())
    rpc.serve_stdio(server)
    print("worker: stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
