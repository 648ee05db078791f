"""Protobuf messages of a registry's schema read into plain records, without generated code (``extra: kafka``).

A schema id's descriptors go into a pool of its own (two versions of a subject define the same message names):
the registry's text is either a serialized ``FileDescriptorProto`` (base64: what Confluent's serializers register,
and what Confluent's registry answers with ``format=serialized``) or ``.proto`` source (what its Java serializers
register, and what registries answer by default), which protoc compiles. References (imports) are fetched as the
subject versions they name; Google's well-known types are always there. A message is found by its indexes in the
file, as the wire format gives them.
"""

from __future__ import annotations

import base64
import datetime as dt
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segscope._deps import require
from segscope._wire import SchemaRegistry, WireError

__all__ = ["compile_proto", "message_reader", "schema_pool"]

Convert = Callable[[Any], Any]
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
}


def _serialized(text: str) -> Any:
    """The FileDescriptorProto a base64 text holds, or None when the text is .proto source."""
    descriptor_pb2 = require("google.protobuf.descriptor_pb2", extra="kafka", feature="Protobuf messages")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
    except Exception:  # not base64, or not a descriptor: .proto source
        return None
    return proto if proto.name else None


def _collect(registry: SchemaRegistry, name: str, found: Any, into: dict[str, str]) -> None:
    """``name`` -> schema text, for the schema and everything it references (depth first)."""
    for ref in found.references or []:
        if ref.name not in into:
            _collect(registry, ref.name, registry.version(ref.subject, ref.version), into)
    into[name] = found.schema_str


def schema_pool(schema: int, found: Any, registry: SchemaRegistry) -> tuple[Any, Any]:
    """(descriptor pool, the schema's file descriptor) for registered schema ``found`` of id ``schema``."""
    pool_mod = require("google.protobuf.descriptor_pool", extra="kafka", feature="Protobuf messages")
    descriptor_pb2 = require("google.protobuf.descriptor_pb2", extra="kafka", feature="Protobuf messages")
    wkt = [
        require(f"google.protobuf.{m}_pb2", extra="kafka", feature="Protobuf messages")
        for m in ("any", "duration", "empty", "field_mask", "struct", "timestamp", "wrappers")
    ]
    main = f"segscope_schema_{schema}.proto"
    texts: dict[str, str] = {}
    _collect(registry, main, found, texts)
    protos: list[Any] = []
    serialized = {name: _serialized(text) for name, text in texts.items()}
    if all(p is not None for p in serialized.values()):
        protos = list(serialized.values())  # dependencies first (depth first)
        main = protos[-1].name
    elif any(p is not None for p in serialized.values()):
        raise WireError(f"schema id {schema} mixes .proto source and serialized descriptors in its references")
    else:
        files = descriptor_pb2.FileDescriptorSet()
        files.ParseFromString(compile_proto(texts, main))
        protos = list(files.file)
    pool = pool_mod.DescriptorPool()
    added = set()
    for module in wkt:
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
        added.add(module.DESCRIPTOR.name)
    for proto in protos:
        if proto.name not in added:
            pool.Add(proto)
            added.add(proto.name)
    return pool, pool.FindFileByName(main)


def _message_name(file: Any, indexes: tuple[int, ...], schema: int) -> str:
    descriptor_pb2 = require("google.protobuf.descriptor_pb2", extra="kafka", feature="Protobuf messages")
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    names, level = [], proto.message_type
    for index in indexes:
        if not 0 <= index < len(level):
            raise WireError(
                f"the message indexes {list(indexes)} name no message of schema id {schema} (it has {len(level)} "
                "at that level)"
            )
        names.append(level[index].name)
        level = level[index].nested_type
    return ".".join(([proto.package] if proto.package else []) + names)


def message_reader(pool: Any, file: Any, indexes: tuple[int, ...], schema: int) -> Callable[[bytes], dict[str, Any]]:
    """Parse a payload as the message ``indexes`` names, into a plain record."""
    factory = require("google.protobuf.message_factory", extra="kafka", feature="Protobuf messages")
    descriptor = pool.FindMessageTypeByName(_message_name(file, indexes, schema))
    message_class = factory.GetMessageClass(descriptor)
    convert = _message(descriptor, {})

    def read(payload: bytes) -> dict[str, Any]:
        message = message_class()
        message.ParseFromString(payload)
        return convert(message)  # type: ignore[no-any-return]

    return read


def _message(descriptor: Any, done: dict[str, Convert]) -> Convert:
    """A function from a message of ``descriptor`` to a dict (one per message type, recursive types included)."""
    name = descriptor.full_name
    if name in done:
        return lambda message: done[name](message)
    if name == "google.protobuf.Timestamp":
        done[name] = lambda m: m.ToDatetime(tzinfo=dt.UTC)
        return done[name]
    if name == "google.protobuf.Duration":
        done[name] = lambda m: m.ToTimedelta().total_seconds()
        return done[name]
    if name == "google.protobuf.BytesValue":
        done[name] = lambda m: base64.b64encode(m.value).decode("ascii")
        return done[name]
    if name in _WRAPPERS:
        done[name] = lambda m: m.value
        return done[name]
    if name.startswith("google.protobuf."):  # Struct, Value, ListValue, Any, ...: their JSON form
        json_format = require("google.protobuf.json_format", extra="kafka", feature="Protobuf messages")
        done[name] = lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)
        return done[name]
    fields: list[tuple[str, Convert | None, bool]] = []
    done[name] = lambda message: {n: _get(message, n, c, p) for n, c, p in fields}
    for field in descriptor.fields:
        fields.append((field.name, _field(field, done), field.has_presence and not field.is_repeated))
    return done[name]


def _get(message: Any, name: str, convert: Convert | None, presence: bool) -> Any:
    if presence and not message.HasField(name):
        return None
    value = getattr(message, name)
    return value if convert is None else convert(value)


def _field(field: Any, done: dict[str, Convert]) -> Convert | None:
    """How one field's value becomes plain (None: as it is)."""
    one: Convert | None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        inner = _field(value_field, done)
        return lambda m: {k: (v if inner is None else inner(v)) for k, v in m.items()}
    if field.message_type is not None:
        one = _message(field.message_type, done)
    elif field.enum_type is not None:
        by_number = {v.number: v.name for v in field.enum_type.values}
        one = lambda v: by_number.get(v, v)  # noqa: E731
    elif field.type == field.TYPE_BYTES:
        one = lambda v: base64.b64encode(v).decode("ascii")  # noqa: E731
    else:
        one = None
    if field.is_repeated:
        return (lambda vs: [one(v) for v in vs]) if one is not None else list
    return one


def compile_proto(files: dict[str, str], main: str) -> bytes:
    """A serialized FileDescriptorSet of ``main`` and everything it imports, compiled by protoc (grpcio-tools)
    from ``.proto`` texts by file name; the well-known types come with grpcio-tools."""
    protoc = require("grpc_tools.protoc", extra="kafka", feature="Protobuf schemas given as .proto text")
    include = Path(str(protoc.__file__)).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="segscope-proto-") as folder:
        root = Path(folder)
        for name, text in files.items():
            path = (root / name).resolve()
            if root.resolve() not in path.parents:
                raise WireError(f"a Protobuf schema reference has an unusable file name: {name!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        out = root / "descriptor.pb"
        args = ["protoc", f"-I{root}", f"-I{include}", "--include_imports", f"--descriptor_set_out={out}", main]
        if protoc.main(args) != 0 or not out.is_file():
            raise WireError(f"the .proto schema {main} does not compile (protoc failed)")
        return out.read_bytes()
