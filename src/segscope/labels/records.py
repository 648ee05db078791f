"""The label store's records as data: each record's stored input values (JSON in the store) read back into a
frame with the types a model was fitted with, so that the store itself can be the training data of fine-tuning.

JSON keeps numbers, booleans, text and nulls but not types: date-times come back as ISO text, integers and floats
as Python numbers, non-finite floats as null. :func:`stored_frame` casts each column to the type its
:class:`~segscope.schema.ColumnSpec` names (the dtype seen at fit), refusing in one line a value that does not
read as that type. Like the store, it knows nothing of models: the caller says which columns to read.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from segscope.exceptions import DataError, SegscopeWarning
from segscope.schema import ColumnSpec
from segscope.sources.frames import parse_datetimes

if TYPE_CHECKING:
    from segscope.labels.store import LabelStore

__all__ = ["StoredRecords", "store_labels", "stored_frame", "training_records"]

_INTEGERS = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"}
_DATETIME = re.compile(r"Datetime\(time_unit='(?P<unit>ms|us|ns)', time_zone=(?:'(?P<zone>[^']+)'|None)\)")


@dataclass(frozen=True)
class StoredRecords:
    """``frame``: one row per stored record read (the id column first, as text, then the requested columns), in
    the order the store first saw them; ``versions``: records per model version that scored them; ``missing``:
    requested columns some records do not hold (column -> how many records), read as null; ``stored``: how many
    records the store holds (more than the frame's rows when the unlabelled ones were sampled)."""

    frame: pl.DataFrame
    versions: dict[str, int]
    missing: dict[str, int]
    stored: int = 0


def stored_frame(
    store: LabelStore,
    columns: Sequence[ColumnSpec],
    *,
    id_column: str,
    batch_size: int = 20_000,
    background: int | None = None,
    keep: Iterable[str] = (),
    seed: int = 0,
) -> StoredRecords:
    """Every stored record's ``columns`` (cast to each spec's type) and its id (the store's record id, as text, in
    ``id_column``). Columns no record holds are left out (the caller may compute them); a column only some
    records hold is null for the others, and counted in ``missing``.

    ``background`` caps the records read besides the labelled ones (and the ids in ``keep``): past it, a uniform
    sample of that many of the others (drawn with ``seed``), so that a store a stream has filled for months is
    not read whole, value by value, to keep a fraction of it."""
    specs = [c for c in columns if c.name != id_column]
    parts: list[pl.DataFrame] = []
    versions: Counter[str] = Counter()
    held: Counter[str] = Counter()
    total = 0
    chosen, stored = _sample(store, background, keep, seed)
    batches = _batches(store, batch_size, chosen)
    try:
        for ids, model_versions, values in batches:
            versions.update(model_versions)
            total += len(ids)
            for row in values:
                held.update(row.keys())
            series = [pl.Series(id_column, ids, dtype=pl.String)]
            for spec in specs:
                series.append(_column(spec, [row.get(spec.name) for row in values], ids, model_versions))
            parts.append(pl.DataFrame(series))
    finally:
        batches.close()  # a value refused mid-way: the cursor is closed now, not when collected
    present = [c.name for c in specs if held[c.name]]
    empty = pl.DataFrame(
        [pl.Series(id_column, [], dtype=pl.String), *(pl.Series(c.name, [], dtype=_dtype(c)) for c in specs)]
    )
    frame = pl.concat(parts) if parts else empty
    return StoredRecords(
        frame.select(id_column, *present),
        dict(versions),
        {name: total - held[name] for name in present if held[name] < total},
        total if chosen is None else stored,
    )


def _sample(store: LabelStore, background: int | None, keep: Iterable[str], seed: int) -> tuple[list[str] | None, int]:
    """(the ids to read in first-seen order, or None for all; how many records the store holds)."""
    if background is None:
        return None, 0
    from sqlalchemy import select

    from segscope.labels.schema import Label, Record

    with store.reading() as conn:
        ids = list(conn.execute(select(Record.id).order_by(Record.first_seen, Record.id)).scalars())
        kept = set(conn.execute(select(Label.record_id).distinct()).scalars()) | {str(i) for i in keep}
    others = np.array([i not in kept for i in ids], dtype=bool)
    if int(others.sum()) <= background:
        return None, len(ids)
    take = ~others
    take[np.random.default_rng(seed).choice(np.flatnonzero(others), size=background, replace=False)] = True
    return [i for i, keep_it in zip(ids, take, strict=True) if keep_it], len(ids)


def training_records(
    store: LabelStore,
    columns: Sequence[ColumnSpec],
    *,
    id_column: str,
    shown: str = "the label store",
    background: int | None = None,
    keep: Iterable[str] = (),
) -> pl.DataFrame:
    """:func:`stored_frame`'s frame as fine-tuning data (the labelled records, those in ``keep`` and at most
    ``background`` others): a one-line error for an empty store, a warning naming the columns some records lack
    (records of another model version), which are read as missing."""
    stored = stored_frame(store, columns, id_column=id_column, background=background, keep=keep)
    if not stored.frame.height:
        raise DataError(
            f"{shown} holds no records: score or stream with --store first (e.g. `segscope score DATA --bundle B "
            "--out OUT --store S`), or fine-tune on a history file with --data"
        )
    if stored.missing:
        warnings.warn(
            f"{max(stored.missing.values()):,} of {stored.frame.height:,} records in {shown} hold no value for "
            f"column(s) {sorted(stored.missing)} (the store holds records of {len(stored.versions)} model "
            "version(s)): they are fine-tuned on as missing; pass --data holding those records to use its values",
            SegscopeWarning,
            stacklevel=3,
        )
    return stored.frame


def store_labels(store: LabelStore, shown: str = "the label store") -> pl.DataFrame:
    """The store's current labels for fine-tuning (``id, label, category``); a one-line error when there is
    nothing to learn from."""
    labels = store.training_labels()
    if not labels.height and not store.record_count():
        raise DataError(
            f"{shown} holds no records: score or stream with --store first (e.g. `segscope score DATA --bundle B "
            "--out OUT --store S`), label some of them, then fine-tune"
        )
    if not labels.height:
        raise DataError(
            f"{shown} holds no labels yet: label records first (`segscope label add` or `label import`, the "
            "analyst page of `segscope serve`, or --labels-topic), then fine-tune"
        )
    if not int(labels["label"].sum()):
        raise DataError(
            f"{shown} holds {labels.height:,} label(s) and none is 'anomaly': fine-tuning learns from confirmed "
            "anomalies; label at least one record as anomaly, then fine-tune"
        )
    return labels


_Batch = tuple[list[str], list[str], list[dict[str, Any]]]  # ids, model versions, stored values
#: Ids per ``IN (...)`` query when reading a sample (SQLite allows 32,766 bound values, PostgreSQL 65,535).
_IN_LIST = 5000


def _batches(store: LabelStore, batch_size: int, ids: list[str] | None = None) -> Generator[_Batch, None, None]:
    from sqlalchemy import select

    from segscope.labels.schema import Record

    query = select(Record.id, Record.model_version, Record.values).order_by(Record.first_seen, Record.id)
    if ids is not None:  # chosen ids, in first-seen order: read a slice of them at a time, in the same order
        with store.reading() as conn:
            for start in range(0, len(ids), _IN_LIST):
                rows = conn.execute(query.where(Record.id.in_(ids[start : start + _IN_LIST]))).all()
                yield [r.id for r in rows], [r.model_version for r in rows], [_values(r) for r in rows]
        return
    with store.reading() as conn, conn.execution_options(yield_per=batch_size).execute(query) as result:
        for rows in result.partitions():  # on PostgreSQL a server-side cursor: closed with the result
            yield [r.id for r in rows], [r.model_version for r in rows], [_values(r) for r in rows]


def _values(row: Any) -> dict[str, Any]:
    """A stored record's input values: a JSON object (a store edited by hand may hold anything)."""
    if row.values is None:
        return {}
    if not isinstance(row.values, dict):
        raise DataError(
            f"the label store's record {str(row.id)[:80]!r} holds {type(row.values).__name__} values, not a JSON "
            "object; the store is damaged or was edited: restore it from a backup"
        )
    return row.values


def _dtype(spec: ColumnSpec) -> pl.DataType:
    """The Polars type a spec's dtype names (categories as text; exotic numbers as Float64)."""
    if spec.kind == "numeric":
        return getattr(pl, spec.dtype)() if spec.dtype in _INTEGERS or spec.dtype == "Float32" else pl.Float64()
    if spec.kind == "boolean":
        return pl.Boolean()
    if spec.kind == "categorical":
        return pl.String()
    if spec.dtype == "Date":
        return pl.Date()
    match = _DATETIME.fullmatch(spec.dtype)
    if match is None:
        return pl.Datetime("us")
    return pl.Datetime(match["unit"], match["zone"])  # type: ignore[arg-type]


#: Python types a JSON value of each kind may have as it is (anything else goes through :func:`_value`).
_AS_IS: dict[str, tuple[type, ...]] = {"numeric": (int, float), "boolean": (bool,), "categorical": (str,)}


def _column(spec: ColumnSpec, values: list[Any], ids: list[str], versions: list[str]) -> pl.Series:
    target = _dtype(spec)
    as_is = _AS_IS.get(spec.kind, ())
    if all(v is None or type(v) in as_is for v in values):
        try:
            return pl.Series(spec.name, values, dtype=target, strict=True)
        except (TypeError, OverflowError, pl.exceptions.PolarsError):
            pass  # e.g. whole floats for an integer column: value by value below
    converted: list[Any] = []
    for i, value in enumerate(values):
        try:
            item = None if value is None else _value(value, spec.kind, target)
            if item is not None and target.is_integer():
                pl.Series([item], dtype=target, strict=True)  # in the type's range
            converted.append(item)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
            raise DataError(
                f"label store record {ids[i]!r} (scored by model version {versions[i]}) holds {value!r} in column "
                f"'{spec.name}', which this bundle reads as {spec.kind} ({spec.dtype} at fit); fine-tune a bundle "
                "fitted on that data, or pass --data holding the record"
            ) from None
    return pl.Series(spec.name, converted, dtype=target, strict=True)


def _value(value: Any, kind: str, target: pl.DataType) -> Any:
    """One JSON value as the column's type (TypeError/ValueError when it does not read as one)."""
    if kind == "categorical":
        return value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise ValueError(value)
    if kind == "numeric":
        if isinstance(value, bool | dict | list):
            raise TypeError(value)
        number = float(value) if isinstance(value, str) else value
        if target.is_integer():
            if isinstance(number, float):
                if not number.is_integer():
                    raise ValueError(value)
                return int(number)
            return int(number)
        return float(number)
    if not isinstance(value, str):
        raise TypeError(value)
    moment = _moment(value.strip())
    if target == pl.Date():
        return moment.date()
    zone = target.time_zone if isinstance(target, pl.Datetime) else None
    if zone is None and moment.tzinfo is not None:  # fitted without a zone: the UTC wall time, as Polars casts it
        return moment.astimezone(UTC).replace(tzinfo=None)
    if zone is not None and moment.tzinfo is None:  # a naive value in a zoned column: read in UTC
        return moment.replace(tzinfo=UTC)
    return moment


def _moment(text: str) -> datetime:
    """ISO 8601 (what the store writes), else any format the model's own date parsing reads (a stream's text)."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        parsed = parse_datetimes(pl.Series([text]))[0]
        if not isinstance(parsed, datetime):
            raise
        return parsed
