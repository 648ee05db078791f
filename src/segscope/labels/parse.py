"""Analyst labels as they arrive: files (``id,label[,category]``; Parquet, CSV or NDJSON), single labels from the
page, the API or the command line, and messages on a labels topic. Everything becomes :class:`LabelIn` (checked)
or :data:`LABEL_SCHEMA` frames (for fine-tuning)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from segscope.exceptions import DataError, SchemaError

__all__ = [
    "LABEL_SCHEMA",
    "LabelIn",
    "label_from_message",
    "label_name",
    "label_values",
    "labels_from_frame",
    "load_labels",
    "normalise_labels",
]

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
    nested = [c for c in ("id", "label", "category") if c in frame.columns and frame.schema[c].is_nested()]
    if nested:
        raise SchemaError(
            f"{source}: column(s) {nested} hold lists or structs ({frame.schema[nested[0]]}); give one plain value "
            "per row: id as text or a number, label as anomaly/normal (or 1/0), category as text"
        )
    values = label_values(frame.get_column("label"), source=source)
    ids = frame.get_column("id").cast(pl.String)
    empty = ids.is_null() | (ids.str.strip_chars() == "")
    if empty.any():
        raise DataError(f"{source}: id is empty at row {int(empty.arg_true()[0])}; every label needs a record id")
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
    """ "anomaly" / "normal" for any accepted spelling (anomaly, 1, true, fraud, ... / normal, 0, false, ...)."""
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
    from segscope.sources.files import read_file  # on first use: the stream's labels come from a topic

    frame = read_file(path)
    return normalise_labels(frame, source=str(path))


@dataclass(frozen=True)
class LabelIn:
    """One label to add. ``label``: "anomaly" or "normal"."""

    id: str
    label: str
    analyst: str
    category: str | None = None
    note: str | None = None

    def checked(self) -> LabelIn:
        if not str(self.id).strip():
            raise DataError(
                f"the record id of a label is empty ({str(self.id)!r}); give the id of a record in the store, as "
                "`segscope label queue` shows it"
            )
        label = label_name(self.label)
        if label is None:
            raise DataError(f"label for {str(self.id)[:80]!r} is {str(self.label)[:40]!r}; use 'anomaly' or 'normal'")
        record_id = _clean_text(str(self.id), "the record id", 255)
        analyst = _clean_text(str(self.analyst), f"the analyst of the label for {record_id!r}", 255).strip()
        if not analyst:
            raise DataError(f"label for {record_id!r} has no analyst; say who labelled it")
        category = _clean_text(self.category, f"the category of {record_id!r}", 255).strip() if self.category else ""
        note = _clean_text(self.note, f"the note on {record_id!r}", 10_000, newlines=True) if self.note else ""
        return LabelIn(record_id, label, analyst, category or None, note or None)


def _clean_text(text: str, what: str, limit: int, *, newlines: bool = False) -> str:
    """NFC-normalised text without control or bidirectional-override characters (which can hide or reorder
    what an analyst's name or note shows elsewhere), at most ``limit`` characters."""
    text = unicodedata.normalize("NFC", str(text))
    allowed = "\u200c\u200d" + ("\n\t" if newlines else "")  # joiners are part of many scripts' spelling
    bad = next(
        (c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in allowed), None
    )
    if bad is not None:
        raise DataError(
            f"{what} holds the control character U+{ord(bad):04X}; use plain text (no control or "
            "direction-override characters)"
        )
    if len(text) > limit:
        raise DataError(f"{what} is {len(text):,} characters long; at most {limit:,} are kept")
    return text


def labels_from_frame(frame: pl.DataFrame, *, analyst: str, source: str) -> list[LabelIn]:
    """A label file (``id,label[,category][,note]``) as checked labels by ``analyst``; conflicting labels for one
    id are refused (see :func:`normalise_labels`)."""
    checked = normalise_labels(frame, source=source)
    note_of: dict[str, str | None] = {}
    if "note" in frame.columns:  # the last note given for an id, like its (agreeing) label
        note_of = dict(zip(frame["id"].cast(pl.String).to_list(), frame["note"].cast(pl.String).to_list(), strict=True))
    return [
        LabelIn(i, "anomaly" if v == 1 else "normal", analyst, c, note_of.get(i)).checked()
        for i, v, c in checked.iter_rows()
    ]


def label_from_message(value: bytes | None) -> LabelIn:
    """A label message from a labels topic: a JSON object ``{"id", "label", "analyst"[, "category", "note"]}``."""
    import orjson

    hint = "send JSON with id, label (anomaly/normal), analyst"
    try:
        body: Any = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise DataError(f"not a label: {exc}; {hint}") from None
    if not isinstance(body, dict):
        raise DataError(f"not a label: not a JSON object; {hint}")
    try:
        return LabelIn(
            str(body.get("id") or ""),
            str(body.get("label")),
            str(body.get("analyst") or ""),
            body.get("category"),
            body.get("note"),
        ).checked()
    except DataError as exc:
        raise DataError(f"not a label: {exc}; {hint}") from None
