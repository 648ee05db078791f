"""Turn input columns into a numeric feature matrix, the same way at fit and at score time.

Rules (documented in the README, "Input data"):

* numeric: centred on the fit median, scaled by the fit IQR (robust to outliers), clipped to +-``clip``;
  NaN counts as missing. Infinite values are refused.
* boolean: 0/1.
* categorical (strings): *rarity* encoding, ``-log(frequency at fit)``; a category never seen at fit gets a
  rarity above every seen one (and is named "unseen" in ``reasons``); null is a category of its own.
* datetime: hour of day and day of week (absolute time is not a behaviour: it would make every future record
  look new).
* missing values: imputed with the fit median; a ``<column>__missing`` indicator is added for columns that had
  missing values at fit time.
* the id column and ``drop`` columns are never features (a ``drop`` column the data lacks is simply absent);
  all-null, constant and identifier-like (too many categories) columns are dropped at fit, and the manifest says
  why; a constant per-entity feature is kept (``keep_constant``: a flat sensor that moves later is a finding).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Self, TypeVar

import numba as nb
import numpy as np
import polars as pl

from segscope.exceptions import DataError, NotFittedError, SchemaError
from segscope.features.casts import cast_or_explain, refuse_numbers_with_garbage, target_dtype
from segscope.features.prepared_state import check_state
from segscope.schema import ColumnSpec, FeatureSchema, infer_kind
from segscope.sources.frames import check_unique_ids

_T = TypeVar("_T")

__all__ = ["FeaturePreparer"]

_NULL_LEVEL = "\x00null"


def _fmt(value: float) -> str:
    return f"{value:.6g}"


class FeaturePreparer:
    """Fit on history with :meth:`fit`; :meth:`transform` turns frames into a float64 feature matrix."""

    def __init__(
        self,
        *,
        id_column: str | None = None,
        drop: tuple[str, ...] = (),
        max_categories: int = 10_000,
        clip: float = 1e6,
        keep_constant: tuple[str, ...] = (),
    ) -> None:
        self.id_column = id_column
        self.drop = drop
        self.max_categories = max_categories
        self.clip = clip
        #: numeric columns kept even when constant at fit (per-entity features: a sensor flat over the whole fit
        #: that moves later, or one that sticks, is a finding); fit-time only, the fitted schema carries the result
        self.keep_constant = keep_constant

    # ------------------------------------------------------------------ fit
    def fit(self, frame: pl.DataFrame) -> Self:
        if frame.height == 0:
            raise DataError("the data has no rows; fit needs history with at least one row")
        # a column to drop that the data does not have is already left out (a pack drops its label column, a
        # file without one is still fitted); the id column is a promise about every record, so it must be there
        if self.id_column is not None and self.id_column not in frame.columns:
            raise SchemaError(
                f"id column '{self.id_column}' (--id-column or features.id_column) is not in the data; "
                f"the data has {frame.columns[:20]}{'...' if frame.width > 20 else ''}"
            )
        if self.id_column is not None:
            check_unique_ids(frame, self.id_column)

        self.numeric_: dict[str, dict[str, Any]] = {}
        self.categorical_: dict[str, dict[str, Any]] = {}
        self.dropped_: dict[str, str] = {}
        columns: list[ColumnSpec] = []
        features: list[str] = []
        expected: dict[str, str] = {}
        source: dict[str, str] = {}
        excluded = {*self.drop, *([self.id_column] if self.id_column else [])}
        for name, dtype in frame.schema.items():
            if name in excluded:
                continue
            kind = infer_kind(dtype)
            if kind is None:
                self.dropped_[name] = f"type {dtype} is not a feature type"
                continue
            col = frame.get_column(name)
            if kind == "categorical":
                refuse_numbers_with_garbage(col)
            if col.null_count() == frame.height or (
                col.dtype.is_float() and col.fill_nan(None).null_count() == frame.height
            ):
                self.dropped_[name] = "all values are null"
                continue
            if kind == "categorical":
                stats = self._fit_categorical(col)
                if stats is None:
                    continue
                self.categorical_[name] = stats
                features.append(name)
                expected[name] = stats["mode"]
                source[name] = name
            else:
                parts = self._fit_numeric_like(name, kind, col)
                if not parts:
                    continue
                for feat, stats in parts.items():
                    self.numeric_[feat] = stats
                    features.append(feat)
                    expected[feat] = stats["expected"]
                    source[feat] = name
            columns.append(ColumnSpec(name=name, kind=kind, dtype=str(dtype)))
        if not features:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.dropped_.items()) or "no columns besides id/drop"
            raise DataError(f"no usable feature columns ({reasons}); fit needs at least one varying column")
        self.schema_ = FeatureSchema(columns=tuple(columns), features=tuple(features), id_column=self.id_column)
        self.expected_ = expected
        self.source_column_ = source
        return self

    def _fit_categorical(self, col: pl.Series) -> dict[str, Any] | None:
        values = col.cast(pl.String).fill_null(_NULL_LEVEL)
        counts = values.value_counts(sort=True)
        if counts.height > self.max_categories:
            self.dropped_[col.name] = (
                f"{counts.height} distinct values (more than max_categories={self.max_categories}): "
                "looks like an identifier"
            )
            return None
        if counts.height == 1:
            self.dropped_[col.name] = "constant (one value only)"
            return None
        n = float(values.len())
        levels = counts.get_column(col.name).to_list()
        freq = counts.get_column("count").to_numpy().astype(np.float64) / n
        rarity = -np.log(freq)
        return {
            "levels": levels,
            "rarity": rarity.tolist(),
            "unseen_rarity": float(-math.log(0.5 / n)),
            "mode": "null" if levels[0] == _NULL_LEVEL else str(levels[0]),
        }

    def _fit_numeric_like(self, name: str, kind: str, col: pl.Series) -> dict[str, dict[str, Any]]:
        parts: dict[str, pl.Series] = {}
        if kind == "datetime":
            if col.dtype == pl.Date:
                parts[f"{name}__weekday"] = col.dt.weekday().cast(pl.Float64)
            else:
                parts[f"{name}__hour"] = pl.select(_hour_of_day(pl.lit(col))).to_series()
                parts[f"{name}__weekday"] = col.dt.weekday().cast(pl.Float64)
        else:
            values = col.cast(pl.Float64)
            if values.is_infinite().any():
                row = int(values.is_infinite().arg_true()[0])
                raise DataError(
                    f"column '{name}' has an infinite value at row {row}; replace infinities with a "
                    "finite value or null (missing) before fitting"
                )
            parts[name] = values.fill_nan(None)
        out: dict[str, dict[str, Any]] = {}
        for feat, values in parts.items():
            present = values.drop_nulls()
            kept = kind == "numeric" and feat in self.keep_constant
            if present.n_unique() <= 1 and values.null_count() == 0 and not kept:
                self.dropped_[feat] = "constant (one value only)"
                continue
            arr = present.to_numpy()
            median = float(np.median(arr))
            q25, q75 = np.quantile(arr, [0.25, 0.75])
            scale = float(q75 - q25) / 1.349
            if not scale > 0:
                scale = float(np.std(arr))
            if not scale > 0 or not math.isfinite(scale):
                scale = 1.0
            if kind == "boolean":
                median, scale = float(np.round(np.mean(arr))), 1.0
            minutes = round(median * 60)
            expected = f"{minutes // 60:02d}:{minutes % 60:02d}" if feat.endswith("__hour") else _fmt(median)
            out[feat] = {"center": median, "scale": scale, "kind": kind, "expected": expected}
            if values.null_count() > 0:
                out[f"{feat}__missing"] = {"center": 0.0, "scale": 1.0, "kind": "missing", "expected": "0"}
        return out

    # ------------------------------------------------------------ validate
    def _check_fitted(self) -> None:
        if not hasattr(self, "schema_"):
            raise NotFittedError("FeaturePreparer is not fitted; call fit(history) first")

    def validate(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Check ``frame`` against the fitted schema and cast its columns to the fit-time types.

        Raises a :class:`SchemaError` for missing columns or values of the wrong type and a :class:`DataError`
        for infinite values; extra columns are kept untouched.
        """
        self._check_fitted()
        missing = [c.name for c in self.schema_.columns if c.name not in frame.columns]
        if missing:
            raise SchemaError(
                f"column(s) {missing} are missing; the bundle was fitted with them: add them to the input "
                "(null is allowed) or refit without them (--drop)"
            )
        casts = []
        for spec in self.schema_.columns:
            col = frame.get_column(spec.name)
            target = target_dtype(spec)
            if col.dtype == target or (spec.kind == "categorical" and col.dtype == pl.String):
                converted = col
            else:
                converted = cast_or_explain(col, spec, target)
            # the extremes show an infinity without a mask per column (Polars' min and max pass over NaN)
            if spec.kind == "numeric" and converted.dtype.is_float() and _infinite(converted.min(), converted.max()):
                row = int(converted.is_infinite().arg_true()[0])
                raise DataError(
                    f"column '{spec.name}' has an infinite value at row {row}; replace it with a finite "
                    "value or null (missing) and score again"
                )
            casts.append(converted)
        return frame.with_columns(casts)

    # ----------------------------------------------------------- transform
    def _once(self, name: str, build: Callable[[], _T]) -> _T:
        """What ``build`` makes of the fitted state, made once per fit: expressions, whose building is Python work
        each batch of a stream would otherwise pay again."""
        made: dict[str, tuple[FeatureSchema, Any]] = self.__dict__.setdefault("_made", {})
        found = made.get(name)
        if found is None or found[0] is not self.schema_:  # fitted again (a new schema_): made again
            found = made[name] = (self.schema_, build())
        return found[1]

    def feature_exprs(self) -> list[pl.Expr]:
        """Polars expressions that compute every feature from validated input columns."""
        self._check_fitted()
        return list(self._once("features", self._feature_exprs))

    def _feature_exprs(self) -> list[pl.Expr]:
        exprs: list[pl.Expr] = []
        for feat in self.schema_.features:
            if feat in self.categorical_:
                stats = self.categorical_[feat]
                expr = (
                    pl.col(feat)
                    .cast(pl.String)
                    .fill_null(_NULL_LEVEL)
                    .replace_strict(
                        stats["levels"], stats["rarity"], default=stats["unseen_rarity"], return_dtype=pl.Float64
                    )
                )
                exprs.append(expr.alias(feat))
                continue
            stats = self.numeric_[feat]
            base = self._raw_expr(feat)
            if stats["kind"] == "missing":
                expr = base.is_null().cast(pl.Float64)
            else:
                # times the reciprocal, not divided: Polars divides a long column by a scalar as a multiplication by
                # its reciprocal but a one-row column exactly, so a record's features (and its place among tied
                # reference values) would depend on its batch
                expr = ((base - stats["center"]) * (1.0 / stats["scale"])).clip(-self.clip, self.clip).fill_null(0.0)
            exprs.append(expr.alias(feat))
        return exprs

    def _raw_expr(self, feat: str) -> pl.Expr:
        """The unscaled value behind a numeric-like feature (NaN as null)."""
        name = self.source_column_[feat]
        part = feat[len(name) :]
        if part.endswith("__missing"):
            part = part[: -len("__missing")]
        col = pl.col(name)
        if part == "__hour":
            return _hour_of_day(col)
        if part == "__weekday":
            return col.dt.weekday().cast(pl.Float64)
        return col.cast(pl.Float64).fill_nan(None)

    def readable_values(self, frame: pl.DataFrame) -> tuple[np.ndarray, dict[int, pl.Series]]:
        """Each feature's value as a person reads it, for ``reasons``: a float matrix (rows x features; NaN =
        missing or not numeric) and, for categorical features (by feature index), the strings, with categories
        never seen at fit marked "(unseen)"."""
        numeric_exprs, text_exprs = self._once("readable", self._readable_exprs)
        # one select for all the text (columns in parallel), numbers straight into their places in the matrix
        texts = frame.select(list(text_exprs.values())) if text_exprs else pl.DataFrame()
        categorical = {j: texts.to_series(i) for i, j in enumerate(text_exprs)}
        if not text_exprs:  # all numeric: Polars' own (column-major) matrix, no copy into another
            return np.asarray(frame.select(numeric_exprs).to_numpy(), dtype=np.float64), categorical
        matrix = np.full((frame.height, len(self.schema_.features)), np.nan)
        if numeric_exprs:
            numeric = [j for j in range(matrix.shape[1]) if j not in text_exprs]
            matrix[:, numeric] = frame.select(numeric_exprs).to_numpy()
        return matrix, categorical

    def _readable_exprs(self) -> tuple[list[pl.Expr], dict[int, pl.Expr]]:
        numeric_exprs: list[pl.Expr] = []
        text_exprs: dict[int, pl.Expr] = {}
        for j, feat in enumerate(self.schema_.features):
            if feat in self.categorical_:
                col = pl.col(feat).cast(pl.String)
                levels = pl.Series(self.categorical_[feat]["levels"], dtype=pl.String)
                text_exprs[j] = (
                    pl.when(col.is_null())
                    .then(pl.lit("null"))
                    .when(col.is_in(levels.implode()))
                    .then(col)
                    .otherwise(col + pl.lit(" (unseen)"))
                    .alias(feat)
                )
            elif self.numeric_[feat]["kind"] == "missing":
                numeric_exprs.append(self._raw_expr(feat).is_null().cast(pl.Float64).alias(feat))
            else:
                numeric_exprs.append(self._raw_expr(feat).alias(feat))
        return numeric_exprs, text_exprs

    def category_cardinalities(self) -> tuple[int, ...]:
        """Number of fit-time levels of each categorical feature, in feature order (the columns of
        :meth:`category_codes`)."""
        self._check_fitted()
        return tuple(len(self.categorical_[name]["levels"]) for name in self._categorical_features())

    def _categorical_features(self) -> list[str]:
        """Categorical features in feature order (a loaded bundle's table is keyed in another order)."""
        return [f for f in self.schema_.features if f in self.categorical_]

    def category_codes(self, frame: pl.DataFrame) -> np.ndarray:
        """Which category each row holds, for learners that can use identity (rarity alone merges levels of
        equal frequency): per categorical feature, the level's index at fit (most common first; null is a level
        when the fit saw it) and NaN for a value never seen at fit. A validated frame in, rows x categoricals."""
        self._check_fitted()
        if not self.categorical_:
            return np.empty((frame.height, 0))
        exprs = []
        for name in self._categorical_features():
            levels = self.categorical_[name]["levels"]
            code = pl.col(name).cast(pl.String).fill_null(_NULL_LEVEL)
            exprs.append(code.replace_strict(levels, list(range(len(levels))), default=None, return_dtype=pl.Float64))
        matrix = frame.select(exprs).to_numpy()
        return np.ascontiguousarray(matrix, dtype=np.float64)

    def transform(self, frame: pl.DataFrame) -> np.ndarray:
        """The feature matrix (rows x features, float64, C order) of a validated frame."""
        plain, others, sources, centers, inverse = self._once("plain", self._plain_numeric)
        if not plain.size:
            matrix = frame.select(self.feature_exprs()).to_numpy(order="c")  # C order built directly: no copy after
            return np.ascontiguousarray(matrix, dtype=np.float64)
        # plain numeric features (most of a wide numeric table) in one compiled pass from Polars' own columns; the
        # rest (categories, date parts, missing flags) by their expressions
        matrix = np.empty((frame.height, len(self.schema_.features)))
        if others.size:
            exprs = self.feature_exprs()
            matrix[:, others] = frame.select([exprs[j] for j in others]).to_numpy()
        raw = frame.select([pl.col(name).cast(pl.Float64) for name in sources]).to_numpy()
        _scale_into(matrix, plain, raw, centers, inverse, float(self.clip))
        return matrix

    def _plain_numeric(self) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
        """The features that are a numeric column scaled as it is (their indices, the other features' indices,
        source columns, centres and reciprocal scales): what :func:`_scale_into` computes, as their expressions in
        :meth:`feature_exprs`."""
        plain, sources, centers, inverse = [], [], [], []
        for j, feat in enumerate(self.schema_.features):
            stats = self.numeric_.get(feat)
            if feat in self.categorical_ or stats is None or stats["kind"] == "missing":
                continue
            if feat != self.source_column_[feat]:  # a part of a column (hour of day, weekday)
                continue
            plain.append(j)
            sources.append(feat)
            centers.append(stats["center"])
            inverse.append(1.0 / stats["scale"])
        others = np.setdiff1d(np.arange(len(self.schema_.features)), plain)
        return np.array(plain, dtype=np.int64), others, sources, np.array(centers, dtype=np.float64), np.array(inverse)

    def describe_columns(self) -> list[tuple[str, str, str, str, str]]:
        """Per input column: (name, kind, dtype at fit, its features, their expected values), for people."""
        self._check_fitted()
        rows: list[tuple[str, str, str, str, str]] = []
        for spec in self.schema_.columns:
            feats = [f for f in self.schema_.features if self.source_column_[f] == spec.name]
            rows.append(
                (spec.name, spec.kind, spec.dtype, ", ".join(feats), ", ".join(self.expected_[f] for f in feats))
            )
        return rows

    # --------------------------------------------------------- persistence
    def to_state(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "params": {
                "id_column": self.id_column,
                "drop": list(self.drop),
                "max_categories": self.max_categories,
                "clip": self.clip,
            },
            "schema": self.schema_.to_state(),
            "numeric": self.numeric_,
            "categorical": self.categorical_,
            "dropped": self.dropped_,
            "expected": self.expected_,
            "source_column": self.source_column_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeaturePreparer:
        state = check_state(state)  # typed: numbers as floats, every table where it belongs
        params = state["params"]
        prep = cls(
            id_column=params["id_column"],
            drop=tuple(params["drop"]),
            max_categories=params["max_categories"],
            clip=params["clip"],
        )
        prep.schema_ = FeatureSchema.from_state(state["schema"])
        prep.numeric_ = state["numeric"]
        prep.categorical_ = state["categorical"]
        prep.dropped_ = state["dropped"]
        prep.expected_ = state["expected"]
        prep.source_column_ = state["source_column"]
        return prep


@nb.njit(cache=True, parallel=True, nogil=True)
def _scale_into(
    out: np.ndarray, columns: np.ndarray, raw: np.ndarray, centers: np.ndarray, inverse: np.ndarray, clip: float
) -> None:
    """``out[:, columns[j]] = clip((raw[:, j] - centers[j]) * inverse[j])``, NaN as 0: the numeric features'
    expression (:meth:`FeaturePreparer.feature_exprs`), the same operations in the same order, so the same bits."""
    for i in nb.prange(raw.shape[0]):
        for j in range(raw.shape[1]):
            x = raw[i, j]
            out[i, columns[j]] = 0.0 if x != x else min(max((x - centers[j]) * inverse[j], -clip), clip)


def _infinite(low: Any, high: Any) -> bool:
    return bool(low == -math.inf or high == math.inf)


def _hour_of_day(col: pl.Expr) -> pl.Expr:
    """Hour of day with minutes as a fraction; times the reciprocal of 60 for the same bits in every batch."""
    return (col.dt.hour().cast(pl.Float64) + col.dt.minute().cast(pl.Float64) * (1.0 / 60.0)).cast(pl.Float64)
