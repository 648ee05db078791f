"""Kafka messages to a :class:`~segscope.sources.base.Batch`: one poll's messages decoded at once.

Every message becomes exactly one of: a valid record (a JSON object whose fields match the bundle's schema,
converted to the fit-time types, with its id: the configured id column or ``topic/partition/offset``), or a
:class:`~segscope.sources.base.DeadLetter` (the reason and the original bytes). Checks are per message, so one
bad message never stops a batch; they run a column at a time (a message is only looked at on its own when its
column holds something unexpected), which keeps decoding a small share of the stream's time. A poll of JSON
objects only is parsed in one pass and keeps the poll's own lists; plain date-times are read by NumPy in C.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import polars as pl

from segscope._kafka import Polled
from segscope.schema import ColumnSpec, FeatureSchema
from segscope.sources.base import Batch, DeadLetter
from segscope.sources.wire import WireDecoder

__all__ = ["decode"]

_MISSING = object()
_NONE = type(None)
_ALLOWED: dict[str, set[type]] = {
    "numeric": {int, float, _NONE},
    "boolean": {bool, _NONE},
    "categorical": {str, _NONE},
    "datetime": {str, _NONE},
}
_DTYPES: dict[str, pl.DataType] = {"numeric": pl.Float64(), "boolean": pl.Boolean(), "categorical": pl.String()}
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_INF = float("inf")
#: a date and time without a zone, seconds with at most 6 decimals: the text NumPy and ``datetime.fromisoformat``
#: read alike from year 1 (each refuses a day or time that does not exist; NumPy also reads year 0, "now", zones ...)
_PLAIN_DATETIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?$"
_YEAR_1 = np.datetime64("0001-01-01", "us")


def _check(value: Any, spec: ColumnSpec) -> tuple[Any, str | None]:
    """(converted value, error) for one field against its column spec; None is a missing value."""
    if value is _MISSING:
        return None, f"missing field '{spec.name}'"
    if value is None:
        return None, None
    if spec.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"field '{spec.name}' must be a number, got {type(value).__name__} {str(value)[:40]!r}"
        if value in (_INF, -_INF):
            return None, f"field '{spec.name}' must be a finite number, got one past the float range"
        return float(value), None
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            return None, f"field '{spec.name}' must be true or false, got {str(value)[:40]!r}"
        return value, None
    if spec.kind == "categorical":
        if isinstance(value, dict | list):
            return None, f"field '{spec.name}' must be a string, got {type(value).__name__}"
        return str(value), None
    if isinstance(value, date):  # a timestamp or date of an Avro or Protobuf message (sources/wire.py)
        parsed = value if isinstance(value, datetime) else datetime.combine(value, datetime.min.time())
    elif not isinstance(value, str):
        return None, f"field '{spec.name}' must be an ISO-8601 date/time string, got {str(value)[:40]!r}"
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None, f"field '{spec.name}' is not an ISO-8601 date/time: {value[:40]!r}"
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return (parsed - _EPOCH) // _MICROSECOND, None


def _column(values: list[Any], spec: ColumnSpec, errors: list[str | None]) -> pl.Series:
    """One column as a typed Series; rows whose value does not fit get their first error in ``errors``."""
    if set(map(type, values)) <= _ALLOWED[spec.kind] and spec.kind != "datetime":
        series = pl.Series(spec.name, values, dtype=_DTYPES[spec.kind], strict=False)
        if spec.kind == "numeric" and series.is_infinite().any():  # a number past the float range (1e400)
            for i in series.is_infinite().arg_true().to_list():
                if errors[i] is None:
                    errors[i] = f"field '{spec.name}' must be a finite number, got one past the float range"
        return series
    if spec.kind == "datetime" and set(map(type, values)) == {str}:  # the usual case: ISO-8601 strings, no zone
        text = pl.Series(spec.name, values, dtype=pl.String)
        if text.str.contains(_PLAIN_DATETIME).all():  # read by NumPy in C as fromisoformat reads them
            try:
                read = np.array(values, dtype="datetime64[us]")
            except ValueError:  # a day or an hour that does not exist: each value is looked at below
                read = None
            if read is not None and read.min() >= _YEAR_1:
                return pl.Series(spec.name, read)
        try:
            parsed = [datetime.fromisoformat(v) for v in values]
        except ValueError:
            parsed = []
        if parsed and all(p.tzinfo is None for p in parsed):
            return pl.Series(spec.name, parsed, dtype=pl.Datetime("us"))
    converted = []
    for i, value in enumerate(values):
        out, error = _check(value, spec)
        if error is not None and errors[i] is None:
            errors[i] = error
        converted.append(out)
    if spec.kind == "datetime":
        return pl.Series(spec.name, converted, dtype=pl.Int64).cast(pl.Datetime("us"))
    return pl.Series(spec.name, converted, dtype=_DTYPES[spec.kind], strict=False)


def _why_not_json(raw: bytes, exc: Exception) -> str:
    if not raw:
        return "empty message: the value has 0 bytes (not a tombstone: it has a value, an empty one)"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"not UTF-8 text: byte 0x{raw[bad.start]:02x} at position {bad.start} cannot start or continue a "
            "UTF-8 character (JSON messages must be UTF-8; binary data is kept as it came in the dead letter)"
        )
    return f"invalid JSON: {str(exc)[:120]}"


def _past_the_float_range(raw: bytes, exc: Exception) -> Any:
    """A JSON object with a number past the float range (``1e400``), which orjson refuses: read by the standard
    library (the number becomes infinite; its bytes are kept in the output). None when it is not that, or when
    the text has what JSON does not allow (NaN, Infinity, an unpaired surrogate)."""
    if not str(exc).startswith("number is infinity"):
        return None

    def refuse(name: str) -> Any:
        raise ValueError(name)

    def integer(text: str) -> int | float:  # as orjson reads them: past 64 bits, a float
        value = int(text)
        return value if -(2**63) <= value < 2**64 else float(text)

    try:  # text decoded here: the standard library would also read UTF-16 and UTF-32 bytes, orjson reads UTF-8 only
        record = json.loads(raw.decode(), parse_constant=refuse, parse_int=integer)
        orjson.dumps(record)  # refuses strings that are not valid UTF-8 (unpaired surrogates)
    except (ValueError, TypeError, RecursionError, orjson.JSONEncodeError):  # RecursionError: nested deeper
        return None
    return record


def _id_text(value: float, raw: bytes | None, field: str | None) -> str:
    """An id that JSON spells as an integer past 64 bits (decoded as a float): its digits as written."""
    if raw is not None and field is not None:
        try:
            text = json.loads(raw, parse_int=str, parse_float=str).get(field)
        except (ValueError, RecursionError):  # nested deeper than the standard library reads (orjson reads 1024)
            text = None
        if isinstance(text, str) and text.lstrip("-").isdigit():
            return text
    return str(value)


def _parsed(values: list[bytes | None], max_bytes: int, wire: WireDecoder | None) -> tuple[list[Any], list[str | None]]:
    """Each message as a record (a dict) or the reason it is a dead letter (None where it is a record)."""
    if wire is None and values:  # the usual poll: every message a JSON object within the size limit, at once
        try:
            if max(map(len, values)) <= max_bytes:  # type: ignore[arg-type]  # a tombstone (None): TypeError
                parsed = list(map(orjson.loads, values))  # type: ignore[arg-type]
                if set(map(type, parsed)) == {dict}:
                    return parsed, [None] * len(values)
        except (TypeError, ValueError):  # a tombstone, or a message orjson refuses: each is looked at below
            pass
    errors: list[str | None] = [None] * len(values)
    parsed = [None] * len(values)
    loads, why = (orjson.loads, _why_not_json) if wire is None else (wire.loads, wire.why)
    for i, raw in enumerate(values):
        if raw is None:
            errors[i] = "tombstone: the message has no value (null), so there is no record to score"
        elif len(raw) > max_bytes:
            errors[i] = f"message of {len(raw)} bytes is larger than --max-message-bytes {max_bytes}"
        else:
            try:
                record = loads(raw)
            except ValueError as exc:  # orjson.JSONDecodeError, or WireError: what is wrong with this message
                record = _past_the_float_range(raw, exc) if wire is None else None
                if record is None:
                    errors[i] = why(raw, exc)
                    continue
            if type(record) is dict:
                parsed[i] = record
            else:
                errors[i] = f"a message must be one JSON object, got a JSON {type(record).__name__}"
    return parsed, errors


def decode(polled: Polled, schema: FeatureSchema, *, max_bytes: int, wire: WireDecoder | None = None) -> Batch:
    """The batch of rows (the bundle's input columns, fit-time types) and dead letters of one poll; messages are
    JSON objects, or Avro / Protobuf records in the registry's wire format that ``wire`` decodes."""
    values = polled.values
    parsed, errors = _parsed(values, max_bytes, wire)
    whole = not any(errors)  # every message a record: the lists are the poll's own, no copies
    rows = range(len(values)) if whole else [i for i, e in enumerate(errors) if e is None]
    records = parsed if whole else [parsed[i] for i in rows]
    row_errors: list[str | None] = [None] * len(rows)
    columns = [_column([r.get(s.name, _MISSING) for r in records], s, row_errors) for s in schema.columns]
    if schema.id_column is not None:
        raw_ids = [r.get(schema.id_column) for r in records]
        if set(map(type, raw_ids)) <= {str}:  # the usual case: text ids, none missing
            ids = raw_ids
        else:
            for j, value in enumerate(raw_ids):
                if value is None and row_errors[j] is None:
                    row_errors[j] = f"missing id field '{schema.id_column}'"
            field = schema.id_column if wire is None else None  # JSON: an integer past 64 bits keeps its digits
            ids = [
                str(v) if type(v) is not float else _id_text(v, values[rows[j]], field) for j, v in enumerate(raw_ids)
            ]
    else:
        ids = ["{}/{}/{}".format(*polled.origin(i)[:3]) for i in rows]
    frame = pl.DataFrame(columns)
    if whole and not any(row_errors):
        return Batch(frame, ids=ids, id_field=schema.id_column, keys=polled.keys, headers=polled.headers,
                     records=records, raw=values, origin=polled.origin, position=polled.positions)  # fmt: skip
    for j, error in enumerate(row_errors):
        if error is not None:
            errors[rows[j]] = error
    keep = [j for j, e in enumerate(row_errors) if e is None]
    if len(keep) < len(rows):
        frame = frame[keep]
    kept = [rows[j] for j in keep]
    dead = [
        DeadLetter(error, *polled.origin(i)[:3], polled.keys[i], values[i], polled.origin(i)[3], polled.headers[i])
        for i, error in enumerate(errors)
        if error is not None
    ]
    return Batch(
        frame,
        ids=[ids[j] for j in keep],
        id_field=schema.id_column,
        keys=[polled.keys[i] for i in kept],
        headers=[polled.headers[i] for i in kept],
        records=[records[j] for j in keep],
        raw=[values[i] for i in kept],
        origin=lambda j: polled.origin(kept[j]),
        dead=dead,
        position=polled.positions,
    )
