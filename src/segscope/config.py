"""Frozen, typed configuration; ``configs/*.toml`` and ``*.yaml`` load into :class:`SegscopeConfig`."""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segscope._durations import duration_seconds
from segscope._typing import (
    ALARM_KINDS,
    BudgetPeriod,
    CombineMethod,
    DetectorName,
    EntityFeatureKind,
    PolicyKind,
    SegmentBoundaries,
)
from segscope._yaml import YAMLSyntaxError, load_yaml
from segscope.columns import SENSOR, STATE_LEARN, STATE_NUMBERS, expand_sensors, map_columns
from segscope.config_kafka import KafkaConfig, MessagesConfig
from segscope.exceptions import ConfigError
from segscope.expressions import compile_expression

__all__ = [
    "DEFAULT_DETECTORS",
    "AdaptConfig",
    "DetectorConfig",
    "EntityConfig",
    "EntityFeatureConfig",
    "FeatureConfig",
    "PolicyConfig",
    "SegmentsConfig",
    "SegscopeConfig",
    "load_config",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectorConfig(_Frozen):
    """One detector of the ensemble: a registered name and its parameters."""

    name: DetectorName
    params: dict[str, Any] = Field(default_factory=dict)


# Chosen by `python benchmarks/adbench_unsupervised.py` (all 63 subsets of the six detectors, mean and max, on the
# nine ADBench sets, seeds 1-3) and `python benchmarks/held_out_unsupervised.py` (four labelled sets that chose
# nothing): iforest+ecod (max) gives AUCROC/AUCPR 92.99/50.93 on ADBench and 75.30/32.14 on the other four; the best
# ADBench ensemble (iforest+ecod+knn+cblof, mean: 93.83/56.85) falls to 73.64/23.65 there, so it is opt-in
# (configs/dense-numeric.toml). See README, Detectors.
DEFAULT_DETECTORS: tuple[DetectorConfig, ...] = (
    DetectorConfig(name="iforest"),
    DetectorConfig(name="ecod"),
)


#: ``name(`` (no space) in an entity feature's ``of``: an expression rather than a column name, so it is checked
#: when the config loads; a column such as ``temp (C)`` is left to be found in the input
_CALL = re.compile(r"[A-Za-z_]\w*\(")
_DEFAULT_LEVELS = 32


class PolicyConfig(_Frozen):
    """How alerts are decided from ``score``.

    ``contamination``: alert the top ``contamination`` share, measured on the fit-time reference.
    ``quantile``: alert above the ``quantile`` of the fit-time reference scores.
    ``fixed``: alert when ``score >= threshold``.
    ``budget``: at most ``max_alerts`` per ``per`` (an hour/day/week of ``time_column``, or ``rows`` rows),
    highest scores first, and only records scoring at least ``threshold``.
    ``new_level``: alert where an entity feature that is an alarm is 1 (``ALARM_KINDS``: the cooldown withdraws no
    ``state`` alarm, held while it lasts); ``score`` still ranks the records.
    """

    kind: PolicyKind = "contamination"
    contamination: float = Field(default=0.01, gt=0.0, lt=1.0)
    quantile: float = Field(default=0.99, gt=0.0, lt=1.0)
    threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    max_alerts: int = Field(default=200, ge=1)
    per: BudgetPeriod = "day"
    rows: int = Field(default=10_000, ge=1)
    time_column: str | None = None
    #: With ``entities:``: an entity (of the first entity block) alerts at most once per this much event time
    #: (``1h``, ``1d``), or per this many of its events when it has no time column: one alert per burst or
    #: failure, not one per record of it (alarm flood suppression).
    cooldown: str | int | None = None
    #: With ``entities:``: each entity is held to its own recent past: once it has scores over this much trailing
    #: event time (``7d``), it alerts only above the highest of them; records that alert never join the window,
    #: so a failure does not teach it. The window and its clock live in the entity state (checkpoints, bundles).
    recalibrate: str | int | None = None
    #: With ``cooldown``: an entity's cooldown ends early once it has gone this much event time (``10m``), or this
    #: many of its events, without a record that would alert, shown or held back: back to normal, it is armed
    #: again, so a false alarm does not hide the fault that follows it.
    rearm: str | int | None = None

    @model_validator(mode="after")
    def _budget_needs_time(self) -> PolicyConfig:
        if self.cooldown is not None and duration_seconds(self.cooldown) <= 0:
            raise ValueError("policy.cooldown must be longer than zero")
        if self.rearm is not None and (self.cooldown is None or duration_seconds(self.rearm) <= 0):
            raise ValueError("policy.rearm ends a cooldown early: set a cooldown too, and a rearm longer than zero")
        if self.recalibrate is not None and duration_seconds(self.recalibrate) <= 0:
            raise ValueError("policy.recalibrate must be longer than zero")
        if self.recalibrate is not None and self.kind == "new_level":
            raise ValueError(
                "policy.recalibrate holds scores to a trailing window, but kind 'new_level' alerts on new levels "
                "whatever the score; remove one of them"
            )
        if self.kind == "budget" and self.per != "rows" and self.time_column is None:
            raise ValueError(
                f"an alert budget per {self.per} needs policy.time_column (a datetime column); "
                "set it, or use per = 'rows'"
            )
        return self


class AdaptConfig(_Frozen):
    """``adapt: {every: 1d, window: 7d}``: per entity (of the first block), the detectors refitted on its trailing
    ``window`` of entity-feature rows whenever its event time enters a new ``every`` period (periods counted from
    1970); an alert stands only where the record ranks >= ``alert_at`` among the refit's scores of its window; alerts
    never join it; at most ``max_rows`` rows a window (a reservoir sample per period). docs/entities.md."""

    every: str | int = "1d"
    window: str | int = "7d"
    alert_at: float = Field(default=0.99, gt=0.0, le=1.0)
    max_rows: int = Field(default=2048, ge=100, le=1_000_000)

    @model_validator(mode="after")
    def _periods(self) -> AdaptConfig:
        if str(self.every).isdigit() != str(self.window).isdigit() or duration_seconds(self.every) <= 0:
            raise ValueError("adapt.every and adapt.window must both be durations (1d, 7d) or both counts of events")
        if abs(self.periods - duration_seconds(self.window) / duration_seconds(self.every)) > 1e-9 or not (
            1 <= self.periods <= 64
        ):
            raise ValueError(
                f"adapt.window ({self.window}) must be a whole number of adapt.every ({self.every}) periods, from 1 "
                "to 64 of them (e.g. every: 1d, window: 7d)"
            )
        return self

    @property
    def periods(self) -> int:
        return round(duration_seconds(self.window) / duration_seconds(self.every))


class FeatureConfig(_Frozen):
    """Which columns become features, and how."""

    id_column: str | None = None
    drop: tuple[str, ...] = ()
    #: Categorical columns with more distinct values than this (at fit) are treated as identifiers and dropped.
    max_categories: int = Field(default=10_000, ge=2)
    #: Robust-scaled values are clipped to +-clip so that huge values cannot overflow distances.
    clip: float = Field(default=1e6, gt=0, allow_inf_nan=False)


class EntityFeatureConfig(_Frozen):
    """One per-entity feature. ``of`` is a column or an expression (``ln(amount + 1)``: columns, arithmetic and
    the functions of :mod:`segscope.expressions`, nothing that reads a file or the network); ``window`` a
    duration of event time (``5m``) or, for an entity without a time column, a count of its events."""

    kind: EntityFeatureKind
    of: str | None = None
    window: str | int | None = None
    #: Column name of the feature (default: ``<key>_<of>_<kind>_<window>``); needed when ``of`` is an expression.
    name: str | None = None
    #: ``rare``: a value is rare for the entity below this share of its past events.
    share: float = Field(default=0.05, gt=0.0, lt=1.0)
    #: ``new_level``: the range of ``of`` over the fit history is cut into this many equal levels (the same step
    #: continues beyond it); a reading at a level its entity never had is new.
    levels: int = Field(default=_DEFAULT_LEVELS, ge=2, le=1_000_000)
    #: ``new_level``: fewer alarms from an entity that keeps reaching new levels. After its first ``ladder[0]`` new
    #: levels since the fit, a new level is 1 only when it lies 2 or more levels from every level the entity knows;
    #: after ``ladder[1]``, 3 or more (the others are learnt all the same, as 0).
    ladder: tuple[int, ...] | None = Field(default=None, min_length=1, max_length=2)
    #: ``new_level``: a new level is 1 only where the reading also lies this many deviations or more from its
    #: trailing mean in a ``zscore`` feature of the same ``of`` in the block (a level reached by a slow drift is
    #: learnt all the same, as 0; a reading without two earlier ones has no deviation and is 0).
    min_deviation: float | None = Field(default=None, gt=0.0, le=1_000.0)
    #: ``state``: the columns read together; ``of: sensor`` in a block with ``sensors:`` stands for all of them.
    over: tuple[str, ...] | None = None
    #: ``state``: each entity learns its state from its first this many readings (or its fit history's, >= 100).
    learn: int = Field(default=STATE_LEARN, ge=10, le=5000)
    #: ``state``, ``seasonal_drop``: the span (in readings) of the exponentially weighted mean that smooths the
    #: distance (default 10) or the deviation (default 6).
    span: int | None = Field(default=None, ge=1, le=10_000)
    #: ``seasonal_drop``: how many of its hour's spreads a reading must fall below its hour's level.
    deviations: float = Field(default=3.0, gt=0.0, le=1_000.0)
    #: ``state``: the alarm holds while this many readings in a row are above the limit.
    hold: int = Field(default=10, ge=1, le=10_000)
    #: ``stuck``: a hold alarms only once it has also lasted this long (a duration of event time, or a count of
    #: events for an entity without time); none: as soon as it outlasts every hold before it.
    min_hold: str | int | None = None

    @property
    def smoothing(self) -> int:
        """The span in effect: the one given, else the kind's default."""
        return self.span if self.span is not None else (6 if self.kind == "seasonal_drop" else 10)

    @model_validator(mode="after")
    def _complete(self) -> EntityFeatureConfig:
        if self.kind == "state" and self.of != SENSOR and (self.of is not None or len(set(self.over or ())) < 2):
            raise ValueError(
                "an entity feature of kind 'state' reads two different columns or more: list them in 'over' "
                "(over: [a, b]) and give no 'of', or write of: sensor in a block with sensors:"
            )
        if self.kind == "state" and self.over is not None and self.learn * len(self.over) > STATE_NUMBERS:
            raise ValueError(
                f"a 'state' feature keeps learn x columns numbers per entity while it learns: {self.learn} x "
                f"{len(self.over)} is over {STATE_NUMBERS:,}; lower learn"
            )
        if self.kind == "state" and (self.window is not None or self.levels != _DEFAULT_LEVELS):
            raise ValueError("a 'state' feature takes learn, span and hold, not window or levels; remove them")
        if self.kind == "seasonal_drop" and (self.window is not None or self.levels != _DEFAULT_LEVELS):
            raise ValueError("a 'seasonal_drop' feature takes span and deviations, not window or levels; remove them")
        if self.ladder is not None and self.kind != "new_level":
            raise ValueError("'ladder' belongs to features of kind 'new_level' and counts new levels: [8, 30]")
        if self.ladder is not None and min(self.ladder) < 0:
            raise ValueError(f"a ladder counts new levels, 0 or more: {list(self.ladder)} has a negative count")
        if self.ladder is not None and any(a >= b for a, b in itertools.pairwise(self.ladder)):
            raise ValueError(f"a ladder's counts rise: {list(self.ladder)} does not (e.g. [8, 30])")
        if self.min_deviation is not None and self.kind != "new_level":
            raise ValueError("'min_deviation' belongs to features of kind 'new_level' (with a zscore feature): 2")
        if self.min_hold is not None and (self.kind != "stuck" or duration_seconds(self.min_hold) <= 0):
            raise ValueError("'min_hold' belongs to features of kind 'stuck' and is a duration longer than zero: 4h")
        if self.kind != "state" and self.over is not None:
            raise ValueError(f"'over' belongs to features of kind 'state', not '{self.kind}'")
        needs_of = self.kind not in {"count", "since_last", "state"}
        if self.of is not None and _CALL.search(self.of):  # meant as an expression: check it now, not at fit
            compile_expression(self.of)
        if needs_of and self.of is None:
            raise ValueError(f"an entity feature of kind '{self.kind}' needs 'of' (a column or expression)")
        windowed = self.kind in {"count", "sum", "mean", "std", "zscore", "ratio", "distinct"}
        if windowed and self.window is None:
            raise ValueError(f"an entity feature of kind '{self.kind}' needs a 'window' (e.g. 5m, 1h, 30d)")
        if self.window is not None and duration_seconds(self.window) <= 0:
            raise ValueError("a window must be longer than zero")
        return self


class EntityConfig(_Frozen):
    """Features computed over each entity's own history (a card, a host, a machine), in arrival order.

    Windows decay exponentially with the window as time constant: for a steady rate a count equals the events
    of the last window, and the state stays one number per aggregate whatever the rate. An event earlier than its
    entity's latest counts at that latest time (windows never run backwards); ``allowed_lateness`` bounds how far
    behind the newest event time an event may be and still find its entity's state (idle entities are forgotten
    ``ttl`` after their last event)."""

    #: Entity column; none: the whole stream is one entity (a single sensor series).
    key: str | None = None
    #: Event-time column (datetime); none: windows count events and order follows the input.
    time: str | None = None
    #: Repeat the features that read the column ``sensor`` for each sensor column of the data: ``numeric`` (every
    #: numeric column but the key, time, id and drop columns) or a list of names and patterns (``temp_*``); made
    #: concrete at fit (the bundle lists the sensors it was fitted on). See :mod:`segscope.columns`.
    sensors: str | tuple[str, ...] | None = None
    ttl: str | None = None
    allowed_lateness: str = "1h"
    features: tuple[EntityFeatureConfig, ...]

    @model_validator(mode="after")
    def _durations(self) -> EntityConfig:
        if not self.features:
            raise ValueError("an entity lists no features; add at least one")
        duration_seconds(self.allowed_lateness)
        if self.ttl is not None and duration_seconds(self.ttl) <= 0:
            raise ValueError("ttl must be longer than zero")
        for f in self.features:
            if f.kind == "seasonal_drop" and self.time is None:
                raise ValueError("a 'seasonal_drop' feature compares readings by hour of day: set the entity's time")
            if f.kind == "state" and f.of is not None and self.sensors is None:
                raise ValueError("a 'state' feature's of: sensor needs sensors: in its block; or list its 'over'")
            if f.min_deviation is not None and not any(g.kind == "zscore" and g.of == f.of for g in self.features):
                raise ValueError(
                    f"a 'new_level' feature's min_deviation measures the reading against a zscore feature of the "
                    f"same of ({f.of}) in its block: add one, e.g. {{kind: zscore, of: {f.of}, window: 1h}}"
                )
            for what, span in (("window", f.window), ("min_hold", f.min_hold)):
                if span is not None and self.time is None and not str(span).isdigit():
                    raise ValueError(
                        f"{what} '{span}' is a duration but the entity has no 'time' column: set time, or give "
                        f"the {what} as a count of events"
                    )
        return self


class SegmentsConfig(_Frozen):
    """UMAP + HDBSCAN segmentation (``pip install 'segscope[segments]'``). Off by default: it costs a UMAP fit
    (about a minute in a fresh process) and, measured, does not raise detection quality (README, Segments)."""

    enabled: bool = False
    sample_size: int = Field(default=20_000, ge=100)
    #: 30, not UMAP's 15: measured (benchmarks/segments_quality.py) it gives fewer, steadier segments that new
    #: records land in, and a higher ARI on nslkdd.
    n_neighbors: int = Field(default=30, ge=2)
    n_components: int = Field(default=5, ge=2)
    #: HDBSCAN's smallest segment (default: 2% of the sample) and its min_samples (default: the same); measured
    #: against 0.5% and a third of it (benchmarks/segments_quality.py): ARI 0.19 -> 0.30 on nslkdd, 0.33 -> 0.48
    #: on ImageSegments, with 10-14 segments instead of 57.
    min_cluster_size: int | None = Field(default=None, ge=2)
    min_samples: int | None = Field(default=None, ge=1)
    #: Where the boundaries between the segments HDBSCAN found are drawn: "linear" in the prepared features (a
    #: linear discriminant taught by the clustered rows labels every row), "embedding" as before (HDBSCAN's noise
    #: takes its nearest clustered neighbours' segment in UMAP's embedding). Measured
    #: (benchmarks/segments_quality.py): ARI ImageSegments 0.48 -> 0.50, digits 0.70 -> 0.73, wine 0.77 -> 0.84,
    #: nslkdd 0.30 either way.
    boundaries: SegmentBoundaries = "linear"
    #: Every record gets its nearest segment and a confidence; above 0, records whose confidence is below this
    #: get -1 instead (declining ambiguous rows).
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Calibrate each segment's anomaly scores against its own members (noise: globally).
    aware_scoring: bool = False
    #: Give the fine-tuned learner segment membership (one-hot) and assignment confidence. Off: measured on the
    #: ADBench sets (benchmarks/segment_features.py) it raises mean AUCPR by under a point with stumps and the
    #: prior blend (81.5 -> 81.9 with 1% of the anomalies labelled, 86.5 -> 86.9 with 5%, mostly pendigits), and
    #: lowered it badly with deep trees (69.1 -> 59.9 and 79.2 -> 75.3: a few labelled anomalies in their own small
    #: segment taught the learner the segment); on four held-out sets (--held-out) it is level or lower.
    learner_features: bool = False
    #: Segments with fewer fit-time members than this are calibrated globally.
    min_segment_size: int = Field(default=50, ge=10)


class SegscopeConfig(_Frozen):
    """Everything ``segscope fit`` needs beyond the data."""

    detectors: tuple[DetectorConfig, ...] = DEFAULT_DETECTORS
    combine: CombineMethod = "max"
    #: Fit on a uniform random sample of at most this many rows (the reference for calibration too).
    max_fit_rows: int = Field(default=100_000, ge=100)
    seed: int = 0
    top_k_reasons: int = Field(default=3, ge=1, le=20)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    segments: SegmentsConfig = Field(default_factory=SegmentsConfig)
    #: Per-entity features added to each record before the features above (``configs/fraud.yaml``).
    entities: tuple[EntityConfig, ...] = ()
    #: With entities: the first share of the history (in arrival order) only builds their state and is not
    #: fitted on, since its records see every entity as new (a cold start live data does not have).
    entity_warmup: float = Field(default=0.25, ge=0.0, lt=1.0)
    #: Online adaptation of the detectors per entity (:class:`AdaptConfig`); off when absent.
    adapt: AdaptConfig | None = None
    #: How `segscope stream --config` connects to Kafka (TLS, SASL, client properties); left out of bundles.
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    #: Avro or Protobuf messages with a schema registry (`segscope stream --config`); left out of bundles.
    messages: MessagesConfig = Field(default_factory=MessagesConfig)
    #: The data's name of each column the config names (``{merchant: merchant_id}``; ``--map merchant=merchant_id``
    #: on the command line); an empty name: the data has no such column. Applied to every name in the config when
    #: it loads (:func:`segscope.columns.map_columns`).
    columns: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _map_columns(cls, data: Any) -> Any:
        return map_columns(data) if isinstance(data, dict) and data.get("columns") else data

    @model_validator(mode="after")
    def _unique_detectors(self) -> SegscopeConfig:
        if self.policy.cooldown is not None and not self.entities:
            raise ValueError("policy.cooldown counts per entity: add an entities: block, or remove the cooldown")
        if self.policy.recalibrate is not None and not self.entities:
            raise ValueError(
                "policy.recalibrate holds each entity to its own past: add an entities: block, or remove it"
            )
        if self.adapt is not None:
            _check_adapt(self.adapt, self.entities, self.policy)
        if self.policy.kind == "new_level" and not any(
            f.kind in ALARM_KINDS for e in self.entities for f in e.features
        ):
            raise ValueError(
                "policy kind 'new_level' alerts on entity features of kind new_level, stuck or state: add one, e.g. "
                "{kind: new_level, of: value} under entities:, or choose another policy kind"
            )
        names = [d.name for d in self.detectors]
        if not names:
            raise ValueError("detectors is empty; list at least one, e.g. [{name = 'iforest'}]")
        if len(set(names)) != len(names):
            raise ValueError(f"detectors lists a name twice ({names}); list each detector once")
        return self

    def for_data(self, schema: Mapping[str, Any]) -> SegscopeConfig:
        """This config with its ``sensors:`` rules made concrete for data of ``schema`` (name -> Polars type)."""
        if not any(e.sensors is not None for e in self.entities):
            return self
        numeric = [name for name, dtype in schema.items() if dtype.is_numeric()]
        data = expand_sensors(self.model_dump(), list(schema), numeric)
        return config_from_dict(data, source="config with its sensors")

    def with_features(self, *, id_column: str | None, drop: tuple[str, ...]) -> SegscopeConfig:
        """Return a copy with CLI overrides for the id column and dropped columns."""
        drop = tuple(dict.fromkeys((*self.features.drop, *drop)))
        update = {"id_column": id_column if id_column is not None else self.features.id_column, "drop": drop}
        return self.model_copy(update={"features": self.features.model_copy(update=update)})


def _check_adapt(adapt: AdaptConfig, entities: tuple[EntityConfig, ...], policy: PolicyConfig) -> None:
    if not entities or policy.recalibrate is not None:
        raise ValueError("adapt holds each entity to its own past: add an entities: block and no policy.recalibrate")
    if not str(adapt.every).isdigit() and entities[0].time is None:
        raise ValueError("adapt: durations need the first entity block's 'time' column, or give counts of events")


def _format_validation_error(path: Path | str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])[:200] or "(top level)"
    if first["loc"][:1] in (("kafka",), ("messages",)):  # its input may hold a secret written out: never shown
        return f"config {path}: {where}: {first['msg']}; fix that entry"
    if not first["loc"]:  # a rule over the whole config (the column mapping): its input is the whole config
        return f"config {path}: {first['msg'].removeprefix('Value error, ')}"
    got = repr(first.get("input"))
    got = got if len(got) <= 120 else got[:117] + "..."  # the input can be a whole (huge) table
    return f"config {path}: {where}: {first['msg']} (got {got}); fix that entry"


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> SegscopeConfig:
    """Validate a plain dict into a :class:`SegscopeConfig`, with a one-line error."""
    try:
        return SegscopeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


#: A config is a few settings: larger files, or YAML that expands (aliases) past these sizes, are refused.
MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path, *, columns: dict[str, str] | None = None) -> SegscopeConfig:
    """Load a TOML or YAML config file, or a pack by name (``fraud``, ``cyber``, ``maintenance``); ``columns``
    (``--map``) adds to and overrides the file's column mapping."""
    path = Path(path)
    pack = Path(__file__).parent / "packs" / f"{path}.yaml"
    if not path.is_file() and path.name == str(path) and pack.is_file():
        path = pack
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; pass an existing .toml or .yaml file, or a pack: fraud, cyber, "
            "maintenance"
        )
    suffix = path.suffix.lower()
    if suffix not in {".toml", ".yaml", ".yml"}:
        raise ConfigError(f"config file {path} has extension '{suffix}'; use .toml, .yaml or .yml")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES // 1024} KiB; a config is a few settings")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start + 1}); save it as UTF-8") from None
    try:
        data: Any = tomllib.loads(text) if suffix == ".toml" else load_yaml(text)
    except (tomllib.TOMLDecodeError, YAMLSyntaxError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {reason}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config; flatten it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/mapping at the top level")
    if columns:
        data = {**data, "columns": {**(data.get("columns") or {}), **columns}}
    return config_from_dict(data, source=str(path))
