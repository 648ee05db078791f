"""Per-entity features (``entities:`` in the config): each record gets its entity's context (velocity, amount
against the entity's own baseline, a country new for the card, a host's fan-out, a sensor against its recent
past), computed in arrival order by one kernel (:mod:`segscope.features._entity_kernel`) for history and live
data alike. :class:`EntityFeatures` is fitted on history, in order, and keeps the state at its end; scoring
continues from that state, or from a caller's :class:`EntityState` that carries over between batches (one per
file or stream), so a record's features never depend on how the records were cut into batches.

Rules (also in the README): windows decay exponentially with the window as time constant; an event earlier than
its entity's latest counts at that latest time; an entity idle for ``ttl`` starts again (and its memory is
freed once the newest event time is ``ttl + allowed_lateness`` past it); events further than
``allowed_lateness`` behind the newest event time are counted as late (their entity may have been forgotten).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Self, get_args

import numpy as np
import polars as pl

from segscope._durations import duration_seconds
from segscope._typing import ALARM_KINDS, EntityFeatureKind
from segscope.config import EntityConfig, EntityFeatureConfig
from segscope.exceptions import ConfigError, DataError, NotFittedError
from segscope.expressions import compile_expression, expression_columns
from segscope.features import _entity_kernel as kernel
from segscope.features import levels
from segscope.features.entity_state import Block, EntityState
from segscope.schema import SCORED_COLUMNS
from segscope.sources.frames import event_seconds

__all__ = ["EntityFeatures", "EntityState"]

_KINDS: tuple[str, ...] = get_args(EntityFeatureKind)  # in the kernel's order
_PAIR_KINDS = {"first_seen", "rare", "distinct", "new_level"}
_ONE_ENTITY = "(all)"


def feature_name(spec: EntityConfig, feature: EntityFeatureConfig) -> str:
    if feature.name is not None:
        return feature.name
    parts = [spec.key or "all"]
    if feature.of is not None:
        parts.append(feature.of)
    parts.append(feature.kind)
    if feature.window is not None:
        parts.append(str(feature.window))
    return "_".join(parts)


@dataclass
class _Plan:
    """One entity spec compiled: value and pair columns, the kernel's plan table, output names."""

    spec: EntityConfig
    names: list[str]
    value_of: list[str]
    pair_of: list[str]
    #: pair columns that hold levels of a number (``new_level``): column -> (feature name, of, levels)
    level_of: dict[int, tuple[str, str, int]]
    table: np.ndarray
    taus: np.ndarray
    shares: np.ndarray
    #: (features, 3) ``state``: readings to learn from, smoothing span, readings in a row to alarm;
    #: ``seasonal_drop``: deviations, smoothing span; ``stuck``: the least a hold lasts to alarm (seconds or
    #: events); ``new_level``: its ladder's counts (inf: none), its column of the kernel's ``near`` codes
    params: np.ndarray
    #: pair columns of ``new_level`` features with a ladder, in the order of the kernel's ``near`` columns
    ladders: list[int]
    n_acc: int
    ttl: float
    lateness: float
    deviations: list[tuple[int, list[int], float]]  # new levels that need a deviation: levels.deviation_checks

    @classmethod
    def build(cls, spec: EntityConfig) -> _Plan:
        value_of: list[str] = []
        pair_of: list[str] = []
        level_of: dict[int, tuple[str, str, int]] = {}
        ladders: list[int] = []
        rows, taus, shares, params, names, o = [], [], [], [], [], 0
        for f in spec.features:
            kind = _KINDS.index(f.kind)
            col = pc = -1
            slots = kernel.SLOTS[kind]
            if f.kind == "state":  # its columns side by side (pc: how many), even where others read them too
                assert f.over is not None  # the config's rule; made concrete from sensors: before a plan is built
                col, pc = len(value_of), len(f.over)
                value_of += list(f.over)
                slots = kernel.state_slots(len(f.over), f.learn)
            elif f.of is not None and f.kind == "new_level":  # a pair column of its own: the levels of its grid
                pc = len(pair_of)
                pair_of.append("\0" + feature_name(spec, f))
                level_of[pc] = (feature_name(spec, f), f.of, f.levels)
                if f.ladder is not None:
                    slots, ladders = kernel.LADDER_SLOTS, [*ladders, pc]
            elif f.of is not None and f.kind in _PAIR_KINDS:
                pair_of += [] if f.of in pair_of else [f.of]
                pc = pair_of.index(f.of)
            elif f.of is not None:
                value_of += [] if f.of in value_of else [f.of]
                col = value_of.index(f.of)
            rows.append((kind, col, pc, o))
            o += slots
            taus.append(duration_seconds(f.window) if f.window is not None else 0.0)
            shares.append(f.share)
            if f.kind == "new_level":
                steps = [*(f.ladder or ()), np.inf, np.inf]
                params.append((steps[0], steps[1], len(ladders) - 1 if f.ladder else -1))
            elif f.kind == "seasonal_drop":
                params.append((f.deviations, f.smoothing, 0))
            elif f.kind == "stuck":
                params.append((duration_seconds(f.min_hold) if f.min_hold is not None else 0.0, 0, 0))
            else:
                params.append((f.learn, f.smoothing, f.hold))
            names.append(feature_name(spec, f))
        ttl = duration_seconds(spec.ttl) if spec.ttl is not None else 0.0
        return cls(
            spec,
            names,
            value_of,
            pair_of,
            level_of,
            np.array(rows, dtype=np.int64).reshape(-1, 4),
            np.array(taus, dtype=np.float64),
            np.array(shares, dtype=np.float64),
            np.array(params, dtype=np.float64).reshape(-1, 3),
            ladders,
            o,
            ttl,
            duration_seconds(spec.allowed_lateness),
            levels.deviation_checks(spec.features),
        )


class EntityFeatures:
    """``fit(history)`` computes the features over history in order and keeps the state at its end;
    ``transform(frame, state)`` appends them to a batch (``state`` carries over between batches; without it the
    batch continues from the end of history and nothing is kept)."""

    state_: EntityState
    #: ``new_level`` features' grids (:mod:`segscope.features.levels`), from the fit history's ranges
    grids_: levels.Grids

    def __init__(self, specs: tuple[EntityConfig, ...]) -> None:
        self.specs = specs

    @cached_property
    def plans(self) -> list[_Plan]:
        return [_Plan.build(s) for s in self.specs]

    @property
    def names(self) -> list[str]:
        return [n for p in self.plans for n in p.names]

    def input_columns(self) -> list[str]:
        """Columns the features read (keys, times, and the columns ``of`` names or its expression reads)."""
        cols: list[str] = []
        for s in self.specs:
            cols += [c for c in (s.key, s.time) if c is not None]
            for f in s.features:
                if f.of is not None:
                    cols += [f.of] if f.of.isidentifier() else _columns_of(f.of)
                cols += list(f.over or ())
        return list(dict.fromkeys(cols))

    def new_state(self) -> EntityState:
        """A copy of the state at the end of the fitting history."""
        if not hasattr(self, "state_"):
            raise NotFittedError("EntityFeatures is not fitted; call fit(history) first")
        return self.state_.copy()

    def empty_state(self) -> EntityState:
        """A state with no entity: where the fitting history itself started."""
        return EntityState([Block(p.n_acc, len(p.pair_of)) for p in self.plans])

    def alarm_features(self) -> list[str]:
        """The features ``policy: {kind: new_level}`` alerts on: of kind ``state`` first (a held alarm, which the
        cooldown never withdraws: the reason to name first), then ``new_level`` and ``stuck``."""
        kinds = sorted(ALARM_KINDS, key=lambda k: k != "state")
        return [feature_name(p.spec, f) for k in kinds for p in self.plans for f in p.spec.features if f.kind == k]

    def held_alarms(self, frame: pl.DataFrame) -> np.ndarray | None:
        """Rows of a transformed ``frame`` where a ``state`` feature alarms: a held alarm, which lasts while the
        machine is away from its state and which no cooldown withdraws (None: no such feature)."""
        names = [feature_name(p.spec, f) for p in self.plans for f in p.spec.features if f.kind == "state"]
        if not names:
            return None
        return np.asarray((frame.select(names).fill_null(0.0).to_numpy() == 1.0).any(axis=1), dtype=bool)

    def level_inputs(self) -> dict[str, str]:
        """``new_level`` features and the column or expression each cuts into levels."""
        return {name: of for p in self.plans for name, of, _ in p.level_of.values()}

    def levels_known(self, state: EntityState) -> dict[str, dict[str, Any]]:
        """What the ``new_level`` features have learned in ``state``: per feature, the entities with a grid of
        their own, the levels known over all entities, the most any one entity knows, and its ladder's climb."""
        out: dict[str, dict[str, Any]] = {}
        climbed = self.ladders_climbed(state)
        for plan, block in zip(self.plans, state.blocks, strict=True):
            rows = block.pairs_rows()
            for column, (name, _, _) in plan.level_of.items():
                mine = rows[rows[:, 1] == column]
                per_entity = np.bincount(mine[:, 0]) if mine.size else np.zeros(0, dtype=np.int64)
                out[name] = {
                    "own_grids": len(self.grids_.get(name, {})) - 1,
                    "levels_known": int(mine.shape[0]),
                    "most_of_one_entity": int(per_entity.max()) if per_entity.size else 0,
                    **climbed.get(name, {}),
                }
        return out

    def ladders_climbed(self, state: EntityState) -> dict[str, dict[str, Any]]:
        """Per ``new_level`` feature with a ladder: its counts, how many entities of ``state`` are past each (their
        new levels since the fit), and the most new levels since the fit of any entity. Needs no fit."""
        out: dict[str, dict[str, Any]] = {}
        for plan, block in zip(self.plans, state.blocks, strict=True):
            for f, row in zip(plan.spec.features, plan.table, strict=True):
                if f.kind == "new_level" and f.ladder is not None:
                    counts = block.acc[: block.size, int(row[3])]
                    out[feature_name(plan.spec, f)] = {
                        "ladder": list(f.ladder),
                        "entities_past_each_count": [int((counts >= n).sum()) for n in f.ladder],
                        "most_new_levels_since_fit": int(counts.max()) if counts.size else 0,
                    }
        return out

    def states_known(self, state: EntityState) -> dict[str, dict[str, Any]]:
        """What the ``state`` features have learnt in ``state``: per feature, how many entities watch, still
        learn, or have too few noisy sensors to watch, and for each sensor how many watching entities use it."""
        out: dict[str, dict[str, Any]] = {}
        for plan, block in zip(self.plans, state.blocks, strict=True):
            for f, row in zip(plan.spec.features, plan.table, strict=True):
                if f.kind != "state" or f.over is None:
                    continue
                acc = block.acc[: block.size]
                phase = acc[:, kernel.state_phase_slot(int(row[3]))]
                watching = phase == kernel.WATCHING
                kept = acc[watching, kernel.state_kept_slots(int(row[3]), len(f.over))] == 1.0
                out[feature_name(plan.spec, f)] = {
                    "watching": int(watching.sum()),
                    "learning": int((phase == kernel.LEARNING).sum()),
                    "too_few_noisy_sensors": int((phase == kernel.UNWATCHED).sum()),
                    "sensors_used": dict(zip(f.over, kept.sum(axis=0).astype(int).tolist(), strict=True)),
                }
        return out

    def ranges(self, frame: pl.DataFrame) -> levels.Ranges:
        """The finite range of each ``new_level`` input over ``frame``, overall and per entity."""
        out = {}
        for plan in self.plans:
            keys = _column(frame, plan.spec.key, "key") if plan.spec.key is not None else None
            for name, of, _ in plan.level_of.values():
                out[name] = levels.ranges(_numbers(frame, of), keys)
        return out

    def ranges_over(self, batches: Iterable[pl.DataFrame]) -> levels.Ranges | None:
        """:meth:`ranges` over every batch of a history (None, and nothing read, without ``new_level`` features)."""
        if not self.level_inputs():
            return None
        out: levels.Ranges = {}
        for frame in batches:
            out = levels.widest(out, self.ranges(frame))
        return out

    def fit_transform(self, history: pl.DataFrame) -> pl.DataFrame:
        return pl.concat(list(self.fit_batches([history], self.ranges(history))))

    def fit_batches(
        self, batches: Iterable[pl.DataFrame], ranges: levels.Ranges | None = None
    ) -> Iterator[pl.DataFrame]:
        """Fit on a history read in order, batch by batch (bounded memory): each batch with its features, and
        the state at its end kept once the last batch is out. ``ranges`` (:meth:`ranges` over the whole history)
        sets the ``new_level`` grids; without it they come from the first batch."""
        state, names = self.empty_state(), self.names
        self.grids_ = {}
        reserved = [n for n in names if n in SCORED_COLUMNS or n == "id"]
        if reserved:
            raise ConfigError(
                f"entity feature name(s) {reserved} are columns segscope adds to every scored record; "
                "set another 'name:'"
            )
        for frame in batches:
            clash = [n for n in names if n in frame.columns]
            if clash or len(set(names)) != len(names):
                raise ConfigError(
                    f"entity feature name(s) {clash or names} clash with input columns or each other; set 'name:'"
                )
            if not self.grids_ and self.level_inputs():
                counts = {n: k for p in self.plans for n, _, k in p.level_of.values()}
                self.grids_ = levels.grids(ranges or self.ranges(frame), counts)
            yield self._apply(frame, state)
        for plan, block in zip(self.plans, state.blocks, strict=True):
            block.evict(plan.ttl, plan.lateness)  # the bundle keeps no entity that would start again anyway
            kernel.freeze_learnt(block.acc, plan.table, plan.params, block.acc.shape[0])
        state.clean()
        for b in state.blocks:
            b.partition[:] = -1
        self.state_ = state

    def fit(self, history: pl.DataFrame) -> Self:
        self.fit_transform(history)
        return self

    def transform(self, frame: pl.DataFrame, state: EntityState | None = None) -> pl.DataFrame:
        return self._apply(frame, state if state is not None else self.new_state())

    def _apply(self, frame: pl.DataFrame, state: EntityState) -> pl.DataFrame:
        columns: list[pl.Series] = []
        for plan, block in zip(self.plans, state.blocks, strict=True):
            columns += self._block(plan, block, frame, state.partitions)
        return frame.with_columns(columns)

    def _block(self, plan: _Plan, block: Block, frame: pl.DataFrame, partitions: np.ndarray | None) -> list[pl.Series]:
        spec, n = plan.spec, frame.height
        block.evict(plan.ttl, plan.lateness)  # before the batch: its rows' slots stay valid for the cooldown
        if spec.key is None:
            keys = pl.Series("key", [_ONE_ENTITY] * n, dtype=pl.String)
        else:
            keys = _column(frame, spec.key, "key").cast(pl.String)
        slots = block.slots_for(keys)
        times = _times(frame, spec.time) if spec.time is not None else np.zeros(n)
        values = np.zeros((n, len(plan.value_of)))
        for j, of in enumerate(plan.value_of):
            values[:, j] = _numbers(frame, of)
        codes = np.zeros((n, len(plan.pair_of)), dtype=np.int64)
        near = np.full((n, len(plan.ladders), 5), -1, dtype=np.int64)
        for j, of in enumerate(plan.pair_of):
            pairs = self._levels_of(frame, plan, j) if j in plan.level_of else _evaluate(frame, of)
            codes[:, j] = block.codes_for(j, pairs.cast(pl.String))
            if j in plan.ladders:  # the levels next to each reading's, by their codes (-1: never seen by anyone)
                for k, step in enumerate((-1, 1, -2, 2)):
                    near[:, plan.ladders.index(j), k] = block.codes_known(j, (pairs + step).cast(pl.String))
                near[:, plan.ladders.index(j), 4] = pairs.fill_null(0).to_numpy()
        if spec.time is not None and n:
            running = np.fmax.accumulate(np.concatenate([[block.newest], times]))[:-1]
            block.late += int(np.count_nonzero(times < running - plan.lateness))
        out, when = np.empty((n, len(plan.names))), np.empty(n)
        newest = kernel.advance(
            slots, times, values, codes, block.last_t, block.n_events, block.gen, block.acc, block.pairs,
            plan.table, plan.taus, plan.shares, plan.params, near, plan.ttl, spec.time is not None, out, when,
        )  # fmt: skip
        levels.confirm_deviations(out, plan.deviations)
        block.rows, block.newest = (slots, when), max(block.newest, newest)
        touched = slots[slots >= 0]
        block.dirty[touched] = True
        if partitions is not None:
            block.partition[touched] = partitions[slots >= 0]
        return pl.DataFrame(out, schema=plan.names, orient="row").fill_nan(None).get_columns()

    def _levels_of(self, frame: pl.DataFrame, plan: _Plan, column: int) -> pl.Series:
        name, of, _ = plan.level_of[column]
        keys = _column(frame, plan.spec.key, "key") if plan.spec.key is not None else None
        return levels.codes(_numbers(frame, of), keys, self.grids_[name])

    def cool_down(
        self,
        alerts: np.ndarray,
        state: EntityState,
        gap: str | int,
        rearm: str | int | None = None,
        rows: np.ndarray | None = None,
        held: np.ndarray | None = None,
    ) -> np.ndarray:
        """``alerts`` of the batch just transformed with ``state`` (or of its rows ``rows``, in order), an entity
        (of the first spec) alerting at most once per ``gap`` (event time, or events for an entity without time), or
        again once it has been ``rearm`` without an alert; the state keeps when each last alerted. Alerts where
        ``held`` (:meth:`held_alarms`: a ``state`` feature alarms) stand, outside the cooldown."""
        block = state.blocks[0]
        if block.rows is None:
            return alerts
        slots, when = block.rows if rows is None else (block.rows[0][rows], block.rows[1][rows])
        if slots.shape[0] != alerts.shape[0]:
            return alerts
        kept = alerts.copy() if held is None else alerts & ~held
        kernel.cool_down(kept, slots, when, block.last_alert, block.last_raw, duration_seconds(gap), _span(rearm))
        block.dirty[slots[kept & (slots >= 0)]] = True
        return kept if held is None else kept | (held & alerts)

    def recalibrate(
        self,
        alerts: np.ndarray,
        scores: np.ndarray,
        state: EntityState,
        span: str | int,
        gap: str | int | None,
        rearm: str | int | None = None,
    ) -> np.ndarray:
        """``alerts`` of the batch just transformed with ``state``, each entity (of the first spec) held to its own
        trailing window of scores, then cooled down by ``gap`` (:func:`kernel.recalibrate`); the state keeps the
        window and when each entity last alerted."""
        block = state.blocks[0]
        if block.rows is None or block.rows[0].shape[0] != alerts.shape[0]:
            return alerts
        kept = alerts.copy()
        slots, when = block.rows
        kernel.recalibrate(
            kept, np.asarray(scores, dtype=np.float64), slots, when, block.peak, block.peak_at, block.peak_n,
            duration_seconds(span), RECALIBRATE_MIN_SCORES, block.last_alert, block.last_raw, _span(gap), _span(rearm),
        )  # fmt: skip
        block.dirty[slots[slots >= 0]] = True
        return kept

    # ------------------------------------------------------------ persist
    def file_names(self) -> list[str]:
        grids = [levels.FILE] if self.level_inputs() else []
        return [f"entities/state-{i}.arrow" for i in range(len(self.specs))] + grids

    def to_state(self) -> dict[str, bytes]:
        files = {f"entities/state-{i}.arrow": self.state_.to_bytes(i) for i in range(len(self.specs))}
        if self.level_inputs():
            files[levels.FILE] = levels.dump(self.grids_)
        return files

    @classmethod
    def from_state(cls, specs: tuple[EntityConfig, ...], files: list[bytes]) -> EntityFeatures:
        feats = cls(specs)
        feats.state_ = feats.empty_state()
        for i, data in enumerate(files[: len(specs)]):
            feats.state_.load_bytes(i, data)
        feats.state_.clean()
        grids = set(feats.level_inputs())
        feats.grids_ = levels.load(files[len(specs)] if len(files) > len(specs) else None, grids) if grids else {}
        return feats


#: scores an entity holds in its window before its own highest one is its threshold (before: the policy's)
RECALIBRATE_MIN_SCORES = 50


def _span(duration: str | int | None) -> float:
    return 0.0 if duration is None else duration_seconds(duration)


def _column(frame: pl.DataFrame, name: str, role: str) -> pl.Series:
    if name not in frame.columns:
        raise DataError(f"entity {role} column '{name}' is missing from the input; add it or change the config")
    return frame.get_column(name)


def _columns_of(of: str) -> list[str]:
    try:
        return expression_columns(of)
    except ConfigError:
        return [of]  # a column name that is no expression ("Torque [Nm]"); a missing one is reported when read


@lru_cache(maxsize=256)
def _compiled(of: str) -> pl.Expr:
    return compile_expression(of)


def _evaluate(frame: pl.DataFrame, of: str) -> pl.Series:
    """``of`` as a column, or an expression of :mod:`segscope.expressions` (never handed to Polars SQL: it could
    read files)."""
    if of in frame.columns:
        return frame.get_column(of)
    if of.isidentifier():
        return _column(frame, of, "value")
    try:
        expr = _compiled(of)
    except ConfigError as exc:
        raise DataError(f"entity feature 'of': {of!r} is not an input column, and as an {exc}") from None
    missing = [c for c in _columns_of(of) if c not in frame.columns]
    if missing:
        raise DataError(
            f"entity feature 'of: {of}' reads column(s) {missing} that are missing from the input; add them or "
            "change the config"
        )
    try:
        return frame.select(expr.alias("v")).to_series()
    except Exception as exc:
        raise DataError(
            f"entity feature 'of: {of}' cannot be computed on the input ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}); check the columns' types against the expression"
        ) from None


def _numbers(frame: pl.DataFrame, of: str) -> np.ndarray:
    series = _evaluate(frame, of)
    try:
        return series.cast(pl.Float64).fill_null(np.nan).to_numpy()
    except Exception:
        raise DataError(f"entity feature 'of: {of}' must be numeric but holds {series.dtype}") from None


def _times(frame: pl.DataFrame, name: str) -> np.ndarray:
    return event_seconds(_column(frame, name, "time"), name)


def ladder_lines(specs: tuple[EntityConfig, ...], state: EntityState) -> list[str]:
    """Each ladder's climb in ``state``, a line each, for people (``segscope inspect --state-dir``)."""
    return [
        f"{name}: ladder {c['ladder']}, entities past each count {c['entities_past_each_count']}, the most new levels "
        f"since the fit {c['most_new_levels_since_fit']:,}"
        for name, c in EntityFeatures(specs).ladders_climbed(state).items()
    ]
