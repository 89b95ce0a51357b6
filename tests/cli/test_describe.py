"""``lanerpc describe``: services, methods, messages and enums as proto definitions."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2, timestamp_pb2

from tests._support import Echo, serve
from tests.cli._cli import ECHO, assert_no_traceback, cli, with_reflection

# In this process's pool, so its reflection serves them.
assert struct_pb2 and timestamp_pb2
_F = descriptor_pb2.FieldDescriptorProto


def _shapes_file() -> descriptor_pb2.FileDescriptorProto:
    """A proto3 file with what a definition can hold: an optional field, a oneof, a map
    (of a type from another file), a nested message and enum, a repeated field."""
    file = descriptor_pb2.FileDescriptorProto(
        name="tests/cli/shapes.proto", package="clitest", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"])
    shape = file.message_type.add(name="Shape")
    shape.oneof_decl.add(name="kind")
    shape.oneof_decl.add(name="_nickname")      # synthetic oneofs come last
    optional = _F.LABEL_OPTIONAL
    shape.field.add(name="name", number=1, type=_F.TYPE_STRING, label=optional)
    shape.field.add(name="nickname", number=2, type=_F.TYPE_STRING, label=optional,
                    proto3_optional=True, oneof_index=1)
    shape.field.add(name="radius", number=3, type=_F.TYPE_DOUBLE, label=optional, oneof_index=0)
    shape.field.add(name="side", number=4, type=_F.TYPE_MESSAGE, label=optional,
                    type_name=".clitest.Shape.Side", oneof_index=0)
    shape.field.add(name="seen", number=5, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                    type_name=".clitest.Shape.SeenEntry")
    shape.field.add(name="colors", number=6, type=_F.TYPE_ENUM, label=_F.LABEL_REPEATED,
                    type_name=".clitest.Shape.Color")
    side = shape.nested_type.add(name="Side")
    side.field.add(name="length", number=1, type=_F.TYPE_DOUBLE, label=optional)
    entry = shape.nested_type.add(name="SeenEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=optional,
                    type_name=".google.protobuf.Timestamp")
    color = shape.enum_type.add(name="Color")
    color.value.add(name="RED", number=0)
    color.value.add(name="BLUE", number=1)
    return file


descriptor_pool.Default().Add(_shapes_file())

SERVICE = f"""\
{ECHO} is a service:
service Echo {{
  rpc Unary ( .lanerpc.echo.EchoMessage ) returns ( .lanerpc.echo.EchoMessage );
  rpc ServerStream ( .lanerpc.echo.EchoMessage ) returns ( stream .lanerpc.echo.EchoMessage );
  rpc ClientStream ( stream .lanerpc.echo.EchoMessage ) returns ( .lanerpc.echo.EchoMessage );
  rpc Bidi ( stream .lanerpc.echo.EchoMessage ) returns ( stream .lanerpc.echo.EchoMessage );
}}
"""


async def describe(*args: str):
    async with serve(Echo(), with_reflection) as served:
        return await cli("describe", served.target, *args)


async def test_a_service():
    result = await describe(ECHO)
    assert (result.code, result.err) == (0, "")
    assert result.out == SERVICE


async def test_without_a_symbol_every_service():
    result = await describe()
    assert result.code == 0
    assert SERVICE in result.out
    assert "grpc.reflection.v1alpha.ServerReflection is a service:" in result.out


@pytest.mark.parametrize("spelling", [f"{ECHO}.Bidi", f"{ECHO}/Bidi"])
async def test_a_method_either_spelling(spelling):
    result = await describe(spelling)
    assert result.code == 0
    assert result.out == (f"{ECHO}.Bidi is a method:\n"
                          "rpc Bidi ( stream .lanerpc.echo.EchoMessage ) returns "
                          "( stream .lanerpc.echo.EchoMessage );\n")


async def test_messages_with_maps_oneofs_and_repeated_fields():
    result = await describe("lanerpc.echo.EchoMessage")
    assert result.out == "lanerpc.echo.EchoMessage is a message:\nmessage EchoMessage {\n  bytes payload = 1;\n}\n"
    result = await describe("google.protobuf.Struct")
    assert result.out == ("google.protobuf.Struct is a message:\nmessage Struct {\n"
                          "  map<string, .google.protobuf.Value> fields = 1;\n}\n")
    result = await describe("google.protobuf.Value")
    assert result.out == """\
google.protobuf.Value is a message:
message Value {
  oneof kind {
    .google.protobuf.NullValue null_value = 1;
    double number_value = 2;
    string string_value = 3;
    bool bool_value = 4;
    .google.protobuf.Struct struct_value = 5;
    .google.protobuf.ListValue list_value = 6;
  }
}
"""
    result = await describe("google.protobuf.ListValue")
    assert "  repeated .google.protobuf.Value values = 1;\n" in result.out


async def test_a_proto3_message_with_everything():
    result = await describe("clitest.Shape")
    assert (result.code, result.err) == (0, "")
    assert result.out == """\
clitest.Shape is a message:
message Shape {
  string name = 1;
  optional string nickname = 2;
  oneof kind {
    double radius = 3;
    .clitest.Shape.Side side = 4;
  }
  map<string, .google.protobuf.Timestamp> seen = 5;
  repeated .clitest.Shape.Color colors = 6;
  message Side {
    double length = 1;
  }
  enum Color {
    RED = 0;
    BLUE = 1;
  }
}
"""


async def test_proto2_labels_nested_types_and_enums():
    result = await describe("google.protobuf.GeneratedCodeInfo.Annotation")
    assert result.code == 0
    assert "  optional string source_file = 2;\n" in result.out
    assert "  enum Semantic {\n    NONE = 0;\n" in result.out
    result = await describe("google.protobuf.NullValue")
    assert result.out == "google.protobuf.NullValue is an enum:\nenum NullValue {\n  NULL_VALUE = 0;\n}\n"


async def test_an_unknown_symbol_is_not_found():
    result = await describe("no.such.Thing")
    assert result.code == 5
    assert result.err == "lanerpc describe: symbol no.such.Thing not found\n"
    assert_no_traceback(result)
