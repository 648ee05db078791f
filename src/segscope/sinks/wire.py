"""Scored records of Avro or Protobuf input, as JSON or as Avro in the registry's wire format (``extra: kafka``).

**JSON** (the default): the decoded record (as :mod:`segscope.sources.wire` gives it) with the scored fields
appended, exactly as for a JSON message.

**Avro** (Avro input only): the output schema is the input record's schema, as it was written, with the scored
fields appended (``id``, the per-entity features the model derived, then the scored columns; those that may be
null as unions with null and a null default). It is registered under the output topic's subject
(TopicNameStrategy: ``<topic>-value``; the alerts topic's too), once per input schema id. Since an Avro record
is its fields' encodings one after the other, an output message is the input's payload *as it came*, byte for
byte, followed by the scored fields' encoding: the input is never decoded again nor re-encoded. An input schema
that already has a field of the same name as one segscope adds loses that field in the output schema (segscope's
value wins, as in JSON); such records are decoded and encoded whole.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import orjson
import polars as pl

from segscope._deps import require
from segscope._typing import OutputFormat
from segscope._wire import SchemaRegistry, WireSettings, frame, schema_id
from segscope.exceptions import SinkError
from segscope.schema import SCORED_COLUMNS
from segscope.sinks.kafka import encode
from segscope.sources.base import Batch
from segscope.sources.wire import WireDecoder

__all__ = ["WireEncoder", "avro_type", "codecs"]

#: Scored fields that are never null (the README's scored record; a reason always names its feature and share);
#: the others become unions with null (which also cost fastavro more to write).
NOT_NULL = frozenset(
    {"id", "score", "anomaly_score", "is_alert", "segment", "reasons", "model_version", "reasons_feature"}
    | {"reasons_contribution"}
)
_INT = (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16)
_LONG = (pl.Int64, pl.UInt32, pl.UInt64)


def avro_type(dtype: Any, name: str) -> Any:
    """The Avro type of a Polars dtype (an instance or a class; its values nullable inside lists and structs)."""
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        return "string"
    if isinstance(dtype, pl.Float32 | pl.Float64):
        return "double"
    if isinstance(dtype, _INT):
        return "int"
    if isinstance(dtype, _LONG):
        return "long"
    if isinstance(dtype, pl.Boolean):
        return "boolean"
    if isinstance(dtype, pl.Datetime):
        unit = "millis" if dtype.time_unit == "ms" else "micros"
        return {"type": "long", "logicalType": f"{'timestamp' if dtype.time_zone else 'local-timestamp'}-{unit}"}
    if isinstance(dtype, pl.Date):
        return {"type": "int", "logicalType": "date"}
    if isinstance(dtype, pl.List | pl.Array):
        return {"type": "array", "items": avro_type(dtype.inner, f"{name}_item")}
    if isinstance(dtype, pl.Struct):
        record = "".join(part.capitalize() for part in name.split("_")) or "Item"
        fields = [_field(f"{name}_{f.name}", f.name, avro_type(f.dtype, f"{name}_{f.name}")) for f in dtype.fields]
        return {"type": "record", "name": record, "namespace": "segscope", "fields": fields}
    if isinstance(dtype, pl.Null):
        return "null"
    raise SinkError(f"the scored column '{name}' is of type {dtype}, which has no Avro type here; use JSON output")


def _field(path: str, name: str, kind: Any) -> dict[str, Any]:
    return {"name": name, "type": kind} if path in NOT_NULL else _nullable(name, kind)


def _nullable(name: str, kind: Any) -> dict[str, Any]:
    if kind == "null":
        return {"name": name, "type": "null", "default": None}
    return {"name": name, "type": ["null", kind], "default": None}


def tail_frame(scored: pl.DataFrame, batch: Batch) -> pl.DataFrame:
    """What segscope appends to a record: ``id``, the columns the model derived, the scored columns."""
    given = set(batch.frame.columns)
    derived = [c for c in scored.columns if c not in given and c not in SCORED_COLUMNS]
    tail = scored.select(*derived, *SCORED_COLUMNS)
    if batch.ids is not None:
        tail = tail.select(pl.Series("id", batch.ids, dtype=pl.String), *derived, *SCORED_COLUMNS)
    return tail


class _Plan:
    """How records of one input schema id are written: the output schema's id, and splice or re-encode."""

    def __init__(self, prefix: bytes, tail: Any, whole: Any, reader: Any, dropped: frozenset[str]) -> None:
        self.prefix, self.tail, self.whole, self.reader, self.dropped = prefix, tail, whole, reader, dropped
        self.fastavro = require("fastavro", extra="kafka", feature="Avro output")

    def __call__(self, raw: bytes, row: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(self.prefix)
        if not self.dropped:  # the input's payload as it came, then the scored fields
            out.write(memoryview(raw)[5:])
            self.fastavro.schemaless_writer(out, self.tail, row)
        else:
            stream = io.BytesIO(raw)
            stream.seek(5)
            record = self.fastavro.schemaless_reader(stream, self.reader, None)
            self.fastavro.schemaless_writer(out, self.whole, {**record, **row})
        return out.getvalue()


class WireEncoder:
    """``encode(scored, batch)`` for a :class:`~segscope.sinks.kafka.KafkaSink` reading wire-format input."""

    def __init__(self, decoder: WireDecoder, output: OutputFormat, topics: list[str]) -> None:
        if output == "avro" and decoder.format != "avro":
            raise SinkError(
                f"Avro output is derived from the input's Avro schema; the input is {decoder.format}: use JSON output"
            )
        self.decoder = decoder
        self.output = output
        self.subjects = [f"{topic}-value" for topic in topics]  # TopicNameStrategy
        self._plans: dict[tuple[int, str], _Plan] = {}

    def __call__(self, scored: pl.DataFrame, batch: Batch | None) -> list[bytes]:
        if batch is None or batch.records is None or batch.raw is None:
            return encode(scored, batch)
        if self.output == "json":  # the decoded records stand in for the messages' bytes
            return encode(scored, replace(batch, raw=[orjson.dumps(r) for r in batch.records]))
        tail = tail_frame(scored, batch)
        fields = [_field(n, n, avro_type(d, n)) for n, d in tail.schema.items()]
        key = json.dumps(fields)
        out = []
        for raw, row in zip(batch.raw, tail.iter_rows(named=True), strict=True):
            assert raw is not None  # a row was decoded from it
            schema = schema_id(raw)
            plan = self._plans.get((schema, key))
            if plan is None:
                plan = self._plans[(schema, key)] = self._plan(schema, fields)
            out.append(plan(raw, row))
        return out

    def _plan(self, schema: int, fields: list[dict[str, Any]]) -> _Plan:
        fastavro = require("fastavro", extra="kafka", feature="Avro output")
        registry = self.decoder.registry
        found = registry.schema(schema)
        written = json.loads(found.schema_str)
        if not isinstance(written, dict) or written.get("type") != "record":
            raise SinkError(f"schema id {schema} is not an Avro record; its records cannot take the scored fields")
        names = {f["name"] for f in fields}
        kept = [f for f in written["fields"] if f["name"] not in names]
        dropped = frozenset(f["name"] for f in written["fields"]) & names
        output = {**written, "fields": kept + fields}
        text = json.dumps(output)
        ids = [registry.register(subject, text, "AVRO", list(found.references or [])) for subject in self.subjects]
        scored = {"type": "record", "name": "ScoredFields", "namespace": "segscope", "fields": fields}
        tail = fastavro.parse_schema(scored)
        whole = None
        if dropped:
            whole = fastavro.parse_schema(output, self.decoder.named_schemas(found.references))
        return _Plan(frame(ids[0], b""), tail, whole, self.decoder.parsed.get(schema), dropped)


def codecs(settings: WireSettings, topics: list[str]) -> tuple[WireDecoder | None, WireEncoder | None]:
    """The decoder a Kafka source and the encoder a Kafka sink use for ``settings`` (none for JSON), with one
    registry (and so one cache) for both, reached once here; ``topics``: where scored records go (the output's
    subjects)."""
    if settings.format == "json" or settings.registry is None:
        return None, None
    registry = SchemaRegistry(settings.registry)
    try:
        registry.check()
    except BaseException:
        registry.close()
        raise
    decoder = WireDecoder(registry, settings.format)
    return decoder, WireEncoder(decoder, settings.output, topics)
