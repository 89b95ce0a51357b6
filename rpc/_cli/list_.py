"""``lanerpc list TARGET [SERVICE]``: the services a server offers, or one service's
methods, read through server reflection (as ``grpcurl list``)."""

from __future__ import annotations

import argparse

import grpc

from rpc._cli import _common
from rpc._cli._reflection import Reflection

EPILOG = """\
examples:
  lanerpc list 127.0.0.1:50051                      every service, one per line
  lanerpc list 127.0.0.1:50051 helloworld.Greeter   its methods: helloworld.Greeter.SayHello ...
  lanerpc list unix:/run/app/app.sock

The server must serve reflection (grpc_reflection's enable_server_reflection, or
`lanerpc serve --reflection`). Exit status: 0, or the failed call's status code
(12 UNIMPLEMENTED: no reflection service; 5 NOT_FOUND: no such service; 14 UNAVAILABLE).
"""


HELP = "list the services of a server, or the methods of one"
DESCRIPTION = ("List a server's services (one full name per line), or with SERVICE\n"
               "that service's methods, through server reflection.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common.add_target_argument(parser)
    parser.add_argument("service", metavar="SERVICE", nargs="?",
                        help="a service's full name (pkg.Service)")
    _common.add_channel_arguments(parser, default_timeout=10.0)


def run(args: argparse.Namespace) -> int:
    return _common.run(_list(args))


async def _list(args: argparse.Namespace) -> int:
    async with _common.open_channel(args) as channel:
        try:
            async with Reflection(channel, args) as reflection:
                if args.service is None:
                    lines = await reflection.services()
                else:
                    service = await reflection.service(args.service)
                    lines = [method.full_name for method in service.methods]
        except grpc.RpcError as error:
            return _common.print_rpc_error(error)
    for line in lines:
        print(line)
    return 0
