"""Alert policies: separate objects that turn scores into ``is_alert``.

Each policy is fitted on the fit-time reference scores (so a threshold means the same thing on every batch)
and then decides batch after batch. A fitted policy never changes while deciding: what must carry over from
one batch to the next (an alert budget's count per period, "at most 200 alerts a day" over a whole file or
stream) lives in a :class:`PolicyState` that the caller owns (``policy.new_state()``; the stream keeps one for
its life, a file job one per file). Without a state, a batch is decided on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import polars as pl

from segscope._params import Constraint, Interval, IsInstance, Options, StoresParams
from segscope._typing import BudgetPeriod
from segscope.config import PolicyConfig
from segscope.exceptions import BundleError, ConfigError, NotFittedError, SchemaError
from segscope.sources.frames import parse_datetimes

__all__ = [
    "POLICIES",
    "AlertBudget",
    "AlertPolicy",
    "ContaminationThreshold",
    "FixedThreshold",
    "NewLevelAlerts",
    "PolicyState",
    "QuantileThreshold",
    "make_policy",
    "refit_policy",
    "restore_policy",
]

_PERIOD_EVERY = {"hour": "1h", "day": "1d", "week": "1w"}
_UNIT = Interval(float, 0.0, 1.0, closed="neither")


@dataclass
class PolicyState:
    """What a policy carries across batches: alerts used per period, and rows seen (for budgets per rows)."""

    used: dict[int, int] = field(default_factory=dict)
    rows_seen: int = 0


class AlertPolicy(Protocol):
    def fit(self, reference: np.ndarray, frame: pl.DataFrame | None = None) -> Self: ...

    def decide(self, scores: np.ndarray, frame: pl.DataFrame, state: PolicyState | None = None) -> np.ndarray: ...

    def new_state(self) -> PolicyState: ...

    def describe(self) -> dict[str, Any]: ...


class _Policy(StoresParams):
    """What every policy shares: a fresh :class:`PolicyState`, and no deciding before ``fit``."""

    def new_state(self) -> PolicyState:
        return PolicyState()

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(reference_scores) first")


class FixedThreshold(_Policy):
    """Alert when ``score >= threshold``."""

    _constraints: ClassVar[dict[str, Constraint]] = {"threshold": Interval(float, 0.0, 1.0)}

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def fit(self, reference: np.ndarray, frame: pl.DataFrame | None = None) -> Self:
        self.check_params()
        self.threshold_ = float(self.threshold)
        return self

    def decide(self, scores: np.ndarray, frame: pl.DataFrame, state: PolicyState | None = None) -> np.ndarray:
        self._check_fitted()
        return np.asarray(scores >= self.threshold_)

    def describe(self) -> dict[str, Any]:
        return {"kind": "fixed", "threshold": self.threshold_}


class QuantileThreshold(FixedThreshold):
    """Alert above the ``quantile`` of the fit-time reference scores."""

    _constraints: ClassVar[dict[str, Constraint]] = {"quantile": _UNIT}

    def __init__(self, quantile: float) -> None:
        self.quantile = quantile

    def _quantile(self) -> float:
        return float(self.quantile)

    def fit(self, reference: np.ndarray, frame: pl.DataFrame | None = None) -> Self:
        self.check_params()
        threshold = float(np.quantile(reference, self._quantile(), method="higher"))
        # strictly above: exactly (1 - quantile) of the reference alerts
        self.threshold_ = float(np.nextafter(threshold, np.inf))
        return self

    def fit_count(self, reference: np.ndarray, count: int) -> Self:
        """The threshold that alerts on ``count`` of ``reference`` (more only where scores tie), for a reference
        that is no sample of the traffic (a label store's records: mostly alerts and queue candidates), whose
        quantile would mean another rate: ``count`` is what the policy's rate gave there before."""
        self.check_params()
        ordered = np.sort(np.asarray(reference, dtype=np.float64))[::-1]
        if ordered.size == 0 or count >= ordered.size:
            self.threshold_ = float(ordered[-1]) if ordered.size else float(np.nextafter(0.0, np.inf))
        else:  # strictly above the first record left out
            self.threshold_ = float(np.nextafter(ordered[max(count, 0)], np.inf))
        return self

    def describe(self) -> dict[str, Any]:
        return {"kind": "quantile", "quantile": self.quantile, "threshold": self.threshold_}


class ContaminationThreshold(QuantileThreshold):
    """Alert the top ``contamination`` share, as measured on the fit-time reference."""

    _constraints: ClassVar[dict[str, Constraint]] = {"contamination": _UNIT}

    def __init__(self, contamination: float) -> None:
        self.contamination = contamination

    def _quantile(self) -> float:
        return 1.0 - float(self.contamination)

    def describe(self) -> dict[str, Any]:
        return {"kind": "contamination", "contamination": self.contamination, "threshold": self.threshold_}


class AlertBudget(_Policy):
    """At most ``max_alerts`` per period (hour/day/week of ``time_column``, or every ``rows`` records).

    The threshold is set so that the reference history would have used the budget (its share of records per
    period); within a period, alerts above it are granted in arrival order until the budget is spent.
    ``threshold`` is a floor below which nothing alerts.
    """

    _constraints: ClassVar[dict[str, Constraint]] = {
        "max_alerts": Interval(int, 1, None),
        "per": Options(("hour", "day", "week", "rows")),
        "rows": Interval(int, 1, None),
        "time_column": IsInstance((str,), nullable=True),
        "threshold": Interval(float, 0.0, 1.0),
    }

    def __init__(
        self,
        max_alerts: int,
        *,
        per: BudgetPeriod = "day",
        rows: int = 10_000,
        time_column: str | None = None,
        threshold: float = 0.0,
    ) -> None:
        self.max_alerts = max_alerts
        self.per = per
        self.rows = rows
        self.time_column = time_column
        self.threshold = threshold

    def _periods(self, frame: pl.DataFrame, n: int, start: int) -> np.ndarray:
        if self.per == "rows":
            return (np.arange(start, start + n, dtype=np.int64)) // self.rows
        if self.time_column is None or self.time_column not in frame.columns:
            raise SchemaError(
                f"an alert budget per {self.per} needs the time column '{self.time_column}' in the data; "
                "add it or budget per rows"
            )
        col = frame.get_column(self.time_column)
        if not isinstance(col.dtype, pl.Datetime | pl.Date):
            col = parse_datetimes(col.cast(pl.String))
        truncated = col.dt.truncate(_PERIOD_EVERY[self.per]).cast(pl.Datetime("us")).to_physical()
        return np.asarray(truncated.fill_null(-1).to_numpy(), dtype=np.int64)

    def fit(self, reference: np.ndarray, frame: pl.DataFrame | None = None) -> Self:
        self.check_params()
        if self.per == "rows":
            per_period = float(self.rows)
        else:
            if frame is None:
                raise ConfigError("an alert budget per time unit needs the history's time column at fit")
            periods = self._periods(frame, frame.height, 0)
            per_period = float(np.median(np.unique(periods, return_counts=True)[1]))
        share = min(1.0, self.max_alerts / max(per_period, 1.0))
        cut = float(np.quantile(reference, 1.0 - share, method="higher")) if share < 1.0 else 0.0
        self.threshold_ = max(cut, float(self.threshold))
        self.records_per_period_ = per_period
        return self

    def decide(self, scores: np.ndarray, frame: pl.DataFrame, state: PolicyState | None = None) -> np.ndarray:
        self._check_fitted()
        state = state if state is not None else self.new_state()
        periods = self._periods(frame, scores.shape[0], state.rows_seen)
        state.rows_seen += scores.shape[0]
        out = np.zeros(scores.shape[0], dtype=bool)
        for i in np.flatnonzero(scores >= self.threshold_):
            period = int(periods[i])
            used = state.used.get(period, 0)
            if used < self.max_alerts:
                state.used[period] = used + 1
                out[i] = True
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "budget",
            "max_alerts": self.max_alerts,
            "per": self.per,
            "rows": self.rows,
            "time_column": self.time_column,
            "threshold": self.threshold_,
            "records_per_period": self.records_per_period_,
        }


class NewLevelAlerts(_Policy):
    """Alert where any of ``columns`` (entity features of kind ``new_level``) is 1: a reading at a level its
    entity never had. Nothing to fit: the levels live in the entity features."""

    _constraints: ClassVar[dict[str, Constraint]] = {"columns": IsInstance((tuple,))}

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.columns = columns

    def fit(self, reference: np.ndarray, frame: pl.DataFrame | None = None) -> Self:
        self.check_params()
        if not self.columns:
            raise ConfigError("policy kind 'new_level' needs entity features of kind new_level; add one")
        self.threshold_ = None
        return self

    def decide(self, scores: np.ndarray, frame: pl.DataFrame, state: PolicyState | None = None) -> np.ndarray:
        self._check_fitted()
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise SchemaError(f"new_level feature column(s) {missing} are missing from the scored frame")
        new = np.zeros(frame.height, dtype=bool)
        for c in self.columns:
            new |= frame.get_column(c).fill_null(0.0).to_numpy() == 1.0
        return new

    def describe(self) -> dict[str, Any]:
        return {"kind": "new_level", "threshold": None, "columns": list(self.columns)}


#: Policy classes by the ``kind`` of :class:`~segscope.config.PolicyConfig`.
POLICIES: dict[str, type[Any]] = {
    "fixed": FixedThreshold,
    "quantile": QuantileThreshold,
    "contamination": ContaminationThreshold,
    "budget": AlertBudget,
    "new_level": NewLevelAlerts,
}


def make_policy(config: PolicyConfig, new_levels: tuple[str, ...] = ()) -> AlertPolicy:
    """The policy a :class:`PolicyConfig` describes (not yet fitted): its class from :data:`POLICIES`, its
    parameters (the names of its ``_constraints``) from the config's fields of the same names; ``new_levels``: the
    config's entity features a ``new_level`` policy alerts on."""
    cls = POLICIES[config.kind]
    given = {"columns": new_levels}
    params = {name: given[name] if name in given else getattr(config, name) for name in cls._constraints}
    policy: AlertPolicy = cls(**params)
    return policy


def refit_policy(
    config: PolicyConfig, levels: tuple[str, ...], scores: np.ndarray, frame: pl.DataFrame, *, alerts: int | None = None
) -> AlertPolicy:
    """The policy of ``config`` fitted on ``scores`` of ``frame``; with ``alerts``, for a ``frame`` that is no sample
    of the traffic, a policy of a rate alerts on that many of its rows (the count the rate gave there before)."""
    policy = make_policy(config, levels)
    if alerts is not None and isinstance(policy, QuantileThreshold):
        return policy.fit_count(scores, alerts)
    return policy.fit(scores, frame)


def restore_policy(config: PolicyConfig, described: dict[str, Any]) -> AlertPolicy:
    """Rebuild a fitted policy from its :meth:`describe` output (as stored in a bundle)."""
    if config.kind == "new_level":
        columns = described.get("columns")
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            raise ConfigError("the bundle's new_level policy lists no feature columns; refit the bundle")
        return NewLevelAlerts(tuple(columns)).fit(np.empty(0))
    policy = make_policy(config)
    policy.threshold_ = _stored_number(described, "threshold")  # type: ignore[attr-defined]
    if isinstance(policy, AlertBudget):
        policy.records_per_period_ = _stored_number(described, "records_per_period")
        if not policy.records_per_period_ > 0:
            raise BundleError("the bundle's alert budget has no records per period; refit the bundle")
    return policy


def _stored_number(described: dict[str, Any], key: str) -> float:
    """A number of a bundle's policy: a finite int or float (a NaN threshold would silently never alert)."""
    value = described.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BundleError(
            f"the bundle's alert policy has {key} {str(value)[:40]!r}, not a finite number; refit the bundle"
        )
    return float(value)
