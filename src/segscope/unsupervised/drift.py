"""Drift: is what is being scored like what the model was fitted on? A model scoring data from another world
(another year, another product, a changed upstream field) raises alerts that mean nothing, so segscope says so.

At fit, each input column gets a reference: for numbers (and the hour and weekday of date-times) the fit range and
the shares of rows in decile bins (plus missing); for categories the shares of the most common levels (plus
"other" and missing). A :class:`DriftTracker` (one per file or stream window, owned by the caller, like the
alert policy's state) counts the scored rows into the same bins and reports, per column, the population stability
index (PSI = sum (p - q) ln(p / q); above 0.25 is the usual "major shift"), the share of rows outside the fit range
and the share of categories never seen at fit, and the alert rate against the rate the policy expects.

Columns of a live stream move all the time (a sensor's level over weeks, a season), and a model that adapts
(``policy.recalibrate``, a cooldown) is built to ride that out; what makes a run bad is alerts that explode. So the
warning line comes when the alert rate is far above what the policy expects (or a column arrives missing, an input
problem), and names the drifted columns, the fix, and whether the policy's adaptation was on. Drift with alerts as
expected is no warning: :meth:`DriftReport.summary` describes it (the report page shows it). The expected rate is
the policy's rate on the fit rows, but never below one row in the fit rows: 0 alerts among 750 fit rows shows a rate
under about 1/750, not a rate of zero that any alert would exceed.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from segscope.config import AdaptConfig, PolicyConfig
from segscope.unsupervised import _kernels
from segscope.unsupervised.drift_state import check_state

__all__ = [
    "DriftReference",
    "DriftReport",
    "DriftTracker",
    "adaptation_of",
    "epoch_unit",
    "time_like_columns",
]

#: A column shifted this much (PSI) is named in the warning; 0.25 is the usual threshold of a major shift.
PSI_WARN = 0.25
#: ... or when this share of its values lies outside the fit range, or is a category never seen at fit.
SHARE_WARN = 0.05
#: Smoothing of empty bins in the PSI (an empty reference bin that fills gives ~ln(1/1e-4) = 9.2 per unit share).
_EPS = 1e-4
_TOP_LEVELS = 30
_MISSING = "\x00missing"
_NUMERIC_FIELDS = ("name", "low", "high", "edges", "shares", "whole")


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

    #: Rows the reference (and the policy's rate) was measured on; None for bundles saved before it was kept.
    fit_rows_: int | None = None

    def fit(self, frame: pl.DataFrame, columns: Sequence[tuple[str, str]], alert_rate: float | None) -> DriftReference:
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
        self.fit_rows_ = frame.height
        return self

    @property
    def expected_alert_rate(self) -> float | None:
        """The policy's rate on the fit rows, at least one row in the fit rows (None for an alert budget)."""
        if self.alert_rate_ is None:
            return None
        return max(self.alert_rate_, 1.0 / self.fit_rows_) if self.fit_rows_ else self.alert_rate_

    def to_state(self) -> dict[str, Any]:
        return {
            "alert_rate": self.alert_rate_,
            **({"fit_rows": self.fit_rows_} if self.fit_rows_ is not None else {}),
            "numeric": [
                {"column": c, "part": p, **{k: getattr(r, k) for k in _NUMERIC_FIELDS}} for c, p, r in self.numeric_
            ],
            "categorical": [
                {"name": r.name, "levels": r.levels, "shares": r.shares, "seen": sorted(r.seen)}
                for r in self.categorical_
            ],
        }

    @classmethod
    def from_state(cls, state: Any, columns: Sequence[tuple[str, str]]) -> DriftReference:
        """A reference as :meth:`to_state` wrote it for a model of input ``columns`` ((name, kind) pairs),
        checked (types, bin counts, ordered edges, columns of the right kinds) before anything counts into it: a
        damaged or hand-made ``drift.json`` is one :class:`BundleError`."""
        state = check_state(state, columns)
        ref = cls()
        ref.alert_rate_ = state["alert_rate"]
        rows = state.get("fit_rows")
        ref.fit_rows_ = rows if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0 else None
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
    part: str = ""  # "hour" or "weekday" of a date-time column (named column__part), else ""

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
    #: How the policy adapts to a moving stream ("policy.recalibrate 60d, cooldown 1d"), "" when it does not: the
    #: warning says whether the alerts it judges came out of that adaptation.
    adaptation: str = ""
    #: The share of rows alerted by a held machine-state alarm (not in ``alert_rate``: a detection lasting as long
    #: as the machine is away from its learnt state, which no policy rate foresees)
    held_rate: float = 0.0

    @property
    def shifted(self) -> list[ColumnDrift]:
        return sorted((c for c in self.columns if c.shifted), key=lambda c: -c.psi)

    def _sd(self) -> float:
        expected = self.expected_alert_rate or 0.0
        return math.sqrt(max(expected * (1 - expected), 1e-12) / max(self.rows, 1))

    @property
    def alerts_off(self) -> bool:
        """The alert rate is far above what the policy expects (beyond 3 binomial standard deviations and 3x)."""
        expected = self.expected_alert_rate
        if expected is None or self.rows == 0:
            return False
        return self.alert_rate > 3 * expected and self.alert_rate - expected > 3 * self._sd()

    @property
    def alerts_low(self) -> bool:
        """The alert rate is far below what the policy expects (under a third, beyond 3 standard deviations)."""
        expected = self.expected_alert_rate
        if expected is None or self.rows == 0:
            return False
        return self.alert_rate < expected / 3 and expected - self.alert_rate > 3 * self._sd()

    @property
    def alerts_explode(self) -> bool:
        """What makes a run bad: alerts far above the policy's rate, or a column that stopped arriving."""
        return self.alerts_off or any(c.more_missing for c in self.shifted)

    def warning(self) -> str | None:
        """One line when the run looks bad (:attr:`alerts_explode`; with an alert budget, which has no rate to
        judge by, any drift), naming the drifted columns and what to do; None otherwise, drift or not (see
        :meth:`summary`)."""
        if self.alerts_explode or (self.expected_alert_rate is None and self.shifted):
            return self.summary()
        return None

    def summary(self) -> str | None:
        """One line naming every drifted column (the worst three described, the rest with their PSI) and what to
        do, or None when the batch looks like the fit data. Dropping a column is advised only when the alert rate
        moved with the drift, and only for columns whose values mostly left the fit range or its categories (a
        clock, a counter, a year, a renamed code): a column that merely shifted may carry the signal."""
        shifted, expected = self.shifted, self.expected_alert_rate
        if not shifted and not self.alerts_off:
            return None
        rate = f"alert rate {self.alert_rate:.1%}" + (f" vs {expected:.1%} expected" if expected is not None else "")
        adapted = f" (adapting: {self.adaptation})" if self.adaptation else ""
        if not shifted:
            return f"{rate}{adapted}{self._held()} with no column drifted: check the input or refit"
        described = [f"{c.name}: {c.describe()}" for c in shifted[:3]]
        if len(shifted) > 3:
            described.append("also " + ", ".join(f"{c.name} (PSI {c.psi:.2f})" for c in shifted[3:]))
        head = f"drift in {len(shifted)} column(s): " + "; ".join(described)
        if self.alerts_off:
            left = [c.name for c in shifted if not c.part and (c.outside >= 0.5 or c.unseen >= 0.5)]
            moved = "the alert rate moved with the drift" + (" despite the adaptation" if self.adaptation else "")
            fix = (
                f"{moved}: if {', '.join(left)} change(s) by construction (a clock, a counter, a year), refit with "
                f"{' '.join('--drop ' + shlex.quote(n) for n in left)}; else refit on recent data"
                if left
                else f"{moved}: refit on recent data (no column left its fit range: none to drop)"
            )
        elif self.alerts_low:
            fix = "fewer alerts than expected: refit on recent data or check the input"
        elif expected is not None:
            fix = (
                "drift seen but alerts are unaffected (the rate is as expected"
                + (", the adaptation took it into account" if self.adaptation else "")
                + "): no column needs dropping"
            )
        else:
            fix = "drift seen (an alert budget sets the alert rate, so it cannot show whether alerts are affected)"
        missing = [c.name for c in shifted if c.more_missing]
        if missing:  # an upstream field that stopped arriving is an input problem, whatever the alerts do
            fix += f"; {', '.join(missing)} arrive(s) missing more often than at fit: check the input"
        return f"{head}; {rate}{adapted}{self._held()}: {fix}"

    def _held(self) -> str:
        return f" (and {self.held_rate:.1%} of rows in held machine-state alarms)" if self.held_rate else ""


def adaptation_of(policy: PolicyConfig, adapt: AdaptConfig | None = None) -> str:
    """The policy's adaptation as a report names it: ``policy.recalibrate 60d, cooldown 1d``; "" without any.
    With ``adapt`` (the config's online adaptation), the refits first."""
    parts = [f"detectors refitted every {adapt.every} on the trailing {adapt.window}"] if adapt is not None else []
    parts += ["new levels learnt from every reading"] if policy.kind == "new_level" else []
    parts += [f"policy.recalibrate {policy.recalibrate}"] if policy.recalibrate is not None else []
    parts += [f"cooldown {policy.cooldown}"] if policy.cooldown is not None else []
    parts += [f"re-armed after {policy.rearm} back to normal"] if policy.rearm is not None else []
    return ", ".join(parts)


class DriftTracker:
    """Counts scored rows into the reference's bins; :meth:`report` at any time (one per file or window)."""

    def __init__(self, reference: DriftReference) -> None:
        self.reference = reference
        self.rows = 0
        self.alerts = 0
        self.held = 0
        self.numeric = [np.zeros(len(r.shares)) for _, _, r in reference.numeric_]
        self.edges = [np.asarray(r.edges, dtype=np.float64) for _, _, r in reference.numeric_]
        self.outside = [0.0 for _ in reference.numeric_]
        self.categorical = [np.zeros(len(r.shares)) for r in reference.categorical_]
        self.unseen = [0.0 for _ in reference.categorical_]
        self.level_index = [{level: j for j, level in enumerate(r.levels)} for r in reference.categorical_]

    def add(self, validated: pl.DataFrame, alerts: np.ndarray, held: np.ndarray | None = None) -> None:
        """Count a batch: the model's input columns with their fit-time types, and its alert decisions; alerts
        where ``held`` (a machine away from its learnt state) are counted apart, not in the alert rate."""
        self.rows += validated.height
        held_alerts = 0 if held is None else int(np.count_nonzero(held & alerts))
        self.held += held_alerts
        self.alerts += int(np.count_nonzero(alerts)) - held_alerts
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

    def report(self, adaptation: str = "") -> DriftReport:
        """What the rows counted so far show; ``adaptation`` names the policy's (:func:`adaptation_of`)."""
        columns = []
        for i, (_, part, num) in enumerate(self.reference.numeric_):
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
                    part,
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
        held = self.held / self.rows if self.rows else 0.0
        return DriftReport(self.rows, rate, self.reference.expected_alert_rate, columns, adaptation, held)


#: Epoch values by unit: the range of 2000-01-01 to 2100-01-01 in each (one unit's range is 1000x the next's, so a
#: column in one is never read as another).
_EPOCH_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
_EPOCH_RANGE = (946_684_800.0, 4_102_444_800.0)
_EPOCH_NAMES = {"s": "epoch seconds", "ms": "epoch milliseconds", "us": "epoch microseconds", "ns": "epoch nanoseconds"}
#: A column whose rank follows the row order this closely (Spearman) rises with arrival: a clock or a counter.
_ORDER_CORRELATION = 0.9
#: Names that say "a time counter" (lowercase, separators removed), for integer columns read in any order.
_TIME_NAMES = {"step", "timestep", "time", "ts", "timestamp", "epoch", "unixtime", "tick", "hour", "hours", "elapsed"}


def epoch_unit(values: pl.Series) -> str | None:
    """``s``, ``ms``, ``us`` or ``ns`` when every present value is an epoch time of 2000-2100 in that unit."""
    if not values.dtype.is_numeric():
        return None
    present = values.drop_nulls()
    if present.dtype.is_float():
        present = present.drop_nans()
    if present.len() == 0:
        return None
    low, high = float(present.min()), float(present.max())  # type: ignore[arg-type]
    for unit, scale in _EPOCH_UNITS.items():
        if _EPOCH_RANGE[0] * scale <= low and high <= _EPOCH_RANGE[1] * scale:
            return unit
    return None


def _epoch_dates(low: float, high: float, unit: str) -> str:
    scale = _EPOCH_UNITS[unit]
    first, last = (datetime.fromtimestamp(v / scale, UTC).date().isoformat() for v in (low, high))
    return first if first == last else f"{first} to {last}"


def _rises_with_rows(present: pl.Series, positions: np.ndarray) -> bool:
    """Spearman correlation of the values with their row positions at least :data:`_ORDER_CORRELATION`."""
    ranks = present.rank("average").to_numpy().astype(np.float64)
    if ranks.std() == 0 or positions.std() == 0:
        return False
    return bool(np.corrcoef(ranks, positions)[0, 1] >= _ORDER_CORRELATION)


def _whole_numbers(col: pl.Series) -> pl.Series | None:
    """A float column holding whole numbers only (NaN as missing) as Int64, else None."""
    values = col.fill_nan(None)
    present = values.drop_nulls()
    if present.len() == 0 or not (present == present.floor()).all() or (present.abs() > 2.0**53).any():
        return None
    return values.cast(pl.Int64)


def time_like_columns(frame: pl.DataFrame, columns: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Numeric columns that look like time or counters (they drift by construction, so later records fall outside
    the fit range): year-like values, epoch times (seconds to nanoseconds), row numbers, values that only grow
    or rise with the row order (``frame`` in arrival order), integers named like a time counter (``step``,
    ``timestamp``, an ``hour`` beyond 23); whole numbers held as floats count as integers. Returns column -> why."""
    out: dict[str, str] = {}
    n = frame.height
    for name, kind in columns:
        if kind != "numeric" or n < 20:
            continue
        col = frame.get_column(name)
        unit = epoch_unit(col) if col.drop_nulls().len() >= 20 else None
        if unit is not None:
            low, high = float(col.min()), float(col.max())  # type: ignore[arg-type]
            out[name] = f"holds {_EPOCH_NAMES[unit]} ({_epoch_dates(low, high, unit)})"
            continue
        whole = _whole_numbers(col) if col.dtype.is_float() else col  # 12.0 and NaN: an integer column still
        if whole is None or not whole.dtype.is_integer():
            continue
        col = whole
        present = col.drop_nulls()
        if present.len() < 20:
            continue
        low, high, distinct = int(present.min()), int(present.max()), present.n_unique()  # type: ignore[arg-type]
        named_year = "year" in name.lower() and low >= 1900 and high <= 2100 and distinct <= 60
        plain = re.sub(r"[^a-z]", "", name.lower())
        if named_year or (low >= 1950 and high <= 2100 and distinct <= 30):
            out[name] = f"looks like a year ({low}-{high})"
        elif distinct == present.len() and (present.diff().drop_nulls() == 1).all():
            out[name] = f"looks like a row number or sequence ({low}-{high})"
        elif distinct > 0.9 * present.len() and (present.diff().drop_nulls() >= 0).all():
            out[name] = f"only grows ({low}-{high}): a counter or a timestamp"
        elif distinct >= 10 and _rises_with_rows(present, np.flatnonzero(col.is_not_null().to_numpy())):
            out[name] = f"rises with the row order ({low}-{high}): a clock or a counter"
        elif plain in _TIME_NAMES and distinct >= 24 and not (plain.startswith("hour") and high <= 23):
            out[name] = f"is named like a time counter ({low}-{high})"
    return out
