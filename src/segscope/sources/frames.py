"""What every source's frames are held to, and the layers after them too: the id rule (every record has an id and
no id names two records: labels refer to ids) and dates written as text read as dates.

Reading dates comes in two strengths: :func:`parse_date_columns` and :func:`parse_dates` type a column only when
every value reads as a date (a text file's columns, decided once), :func:`parse_datetimes` reads what it can and
leaves the rest null (a model's checks then name the row that did not read).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from segscope.exceptions import DataError

__all__ = [
    "check_id_kind",
    "check_ids_present",
    "check_ids_unique",
    "check_unique_ids",
    "duplicate_id_error",
    "null_id_error",
    "parse_date_columns",
    "parse_dates",
    "parse_datetimes",
]


# ------------------------------------------------------------------ ids
def null_id_error(id_column: str, row: int) -> DataError:
    return DataError(f"id column '{id_column}' is null at row {row}; every record needs an id")


def duplicate_id_error(id_column: str, value: object, count: int, row: int) -> DataError:
    return DataError(
        f"id column '{id_column}' has duplicate values (e.g. {value!r} appears {count} times, first at row {row}); "
        "ids must be unique: de-duplicate the input or choose another --id-column"
    )


def check_id_kind(ids: pl.Series, id_column: str) -> None:
    """Refuse ids that are not single values (lists, structs, bytes): they cannot be compared, stored or labelled."""
    if isinstance(ids.dtype, pl.List | pl.Array | pl.Struct | pl.Binary | pl.Object):
        raise DataError(
            f"id column '{id_column}' holds {ids.dtype} values; ids must be text or whole numbers: choose another "
            "--id-column or convert it"
        )


def check_ids_present(ids: pl.Series, id_column: str, *, start: int = 0) -> None:
    """Refuse a null id; ``start`` is the row of ``ids[0]`` in the input, so the message names the input's row."""
    check_id_kind(ids, id_column)
    if ids.null_count():
        raise null_id_error(id_column, start + int(ids.is_null().arg_true()[0]))


def check_ids_unique(ids: pl.Series, id_column: str) -> None:
    """Refuse an id that names two records (``ids`` is the whole input, in order, each part of it through
    :func:`check_ids_present` first, which refuses ids of a kind that cannot be compared)."""
    duplicated = ids.is_duplicated()
    if duplicated.any():
        first = int(duplicated.arg_true()[0])
        value = ids[first]
        raise duplicate_id_error(id_column, value, int((ids == value).sum()), first)


def check_unique_ids(frame: pl.DataFrame, id_column: str) -> None:
    """Refuse null or duplicate ids in a frame held in memory (a file: :func:`segscope.sources.files.check_file_ids`
    checks it without loading it)."""
    ids = frame.get_column(id_column)
    check_ids_present(ids, id_column)
    check_ids_unique(ids, id_column)


# ------------------------------------------------------------------ dates
def parse_datetimes(text: pl.Series) -> pl.Series:
    """Text to Datetime, null where a value does not read as one. Polars infers the format from the first value
    and fails the whole column when that one is garbage: then each value is read on its own."""
    try:
        return text.str.to_datetime(strict=False)
    except pl.exceptions.PolarsError:

        def one(value: str | None) -> object:
            try:
                return pl.Series([value]).str.to_datetime(strict=False)[0]
            except pl.exceptions.PolarsError:
                return None

        return pl.Series(text.name, [one(v) for v in text.to_list()], dtype=pl.Datetime("us"))


def parse_dates(frame: pl.DataFrame, *, sample: int = 1000) -> pl.DataFrame:
    """Text columns whose values all read as dates or date-times become Date/Datetime columns (text formats have
    no types; Parquet keeps its own). A column is tested on a sample of its values first, so the cost is paid
    only for columns that hold dates."""
    candidates = []
    for name, dtype in frame.schema.items():
        if dtype != pl.String:
            continue
        values = frame.get_column(name).drop_nulls()
        if values.len() and values.head(sample).str.contains(r"^\s*\d{4}-\d{2}-\d{2}").all():
            candidates.append(name)
    return parse_date_columns(frame, candidates)


def parse_date_columns(frame: pl.DataFrame, dates: Iterable[str]) -> pl.DataFrame:
    """The text columns named in ``dates`` as Date/Datetime where every value reads as one; the others as they are."""
    parsed = [
        column
        for name in dates
        if name in frame.columns and frame.schema[name] == pl.String
        for column in [_as_date(frame.get_column(name))]
        if column is not None
    ]
    return frame.with_columns(parsed) if parsed else frame


def _as_date(column: pl.Series) -> pl.Series | None:
    """The column as Date (all values dates) or Datetime, when every non-null value parses; else None."""
    text = column.str.strip_chars()
    for as_date in (True, False):
        try:
            out = text.str.to_date(strict=False) if as_date else text.str.to_datetime(strict=False, time_unit="us")
        except pl.exceptions.PolarsError:
            continue
        if out.null_count() == column.null_count():
            if getattr(out.dtype, "time_zone", None):
                out = out.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            return out.alias(column.name)
    return None


#: Numeric event times are epoch times, each value's unit read from its magnitude: from 1e17 nanoseconds, from 1e14
#: microseconds, from 1e11 milliseconds, else seconds. Each unit's values for 1973-5138 lie in a range of their
#: own, so epoch times of those years are never misread; smaller numbers (seconds since a start) stay seconds.
_EPOCH_SCALES = ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3))


def epoch_seconds(values: pl.Series) -> pl.Series:
    """Numeric epoch times (seconds, milliseconds, microseconds or nanoseconds, each value by its magnitude) as
    float seconds."""
    number = values.cast(pl.Float64)
    expr = pl.col("t")
    for low, scale in reversed(_EPOCH_SCALES):  # the largest magnitude decided first
        expr = pl.when(pl.col("t").abs() >= low).then(pl.col("t") * (1.0 / scale)).otherwise(expr)
    return pl.DataFrame({"t": number}).select(expr.alias(values.name)).to_series()


def event_seconds(column: pl.Series, name: str) -> np.ndarray:
    """An entity's event-time column ``name`` as float seconds since 1970 (NaN: missing): date-times, dates, epoch
    times as numbers or text; anything else is a one-line :class:`DataError`."""
    if column.dtype == pl.String:
        column = column.str.strip_chars().replace("", None)
        as_number = column.cast(pl.Float64, strict=False)
        if column.null_count() < column.len() and as_number.null_count() == column.null_count():
            column = as_number  # epoch times written as text ("1767225600000")
        else:
            parsed = parse_datetimes(column)
            unread = parsed.is_null() & column.is_not_null()
            if unread.any():
                row = int(unread.arg_true()[0])
                raise DataError(
                    f"entity time column '{name}' holds {column[row]!r} at row {row}, which is not a date-time; "
                    "fix the value (ISO 8601, e.g. 2025-03-01 12:00:00, or an epoch time) or leave it empty"
                )
            column = parsed
    if isinstance(column.dtype, pl.Datetime):
        seconds = column.dt.epoch("us").cast(pl.Float64) / 1e6
    elif column.dtype == pl.Date:
        seconds = column.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
    elif column.dtype.is_numeric():
        seconds = epoch_seconds(column)
    else:
        raise DataError(
            f"entity time column '{name}' holds {column.dtype}; give date-times or epoch times (seconds, "
            "milliseconds, microseconds or nanoseconds since 1970)"
        )
    return seconds.fill_null(np.nan).to_numpy()
