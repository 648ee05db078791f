"""Reasons: the top-k features that drove a record's score, with its value and the expected (normal) value.

A feature's contribution is how far into the tails of its own fit-time distribution the record's value lies:
``max(-log P(ref <= x), -log P(ref >= x)) - log 2`` (zero at the median), reported as a share of the record's
total so the top reasons read as "62% of what makes this record unusual".
"""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np
import polars as pl

from segscope._arrays import take
from segscope.exceptions import NotFittedError
from segscope.schema import REASON_DTYPE
from segscope.unsupervised import _ecdf, _kernels

__all__ = ["REASON_DTYPE", "FeatureExplainer", "alarms_first", "readable_typical"]


class FeatureExplainer:
    """Fit on the prepared reference matrix; :meth:`explain` returns the ``reasons`` column."""

    def __init__(self, *, top_k: int = 3, max_reference: int = 20_000) -> None:
        self.top_k = top_k
        self.max_reference = max_reference

    def fit(
        self, x: np.ndarray, feature_names: list[str], expected: list[str], ecdf: _ecdf.ECDFTable | None = None
    ) -> Self:
        """Fit on the prepared reference ``x``; ``ecdf`` reuses a detector's ECDF (then both share lookups)."""
        if ecdf is None:
            ref = x
            if x.shape[0] > self.max_reference:
                idx = np.random.default_rng(1).choice(x.shape[0], size=self.max_reference, replace=False)
                ref = x[np.sort(idx)]
            ecdf = _ecdf.build_ecdf(ref)
        self.ecdf_ = ecdf
        self.feature_names_ = list(feature_names)
        self.expected_ = list(expected)
        return self

    def explain(
        self,
        x: np.ndarray,
        numeric_values: np.ndarray,
        categorical_values: dict[int, pl.Series],
        expected: tuple[pl.Series, np.ndarray] | None = None,
        top: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> pl.Series:
        """The ``reasons`` column for prepared rows ``x``.

        ``numeric_values`` (rows x features, NaN = missing) and ``categorical_values`` (feature index -> strings)
        are the readable values (see ``FeaturePreparer.readable_values``). ``expected`` optionally gives per-row
        expected values as (table, group): ``table`` holds groups x features strings flattened row-major (e.g. each
        segment's typical values), ``group`` each row's group index; by default the fit-time values are used.
        ``top`` passes precomputed :func:`top_contributions` output.
        """
        n, d = x.shape
        k = min(self.top_k, d)
        if n == 0:
            return pl.Series("reasons", [], dtype=REASON_DTYPE)
        if not hasattr(self, "ecdf_"):
            raise NotFittedError("FeatureExplainer is not fitted; call fit(reference) first")
        top_idx, top_contrib, totals = top if top is not None else self.top_contributions(x)[:3]
        cols = top_idx[:, :k].astype(np.int64)
        top_contrib = top_contrib[:, :k]
        totals = totals[:, None]
        share = np.divide(top_contrib, totals, out=np.zeros_like(top_contrib), where=totals > 0)

        flat_idx = cols.reshape(-1)
        names = pl.Series("feature", self.feature_names_, dtype=pl.String).gather(flat_idx)
        if expected is None:
            exp = pl.Series("expected", self.expected_, dtype=pl.String).gather(flat_idx)
        else:
            table, group = expected
            exp = table.gather(np.repeat(group.astype(np.int64) * d, k) + flat_idx).alias("expected")
        numbers = np.take_along_axis(numeric_values, cols, axis=1).reshape(-1)
        value = _format_numbers(numbers)
        hours = np.flatnonzero(np.isin(flat_idx, self._hour_features()))
        if hours.size:  # hour-of-day parts read as clock times
            value = value.scatter(hours, _format_clock(numbers[hours]))
        if categorical_values:
            rows = np.repeat(np.arange(n), k)
            for j, strings in categorical_values.items():
                where = np.flatnonzero(flat_idx == j)
                if where.size:
                    value = value.scatter(where, strings.gather(rows[where]))
        flat = pl.DataFrame([names, value.alias("value"), exp, pl.Series("contribution", share.reshape(-1).round(4))])
        return (
            flat.select(pl.struct(pl.all()).alias("reasons")).get_column("reasons").reshape((n, k)).cast(REASON_DTYPE)
        )

    def _hour_features(self) -> np.ndarray:
        return _hour_indices(self.feature_names_)

    def top_contributions(
        self, x: np.ndarray, skew_sign: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(top feature indices, their contributions, row totals, ECOD scores if ``skew_sign`` is given)."""
        if not hasattr(self, "ecdf_"):
            raise NotFittedError("FeatureExplainer is not fitted; call fit(reference) first")
        k = min(self.top_k, x.shape[1])
        with_ecod = skew_sign is not None
        signs = skew_sign if skew_sign is not None else np.zeros(x.shape[1])
        idx, val, total, ecod = _ecdf.top_contributions(x, self.ecdf_, k, signs, with_ecod)
        return idx, val, total, ecod

    def to_state(self) -> dict[str, np.ndarray]:
        return {"sorted_ref": self.ecdf_.sorted_ref}

    @classmethod
    def from_state(
        cls,
        arrays: dict[str, np.ndarray],
        feature_names: list[str],
        expected: list[str],
        top_k: int,
        shared: _ecdf.ECDFTable | None = None,
    ) -> FeatureExplainer:
        """With ``shared`` (the ECOD detector's table): that table when it was built from the same reference, so
        one fused pass computes ECOD and the reasons, and the table is not built twice."""
        exp = cls(top_k=top_k)
        sorted_ref = take(arrays, "sorted_ref", "explainer", shape=(len(feature_names), None), finite=True, min_size=1)
        same = shared is not None and np.array_equal(shared.sorted_ref, sorted_ref)
        exp.ecdf_ = shared if shared is not None and same else _ecdf.build_ecdf(sorted_ref.T)
        exp.feature_names_, exp.expected_ = list(feature_names), list(expected)
        return exp


def readable_typical(values: np.ndarray, feature_names: list[str]) -> list[str]:
    """Typical values (one per feature, NaN = none) in the form reasons print them."""
    text = _format_numbers(values)
    hours = _hour_indices(feature_names)
    if hours.size:
        text = text.scatter(hours, _format_clock(values[hours]))
    return text.to_list()


def _hour_indices(feature_names: list[str]) -> np.ndarray:
    return np.array([j for j, name in enumerate(feature_names) if name.endswith("__hour")], dtype=np.int64)


def _format_numbers(values: np.ndarray) -> pl.Series:
    """Short human form (see :func:`format_number`), compiled, straight into an Arrow string-view array (Polars'
    own layout: no copy); the rare values the kernel leaves to Python are formatted by :func:`format_number`."""
    values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    if values.shape[0] > _FORMAT_CHUNK:  # a view's offset into its data is an int32
        parts = [_format_numbers(values[i : i + _FORMAT_CHUNK]) for i in range(0, values.shape[0], _FORMAT_CHUNK)]
        return pl.concat(parts, rechunk=False)
    import pyarrow as pa

    views, data, left = _kernels.format_numbers(values)
    strings = pa.Array.from_buffers(pa.string_view(), values.shape[0], [None, pa.py_buffer(views), pa.py_buffer(data)])
    out = pl.Series(_CArray(strings)).alias("value")
    where = np.flatnonzero(left)
    if where.size:
        out = out.scatter(where, pl.Series([format_number(float(values[i])) for i in where], dtype=pl.String))
    return out


class _CArray:
    """An Arrow array handed to Polars through the Arrow C data interface alone. Given the pyarrow array itself,
    Polars imports ``pyarrow.compute`` on the way (60 ms, at the first batch of every process) for a check that
    a plain string-view array never needs."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __arrow_c_array__(self, requested_schema: object | None = None) -> Any:
        return self.array.__arrow_c_array__(requested_schema)


#: values formatted per kernel call: their long forms (at most 24 bytes each) stay within an int32 offset
_FORMAT_CHUNK = 50_000_000


def format_number(v: float) -> str:
    """A number as reasons print it: ``null`` for NaN; whole numbers under 1e15 as integers; under 1e-4 or from
    1e15 as ``%.6g``; others as the decimal of their six significant digits (correctly rounded), ``.0`` when that
    is whole: ``0.000123457``, ``123457.0``, ``-2.5``."""
    if v != v:
        return "null"
    a = abs(v)
    if a < 1e15 and v == math.floor(v):
        return str(int(v))
    if a >= 1e15 or a < 1e-4:
        return f"{v:.6g}"
    mantissa, exponent = f"{a:.5e}".split("e")
    digits, before = mantissa.replace(".", ""), int(exponent) + 1
    sign = "-" if v < 0 else ""
    if before >= 6:
        return f"{sign}{digits}{'0' * (before - 6)}.0"
    if before >= 1:
        return f"{sign}{digits[:before]}.{digits[before:].rstrip('0') or '0'}"
    return f"{sign}0.{'0' * -before}{digits.rstrip('0')}"


def _format_clock(hours: np.ndarray) -> pl.Series:
    """Hours of day as HH:MM ('null' for missing)."""
    minutes = pl.Series(np.round(np.nan_to_num(hours, nan=0.0) * 60.0)).cast(pl.Int64)
    text = pl.select(
        pl.format("{}:{}", (minutes // 60).cast(pl.String).str.zfill(2), (minutes % 60).cast(pl.String).str.zfill(2))
    ).to_series()
    return text.scatter(np.flatnonzero(np.isnan(hours)), "null") if np.isnan(hours).any() else text


def alarms_first(frame: pl.DataFrame, reasons: pl.Series, columns: tuple[str, ...], k: int) -> pl.Series:
    """A reading a ``new_level`` policy alarms on gives that alarm (a new level, a stuck sensor) as its first
    reason, ahead of what the detectors found."""
    listed = pl.col("__reasons")
    alarms = [c for c in columns if c in frame.columns]
    picked = frame.select(alarms).with_columns(reasons.cast(REASON_DTYPE).alias("__reasons"))
    # one column at a time, materialised: an expression nested per column would grow 3^columns nodes
    for name in reversed(alarms):
        head = pl.struct(
            pl.lit(name).alias("feature"),
            pl.lit("1").alias("value"),
            pl.lit("0").alias("expected"),
            listed.list.first().struct.field("contribution").fill_null(0.0).alias("contribution"),
        )
        rest = listed.list.eval(pl.element().filter(pl.element().struct.field("feature") != name))
        moved = pl.when(pl.col(name) == 1.0).then(pl.concat_list([head, rest]).list.head(k)).otherwise(listed)
        picked = picked.with_columns(moved.cast(REASON_DTYPE).alias("__reasons"))
    return picked.get_column("__reasons").alias("reasons")
