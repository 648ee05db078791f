"""Kafka messages -> records: JSON objects checked against the bundle's schema, the rest dead-lettered.

Every message becomes exactly one of: a valid record (a dict, with its id), or a dead letter (the reason,
the original bytes, topic/partition/offset). Checks are per message, so one bad message never stops a batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl

from segscope.schema import ColumnSpec, FeatureSchema

__all__ = ["DeadLetter", "Decoded", "decode_messages", "records_frame"]


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str

    def payload(self) -> bytes:
        """What goes to the dead-letter topic: the reason, where it came from, and the original bytes."""
        original = self.value or b""
        try:
            text: str | None = original.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            text, encoding = original.hex(), "hex"
        return json.dumps(
            {
                "reason": self.reason,
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "original": text,
                "original_encoding": encoding,
            }
        ).encode()


@dataclass
class Decoded:
    records: list[dict[str, Any]]  # the messages as sent (all fields), for the output
    rows: list[dict[str, Any]]  # the bundle's input columns, converted to the fit-time types
    ids: list[str]
    keys: list[bytes | None]
    dead: list[DeadLetter]


def _check(value: Any, spec: ColumnSpec) -> tuple[Any, str | None]:
    """(converted value, error) for one field against its column spec; None is a missing value."""
    if value is None:
        return None, None
    if spec.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"field '{spec.name}' must be a number, got {type(value).__name__} {str(value)[:40]!r}"
        if isinstance(value, float) and math.isinf(value):
            return None, f"field '{spec.name}' is infinite"
        return float(value), None
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            return None, f"field '{spec.name}' must be true or false, got {str(value)[:40]!r}"
        return value, None
    if spec.kind == "categorical":
        if isinstance(value, dict | list):
            return None, f"field '{spec.name}' must be a string, got {type(value).__name__}"
        return str(value), None
    if not isinstance(value, str):
        return None, f"field '{spec.name}' must be an ISO-8601 date/time string, got {str(value)[:40]!r}"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None, f"field '{spec.name}' is not an ISO-8601 date/time: {value[:40]!r}"
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed, None


def decode_messages(messages: list[Any], schema: FeatureSchema, *, max_bytes: int) -> Decoded:
    """Check each ConsumerRecord-like message (topic, partition, offset, key, value)."""
    out = Decoded([], [], [], [], [])
    id_column = schema.id_column
    for msg in messages:

        def dead(reason: str, msg: Any = msg) -> None:
            out.dead.append(DeadLetter(msg.topic, msg.partition, msg.offset, msg.key, msg.value, reason))

        raw = msg.value
        if raw is None:
            dead("empty message (no value)")
            continue
        if len(raw) > max_bytes:
            dead(f"message of {len(raw)} bytes is larger than --max-message-bytes {max_bytes}")
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            dead(f"invalid JSON: {str(exc)[:120]}")
            continue
        if not isinstance(record, dict):
            dead(f"a message must be one JSON object, got a JSON {type(record).__name__}")
            continue
        row: dict[str, Any] = {}
        error = None
        for spec in schema.columns:
            if spec.name not in record:
                error = f"missing field '{spec.name}'"
                break
            row[spec.name], error = _check(record[spec.name], spec)
            if error:
                break
        if error is not None:
            dead(error)
            continue
        if id_column is not None:
            if record.get(id_column) is None:
                dead(f"missing id field '{id_column}'")
                continue
            record_id = str(record[id_column])
        else:
            record_id = f"{msg.topic}/{msg.partition}/{msg.offset}"
        out.records.append(record)
        out.rows.append(row)
        out.ids.append(record_id)
        out.keys.append(msg.key)
    return out


def records_frame(rows: list[dict[str, Any]], schema: FeatureSchema) -> pl.DataFrame:
    """The bundle's input columns of checked rows as a frame with the fit-time types."""
    columns: dict[str, list[Any]] = {spec.name: [row[spec.name] for row in rows] for spec in schema.columns}
    dtypes = {"numeric": pl.Float64, "boolean": pl.Boolean, "categorical": pl.String}
    return pl.DataFrame(
        {
            spec.name: pl.Series(spec.name, columns[spec.name], dtype=dtypes.get(spec.kind, pl.Datetime("us")))
            for spec in schema.columns
        }
    )
