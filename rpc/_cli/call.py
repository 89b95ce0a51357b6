"""``lanerpc call TARGET pkg.Service/Method [JSON]``: one call, its request and responses
as JSON (protobuf's ``json_format``), the method's types read through server reflection
(as ``grpcurl``, whose error output it copies)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import os
import select
import sys
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor, json_format, message_factory
from google.protobuf.message import Message

import rpc
from rpc._cli import _common
from rpc._cli._common import UsageError
from rpc._cli._reflection import Reflection

EPILOG = """\
examples:
  lanerpc call 127.0.0.1:50051 helloworld.Greeter/SayHello '{"name": "you"}'
  echo '{"name": "you"}' | lanerpc call 127.0.0.1:50051 helloworld.Greeter/SayHello
  lanerpc call -d @request.json -H authorization:'Bearer t0k3n' --timeout 2 \\
      unix:/run/app/app.sock helloworld.Greeter/SayHello
  printf '{"payload": "YQ=="}\\n{"payload": "Yg=="}\\n' | \\
      lanerpc call 127.0.0.1:50051 echo.Echo/ClientStream       one request per line
  lanerpc call -v 127.0.0.1:50051 helloworld.Greeter/SayHello '{}'   lane, headers, trailers

The request: JSON given as an argument, -d JSON, -d @FILE, or on stdin (without one,
or -d @-). A method taking a stream of requests reads one JSON object per line, sending
each line as it arrives. Each response is printed as JSON on a line of its own.

Exit status: the call's status code (0 OK, 4 DEADLINE_EXCEEDED, 14 UNAVAILABLE, ...;
the error printed on stderr as grpcurl prints it); 5 NOT_FOUND also when the server has
no such method, 12 UNIMPLEMENTED when it serves no reflection; 64 for bad input
(arguments, JSON).
"""

_READ_SIZE = 64 * 1024


HELP = "call a method, with its request and responses as JSON"
DESCRIPTION = ("Call METHOD on TARGET: the request is JSON, each response is printed\n"
               "as JSON; the method's types come from the server's reflection service.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common.add_target_argument(parser)
    parser.add_argument("method", metavar="METHOD", help="pkg.Service/Method")
    parser.add_argument("data", metavar="JSON", nargs="?", help="the request (default: stdin)")
    parser.add_argument("-d", "--data", dest="data_flag", metavar="DATA",
                        help="the request: JSON, @FILE, or @- for stdin")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the lane, the response headers and trailers on stderr")
    parser.add_argument("--emit-defaults", action="store_true",
                        help="print fields that hold their default value too")
    _common.add_channel_arguments(parser, default_timeout=None)


def run(args: argparse.Namespace) -> int:
    if args.data is not None and args.data_flag is not None:
        raise UsageError("the request is given twice: as JSON and with -d")
    return _common.run(_call(args))


class _Input:
    """Where the requests come from: text given (an argument or a file), or stdin."""

    def __init__(self, spec: str | None) -> None:
        self.text: str | None = None            # None: read stdin
        if spec is None or spec == "@-":
            return
        if spec.startswith("@"):
            try:
                with open(spec[1:], encoding="utf-8") as file:
                    self.text = file.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"-d {spec}: {getattr(exc, 'strerror', None) or exc}") from None
        else:
            self.text = spec

    def whole(self) -> str:
        """All of it, for a method taking one request."""
        if self.text is None:
            self._hint()
            return sys.stdin.buffer.read().decode("utf-8", errors="replace")
        return self.text

    async def lines(self) -> AsyncIterator[str]:
        """One request per line, each as it arrives, for a method taking a stream."""
        if self.text is not None:
            for line in self.text.splitlines():
                yield line
            return
        self._hint()
        async for line in _stdin_lines():
            yield line

    @staticmethod
    def _hint() -> None:
        if sys.stdin.isatty():
            print("(reading the request from stdin: JSON, then Ctrl-D)", file=sys.stderr)


async def _stdin_lines() -> AsyncIterator[str]:
    """stdin's lines, read as they come without blocking the loop (a pipe or a terminal
    is watched by the loop; a file or /dev/null, which never block, is read directly)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    readable = asyncio.Event()
    try:
        loop.add_reader(fd, readable.set)
        watched = True
    except (OSError, ValueError):
        watched = False
    pending = b""
    try:
        while True:
            if watched:
                await readable.wait()
                readable.clear()
                # The event may be stale (set again in the loop turn that already read
                # the bytes); stdin can't be made non-blocking (its terminal or pipe is
                # shared with the shell), so ask before reading.
                if not select.select([fd], [], [], 0)[0]:
                    continue
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace")
        if pending:
            yield pending.decode("utf-8", errors="replace")
    finally:
        if watched:
            loop.remove_reader(fd)


class _Codec:
    """JSON <-> the method's messages, with the types the server described."""

    def __init__(self, method: descriptor.MethodDescriptor, pool: Any, emit_defaults: bool) -> None:
        self.request_class = message_factory.GetMessageClass(method.input_type)
        self.response_class = message_factory.GetMessageClass(method.output_type)
        self._pool = pool
        self._emit_defaults = emit_defaults

    def request(self, text: str, where: str) -> Message:
        message = self.request_class()
        if not text.strip():
            return message
        try:
            json_format.Parse(text, message, descriptor_pool=self._pool)
        except json_format.ParseError as exc:
            raise UsageError(f"{where} is not a {message.DESCRIPTOR.full_name}: {exc}") from None
        return message

    def print(self, response: Message) -> None:
        print(json_format.MessageToJson(
            response, indent=None, descriptor_pool=self._pool, ensure_ascii=False,
            always_print_fields_with_no_presence=self._emit_defaults), flush=True)


async def _call(args: argparse.Namespace) -> int:
    source = _Input(args.data if args.data is not None else args.data_flag)
    async with _common.open_channel(args) as channel:
        try:
            async with Reflection(channel, args) as reflection:
                method = await reflection.method(args.method)
            codec = _Codec(method, reflection.pool, args.emit_defaults)
            path = f"/{method.containing_service.full_name}/{method.name}"
            return await _invoke(channel, path, method, codec, source, args)
        except grpc.RpcError as error:
            if args.verbose:
                await _print_verbose(channel, error)
            return _common.print_rpc_error(error)


async def _invoke(channel: rpc.Channel | rpc.GrpcChannel, path: str,
                  method: descriptor.MethodDescriptor, codec: _Codec, source: _Input,
                  args: argparse.Namespace) -> int:
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    multicallable: Any = kind[method.client_streaming, method.server_streaming](
        path, request_serializer=codec.request_class.SerializeToString,
        response_deserializer=codec.response_class.FromString)
    call_kwargs: dict[str, Any] = {"metadata": _common.metadata(args), "timeout": args.timeout}
    if not method.client_streaming:
        request = codec.request(source.whole(), "the request")
        call = multicallable(request, **call_kwargs)
        feeder = None
    else:
        call = multicallable(**call_kwargs)
        feeder = asyncio.ensure_future(_feed(call, codec, source))
    try:
        if method.server_streaming:
            async for response in call:
                codec.print(response)
        else:
            codec.print(await call)
    except (asyncio.CancelledError, grpc.RpcError):
        _settle(feeder)
        raise
    _settle(feeder)
    if args.verbose:
        await _print_verbose(channel, call)
    return 0


async def _feed(call: Any, codec: _Codec, source: _Input) -> None:
    """Write each line of the input as a request; a line that isn't one cancels the call."""
    number = 0
    async for line in source.lines():
        if not line.strip():
            continue
        number += 1
        try:
            request = codec.request(line, f"request {number}")
        except UsageError:
            call.cancel()
            raise
        await call.write(request)
    await call.done_writing()


def _settle(feeder: asyncio.Future[None] | None) -> None:
    """Once the call has ended: stop feeding it (a server may answer before the input
    ends, and stdin may stay open), and if a request line was bad, raise that: it is
    why the call ended. A write that failed because the call had ended says nothing
    the call's own status doesn't."""
    if feeder is None:
        return
    if not feeder.done():
        feeder.cancel()
    elif not feeder.cancelled():
        error = feeder.exception()
        if isinstance(error, UsageError):
            raise error


async def _print_verbose(channel: rpc.Channel | rpc.GrpcChannel, call: Any) -> None:
    """The lane the call went on, and its metadata, on stderr (``call``: a finished call,
    or the ``AioRpcError`` it raised)."""
    headers, trailers = call.initial_metadata(), call.trailing_metadata()
    if inspect.isawaitable(headers):
        headers, trailers = await headers, await trailers
    lines = [f"lane: {channel.lane}", "", "Response headers received:", *_metadata_lines(headers),
             "", "Response trailers received:", *_metadata_lines(trailers), ""]
    print("\n".join(lines), file=sys.stderr)


def _metadata_lines(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[str]:
    pairs = list(metadata or ())
    if not pairs:
        return ["(empty)"]
    return [f"{key}: {base64.b64encode(value).decode() if isinstance(value, bytes) else value}"
            for key, value in pairs]
