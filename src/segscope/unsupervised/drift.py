"""Drift: is what is being scored like what the model was fitted on? A model scoring data from another world
(another year, another product, a changed upstream field) raises alerts that mean nothing, so segscope says so.

At fit, each input column gets a reference: for numbers (and the hour and weekday of date-times) the fit range and
the shares of rows in decile bins (plus missing); for categories the shares of the most common levels (plus
"other" and missing). A :class:`DriftTracker` (one per file or stream window, owned by the caller, like the
alert policy's state) counts the scored rows into the same bins and reports, per column, the population stability
index (PSI = sum (p - q) ln(p / q); above 0.25 is the usual "major shift"), the share of rows outside the fit range
and the share of categories never seen at fit, and the alert rate against the rate the policy expects. One
warning line names the columns and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from segscope.unsupervised import _kernels

__all__ = ["DriftReference", "DriftReport", "DriftTracker", "time_like_columns"]

#: A column shifted this much (PSI) is named in the warning; 0.25 is the usual threshold of a major shift.
PSI_WARN = 0.25
#: ... or when this share of its values lies outside the fit range, or is a category never seen at fit.
SHARE_WARN = 0.05
#: Smoothing of empty bins in the PSI (an empty reference bin that fills gives ~ln(1/1e-4) = 9.2 per unit share).
_EPS = 1e-4
_TOP_LEVELS = 30
_MISSING = "\x00missing"
_NUMERIC_FIELDS = ("name", "low", "high", "edges", "shares", "whole")
_OTHER = "\x00other"


@dataclass
class _NumericRef:
    name: str
    low: float
    high: float
    edges: list[float]
    shares: list[float]  # one per bin (len(edges) + 1), then missing
    whole: bool  # all fit values are whole numbers (the range prints without decimals)


@dataclass
class _CategoricalRef:
    name: str
    levels: list[str]
    shares: list[float]  # one per level, then other, then missing
    seen: set[str] = field(default_factory=set)


def _numeric_reference(name: str, values: pl.Series) -> _NumericRef | None:
    present = values.drop_nulls().drop_nans() if values.dtype.is_float() else values.drop_nulls()
    if present.len() == 0:
        return None
    arr = present.cast(pl.Float64).to_numpy()
    edges = np.unique(np.quantile(arr, np.linspace(0.1, 0.9, 9)))
    counts = np.bincount(np.searchsorted(edges, arr, side="left"), minlength=edges.size + 1).astype(float)
    missing = float(values.len() - present.len())
    total = counts.sum() + missing
    return _NumericRef(
        name,
        float(arr.min()),
        float(arr.max()),
        edges.tolist(),
        [*(counts / total).tolist(), missing / total],
        bool(np.all(arr == np.round(arr))),
    )


def _categorical_reference(name: str, values: pl.Series) -> _CategoricalRef:
    text = values.cast(pl.String).fill_null(_MISSING)
    counts = text.value_counts(sort=True)
    levels = [v for v in counts.get_column(text.name).to_list() if v != _MISSING][:_TOP_LEVELS]
    total = float(text.len())
    by_level = dict(zip(counts.get_column(text.name).to_list(), counts.get_column("count").to_list(), strict=True))
    missing = by_level.get(_MISSING, 0) / total
    shares = [by_level[v] / total for v in levels]
    other = max(0.0, 1.0 - sum(shares) - missing)
    return _CategoricalRef(name, levels, [*shares, other, missing], {v for v in by_level if v != _MISSING})


def _psi(observed: np.ndarray, expected: np.ndarray) -> float:
    p = np.maximum(observed / max(observed.sum(), 1.0), _EPS)
    q = np.maximum(np.asarray(expected, dtype=float), _EPS)
    return float(np.sum((p - q) * np.log(p / q)))


def _derived(frame: pl.DataFrame, name: str, part: str) -> pl.Series:
    column = frame.get_column(name)
    if part == "hour":
        return (column.dt.hour().cast(pl.Float64) + column.dt.minute().cast(pl.Float64) * (1.0 / 60.0)).cast(pl.Float64)
    if part == "weekday":
        return column.dt.weekday().cast(pl.Float64)
    return column


class DriftReference:
    """Fit-time references of the input columns (see the module docstring)."""

    def fit(
        self, frame: pl.DataFrame, columns: Sequence[tuple[str, str]], alert_rate: float | None
    ) -> DriftReference:
        """``columns``: (name, kind) of the model's input columns; ``alert_rate``: the policy's rate on the fit
        rows (None for an alert budget, which has no rate)."""
        self.numeric_: list[tuple[str, str, _NumericRef]] = []
        self.categorical_: list[_CategoricalRef] = []
        for name, kind in columns:
            if kind == "categorical":
                self.categorical_.append(_categorical_reference(name, frame.get_column(name)))
            elif kind == "numeric":
                ref = _numeric_reference(name, frame.get_column(name).cast(pl.Float64, strict=False))
                if ref is not None:
                    self.numeric_.append((name, "", ref))
            elif kind == "datetime":  # absolute time always moves on: its hour and weekday are what can drift
                for part in ("hour", "weekday"):
                    if part == "hour" and frame.schema[name] == pl.Date:
                        continue
                    ref = _numeric_reference(f"{name}__{part}", _derived(frame, name, part))
                    if ref is not None:
                        self.numeric_.append((name, part, ref))
        self.alert_rate_ = alert_rate
        return self

    def to_state(self) -> dict[str, Any]:
        return {
            "alert_rate": self.alert_rate_,
            "numeric": [
                {"column": c, "part": p, **{k: getattr(r, k) for k in _NUMERIC_FIELDS}}
                for c, p, r in self.numeric_
            ],
            "categorical": [
                {"name": r.name, "levels": r.levels, "shares": r.shares, "seen": sorted(r.seen)}
                for r in self.categorical_
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DriftReference:
        ref = cls()
        ref.alert_rate_ = state["alert_rate"]
        ref.numeric_ = [
            (d["column"], d["part"], _NumericRef(d["name"], d["low"], d["high"], d["edges"], d["shares"], d["whole"]))
            for d in state["numeric"]
        ]
        ref.categorical_ = [
            _CategoricalRef(d["name"], d["levels"], d["shares"], set(d["seen"])) for d in state["categorical"]
        ]
        return ref

    def tracker(self) -> DriftTracker:
        return DriftTracker(self)


@dataclass(frozen=True)
class ColumnDrift:
    name: str
    psi: float
    outside: float  # share of present values outside the fit range (numbers)
    unseen: float  # share of values never seen at fit (categories)
    fit_range: str
    missing: float = 0.0  # share of rows missing now
    fit_missing: float = 0.0  # ... and at fit

    @property
    def more_missing(self) -> bool:
        return self.missing - self.fit_missing > SHARE_WARN

    @property
    def shifted(self) -> bool:
        return self.psi > PSI_WARN or self.outside > SHARE_WARN or self.unseen > SHARE_WARN or self.more_missing

    def describe(self) -> str:
        if self.more_missing:  # an upstream field that stopped arriving: say that, not "shifted"
            return f"{self.missing:.0%} of rows missing vs {self.fit_missing:.0%} at fit (PSI {self.psi:.1f})"
        if self.outside > SHARE_WARN:
            return f"{self.outside:.0%} of rows outside the fit range {self.fit_range} (PSI {self.psi:.1f})"
        if self.unseen > SHARE_WARN:
            return f"{self.unseen:.0%} of rows hold categories never seen at fit (PSI {self.psi:.1f})"
        return f"distribution shifted (PSI {self.psi:.2f})"


@dataclass(frozen=True)
class DriftReport:
    rows: int
    alert_rate: float
    expected_alert_rate: float | None
    columns: list[ColumnDrift]

    @property
    def shifted(self) -> list[ColumnDrift]:
        return sorted((c for c in self.columns if c.shifted), key=lambda c: -c.psi)

    @property
    def alerts_off(self) -> bool:
        """The alert rate is far from what the policy expects (beyond 3 binomial standard deviations and 3x)."""
        expected = self.expected_alert_rate
        if expected is None or self.rows == 0:
            return False
        sd = math.sqrt(max(expected * (1 - expected), 1e-12) / self.rows)
        return self.alert_rate > 3 * expected and self.alert_rate - expected > 3 * sd

    def warning(self) -> str | None:
        """One line naming what drifted and the fix, or None when the batch looks like the fit data."""
        parts = [f"{c.name}: {c.describe()}" for c in self.shifted[:3]]
        more = len(self.shifted) - 3
        if more > 0:
            parts.append(f"{more} more column(s)")
        if self.alerts_off:
            assert self.expected_alert_rate is not None
            parts.append(f"alert rate {self.alert_rate:.1%} vs {self.expected_alert_rate:.1%} expected")
        if not parts:
            return None
        fix = "drop the column or refit" if self.shifted else "check the input or refit"
        return "; ".join(parts) + f": {fix}"


class DriftTracker:
    """Counts scored rows into the reference's bins; :meth:`report` at any time (one per file or window)."""

    def __init__(self, reference: DriftReference) -> None:
        self.reference = reference
        self.rows = 0
        self.alerts = 0
        self.numeric = [np.zeros(len(r.shares)) for _, _, r in reference.numeric_]
        self.edges = [np.asarray(r.edges, dtype=np.float64) for _, _, r in reference.numeric_]
        self.outside = [0.0 for _ in reference.numeric_]
        self.categorical = [np.zeros(len(r.shares)) for r in reference.categorical_]
        self.unseen = [0.0 for _ in reference.categorical_]
        self.level_index = [{level: j for j, level in enumerate(r.levels)} for r in reference.categorical_]

    def add(self, validated: pl.DataFrame, alerts: np.ndarray) -> None:
        """Count a batch: the model's input columns with their fit-time types, and its alert decisions."""
        self.rows += validated.height
        self.alerts += int(np.count_nonzero(alerts))
        for i, (column, part, ref) in enumerate(self.reference.numeric_):
            values = _derived(validated, column, part) if part else validated.get_column(column)
            arr = values.cast(pl.Float64).to_numpy()  # nulls and NaN both arrive as NaN: missing
            counts, outside = _kernels.drift_counts(arr, self.edges[i], ref.low, ref.high)
            self.numeric[i] += counts
            self.outside[i] += float(outside)
        lazy = validated.lazy()
        counted = pl.collect_all(  # every column's level counts at once, in parallel
            [
                lazy.select(pl.col(cat.name).cast(pl.String).fill_null(_MISSING).value_counts())
                for cat in self.reference.categorical_
            ]
        )
        for i, (cat, level_counts) in enumerate(zip(self.reference.categorical_, counted, strict=True)):
            row = np.zeros(len(cat.shares))
            for level, n in level_counts.to_series().struct.unnest().iter_rows():
                if level == _MISSING:
                    row[-1] += n
                elif level in self.level_index[i]:
                    row[self.level_index[i][level]] += n
                else:
                    row[-2] += n
                    if level not in cat.seen:
                        self.unseen[i] += n
            self.categorical[i] += row

    def report(self) -> DriftReport:
        columns = []
        for i, (_, _, num) in enumerate(self.reference.numeric_):
            present = self.numeric[i][:-1].sum()
            spec = ".0f" if num.whole else ".4g"
            columns.append(
                ColumnDrift(
                    num.name,
                    _psi(self.numeric[i], np.asarray(num.shares)),
                    self.outside[i] / present if present else 0.0,
                    0.0,
                    f"{num.low:{spec}}-{num.high:{spec}}",
                    self.numeric[i][-1] / self.rows if self.rows else 0.0,
                    num.shares[-1],
                )
            )
        for i, cat in enumerate(self.reference.categorical_):
            columns.append(
                ColumnDrift(
                    cat.name,
                    _psi(self.categorical[i], np.asarray(cat.shares)),
                    0.0,
                    self.unseen[i] / self.rows if self.rows else 0.0,
                    "",
                    self.categorical[i][-1] / self.rows if self.rows else 0.0,
                    cat.shares[-1],
                )
            )
        rate = self.alerts / self.rows if self.rows else 0.0
        return DriftReport(self.rows, rate, self.reference.alert_rate_, columns)


def time_like_columns(frame: pl.DataFrame, columns: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Numeric columns that look like time or counters (they drift by construction): year-like values, row
    numbers, values that only grow. Returns column -> why."""
    out: dict[str, str] = {}
    n = frame.height
    for name, kind in columns:
        if kind != "numeric" or n < 20:
            continue
        col = frame.get_column(name)
        if not col.dtype.is_integer():
            continue
        present = col.drop_nulls()
        if present.len() < 20:
            continue
        low, high, distinct = int(present.min()), int(present.max()), present.n_unique()  # type: ignore[arg-type]
        named_year = "year" in name.lower() and low >= 1900 and high <= 2100 and distinct <= 60
        if named_year or (low >= 1950 and high <= 2100 and distinct <= 30):
            out[name] = f"looks like a year ({low}-{high})"
        elif distinct == present.len() and (present.diff().drop_nulls() == 1).all():
            out[name] = f"looks like a row number or sequence ({low}-{high})"
        elif distinct > 0.9 * present.len() and (present.diff().drop_nulls() >= 0).all():
            out[name] = f"only grows ({low}-{high}): a counter or a timestamp"
    return out
