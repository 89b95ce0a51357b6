"""``lanerpc health TARGET [SERVICE]``: grpc.health.v1's ``Check``; the exit status says
whether the server (or one of its services) is SERVING."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rpc._cli import _common

# The server answered, and not SERVING (the failed calls exit with their status codes,
# all other than 1 in practice: CANCELLED is not something a Check ends with).
EXIT_NOT_SERVING = 1

EPILOG = """\
examples:
  lanerpc health 127.0.0.1:50051                       the server as a whole
  lanerpc health 127.0.0.1:50051 helloworld.Greeter    one service
  until lanerpc health unix:/run/app/app.sock; do sleep 0.2; done

Prints the status the server answered (SERVING, NOT_SERVING, UNKNOWN). Exit status:
0 SERVING; 1 answered and not SERVING; else the failed call's status code: 14
UNAVAILABLE (nothing listening there), 12 UNIMPLEMENTED (no health service), 5
NOT_FOUND (the server doesn't know SERVICE), 4 DEADLINE_EXCEEDED (no answer in time).
"""


HELP = "ask a server's health service whether it is SERVING"
DESCRIPTION = ("Check a server's health (grpc.health.v1.Health/Check) and print the\n"
               "status; exit 0 only when it is SERVING.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common.add_target_argument(parser)
    parser.add_argument("service", metavar="SERVICE", nargs="?", default="",
                        help="a service's full name (default: the server as a whole)")
    _common.add_channel_arguments(parser, default_timeout=10.0)


def run(args: argparse.Namespace) -> int:
    return _common.run(_check(args))


async def _check(args: argparse.Namespace) -> int:
    async with _common.open_channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=args.service),
                                        timeout=args.timeout, metadata=_common.metadata(args))
        except grpc.RpcError as error:
            code = _common.print_rpc_error(error)
            if code == grpc.StatusCode.NOT_FOUND.value[0] and args.service:
                print(f"(the server's health service does not know {args.service})",
                      file=sys.stderr)
            return code
    status = response.status
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else EXIT_NOT_SERVING
