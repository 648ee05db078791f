"""Analyst labels from files: ``id,label[,category]`` (Parquet or CSV; NDJSON too)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from segscope.exceptions import DataError, SchemaError
from segscope.sources.files import read_file

__all__ = ["LABEL_SCHEMA", "label_name", "label_values", "load_labels", "normalise_labels"]

#: Labels as segscope holds them: the record id as text, 1 = anomaly / 0 = normal, an optional category.
LABEL_SCHEMA = pl.Schema({"id": pl.String, "label": pl.Int8, "category": pl.String})

_ANOMALY = {"1", "anomaly", "true", "fraud", "attack", "yes"}
_NORMAL = {"0", "normal", "false", "no", "benign"}


def normalise_labels(frame: pl.DataFrame, *, source: str = "labels") -> pl.DataFrame:
    """Check and convert a label frame to :data:`LABEL_SCHEMA`; an id given twice must carry the same label and
    category both times (conflicting labels are refused, not resolved silently)."""
    missing = [c for c in ("id", "label") if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: column(s) {missing} missing; labels need columns id,label[,category]")
    values = label_values(frame.get_column("label"), source=source)
    ids = frame.get_column("id").cast(pl.String)
    if ids.null_count():
        raise DataError(f"{source}: id is empty at row {int(ids.is_null().arg_true()[0])}; every label needs an id")
    category = (
        frame.get_column("category").cast(pl.String)
        if "category" in frame.columns
        else pl.Series("category", [None] * frame.height, dtype=pl.String)
    )
    out = pl.DataFrame({"id": ids, "label": values, "category": category})
    conflicts = out.with_row_index("row").filter(
        (pl.struct("label", "category").n_unique().over("id") > 1) & pl.col("id").is_duplicated()
    )
    if conflicts.height:
        first = conflicts["id"][0]
        rows = conflicts.filter(pl.col("id") == first)["row"].to_list()
        raise DataError(
            f"{source}: id {first!r} has conflicting labels at rows {rows[:5]} ({conflicts['id'].n_unique()} id(s) "
            "in all); keep one label per id and retry"
        )
    return out.unique("id", keep="last", maintain_order=True)


def label_name(value: object) -> str | None:
    """"anomaly" / "normal" for any accepted spelling (anomaly, 1, true, fraud, ... / normal, 0, false, ...)."""
    text = str(value).strip().lower() if value is not None else ""
    return "anomaly" if text in _ANOMALY else "normal" if text in _NORMAL else None


def label_values(column: pl.Series, *, source: str = "labels") -> pl.Series:
    """A label column as Int8 (1 = anomaly, 0 = normal); anything else is refused with its row."""
    text = column.cast(pl.String).str.strip_chars().str.to_lowercase()
    bad = ~(text.is_in(sorted(_ANOMALY | _NORMAL)) & text.is_not_null())
    if bad.any():
        row = int(bad.arg_true()[0])
        raise DataError(f"{source}: label at row {row} is {column[row]!r}; use anomaly/normal (or 1/0)")
    return text.is_in(sorted(_ANOMALY)).cast(pl.Int8).alias("label")


def load_labels(path: str | Path) -> pl.DataFrame:
    """Read a labels file (Parquet, CSV or NDJSON) into :data:`LABEL_SCHEMA`."""
    frame = read_file(path)
    return normalise_labels(frame, source=str(path))
