"""Online adaptation (``adapt:`` in the config): each entity of the first entity block has the detectors refitted
on its own trailing window of entity-feature rows (:class:`~segscope.features.trailing.Trailing`) when its time as
counted enters a new ``every`` period, and a record's alert stands only where it ranks at least ``alert_at`` among
the refit's own scores of its window. Everything happens in record order per entity, so how the records were cut
into batches never changes a decision, and a state restored from a checkpoint makes the same refits."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numba
import numpy as np
import polars as pl

from segscope._durations import duration_seconds
from segscope.config import DetectorConfig, SegscopeConfig
from segscope.features.entity import EntityFeatures, feature_name
from segscope.features.entity_state import Block, EntityState
from segscope.features.trailing import NO_PERIOD, Trailing
from segscope.unsupervised.detect import make_detector
from segscope.unsupervised.ensemble import AnomalyEnsemble

__all__ = ["ADAPT_MIN_ROWS", "Refit", "adapt_entities", "adapt_line", "adapt_summary"]

#: rows a window needs for a refit (fewer: the entity's records keep the policy's decision for that period)
ADAPT_MIN_ROWS = 50
#: entity features are clipped to this before the detectors see them (as the prepared features are)
_CLIP = 1e6


@dataclass
class Refit:
    """The detectors refitted on one window, and their own scores of it, sorted."""

    ensemble: AnomalyEnsemble
    own: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, detectors: tuple[DetectorConfig, ...], combine: Any) -> Refit:
        ensemble = AnomalyEnsemble([make_detector(d.name, d.params) for d in detectors], combine=combine)
        with _one_thread():
            ensemble.fit(x)
            return cls(ensemble, np.sort(ensemble.score(x)))

    def rank(self, x: np.ndarray) -> np.ndarray:
        """Each row's share of the window's own scores at or below its score, in [0, 1)."""
        with _one_thread():
            return np.searchsorted(self.own, self.ensemble.score(x), side="right") / (self.own.size + 1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Compiled kernels on this thread only: a window is small, and starting the pool costs more than it saves
    (3 rows: 77 ms with the pool on a loaded 2-core host)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def features(frame_values: np.ndarray) -> np.ndarray:
    """Entity features as the refits see them: missing values as 0, clipped."""
    return np.clip(np.nan_to_num(frame_values.astype(np.float64), nan=0.0, posinf=_CLIP, neginf=-_CLIP), -_CLIP, _CLIP)


def adapt_entities(
    alerts: np.ndarray, frame: pl.DataFrame, entities: EntityFeatures, state: EntityState, config: SegscopeConfig
) -> np.ndarray:
    """:func:`adapt_alerts` for a batch ``frame`` that ``entities`` just transformed with ``state``: the first
    entity block's features, the config's detectors, its policy's cooldown."""
    assert config.adapt is not None
    plan = entities.plans[0]
    x = frame.select(plan.names).to_numpy()
    held = [feature_name(plan.spec, f) for f in plan.spec.features if f.kind in ("stuck", "state")]
    stuck = (frame.select(held).to_numpy() == 1).any(axis=1) if held and config.policy.kind == "new_level" else None
    gap, rearm = config.policy.cooldown, config.policy.rearm

    def cool(shown: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return entities.cool_down(shown, state, gap, rearm, rows) if gap is not None else shown

    every, keep = duration_seconds(config.adapt.every), config.adapt.periods
    settings = _Settings(
        every, keep, max(1, math.ceil(config.adapt.max_rows / keep)), config.adapt.alert_at, config.detectors,
        config.combine, cool, duration_seconds(gap) if gap is not None else 0.0,
    )  # fmt: skip
    return adapt_alerts(alerts, x, state.blocks[0], settings, stuck)


#: the cooldown of some rows of a batch (alerts of those rows, their indices), applied in order
CoolDown = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Settings:
    every: float
    keep: int  # periods a window spans
    cap: int  # rows kept per period
    alert_at: float
    detectors: tuple[DetectorConfig, ...]
    combine: Any
    cool: CoolDown
    gap: float  # the policy's cooldown in seconds (0: none), for what never teaches the window


def adapt_alerts(
    alerts: np.ndarray, x: np.ndarray, block: Block, settings: _Settings, stuck: np.ndarray | None = None
) -> np.ndarray:
    """``alerts`` of the batch just transformed with ``block`` (its rows' entity slots and times as counted in
    ``block.rows``; ``x`` their entity features) gated by each entity's refit, except where ``stuck`` (a frozen
    sensor alarms whatever the detectors say), then cooled down; the windows learn the other records. Entity by
    entity, each in record order (the refits and the cooldown are the entity's own). Returns the alerts shown."""
    out = np.asarray(alerts, dtype=bool).copy()
    exempt = np.zeros(out.shape[0], dtype=bool) if stuck is None else stuck
    if block.rows is None or block.rows[0].shape[0] != out.shape[0]:
        return out
    slots, when = block.rows
    x = features(x)
    valid = (slots >= 0) & ~np.isnan(when)
    if not valid.all():
        lost = np.flatnonzero(~valid)
        out[lost] = settings.cool(out[lost], lost)
    order = np.flatnonzero(valid)
    order = order[np.argsort(slots[order], kind="stable")]  # each entity's rows, in record order
    starts = np.flatnonzero(np.r_[True, slots[order][1:] != slots[order][:-1]]) if order.size else order
    for rows in np.split(order, starts[1:]) if order.size else []:
        key = block.key_list[int(slots[rows[0]])]
        window = block.trailing.get(key)
        if window is None or window.every != settings.every:  # new, or counted in other periods: start again
            window = block.trailing[key] = Trailing(settings.every)
        period = np.floor(when[rows] / settings.every).astype(np.int64)
        period = np.maximum(np.maximum.accumulate(period), window.period)  # a period never runs backwards
        cuts = np.flatnonzero(np.r_[True, period[1:] != period[:-1]])
        for run in np.split(np.arange(rows.size), cuts[1:]):
            _run(window, int(period[run[0]]), rows[run], when, x, out, exempt, settings)
    return out


def _run(
    window: Trailing,
    period: int,
    rows: np.ndarray,
    when: np.ndarray,
    x: np.ndarray,
    out: np.ndarray,
    exempt: np.ndarray,
    s: _Settings,
) -> None:
    """One entity's rows of one period, in order: on entering it, the window it is judged by (the closed periods
    before it); the gate, the cooldown, then the rows offered to the window: all but the policy's alerts as the
    policy alone would show them (cooled down, ungated) and the alerts shown. The detectors are fitted on the window
    at the period's first alert, not before (most periods of most entities have none): the window is closed, so
    when they are fitted never changes them, and a restored state fits the same."""
    if period != window.period:
        window.enter(period, s.keep)
        window.refit, window.fitted = None, NO_PERIOD
        rows_before = window.window(s.keep).shape[0]
        if rows_before >= ADAPT_MIN_ROWS:
            window.fitted, window.refit_rows, window.refits = period, rows_before, window.refits + 1
    taught = ~out[rows]
    for i in np.flatnonzero(out[rows]):  # the policy's alerts, cooled down as without adaptation
        t = float(when[rows[i]])
        if t - window.policy_alert >= s.gap:
            window.policy_alert = t
        else:
            taught[i] = True  # a repeat the cooldown would hold back: it teaches the window
    asked = rows[out[rows] & ~exempt[rows]]
    if window.fitted == period and asked.size:
        if window.refit is None:
            window.refit = Refit.fit(window.window(s.keep), s.detectors, s.combine)
        out[asked] = window.refit.rank(x[asked]) >= s.alert_at
    out[rows] = s.cool(out[rows], rows)
    window.add(x[rows[taught & ~out[rows]]], s.cap)


def adapt_summary(blocks: list[Block], every: str | int) -> dict[str, Any]:
    """What adaptation did in a state, for people: entities with a window, those whose detectors are refitted now,
    refits so far, and the latest refit (its period's start and its rows)."""
    windows = list(blocks[0].trailing.values()) if blocks else []
    fitted = [w for w in windows if w.fitted != NO_PERIOD and w.fitted == w.period]
    latest = max(fitted, key=lambda w: (w.fitted, w.refit_rows), default=None)
    out: dict[str, Any] = {
        "entities": len(windows),
        "adapted_now": len(fitted),
        "refits": sum(w.refits for w in windows),
        "last_adapted": None,
        "last_rows": None,
    }
    if latest is not None:
        start = latest.fitted * latest.every
        timed = not str(every).isdigit()
        out["last_adapted"] = datetime.fromtimestamp(start, UTC).isoformat() if timed else f"event {start:.0f}"
        out["last_rows"] = latest.refit_rows
    return out


def adapt_line(config: SegscopeConfig, entities: EntityState | None) -> str | None:
    """The settings and what the windows of ``entities`` did, in one line for people; None without ``adapt``."""
    if config.adapt is None:
        return None
    a = config.adapt
    head = f"adapt every {a.every}, window {a.window}, alerts at rank >= {a.alert_at}"
    done = adapt_summary(entities.blocks if entities is not None else [], a.every)
    if not done["refits"]:
        return f"{head}: no refit yet ({done['entities']:,} entities with a window)"
    return (
        f"{head}: {done['refits']:,} refits of {done['entities']:,} entities ({done['adapted_now']:,} refitted for "
        f"their current period), the latest at {done['last_adapted']} on {done['last_rows']:,} rows"
    )
