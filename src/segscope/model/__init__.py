"""``Model``: what a bundle holds. ``fit(history)`` fits the layers in order (features -> detectors, calibration,
reasons, alert policy -> optional segments), ``score(frame)`` runs them, ``save``/``load`` write and read the bundle
folder, each component packing its own state. Scoring never changes a fitted model: what carries over between
batches (an alert budget's counts, each entity's state) lives in a :class:`ScoringState` that the caller owns, and a
record's scores do not depend on the other records of its batch."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import polars as pl

from segscope.config import SegscopeConfig
from segscope.exceptions import ConfigError, NotFittedError, SchemaError
from segscope.features.entity import EntityFeatures
from segscope.features.entity_meaning import entity_meaning
from segscope.features.entity_state import EntityState
from segscope.features.prepare import FeaturePreparer
from segscope.labels.store import ReviewRecords
from segscope.schema import SCORED_COLUMNS, SCORED_TYPES, ColumnSpec, FeatureSchema
from segscope.supervised.base import FineTuned, Layout
from segscope.unsupervised.adapt import adapt_entities
from segscope.unsupervised.drift import DriftReference, DriftTracker
from segscope.unsupervised.ensemble import AnomalyEnsemble, SegmentCalibration
from segscope.unsupervised.explain import REASON_DTYPE, FeatureExplainer, alarms_first
from segscope.unsupervised.profiles import ExpectedTable, expected_rows, expected_table
from segscope.unsupervised.threshold import AlertPolicy, NewLevelAlerts, PolicyState, refit_policy

if TYPE_CHECKING:
    from segscope.unsupervised.segment import Segmenter

__all__ = ["SCORED_COLUMNS", "Model", "ScoringState"]


@dataclass
class ScoringState(PolicyState):
    """What carries over between the batches of one file or stream: the alert budget's counts and, with
    ``entities:`` in the config, each entity's state."""

    entities: EntityState | None = None


class Model:
    """The fitted unsupervised layer plus its alert policy: ``fit(frame)``, ``score(frame)``, ``save(dir)``."""

    #: The fitted layers (set by :meth:`fit` or :meth:`load`): features, detectors, reasons, alert policy.
    preparer_: FeaturePreparer
    ensemble_: AnomalyEnsemble
    explainer_: FeatureExplainer
    policy_: AlertPolicy
    #: This version's name, when it was made and what it was fitted on.
    version_: str
    created_at_: str
    training_: dict[str, Any]
    #: The manifest a loaded model came from (set by :meth:`load`).
    manifest_: dict[str, Any]
    #: The segmenter and its profile cards, when segmentation is enabled (``segment`` is -1 otherwise).
    segmenter_: Segmenter | None = None
    segment_profiles_: list[dict[str, Any]] | None = None
    #: Segment-aware scoring (``[segments] aware_scoring``): each segment's own calibration of the ensemble score.
    segment_calibration_: SegmentCalibration | None = None
    #: Per-segment typical values for reasons (built from the profile cards at fit and load).
    segment_expected_: ExpectedTable | None = None
    #: The fine-tuned learner, when this version has one (``supervised_score`` is null otherwise).
    supervised_: FineTuned | None = None
    #: Whether the learner also sees segment membership (one-hot) and assignment confidence.
    supervised_segment_features_: bool = False
    #: What the fit data looked like, to tell when scored data does not (None for bundles older than that).
    drift_: DriftReference | None = None
    #: Per-entity features (``entities:`` in the config) and the input columns they read, as fitted.
    entities_: EntityFeatures | None = None
    entity_inputs_: tuple[ColumnSpec, ...] = ()
    #: For fine-tuned versions: the labels used, the version it was tuned from, and the promotion decision.
    label_snapshot_: dict[str, Any] | None = None
    parent_version_: str | None = None
    promotion_: dict[str, Any] | None = None

    def __init__(self, config: SegscopeConfig | None = None) -> None:
        self.config = config if config is not None else SegscopeConfig()

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        frame: pl.DataFrame,
        *,
        fingerprint: str | None = None,
        total_rows: int | None = None,
        on_step: Callable[[str], None] | None = None,
        previous: Model | None = None,
        entities: EntityFeatures | None = None,
        sampled_on: str | None = None,
        file_bytes: int | None = None,
    ) -> Self:
        """Fit on history (sampled to at most ``config.max_fit_rows`` rows by the caller; with per-entity features, the
        whole history in arrival order (their features computed over all of it, then sampled), or, with ``entities``
        fitted over it, the caller's sample with their features); kept: ``sampled_on``, ``file_bytes``."""
        from segscope.model import fitting

        fitting.fit(
            self,
            frame,
            fingerprint=fingerprint,
            total_rows=total_rows,
            on_step=on_step,
            previous=previous,
            entities=entities,
            sampled_on=sampled_on,
            file_bytes=file_bytes,
        )
        return self

    def _expected_table(self) -> ExpectedTable | None:
        names = list(self.preparer_.schema_.features)
        return expected_table(self.segment_profiles_ or [], names, [self.preparer_.expected_[f] for f in names])

    def check_fitted(self) -> None:
        """Raise NotFittedError unless it was fitted or loaded."""
        if not hasattr(self, "ensemble_"):
            raise NotFittedError("Model is not fitted; call fit(frame) or Model.load(bundle) first")

    @property
    def n_features(self) -> int:
        """Number of prepared features (the first columns of :meth:`supervision_matrix`)."""
        self.check_fitted()
        return len(self.preparer_.schema_.features)

    @property
    def version(self) -> str:
        self.check_fitted()
        return self.version_

    @property
    def id_column(self) -> str | None:
        self.check_fitted()
        return self.preparer_.schema_.id_column

    # ------------------------------------------------------- what it holds
    @property
    def created_at(self) -> str:
        self.check_fitted()
        return self.created_at_

    @property
    def parent_version(self) -> str | None:
        """The version this one was fine-tuned from (None for a fitted one)."""
        self.check_fitted()
        return self.parent_version_

    @property
    def training(self) -> Mapping[str, Any]:
        """What it was fitted on (``rows``, ``fit_rows``, ``fingerprint``, ``columns`` ...), read-only."""
        self.check_fitted()
        return MappingProxyType(self.training_)

    def bundle_manifest(self) -> dict[str, Any]:
        """The manifest of the bundle it was loaded from (a copy); :meth:`manifest` for one fitted here."""
        self.check_fitted()
        return copy.deepcopy(self.manifest_) if hasattr(self, "manifest_") else self.manifest()

    @property
    def feature_schema(self) -> FeatureSchema:
        """The columns it was fitted on and their features (:meth:`input_schema`: what an input must hold)."""
        self.check_fitted()
        return self.preparer_.schema_

    @property
    def expected_values(self) -> Mapping[str, str]:
        """Each feature's typical value at fit: what a reason's ``expected`` shows outside any segment."""
        self.check_fitted()
        return MappingProxyType(self.preparer_.expected_)

    @property
    def detector_names(self) -> tuple[str, ...]:
        """The unsupervised detectors of the ensemble, in the order of their scores."""
        self.check_fitted()
        return tuple(det.name for det in self.ensemble_.detectors)

    @property
    def dropped_columns(self) -> dict[str, str]:
        """The columns left out at fit, each with why."""
        self.check_fitted()
        return dict(self.preparer_.dropped_)

    def describe_columns(self) -> list[tuple[str, str, str, str, str]]:
        """Per input column: (name, kind, dtype at fit, its features, their expected values), for people."""
        self.check_fitted()
        return self.preparer_.describe_columns()

    @property
    def has_entities(self) -> bool:
        """Whether it computes per-entity features (``entities:`` in the config)."""
        self.check_fitted()
        return self.entities_ is not None

    @property
    def entity_meaning(self) -> str | None:
        """What its entity state means: its ``entities:`` and their fitted level grids (None: no entities)."""
        return entity_meaning(self.entities_) if self.entities_ is not None else None

    @property
    def entity_features(self) -> tuple[str, ...]:
        self.check_fitted()
        return tuple(self.entities_.names) if self.entities_ is not None else ()

    @property
    def entity_inputs(self) -> tuple[ColumnSpec, ...]:
        """The input columns the per-entity features read (keys, event times, values), as at fit."""
        self.check_fitted()
        return self.entity_inputs_

    @property
    def segmenter(self) -> Segmenter | None:
        self.check_fitted()
        return self.segmenter_

    @property
    def segment_profiles(self) -> list[dict[str, Any]]:
        """Each segment's profile card (none without segments)."""
        self.check_fitted()
        return list(self.segment_profiles_ or [])

    @property
    def supervised(self) -> FineTuned | None:
        """The fine-tuned learner, when this version has one."""
        self.check_fitted()
        return self.supervised_

    @property
    def supervised_sees_segments(self) -> bool:
        self.check_fitted()
        return self.supervised_segment_features_

    def describe_policy(self) -> dict[str, Any]:
        """The alert policy as the bundle keeps it (``kind``, ``threshold`` ...)."""
        self.check_fitted()
        return self.policy_.describe()

    def prepared(self, frame: pl.DataFrame) -> np.ndarray:
        """The prepared feature matrix the detectors see (per-entity features computed first when missing)."""
        self.check_fitted()
        return self.preparer_.transform(self.preparer_.validate(self.with_entities(frame)))

    # ------------------------------------------------------- new versions
    def with_supervised(
        self,
        tuned: FineTuned,
        *,
        sees_segments: bool,
        scores: np.ndarray,
        frame: pl.DataFrame,
        version: str,
        created_at: str,
        labels: dict[str, Any],
        promotion: dict[str, Any],
        alerts: int | None = None,
    ) -> Model:
        """A new version: ``tuned`` as its supervised layer (``sees_segments``: fed the segment columns), the alert
        policy refit on ``scores`` of ``frame`` (``refit_policy``), this one its parent, ``labels``, ``promotion``."""
        self.check_fitted()
        new = copy.copy(self)
        new.supervised_, new.supervised_segment_features_ = tuned, sees_segments
        levels = tuple(self.entities_.alarm_features()) if self.entities_ is not None else ()
        new.policy_ = refit_policy(self.config.policy, levels, scores, frame, alerts=alerts)
        new.version_, new.created_at_, new.parent_version_ = version, created_at, self.version
        new.label_snapshot_, new.promotion_ = labels, promotion
        return new

    def with_version(self, version: str) -> Model:
        """The same model under another version name (a registry that holds the name already)."""
        self.check_fitted()
        new = copy.copy(self)
        new.version_ = version
        return new

    def input_schema(self) -> FeatureSchema:
        """What an input record must hold: the model's input columns, except the per-entity features it computes
        itself, plus the columns those read (entity keys, event times, values)."""
        self.check_fitted()
        schema = self.preparer_.schema_
        if self.entities_ is None:
            return schema
        derived = set(self.entities_.names)
        columns = [c for c in schema.columns if c.name not in derived]
        columns += [c for c in self.entity_inputs_ if c.name not in {x.name for x in columns}]
        return FeatureSchema(tuple(columns), schema.features, schema.id_column)

    def input_dtypes(self) -> dict[str, pl.DataType]:
        """How a text file's columns are read for this model: numbers as their fitted integer or float type, the
        rest as text (categories, true/false and dates are converted by the model's own checks)."""
        plain = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64"}
        return {
            c.name: getattr(pl, c.dtype)() if c.kind == "numeric" and c.dtype in plain else pl.String()
            for c in self.input_schema().columns
        }

    def date_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.input_schema().columns if c.kind == "datetime")

    def with_entities(self, frame: pl.DataFrame, state: PolicyState | None = None) -> pl.DataFrame:
        """``frame`` with its per-entity features (continuing ``state`` when it is a :class:`ScoringState`;
        else from the end of the fitting history, keeping nothing). Frames that hold them already (a scored
        file, records from the label store) are returned as they are."""
        return self._entities(frame, state)[0]

    def _entities(self, frame: pl.DataFrame, state: PolicyState | None) -> tuple[pl.DataFrame, EntityState | None]:
        """(:meth:`with_entities`, the entity state it advanced: None when nothing was computed)."""
        if self.entities_ is None or all(n in frame.columns for n in self.entities_.names):
            return frame, None
        entities = state.entities if isinstance(state, ScoringState) else None
        entities = entities if entities is not None else self.entities_.new_state()
        return self.entities_.transform(frame, entities), entities

    @property
    def alert_threshold(self) -> float | None:
        """The score at or above which the policy alerts (a budget may still decline some)."""
        self.check_fitted()
        value = self.policy_.describe().get("threshold")
        return float(value) if value is not None else None

    # ---------------------------------------------------------------- score
    def _unsupervised(
        self, frame: pl.DataFrame, *, with_reasons: bool = True
    ) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, np.ndarray, pl.Series, tuple[np.ndarray, np.ndarray] | None]:
        """(validated frame, prepared matrix, anomaly_score, its parts, reasons, (segments, confidence) or None)."""
        validated = self.preparer_.validate(frame)
        x = self.preparer_.transform(validated)
        if not frame.height:
            parts = np.empty((0, len(self.ensemble_.detectors) + 1))
            return validated, x, np.empty(0), parts, pl.Series("reasons", [], dtype=REASON_DTYPE), None
        # ECOD and the reasons look up the same ECDF: one fused pass computes both
        shared = self.ensemble_.ecod_index() if self.explainer_.ecdf_ is self.ensemble_.shared_ecdf() else None
        idx, val, total, ecod = self.explainer_.top_contributions(
            x, self.ensemble_.ecod_skew() if shared is not None else None
        )
        anomaly, parts = self.ensemble_.score_with_parts(x, {shared: ecod} if shared is not None else None)
        assigned = self.segmenter_.assign(x) if self.segmenter_ is not None else None  # once per batch
        if assigned is not None and self.segment_calibration_ is not None:
            anomaly = self.segment_calibration_.apply(self.ensemble_, assigned[0], anomaly, parts)
        reasons = pl.Series("reasons", [], dtype=REASON_DTYPE)
        if with_reasons:
            expected = (
                expected_rows(self.segment_expected_, assigned[0])
                if assigned is not None and self.segment_expected_ is not None
                else None
            )
            readable = self.preparer_.readable_values(validated)
            reasons = self.explainer_.explain(x, *readable, expected=expected, top=(idx, val, total))
        return validated, x, anomaly, parts, reasons, assigned

    def supervision_matrix(
        self, frame: pl.DataFrame, *, with_segments: bool | None = None
    ) -> tuple[np.ndarray, Layout, np.ndarray]:
        """(features for the supervised layer, their :class:`~segscope.supervised.base.Layout`, anomaly_score):
        the prepared features, every detector's calibrated surprisal and the ensemble's (the XGBOD idea), with
        segments and ``[segments] learner_features`` (``with_segments`` defaults to that) segment membership
        one-hot and assignment confidence, then each categorical feature's level code."""
        self.check_fitted()
        validated, x, anomaly, parts, _, assigned = self._unsupervised(self.with_entities(frame), with_reasons=False)
        with_segments = self.learner_sees_segments() if with_segments is None else with_segments
        codes = self.preparer_.category_codes(validated)
        matrix = self._learner_matrix(x, parts, assigned if with_segments else None, codes)
        monotone = np.zeros(matrix.shape[1] - codes.shape[1])
        monotone[x.shape[1] : x.shape[1] + parts.shape[1]] = 1.0
        layout = Layout(
            n_features=x.shape[1],
            surprisal=x.shape[1] + parts.shape[1] - 1,  # the ensemble's, after each detector's
            monotone=tuple(monotone.tolist()),
            categories=self.preparer_.category_cardinalities(),
        )
        return matrix, layout, anomaly

    def learner_sees_segments(self) -> bool:
        return self.segmenter_ is not None and self.config.segments.learner_features

    def _learner_matrix(
        self,
        x: np.ndarray,
        parts: np.ndarray,
        assigned: tuple[np.ndarray, np.ndarray] | None,
        codes: np.ndarray | None,
    ) -> np.ndarray:
        """What the learner sees: prepared features, detector surprisals, (optionally) segment columns, then
        category codes (None for models fine-tuned before the learner saw them)."""
        blocks = [x, parts]
        if assigned is not None and self.segmenter_ is not None:
            segments, confidence = assigned
            onehot = (segments[:, None] == self.segmenter_.segments_[None, :]).astype(np.float64)
            blocks += [onehot, confidence[:, None]]
        if codes is not None:
            blocks.append(codes)
        return np.hstack(blocks)

    def drift_tracker(self) -> DriftTracker | None:
        """How scored data compares with the fit data, one tracker per file or stream window (None: no reference)."""
        self.check_fitted()
        return self.drift_.tracker() if self.drift_ is not None else None

    def new_state(self, *, from_start: bool = False) -> ScoringState:
        """Scoring state that carries over between batches (an alert budget's counts, each entity's state): one
        per file or stream. Each entity continues from the end of the history, or from nothing (``from_start``:
        the history's own records, as at fit)."""
        self.check_fitted()
        policy = self.policy_.new_state()
        entities = None
        if self.entities_ is not None:
            entities = self.entities_.empty_state() if from_start else self.entities_.new_state()
        return ScoringState(used=policy.used, rows_seen=policy.rows_seen, entities=entities)

    def score(
        self, frame: pl.DataFrame, *, state: PolicyState | None = None, drift: DriftTracker | None = None
    ) -> pl.DataFrame:
        """Input columns plus :data:`SCORED_COLUMNS`; never changes the model; batch-independent scores. Pass the
        same ``state`` (:meth:`new_state`) for every batch of one file or stream (an alert budget counts across
        them; without it each call stands alone); ``drift`` counts the batch in a :meth:`drift_tracker`."""
        self.check_fitted()
        frame, entities = self._entities(frame, state)
        validated, x, anomaly, parts, reasons, assigned = self._unsupervised(frame)
        segment, confidence = assigned if assigned is not None else (None, None)
        supervised = None
        if self.supervised_ is not None and frame.height:
            codes = self.preparer_.category_codes(validated) if self.supervised_.uses_layout else None
            segments = assigned if self.supervised_segment_features_ else None
            learner_input = self._learner_matrix(x, parts, segments, codes)
            supervised = self.supervised_.predict_proba(learner_input)
        elif self.supervised_ is not None:
            supervised = np.empty(0)
        score = supervised if supervised is not None else anomaly
        alerts, policy = np.asarray(self.policy_.decide(score, validated, state), dtype=bool), self.config.policy
        held = self.entities_.held_alarms(frame) if self.entities_ is not None else None  # machines away from state
        if entities is not None and self.entities_ is not None:  # each entity's own past decides further
            if self.config.adapt is not None:
                alerts = adapt_entities(alerts, frame, self.entities_, entities, self.config)  # refits, gate, cooldown
            elif policy.recalibrate is not None:
                alerts = self.entities_.recalibrate(
                    alerts, score, entities, policy.recalibrate, policy.cooldown, policy.rearm
                )
            elif policy.cooldown is not None:  # held alarms all stand
                alerts = self.entities_.cool_down(alerts, entities, policy.cooldown, policy.rearm, held=held)
        if drift is not None:
            drift.add(validated, alerts, held)
        if isinstance(self.policy_, NewLevelAlerts):
            reasons = alarms_first(validated, reasons, self.policy_.columns, self.config.top_k_reasons)
        return frame.with_columns(
            pl.Series("score", score, dtype=pl.Float64),
            pl.Series("anomaly_score", anomaly, dtype=pl.Float64),
            pl.Series("supervised_score", supervised, dtype=pl.Float64)
            if supervised is not None
            else pl.lit(None, dtype=pl.Float64).alias("supervised_score"),
            pl.Series("is_alert", alerts, dtype=pl.Boolean),
            pl.Series("segment", segment if segment is not None else np.full(frame.height, -1), dtype=pl.Int32),
            pl.Series("segment_confidence", confidence, dtype=pl.Float64)
            if confidence is not None
            else pl.lit(None, dtype=pl.Float64).alias("segment_confidence"),
            reasons.alias("reasons"),
            pl.lit(self.version_, dtype=pl.String).alias("model_version"),
        )

    def scored_schema(self, input_schema: Mapping[str, pl.DataType]) -> pl.Schema:
        """What :meth:`score` gives a frame of ``input_schema`` (its columns, the entity features it lacks, then
        :data:`SCORED_COLUMNS`), known without scoring; missing columns are refused as scoring would."""
        if missing := [c.name for c in self.input_schema().columns if c.name not in input_schema]:
            raise SchemaError(f"column(s) {missing} are missing; the bundle was fitted with them: add them")
        names = () if all(n in input_schema for n in self.entity_features) else self.entity_features
        return pl.Schema({**input_schema, **dict.fromkeys(names, pl.Float64()), **SCORED_TYPES})

    def for_review(self, scored: pl.DataFrame, *, ids: Sequence[str] | None = None) -> ReviewRecords:
        """Scored rows as the label store keeps them: with their ids (the id column's values by default) and
        prepared feature vectors, so that every label joins back to the features."""
        self.check_fitted()
        if ids is None:
            if self.id_column is None or self.id_column not in scored.columns:
                raise ConfigError("the label store needs record ids: fit the bundle with --id-column")
            ids = [str(v) for v in scored.get_column(self.id_column).to_list()]
        return ReviewRecords(scored, list(ids), self.prepared(scored), self.alert_threshold)

    # ------------------------------------------------------------- persist
    def manifest(self) -> dict[str, Any]:
        """The bundle manifest (see :mod:`segscope.model.persist`)."""
        from segscope.model import persist

        return persist.manifest(self)

    def save(self, path: str | Path) -> Path:
        """Write the bundle folder (atomically)."""
        from segscope.model import persist

        return persist.save(self, path)

    @classmethod
    def load(cls, path: str | Path, *, trusted: bool = False) -> Model:
        """Load and verify a bundle folder, or a registry's current version (see :mod:`segscope.bundle`)."""
        from segscope.model import persist

        return persist.load(cls, path, trusted=trusted)
