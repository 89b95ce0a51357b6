"""A keepalive test's other process, on grpc.aio or lanerpc, to be frozen with SIGSTOP.

    python -m tests.e2e._keepalive_peer server --impl grpc|lanerpc [--option name=value]
    python -m tests.e2e._keepalive_peer client TARGET --impl grpc|lanerpc [--option ...]

``server`` serves the tests' Echo on 127.0.0.1 and prints ``{"ready": true, "port":
..., "pid": ...}``. ``client`` opens a channel to TARGET, starts one call that goes
quiet (Echo's ``stream:2:600000``: one message, then ten minutes of silence; grpc.aio
holds a unary handler's initial metadata back) and prints ``{"ready": true, "pid":
...}`` once that message is in: from then on it has a call in flight and sends
nothing. Both run until killed by pid
(:class:`KeepalivePeer`, stopped with SIGCONT + SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import grpc  # noqa: E402

import rpc  # noqa: E402
from examples.echo import echo_pb2, echo_pb2_grpc  # noqa: E402
from tests._support import Echo  # noqa: E402
from tests.e2e._server_proc import ServerProc, _parse_option  # noqa: E402

# Echo's ServerStream: one message, then nothing for ten minutes.
QUIET_STREAM = b"stream:2:600000"


async def _serve(impl: str, options: list) -> None:
    make = grpc.aio.server if impl == "grpc" else rpc.server
    server = make(options=options)
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"ready": True, "port": port, "pid": os.getpid()}), flush=True)
    await asyncio.Event().wait()


async def _hold_a_call(impl: str, target: str, options: list) -> None:
    make = grpc.aio.insecure_channel if impl == "grpc" else rpc.insecure_channel
    channel = make(target, options=options)
    call = echo_pb2_grpc.EchoStub(channel).ServerStream(
        echo_pb2.EchoMessage(payload=QUIET_STREAM), timeout=600)
    await asyncio.wait_for(call.read(), 10)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("target", nargs="?")
    parser.add_argument("--impl", choices=["grpc", "lanerpc"], required=True)
    parser.add_argument("--option", action="append", default=[], help="name=value, repeatable")
    args = parser.parse_args()
    options = [_parse_option(o) for o in args.option]
    if args.role == "server":
        asyncio.run(_serve(args.impl, options))
    else:
        asyncio.run(_hold_a_call(args.impl, args.target, options))


class KeepalivePeer(ServerProc):
    """This script as a child process, stopped by its pid."""

    module = "tests.e2e._keepalive_peer"


if __name__ == "__main__":
    main()
