"""Data contracts: the feature schema (which input columns a model needs, of which kind, and a hash that pins it)
and the columns every scored record gains."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from segscope._typing import FeatureKind

__all__ = ["REASON_DTYPE", "SCORED_COLUMNS", "SCORED_TYPES", "ColumnSpec", "FeatureSchema", "infer_kind"]

#: Columns every scored frame gains, in this order (the README's "What a scored record holds").
SCORED_COLUMNS = (
    "score",
    "anomaly_score",
    "supervised_score",
    "is_alert",
    "segment",
    "segment_confidence",
    "reasons",
    "model_version",
)

#: A record's reasons: the top features that drove its score, each with its value, the expected (normal) value
#: and its share of what makes the record unusual.
REASON_DTYPE = pl.List(
    pl.Struct({"feature": pl.String, "value": pl.String, "expected": pl.String, "contribution": pl.Float64})
)

#: The types of the scored columns, whatever the input.
SCORED_TYPES: dict[str, pl.DataType] = {
    "score": pl.Float64(),
    "anomaly_score": pl.Float64(),
    "supervised_score": pl.Float64(),
    "is_alert": pl.Boolean(),
    "segment": pl.Int32(),
    "segment_confidence": pl.Float64(),
    "reasons": REASON_DTYPE,
    "model_version": pl.String(),
}

_NUMERIC = (
    pl.Float32,
    pl.Float64,
    pl.Int8,
    pl.Int16,
    pl.Int32,
    pl.Int64,
    pl.UInt8,
    pl.UInt16,
    pl.UInt32,
    pl.UInt64,
    pl.Int128,
    pl.UInt128,
    pl.Decimal,
)


def infer_kind(dtype: pl.DataType) -> FeatureKind | None:
    """The feature kind of a Polars dtype, or None when segscope cannot use the column as a feature."""
    if dtype == pl.Boolean:
        return "boolean"
    if isinstance(dtype, _NUMERIC) or dtype in _NUMERIC:
        return "numeric"
    if isinstance(dtype, pl.Datetime | pl.Date) or dtype in (pl.Date, pl.Datetime):
        return "datetime"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Categorical | pl.Enum):
        return "categorical"
    return None


@dataclass(frozen=True)
class ColumnSpec:
    """One input column a model uses: name, kind, and the dtype seen at fit time."""

    name: str
    kind: FeatureKind
    dtype: str


@dataclass(frozen=True)
class FeatureSchema:
    """Input columns (in order), the derived feature names, and the id column."""

    columns: tuple[ColumnSpec, ...]
    features: tuple[str, ...]
    id_column: str | None = None

    @property
    def hash(self) -> str:
        """A stable hash of the schema; two bundles with the same hash accept the same records."""
        return hashlib.sha256(json.dumps(self.to_state(), sort_keys=True).encode()).hexdigest()

    def to_state(self) -> dict[str, Any]:
        return {
            "columns": [asdict(c) for c in self.columns],
            "features": list(self.features),
            "id_column": self.id_column,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> FeatureSchema:
        return cls(
            columns=tuple(ColumnSpec(**c) for c in data["columns"]),
            features=tuple(data["features"]),
            id_column=data.get("id_column"),
        )
