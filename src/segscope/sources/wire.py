"""Avro and Protobuf messages in Confluent's wire format, decoded with their schema from a registry into the same
records a JSON message gives (``extra: kafka``).

:class:`WireDecoder` turns one message's bytes into a record (a dict of plain values), or raises
:class:`~segscope._wire.WireError` with the reason: no magic byte, a schema id the registry does not know, a
schema of the other format, bytes that do not decode with their schema (or leave bytes over). Each message is
decoded with the schema it was *written* with (its id), so every version of a subject is read as it was written:
a field added in a new version is one more field of the record, and the model takes the columns it was fitted on.

Values become what the JSON path takes (and orjson writes): numbers, text, true/false, null, objects and lists,
timestamps and dates as ``datetime`` / ``date`` (written as ISO-8601), UUIDs and times as they are; decimals
become numbers and bytes base64 text. Avro enums and Protobuf enums come by name; Protobuf's ``Timestamp`` is a
timestamp, its wrappers their value, an unset field with presence (``optional``, a message field) null. Only
schemas holding decimals or bytes pay for a conversion pass. Avro is read by fastavro; Protobuf by ``protobuf``
from the descriptors the registry holds (serialized, or ``.proto`` text compiled by grpcio-tools' protoc), one
descriptor pool per schema id.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from segscope._deps import require
from segscope._typing import MessageFormat
from segscope._wire import SchemaRegistry, WireError, schema_id, zigzag_indexes

__all__ = ["WireDecoder"]

Reader = Callable[[bytes], dict[str, Any]]
_PLAIN = (str, int, float, bool, type(None), dt.date, dt.time, uuid.UUID)  # dt.date: datetimes too
#: Avro types whose values fastavro returns as something the JSON path does not take (decimals are bytes or fixed)
_AVRO_CONVERTED = {"bytes", "fixed"}


def plain(value: Any) -> Any:
    """A decoded value as JSON would hold it (see the module docstring)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _avro_converted(schema: Any) -> bool:
    """Whether a parsed Avro schema holds a type whose values :func:`plain` changes (bytes, fixed, decimals)."""
    seen: set[int] = set()

    def walk(node: Any) -> bool:
        if isinstance(node, str):
            return node in _AVRO_CONVERTED
        if isinstance(node, list):
            return any(walk(n) for n in node)
        if not isinstance(node, dict) or id(node) in seen:
            return False
        seen.add(id(node))
        if node.get("type") in _AVRO_CONVERTED:
            return True
        children = [f.get("type") for f in node.get("fields", ())] + [node.get(k) for k in ("items", "values")]
        return walk(node.get("type")) if isinstance(node.get("type"), dict | list) else any(walk(c) for c in children)

    return walk(schema)


def _reason(schema: int, kind: str, exc: BaseException) -> str:
    detail = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"the bytes do not decode with schema id {schema} ({kind}): {type(exc).__name__}" + (
        f": {detail}" if detail else ""
    )


class WireDecoder:
    """Decodes messages of one format (``avro`` or ``protobuf``) with the schemas of ``registry``."""

    def __init__(self, registry: SchemaRegistry, fmt: MessageFormat) -> None:
        if fmt == "json":
            raise ValueError("JSON messages need no WireDecoder")
        self.registry = registry
        self.format = fmt
        self._readers: dict[int, Reader] = {}
        self.parsed: dict[int, Any] = {}  # Avro: each id's parsed writer schema (the output derives from it)

    def loads(self, raw: bytes) -> dict[str, Any]:
        """One message's record; :class:`WireError` with the reason when it has none."""
        schema = schema_id(raw)
        reader = self._readers.get(schema)
        if reader is None:
            reader = self._readers[schema] = self._reader(schema)
        return reader(raw)

    @staticmethod
    def why(raw: bytes, exc: Exception) -> str:
        return str(exc)

    def _reader(self, schema: int) -> Reader:
        found = self.registry.schema(schema)  # WireError for an unknown id (remembered for a while by the registry)
        kind = (found.schema_type or "AVRO").upper()
        if kind != self.format.upper():
            raise WireError(f"schema id {schema} is a {kind} schema, but the stream reads --format {self.format}")
        try:
            return self._avro(schema, found) if kind == "AVRO" else self._protobuf(schema, found)
        except WireError:
            raise
        except Exception as exc:  # a schema fastavro or protoc cannot use
            raise WireError(f"schema id {schema} cannot be used ({type(exc).__name__}: {str(exc)[:160]})") from None

    # ------------------------------------------------------------------------------------------------ Avro
    def named_schemas(self, references: list[Any] | None, named: dict[str, Any] | None = None) -> dict[str, Any]:
        """The Avro named types a schema's references define (fetched as the subject versions they name), as
        fastavro's ``named_schemas`` for parsing the schema itself."""
        fastavro = require("fastavro", extra="kafka", feature="Avro messages")
        named = {} if named is None else named
        for ref in references or []:
            referenced = self.registry.version(ref.subject, ref.version)
            self.named_schemas(referenced.references, named)
            fastavro.parse_schema(json.loads(referenced.schema_str), named)
        return named

    def _avro(self, schema: int, found: Any) -> Reader:
        fastavro = require("fastavro", extra="kafka", feature="Avro messages")
        parsed = fastavro.parse_schema(json.loads(found.schema_str), self.named_schemas(found.references))
        self.parsed[schema] = parsed
        converted = _avro_converted(parsed)
        read = fastavro.schemaless_reader
        bytes_io = io.BytesIO

        def reader(raw: bytes) -> dict[str, Any]:
            stream = bytes_io(raw)
            stream.seek(5)
            try:
                value = read(stream, parsed, None)
            except Exception as exc:  # fastavro raises what its reading ran into (EOF, bad UTF-8, bad index)
                raise WireError(_reason(schema, "Avro", exc)) from None
            if stream.tell() != len(raw):
                raise WireError(
                    f"the bytes do not decode with schema id {schema} (Avro): {len(raw) - stream.tell()} bytes "
                    "are left after the record"
                )
            if type(value) is not dict:
                raise WireError(f"a message must be one Avro record, got a {type(value).__name__} (schema id {schema})")
            return plain(value) if converted else value

        return reader

    # -------------------------------------------------------------------------------------------- Protobuf
    def _protobuf(self, schema: int, found: Any) -> Reader:
        from segscope.sources.protobuf import message_reader, schema_pool

        pool, file = schema_pool(schema, found, self.registry)
        classes: dict[tuple[int, ...], Callable[[bytes], dict[str, Any]]] = {}

        def reader(raw: bytes) -> dict[str, Any]:
            indexes, start = zigzag_indexes(raw)
            parse = classes.get(indexes)
            if parse is None:
                parse = classes[indexes] = message_reader(pool, file, indexes, schema)
            try:
                return parse(raw[start:])
            except WireError:
                raise
            except Exception as exc:  # protobuf's DecodeError, or a value it cannot hold
                raise WireError(_reason(schema, "Protobuf", exc)) from None

        return reader
