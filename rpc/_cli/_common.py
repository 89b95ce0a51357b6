"""What the client subcommands share: the channel flags (TLS, metadata, timeout), the
exit codes, grpcurl's way of printing a failed call, and running a coroutine.

Errors a user can cause (a bad flag, bad JSON, a method the server lacks) are raised as
:class:`UsageError` and printed as one line by ``main``; a failed call is printed as
grpcurl prints it and its status code becomes the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import sys
from collections.abc import Coroutine
from typing import Any

import grpc
from grpc import aio

import rpc

# Exit codes besides the gRPC status codes (0 OK ... 16 UNAUTHENTICATED), which a failed
# call exits with: bad input of any kind, as sysexits.h's EX_USAGE, clear of 0..16.
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130     # Ctrl-C, as a shell reports SIGINT

# grpc-go's names for the codes, which grpcurl prints ("Code: NotFound").
_GO_NAMES = {grpc.StatusCode.CANCELLED: "Canceled"}


class UsageError(Exception):
    """Bad input: printed as ``lanerpc: <message>``, exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def code_name(code: grpc.StatusCode) -> str:
    """``NOT_FOUND`` -> ``NotFound``, as grpcurl prints a status code."""
    return _GO_NAMES.get(code) or "".join(part.capitalize() for part in code.name.split("_"))


def print_rpc_error(error: grpc.RpcError) -> int:
    """Print a failed call as grpcurl does, on stderr; return its status code."""
    code = error.code() if isinstance(error, aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, aio.AioRpcError) else str(error)
    print(f"ERROR:\n  Code: {code_name(code)}\n  Message: {details or ''}", file=sys.stderr)
    return int(code.value[0])


def add_target_argument(parser: argparse.ArgumentParser) -> None:
    """The server a client subcommand talks to: its first positional argument."""
    parser.add_argument("target", metavar="TARGET",
                        help="host:port, unix:/path, grpc://host:port (plain gRPC), ...")


def add_channel_arguments(parser: argparse.ArgumentParser, *, default_timeout: float | None) -> None:
    """The flags every client subcommand takes: TLS, metadata, timeout."""
    connection = parser.add_argument_group("connection")
    connection.add_argument(
        "--timeout", type=_seconds, default=default_timeout, metavar="SECONDS",
        help="the call's deadline" + (f" (default {default_timeout:g})" if default_timeout
                                      else " (default: none)"))
    connection.add_argument(
        "-H", "--header", action="append", default=[], dest="headers", metavar="KEY:VALUE",
        help="metadata sent with the call (repeatable); a -bin key's value is base64")
    tls = parser.add_argument_group(
        "TLS", "plaintext unless one of these is given; the same arguments as "
               "rpc.ssl_channel_credentials")
    tls.add_argument("--tls", action="store_true",
                     help="TLS, checking the server's certificate against the system's roots "
                          "(or --cacert)")
    tls.add_argument("--cacert", metavar="FILE", help="PEM roots to check the server's certificate")
    tls.add_argument("--cert", metavar="FILE", help="PEM client certificate chain (mutual TLS)")
    tls.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    tls.add_argument("--authority", "--servername", metavar="NAME", dest="authority",
                     help="the name the server's certificate must carry, also sent as SNI "
                          "(grpc.ssl_target_name_override); default: the target's host")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def metadata(args: argparse.Namespace) -> tuple[tuple[str, str | bytes], ...]:
    """``-H key:value`` flags as call metadata (keys lower-cased, ``-bin`` values decoded)."""
    pairs: list[tuple[str, str | bytes]] = []
    for header in args.headers:
        key, sep, value = header.partition(":")
        key = key.strip().lower()
        if not sep or not key:
            raise UsageError(f"-H {header!r}: expected KEY:VALUE")
        value = value.strip()
        if key.endswith("-bin"):
            try:
                pairs.append((key, base64.b64decode(value, validate=True)))
            except binascii.Error:
                raise UsageError(f"-H {key}: a -bin value must be base64") from None
        else:
            pairs.append((key, value))
    return tuple(pairs)


_TLS_FLAGS = {"root_certificates": "--cacert", "private_key": "--key",
              "certificate_chain": "--cert"}


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror}") from None


def open_channel(args: argparse.Namespace) -> rpc.Channel | rpc.GrpcChannel:
    """The channel the flags ask for: plaintext, or TLS with ``rpc.ssl_channel_credentials``
    (a ``grpc://`` target goes through grpcio, as with ``rpc.insecure_channel``)."""
    secure = args.tls or args.cacert or args.cert or args.key
    if args.authority and not secure:
        raise UsageError("--authority names the server's certificate: it needs TLS "
                         "(--tls or --cacert)")
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together")
    if not secure:
        try:
            return rpc.insecure_channel(args.target)
        except ValueError as exc:        # a target lanerpc can't parse
            raise UsageError(f"{args.target}: {exc}") from None
    try:
        credentials = rpc.ssl_channel_credentials(
            _read(args.cacert, "--cacert") if args.cacert else None,
            _read(args.key, "--key") if args.key else None,
            _read(args.cert, "--cert") if args.cert else None)
    except ValueError as exc:            # not PEM: named by the argument, say which flag
        message = str(exc)
        for argument, flag in _TLS_FLAGS.items():
            message = message.replace(argument, flag)
        raise UsageError(message) from None
    options = [("grpc.ssl_target_name_override", args.authority)] if args.authority else []
    try:
        return rpc.secure_channel(args.target, credentials, options=options)
    except ValueError as exc:
        raise UsageError(f"{args.target}: {exc}") from None


def run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run a subcommand's coroutine to its exit code."""
    return asyncio.run(coroutine)
