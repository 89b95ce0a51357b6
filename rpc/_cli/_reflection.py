"""A server reflection client (``grpc.reflection.v1alpha``, what grpc's
``enable_server_reflection`` serves) for lanerpc's channels, feeding a descriptor pool.

The server sends each file as a serialized ``FileDescriptorProto``; they are untrusted:
a bounded number of files is taken, each is parsed and built by protobuf's pool (which
checks it), and one that fails to parse or build ends the command with a message.
Nothing here is looked up in the process's default pool, so the server's files can't
clash with the ones lanerpc itself has loaded.
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import rpc
from rpc._cli._common import UsageError, metadata

# A server's files taken for one command at most (a service and everything it imports is a
# handful; this bounds what a server that keeps naming new dependencies can make us fetch).
MAX_FILES = 500
# The server sent descriptors that don't build (sysexits.h's EX_PROTOCOL).
EXIT_BAD_DESCRIPTORS = 76


class SymbolNotFound(UsageError):
    """The server's reflection doesn't know the symbol: exit 5, as a NOT_FOUND status."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=grpc.StatusCode.NOT_FOUND.value[0])


class Reflection:
    """One ``ServerReflectionInfo`` stream: ``async with Reflection(channel, args) as r``.

    ``services()`` lists the services; ``load(symbol)`` puts the file defining
    ``symbol`` (and the files it imports) into ``pool``. A failed stream raises
    ``grpc.aio.AioRpcError``; an unknown symbol :class:`SymbolNotFound`.
    """

    def __init__(self, channel: rpc.Channel | rpc.GrpcChannel, args: argparse.Namespace) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self._stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self._timeout: float | None = args.timeout
        self._metadata = metadata(args)
        self._call: Any = None
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}   # received
        self._built: set[str] = set()                                     # in the pool

    async def __aenter__(self) -> Reflection:
        self._call = self._stub.ServerReflectionInfo(timeout=self._timeout,
                                                     metadata=self._metadata)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._call is not None and not self._call.done():
            self._call.cancel()

    async def _ask(self, request: Any) -> Any:
        try:
            await self._call.write(request)
            response = await self._call.read()
            if response is aio.EOF:
                await self._call       # raises the status the server ended the stream with
                raise aio.AioRpcError(grpc.StatusCode.INTERNAL, aio.Metadata(), aio.Metadata(),
                                      "the reflection stream ended without an answer")
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            raise UsageError(
                "the server does not serve reflection (grpc.reflection.v1alpha): turn it on "
                "with grpc_reflection's enable_server_reflection, or `lanerpc serve "
                "--reflection`", code=grpc.StatusCode.UNIMPLEMENTED.value[0]) from None
        if response.HasField("error_response"):
            refusal = response.error_response
            if refusal.error_code == grpc.StatusCode.NOT_FOUND.value[0]:
                raise SymbolNotFound(f"{_what(request)} not found")
            raise UsageError(f"the server's reflection refused {_what(request)}: "
                             f"{refusal.error_message}")
        return response

    async def services(self) -> list[str]:
        response = await self._ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        return sorted(service.name for service in response.list_services_response.service)

    async def load(self, symbol: str) -> None:
        """Fetch the file defining ``symbol`` and build it (with its imports) into ``pool``."""
        response = await self._ask(
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        names = self._take(response)
        for name in names:
            await self._build(name, ())

    def _take(self, response: Any) -> list[str]:
        """Keep the files of a file_descriptor_response; return their names."""
        names = []
        for serialized in response.file_descriptor_response.file_descriptor_proto:
            if len(self._files) >= MAX_FILES:
                raise UsageError(f"the server sent more than {MAX_FILES} files",
                                 EXIT_BAD_DESCRIPTORS)
            proto = descriptor_pb2.FileDescriptorProto()
            try:
                proto.ParseFromString(serialized)
            except DecodeError as exc:
                raise UsageError(f"the server sent a file descriptor that doesn't parse: {exc}",
                                 EXIT_BAD_DESCRIPTORS) from None
            self._files.setdefault(proto.name, proto)
            names.append(proto.name)
        return names

    async def _build(self, name: str, importers: tuple[str, ...]) -> None:
        if name in self._built:
            return
        if name in importers:
            raise UsageError(f"the server's files import each other in a cycle: "
                             f"{' -> '.join((*importers, name))}", EXIT_BAD_DESCRIPTORS)
        if name not in self._files:
            response = await self._ask(reflection_pb2.ServerReflectionRequest(file_by_filename=name))
            self._take(response)
            if name not in self._files:
                raise UsageError(f"the server did not send {name}", EXIT_BAD_DESCRIPTORS)
        proto = self._files[name]
        for dependency in proto.dependency:
            await self._build(dependency, (*importers, name))
        try:
            self.pool.Add(proto)
        except Exception as exc:    # protobuf raises TypeError or its own errors on bad files
            raise UsageError(f"the server's {name} does not build: {exc}",
                             EXIT_BAD_DESCRIPTORS) from None
        self._built.add(name)

    async def service(self, name: str) -> descriptor.ServiceDescriptor:
        """The service ``name`` (loaded from the server)."""
        await self.load(name)
        try:
            return self.pool.FindServiceByName(name)
        except KeyError:
            raise SymbolNotFound(f"{name} is not a service") from None

    async def method(self, name: str) -> descriptor.MethodDescriptor:
        """``pkg.Service/Method`` or ``pkg.Service.Method``."""
        spelled = name.lstrip("/")
        service_name, slash, method_name = spelled.rpartition("/")
        if not slash:
            service_name, _, method_name = spelled.rpartition(".")
        if not service_name or not method_name:
            raise UsageError(f"{name!r}: expected a method as pkg.Service/Method")
        service = await self.service(service_name)
        method = service.methods_by_name.get(method_name)
        if method is None:
            raise SymbolNotFound(f"service {service_name} has no method {method_name}")
        return method


def _what(request: Any) -> str:
    """What a request asked for: ``symbol pkg.Service``, ``file a.proto``."""
    field = request.WhichOneof("message_request")
    kinds = {"file_containing_symbol": "symbol", "file_by_filename": "file"}
    return f"{kinds.get(field, field)} {getattr(request, field)}" if field else "an empty request"
