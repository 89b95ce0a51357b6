"""What tests/cli/test_serve.py gives ``lanerpc serve`` as MODULE:ATTR, one of each form."""

from __future__ import annotations

from typing import Any

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo

NOT_A_SERVICER = 42


class NeedsArguments(Echo):
    def __init__(self, database: str) -> None:
        super().__init__()


def configure(server: Any) -> None:
    """The one-argument form: add servicers to the server given."""
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)


def make_servicers() -> list[Echo]:
    """The factory form, returning servicers."""
    return [Echo()]


async def make_servicer_async() -> Echo:
    """An async factory, awaited in the server's loop."""
    return Echo()


def make_server() -> rpc.Server:
    """The factory form, returning a server of its own."""
    server = rpc.server()
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    return server
