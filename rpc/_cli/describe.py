"""``lanerpc describe TARGET [SYMBOL]``: a service, method, message or enum as a proto
definition, read through server reflection (as ``grpcurl describe``)."""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2

from rpc._cli import _common
from rpc._cli._common import UsageError
from rpc._cli._reflection import Reflection, SymbolNotFound

EPILOG = """\
examples:
  lanerpc describe 127.0.0.1:50051                              every service
  lanerpc describe 127.0.0.1:50051 helloworld.Greeter           a service
  lanerpc describe 127.0.0.1:50051 helloworld.Greeter.SayHello  a method (or .../SayHello)
  lanerpc describe 127.0.0.1:50051 helloworld.HelloRequest      a message (or an enum)

Type names are printed fully qualified, with a leading dot, as grpcurl does. Exit
status: 0, or the failed call's status code (5 NOT_FOUND: the server has no such
symbol; 12 UNIMPLEMENTED: no reflection service; 14 UNAVAILABLE).
"""

_INDENT = "  "


HELP = "show a service, method, message or enum as a proto definition"
DESCRIPTION = ("Describe SYMBOL (a service, a method, a message or an enum, by its\n"
               "full name) as a proto definition, or every service without SYMBOL,\n"
               "through server reflection.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common.add_target_argument(parser)
    parser.add_argument("symbol", metavar="SYMBOL", nargs="?",
                        help="pkg.Service, pkg.Service.Method, pkg.Message, pkg.Enum")
    _common.add_channel_arguments(parser, default_timeout=10.0)


def run(args: argparse.Namespace) -> int:
    return _common.run(_describe(args))


async def _describe(args: argparse.Namespace) -> int:
    async with _common.open_channel(args) as channel:
        try:
            async with Reflection(channel, args) as reflection:
                if args.symbol is None:
                    symbols = await reflection.services()
                else:
                    symbols = [args.symbol.lstrip(".")]
                blocks = [await _one(reflection, symbol) for symbol in symbols]
        except grpc.RpcError as error:
            return _common.print_rpc_error(error)
    print("\n".join(blocks), end="")
    return 0


async def _one(reflection: Reflection, symbol: str) -> str:
    """``symbol`` described: a header line, then its definition."""
    if "/" in symbol:                        # pkg.Service/Method, as `call` spells it
        method = await reflection.method(symbol)
        return f"{method.full_name} is a method:\n{_method(method)}\n"
    try:
        await reflection.load(symbol)
    except SymbolNotFound as not_found:
        # Perhaps a method's full name (grpc's reflection may know only its service).
        try:
            method = await reflection.method(symbol)
        except UsageError:
            raise not_found from None
        return f"{method.full_name} is a method:\n{_method(method)}\n"
    pool = reflection.pool
    finders: list[tuple[str, Any]] = [
        ("a service", pool.FindServiceByName), ("a message", pool.FindMessageTypeByName),
        ("an enum", pool.FindEnumTypeByName), ("a method", pool.FindMethodByName)]
    for kind, find in finders:
        try:
            found = find(symbol)
        except KeyError:
            continue
        return f"{symbol} is {kind}:\n{_render(found)}"
    raise SymbolNotFound(f"symbol {symbol} is not a service, method, message or enum")


def _render(found: Any) -> str:
    if isinstance(found, descriptor.ServiceDescriptor):
        lines = [f"service {found.name} {{"]
        lines += [_INDENT + _method(method) for method in found.methods]
        return "\n".join([*lines, "}"]) + "\n"
    if isinstance(found, descriptor.MethodDescriptor):
        return _method(found) + "\n"
    syntax = _syntax(found.file)
    if isinstance(found, descriptor.Descriptor):
        proto = descriptor_pb2.DescriptorProto()
        found.CopyToProto(proto)
        return "\n".join(_message(proto, syntax, "")) + "\n"
    proto_enum = descriptor_pb2.EnumDescriptorProto()
    found.CopyToProto(proto_enum)
    return "\n".join(_enum(proto_enum, "")) + "\n"


def _syntax(file: descriptor.FileDescriptor) -> str:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto.syntax or "proto2"


def _method(method: descriptor.MethodDescriptor) -> str:
    request = f"stream .{method.input_type.full_name}" if method.client_streaming \
        else f".{method.input_type.full_name}"
    response = f"stream .{method.output_type.full_name}" if method.server_streaming \
        else f".{method.output_type.full_name}"
    return f"rpc {method.name} ( {request} ) returns ( {response} );"


_F = descriptor_pb2.FieldDescriptorProto


def _type_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type in (_F.TYPE_MESSAGE, _F.TYPE_ENUM, _F.TYPE_GROUP):
        return field.type_name
    return _F.Type.Name(field.type).removeprefix("TYPE_").lower()


def _message(proto: descriptor_pb2.DescriptorProto, syntax: str, indent: str) -> list[str]:
    inner = indent + _INDENT
    maps = {f".{proto.name}.{entry.name}": entry for entry in proto.nested_type
            if entry.options.map_entry}
    lines = [f"{indent}message {proto.name} {{"]
    oneofs_done: set[int] = set()
    for field in proto.field:
        in_oneof = field.HasField("oneof_index") and not field.proto3_optional
        if in_oneof:
            if field.oneof_index in oneofs_done:
                continue
            oneofs_done.add(field.oneof_index)
            lines.append(f"{inner}oneof {proto.oneof_decl[field.oneof_index].name} {{")
            lines += [inner + _INDENT + _field(member, syntax, maps) for member in proto.field
                      if member.HasField("oneof_index") and member.oneof_index == field.oneof_index]
            lines.append(f"{inner}}}")
        else:
            lines.append(inner + _field(field, syntax, maps))
    for nested in proto.nested_type:
        if not nested.options.map_entry:
            lines += _message(nested, syntax, inner)
    for nested_enum in proto.enum_type:
        lines += _enum(nested_enum, inner)
    return [*lines, f"{indent}}}"]


def _field(field: descriptor_pb2.FieldDescriptorProto, syntax: str,
           maps: dict[str, descriptor_pb2.DescriptorProto]) -> str:
    entry = next((e for suffix, e in maps.items() if field.type_name.endswith(suffix)), None) \
        if field.label == _F.LABEL_REPEATED and field.type == _F.TYPE_MESSAGE else None
    if entry is not None:
        key, value = entry.field[0], entry.field[1]
        kind = f"map<{_type_name(key)}, {_type_name(value)}>"
    else:
        label = ""
        if field.label == _F.LABEL_REPEATED:
            label = "repeated "
        elif field.label == _F.LABEL_REQUIRED:
            label = "required "
        elif field.proto3_optional or (syntax == "proto2" and not field.HasField("oneof_index")):
            label = "optional "
        kind = label + _type_name(field)
    return f"{kind} {field.name} = {field.number};"


def _enum(proto: descriptor_pb2.EnumDescriptorProto, indent: str) -> list[str]:
    lines = [f"{indent}enum {proto.name} {{"]
    lines += [f"{indent}{_INDENT}{value.name} = {value.number};" for value in proto.value]
    return [*lines, f"{indent}}}"]
