"""Fitting a :class:`~segscope.model.Model`: the layers in order on history (per-entity features, features ->
detectors, calibration, reasons, alert policy -> optional segments), then what the bundle records of the fit."""

from __future__ import annotations

import hashlib
import io
import shlex
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from segscope.exceptions import DataError, SchemaError, SegscopeWarning
from segscope.features.entity import EntityFeatures
from segscope.features.prepare import FeaturePreparer
from segscope.schema import ColumnSpec, infer_kind
from segscope.unsupervised.detect import make_detector
from segscope.unsupervised.drift import DriftReference, time_like_columns
from segscope.unsupervised.ensemble import AnomalyEnsemble, SegmentCalibration
from segscope.unsupervised.explain import FeatureExplainer
from segscope.unsupervised.profiles import profile_cards
from segscope.unsupervised.threshold import make_policy

if TYPE_CHECKING:
    from segscope.model import Model

__all__ = ["fit"]


def fit(
    model: Model,
    frame: pl.DataFrame,
    *,
    fingerprint: str | None,
    total_rows: int | None,
    on_step: Callable[[str], None] | None,
    previous: Model | None,
    entities: EntityFeatures | None,
    sampled_on: str | None = None,
    file_bytes: int | None = None,
) -> Model:
    """:meth:`Model.fit <segscope.model.Model.fit>`: ``model``'s fitted state, set in place."""
    step = on_step or (lambda _: None)
    cfg = model.config = model.config.for_data(frame.schema)  # sensors: rules made concrete
    model.entities_, model.entity_inputs_ = None, ()
    if cfg.entities:
        model.entities_ = entities if entities is not None else EntityFeatures(cfg.entities)
        model.entity_inputs_ = tuple(
            ColumnSpec(c, kind, str(frame.schema[c]))
            for c in model.entities_.input_columns()
            if c in frame.columns and (kind := infer_kind(frame.schema[c])) is not None
        )
        if entities is None:
            step(f"computing {len(model.entities_.names)} entity features over {frame.height:,} rows")
            frame = model.entities_.fit_transform(frame)
            frame = frame[int(frame.height * cfg.entity_warmup) :]
            if frame.height > cfg.max_fit_rows:
                frame = frame.sample(cfg.max_fit_rows, seed=cfg.seed)
    # the previous version's segment of each row, through its own preparer: ids are matched on the same rows
    segments_before = previous_segments(frame, previous) if cfg.segments.enabled else None
    step("preparing features")
    prep = FeaturePreparer(
        id_column=cfg.features.id_column,
        drop=cfg.features.drop,
        max_categories=cfg.features.max_categories,
        clip=cfg.features.clip,
        keep_constant=tuple(model.entities_.names) if model.entities_ is not None else (),
    ).fit(frame)
    validated = prep.validate(frame)
    x = prep.transform(validated)
    step(f"fitting {len(cfg.detectors)} detectors on {x.shape[0]:,} rows x {x.shape[1]} features")
    ensemble = AnomalyEnsemble([make_detector(d.name, d.params) for d in cfg.detectors], combine=cfg.combine)
    ensemble.fit(x)
    step("calibrating and fitting the alert policy")
    names = list(prep.schema_.features)
    explainer = FeatureExplainer(top_k=cfg.top_k_reasons).fit(
        x, names, [prep.expected_[f] for f in names], ecdf=ensemble.shared_ecdf()
    )
    levels = tuple(model.entities_.alarm_features()) if model.entities_ is not None else ()
    policy = make_policy(cfg.policy, levels).fit(ensemble.reference_scores_, frame)
    # a budget's rate is its own; new levels in the history are its first readings, not a rate to expect
    expected = cfg.policy.kind not in ("budget", "new_level")
    alerts = policy.decide(ensemble.reference_scores_, frame) if expected else None
    model.preparer_, model.ensemble_, model.explainer_, model.policy_ = prep, ensemble, explainer, policy
    model.segmenter_, model.segment_profiles_, model.segment_calibration_ = None, [], None
    if cfg.segments.enabled:
        step("segmenting (UMAP + HDBSCAN on a sample, distilled into a forest)")
        _fit_segments(model, x, validated, alerts, segments_before)
    # alarm features (a new level, a held machine state) are detections, not data to drift
    columns = [(c.name, c.kind) for c in prep.schema_.columns if c.name not in levels]
    rate = float(alerts.mean()) if alerts is not None else None
    if cfg.policy.kind == "new_level":  # no rate of its own: the drift guard expects at most one row in the fit's
        rate = 0.0
    model.drift_ = DriftReference().fit(validated, columns, rate)
    time_like = time_like_columns(frame, columns)
    if time_like:  # one line naming them all, with the options that leave them out
        named = [f"'{name}' {why}" for name, why in time_like.items()]
        drop = " ".join(f"--drop {shlex.quote(name)}" for name in time_like)
        warnings.warn(
            f"column {named[0]}: it drifts by construction, so new data will look anomalous on it; {drop} "
            "unless that is what you want"
            if len(named) == 1
            else f"columns {'; '.join(named)}: they drift by construction, so new data will look anomalous on "
            f"them (a later time lies outside the fit range); refit with {drop} unless that is what you want",
            SegscopeWarning,
            stacklevel=3,  # the caller of Model.fit
        )
    if model.entities_ is not None:
        _warn_unwatched(model.entities_)
    created = datetime.now(UTC)
    fingerprint = fingerprint or _frame_fingerprint(frame)
    model.created_at_ = created.isoformat(timespec="seconds")
    model.version_ = f"{created:%Y%m%d-%H%M%S}-{fingerprint[:8]}"
    model.training_ = {
        "rows": int(total_rows if total_rows is not None else frame.height),
        "fit_rows": int(frame.height),
        "fingerprint": fingerprint,
        "columns": frame.columns,
        "reference_alert_rate": rate,
        "time_like_columns": time_like,
    }
    if sampled_on is not None:
        model.training_["sampled_on"] = sampled_on
    if file_bytes is not None:
        model.training_["bytes"] = int(file_bytes)
    model.segment_expected_ = model._expected_table()
    return model


def previous_segments(frame: pl.DataFrame, previous: Model | None) -> np.ndarray | None:
    """The previous model's segment of each row of ``frame``, as it would score them (its own entity features
    and preparer: this fit's may differ); None when it had no segments."""
    if previous is None or previous.segmenter_ is None:
        return None
    try:
        rows = previous.prepared(frame)
    except (SchemaError, DataError) as exc:
        raise SchemaError(
            f"the previous model cannot segment this data, so segment ids cannot be kept across the refit: {exc}"
        ) from None
    segments: np.ndarray = previous.segmenter_.assign(rows)[0]
    return segments


def _fit_segments(
    model: Model,
    x: np.ndarray,
    validated: pl.DataFrame,
    alerts: np.ndarray | None,
    previous_segments: np.ndarray | None,
) -> None:
    from segscope.unsupervised.segment import Segmenter

    cfg, s = model.config, model.config.segments
    model.segmenter_ = Segmenter(
        sample_size=s.sample_size,
        n_neighbors=s.n_neighbors,
        n_components=s.n_components,
        min_cluster_size=s.min_cluster_size,
        min_samples=s.min_samples,
        min_confidence=s.min_confidence,
        boundaries=s.boundaries,
        seed=cfg.seed,
    ).fit(x, previous_segments=previous_segments)
    labels = model.segmenter_.assign(x)[0]  # once, for both the calibration and the profile cards
    if s.aware_scoring:
        model.segment_calibration_ = SegmentCalibration(min_size=s.min_segment_size).fit(model.ensemble_, x, labels)
    names = list(model.preparer_.schema_.features)
    readable, categorical = model.preparer_.readable_values(validated)
    model.segment_profiles_ = profile_cards(
        model.segmenter_.segments_, labels, x, names, model.preparer_.expected_, readable, categorical, alerts
    )


def _frame_fingerprint(frame: pl.DataFrame) -> str:
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _warn_unwatched(entities: EntityFeatures) -> None:
    """One line for a ``state`` feature that watches no entity and has none still learning: it can never alarm."""
    for name, learnt in entities.states_known(entities.state_).items():
        if learnt["watching"] == 0 and learnt["learning"] == 0 and learnt["too_few_noisy_sensors"]:
            warnings.warn(
                f"entity feature '{name}' watches no entity: none has two sensors whose readings are noise rather "
                f"than a slow drift or a flat line (of {', '.join(learnt['sensors_used'])}), so it will never "
                "alarm; give it sensors that vary reading to reading, or remove it",
                SegscopeWarning,
                stacklevel=4,  # the caller of Model.fit
            )
