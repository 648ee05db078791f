"""One entity's trailing window of entity-feature rows for online adaptation (``adapt:`` in the config): the rows
of each ``every`` period (numbered from 1970 by the entity's time as counted), each period a deterministic reservoir
sample of at most a cap, so that memory stays bounded whatever the rate. The refit made on a window is not kept: it
is made again from the rows when needed (a restored checkpoint), which gives the same detectors, since the periods it
was made on are closed. Packed into the entity state's Arrow frame (:mod:`segscope.features.entity_state`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from segscope.exceptions import BundleError

__all__ = ["NO_PERIOD", "Trailing", "trailing_columns", "trailing_from_row"]

#: the period of an entity with no row yet, and of "no refit"
NO_PERIOD = -(2**62)
_MASK = (1 << 64) - 1


def _mix(n: int) -> int:
    """splitmix64: the reservoir's draws, a function of the row's place only (no random state to carry)."""
    z = (n + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@dataclass
class Trailing:
    """An entity's window: per period (ascending) its number, the rows offered and the rows kept."""

    #: the length of a period (seconds, or events for an entity without time) the periods are numbered by
    every: float
    #: the period of the entity's latest row
    period: int = NO_PERIOD
    #: the period the current refit serves (made when the entity entered it); NO_PERIOD: none
    fitted: int = NO_PERIOD
    #: rows the latest refit was made on, and how many refits the entity had
    refit_rows: int = 0
    refits: int = 0
    #: when the policy last alerted the entity, cooled down as without adaptation (what never teaches the window)
    policy_alert: float = -math.inf
    periods: list[int] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    #: the refit (detectors and their own scores of the window, sorted), made on demand; never packed
    refit: Any = None

    def copy(self) -> Trailing:
        return Trailing(
            self.every, self.period, self.fitted, self.refit_rows, self.refits, self.policy_alert, list(self.periods),
            list(self.seen),
            [r.copy() for r in self.rows],
        )  # fmt: skip

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.rows)

    def enter(self, period: int, keep: int) -> None:
        """The entity's rows reach ``period``: periods before ``period - keep`` are dropped."""
        self.period = period
        first = [i for i, p in enumerate(self.periods) if p >= period - keep]
        self.periods = [self.periods[i] for i in first]
        self.seen = [self.seen[i] for i in first]
        self.rows = [self.rows[i] for i in first]

    def window(self, keep: int) -> np.ndarray:
        """The rows of the ``keep`` closed periods before the current one, oldest first."""
        parts = [
            r[: min(s, r.shape[0])]
            for p, s, r in zip(self.periods, self.seen, self.rows, strict=True)
            if self.period - keep <= p < self.period and s
        ]
        return np.vstack(parts) if parts else np.zeros((0, 0))

    def add(self, x: np.ndarray, cap: int) -> None:
        """Offer rows ``x`` (in order) to the current period's reservoir of at most ``cap`` rows."""
        if not x.shape[0]:
            return
        if not self.periods or self.periods[-1] != self.period:
            self.periods.append(self.period)
            self.seen.append(0)
            self.rows.append(np.zeros((cap, x.shape[1])))
        store, seen = self.rows[-1], self.seen[-1]
        if store.shape[0] < cap:  # restored from a packed state: room again
            grown = np.zeros((cap, x.shape[1]))
            if store.shape[0]:
                grown[: store.shape[0]] = store
            store = self.rows[-1] = grown
        direct = max(0, min(cap - seen, x.shape[0]))
        store[seen : seen + direct] = x[:direct]
        salt = (self.period * 0x2545F4914F6CDD1D) & _MASK
        for i in range(direct, x.shape[0]):
            n = seen + i  # rows offered before this one
            j = _mix(salt ^ n) % (n + 1)
            if j < cap:
                store[j] = x[i]
        self.seen[-1] = seen + x.shape[0]


#: the entity state's columns for the windows (null for an entity without one)
_COLUMNS: dict[str, pl.DataType] = {
    "adapt_every": pl.Float64(),
    "adapt_period": pl.Int64(),
    "adapt_fitted": pl.Int64(),
    "adapt_refit_rows": pl.Int64(),
    "adapt_refits": pl.Int64(),
    "adapt_policy_alert": pl.Float64(),
    "adapt_width": pl.Int64(),
    "adapt_periods": pl.List(pl.Int64()),
    "adapt_seen": pl.List(pl.Int64()),
    "adapt_kept": pl.List(pl.Int64()),
    "adapt_rows": pl.Binary(),
}


def trailing_columns(windows: list[Trailing | None]) -> list[pl.Series]:
    """The windows of some entities (None: the entity has none) as the state frame's columns."""
    values: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
    for w in windows:
        if w is None:
            for column in values.values():
                column.append(None)
            continue
        kept = [r[: min(s, r.shape[0])] for s, r in zip(w.seen, w.rows, strict=True)]
        width = kept[0].shape[1] if kept else 0
        for name, value in (
            ("adapt_every", w.every), ("adapt_period", w.period), ("adapt_fitted", w.fitted),
            ("adapt_refit_rows", w.refit_rows), ("adapt_refits", w.refits), ("adapt_width", width),
            ("adapt_policy_alert", w.policy_alert),
            ("adapt_periods", list(w.periods)), ("adapt_seen", list(w.seen)),
            ("adapt_kept", [k.shape[0] for k in kept]),
            ("adapt_rows", np.concatenate([k.ravel() for k in kept]).astype("<f8").tobytes() if kept else b""),
        ):  # fmt: skip
            values[name].append(value)
    return [pl.Series(name, values[name], dtype=dtype) for name, dtype in _COLUMNS.items()]


def check_columns(schema: pl.Schema) -> None:
    """Refuse a state file whose window columns do not hold what :func:`trailing_columns` writes."""
    wrong = [name for name, dtype in _COLUMNS.items() if name in schema and schema[name] != dtype]
    if wrong:
        raise BundleError(f"entity state: the column(s) {wrong} do not hold what the state writes")


def trailing_from_row(row: dict[str, Any]) -> Trailing | None:
    """One entity's window from a row of the state frame (None when it has none)."""
    if row.get("adapt_every") is None:
        return None
    periods, seen, kept = row["adapt_periods"] or [], row["adapt_seen"] or [], row["adapt_kept"] or []
    data, width = row["adapt_rows"] or b"", int(row["adapt_width"] or 0)
    if len(data) % 8:
        raise BundleError("entity state: an entity's adapt window holds a partial number")
    flat = np.frombuffer(data, dtype="<f8").astype(np.float64)
    every = float(row["adapt_every"])
    if not math.isfinite(every) or every <= 0:
        raise BundleError("entity state: an entity's adapt window has a period that is not a positive number")
    consistent = len(periods) == len(seen) == len(kept) and width >= 0
    consistent = consistent and all(0 <= k <= s for k, s in zip(kept, seen, strict=False))
    if not consistent or len(flat) != sum(kept) * width or (width == 0 and any(kept)):
        raise BundleError("entity state: an entity's adapt window is inconsistent (periods, counts, rows)")
    matrix = flat.reshape(-1, width) if width else np.zeros((0, 0))
    ends = np.cumsum([0, *kept])
    rows = [matrix[ends[i] : ends[i + 1]].copy() for i in range(len(kept))]
    return Trailing(
        every, int(row["adapt_period"]), int(row["adapt_fitted"]), int(row["adapt_refit_rows"]),
        int(row["adapt_refits"]), float(row["adapt_policy_alert"]), [int(p) for p in periods],
        [int(n) for n in seen], rows,
    )  # fmt: skip
