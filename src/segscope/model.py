"""``Model``: what a bundle holds. ``fit(history)`` fits the layers in order (features -> detectors, calibration,
reasons, alert policy -> optional segments), ``score(frame)`` runs them, ``save``/``load`` write and read the
bundle folder, each component packing its own state.

Scoring never changes a fitted model: what carries over between batches (an alert budget's counts) lives in a
:class:`~segscope.unsupervised.threshold.PolicyState` that the caller owns, and a record's scores do not depend
on the other records of its batch.
"""

from __future__ import annotations

import hashlib
import io
import platform
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl

from segscope import bundle as bundle_io
from segscope.config import SegscopeConfig, config_from_dict
from segscope.exceptions import BundleError, ConfigError, NotFittedError, SegscopeError
from segscope.features.prepare import FeaturePreparer
from segscope.labels.store import ReviewRecords
from segscope.registry import resolve
from segscope.schema import SCORED_COLUMNS
from segscope.supervised.base import FineTuned
from segscope.supervised.learners import make_finetuned
from segscope.unsupervised.detect import make_detector
from segscope.unsupervised.ensemble import AnomalyEnsemble, SegmentCalibration
from segscope.unsupervised.explain import REASON_DTYPE, FeatureExplainer
from segscope.unsupervised.profiles import expected_rows, expected_table, profile_cards
from segscope.unsupervised.threshold import PolicyState, make_policy, restore_policy

__all__ = ["SCORED_COLUMNS", "Model"]

_LIBRARIES = ("segscope", "polars", "numpy", "scipy", "scikit-learn", "pyod", "numba", "pyarrow")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
            out[lib] = "unknown"
    return out


def _frame_fingerprint(frame: pl.DataFrame) -> str:
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


class Model:
    """The fitted unsupervised layer plus its alert policy: ``fit(frame)``, ``score(frame)``, ``save(dir)``."""

    #: The manifest a loaded model came from (set by :meth:`load`).
    manifest_: dict[str, Any]
    #: The segmenter and its profile cards, when segmentation is enabled (``segment`` is -1 otherwise).
    segmenter_: Any = None
    segment_profiles_: list[dict[str, Any]] | None = None
    #: Segment-aware scoring (``[segments] aware_scoring``): each segment's own calibration of the ensemble score.
    segment_calibration_: SegmentCalibration | None = None
    #: Per-segment typical values for reasons (built from the profile cards at fit and load).
    segment_expected_: tuple[pl.Series, np.ndarray] | None = None
    #: The fine-tuned learner, when this version has one (``supervised_score`` is null otherwise).
    supervised_: FineTuned | None = None
    #: Whether the learner also sees segment membership (one-hot) and assignment confidence.
    supervised_segment_features_: bool = False
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
    ) -> Self:
        """Fit on history (already sampled to at most ``config.max_fit_rows`` rows by the caller)."""
        step = on_step or (lambda _: None)
        cfg = self.config
        step("preparing features")
        prep = FeaturePreparer(
            id_column=cfg.features.id_column,
            drop=cfg.features.drop,
            max_categories=cfg.features.max_categories,
            clip=cfg.features.clip,
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
        policy = make_policy(cfg.policy).fit(ensemble.reference_scores_, frame)
        alerts = policy.decide(ensemble.reference_scores_, frame) if cfg.policy.kind != "budget" else None
        self.preparer_, self.ensemble_, self.explainer_, self.policy_ = prep, ensemble, explainer, policy
        self.segmenter_, self.segment_profiles_, self.segment_calibration_ = None, [], None
        if cfg.segments.enabled:
            step("segmenting (UMAP + HDBSCAN on a sample, distilled into a forest)")
            self._fit_segments(x, validated, alerts, previous)
        created = datetime.now(UTC)
        fingerprint = fingerprint or _frame_fingerprint(frame)
        self.created_at_ = created.isoformat(timespec="seconds")
        self.version_ = f"{created:%Y%m%d-%H%M%S}-{fingerprint[:8]}"
        self.training_ = {
            "rows": int(total_rows if total_rows is not None else frame.height),
            "fit_rows": int(frame.height),
            "fingerprint": fingerprint,
            "columns": frame.columns,
            "reference_alert_rate": float(alerts.mean()) if alerts is not None else None,
        }
        self.segment_expected_ = self._expected_table()
        return self

    def _fit_segments(
        self, x: np.ndarray, validated: pl.DataFrame, alerts: np.ndarray | None, previous: Model | None
    ) -> None:
        from segscope.unsupervised.segment import Segmenter

        cfg, s = self.config, self.config.segments
        self.segmenter_ = Segmenter(
            sample_size=s.sample_size,
            n_neighbors=s.n_neighbors,
            n_components=s.n_components,
            min_cluster_size=s.min_cluster_size,
            min_confidence=s.min_confidence,
            seed=cfg.seed,
        ).fit(x, previous=previous.segmenter_ if previous is not None else None)
        labels = self.segmenter_.assign(x)[0]  # once, for both the calibration and the profile cards
        if s.aware_scoring:
            self.segment_calibration_ = SegmentCalibration(min_size=s.min_segment_size).fit(self.ensemble_, x, labels)
        names = list(self.preparer_.schema_.features)
        readable, categorical = self.preparer_.readable_values(validated)
        self.segment_profiles_ = profile_cards(
            self.segmenter_.segments_, labels, x, names, self.preparer_.expected_, readable, categorical, alerts
        )

    def _expected_table(self) -> tuple[pl.Series, np.ndarray] | None:
        names = list(self.preparer_.schema_.features)
        return expected_table(self.segment_profiles_ or [], names, [self.preparer_.expected_[f] for f in names])

    def _check_fitted(self) -> None:
        if not hasattr(self, "ensemble_"):
            raise NotFittedError("Model is not fitted; call fit(frame) or Model.load(bundle) first")

    @property
    def n_features(self) -> int:
        """Number of prepared features (the first columns of :meth:`supervision_matrix`)."""
        self._check_fitted()
        return len(self.preparer_.schema_.features)

    @property
    def version(self) -> str:
        self._check_fitted()
        return self.version_

    @property
    def id_column(self) -> str | None:
        self._check_fitted()
        return self.preparer_.schema_.id_column

    def input_dtypes(self) -> dict[str, pl.DataType]:
        """How a text file's columns are read for this model: numbers as their fitted integer or float type, the
        rest as text (categories, true/false and dates are converted by the model's own checks)."""
        self._check_fitted()
        plain = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64"}
        return {
            c.name: getattr(pl, c.dtype)() if c.kind == "numeric" and c.dtype in plain else pl.String()
            for c in self.preparer_.schema_.columns
        }

    def date_columns(self) -> tuple[str, ...]:
        self._check_fitted()
        return tuple(c.name for c in self.preparer_.schema_.columns if c.kind == "datetime")

    @property
    def alert_threshold(self) -> float | None:
        """The score at or above which the policy alerts (a budget may still decline some)."""
        self._check_fitted()
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
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features for the supervised layer, +1/0 monotone constraints, anomaly_score): the prepared features
        plus every detector's calibrated surprisal and the ensemble's (the XGBOD idea), and, with segments and
        ``[segments] learner_features`` (``with_segments`` defaults to that), segment membership one-hot and
        assignment confidence."""
        self._check_fitted()
        _, x, anomaly, parts, _, assigned = self._unsupervised(frame, with_reasons=False)
        with_segments = self.learner_sees_segments() if with_segments is None else with_segments
        matrix = self._learner_matrix(x, parts, assigned if with_segments else None)
        monotone = np.zeros(matrix.shape[1])
        monotone[x.shape[1] : x.shape[1] + parts.shape[1]] = 1.0
        return matrix, monotone, anomaly

    def learner_sees_segments(self) -> bool:
        return self.segmenter_ is not None and self.config.segments.learner_features

    def _learner_matrix(
        self, x: np.ndarray, parts: np.ndarray, assigned: tuple[np.ndarray, np.ndarray] | None
    ) -> np.ndarray:
        """What the learner sees: prepared features, detector surprisals, then (optionally) segment columns."""
        if assigned is None:
            return np.hstack([x, parts])
        segments, confidence = assigned
        onehot = (segments[:, None] == self.segmenter_.segments_[None, :]).astype(np.float64)
        return np.hstack([x, parts, onehot, confidence[:, None]])

    def new_state(self) -> PolicyState:
        """Scoring state that carries over between batches (an alert budget's counts): one per file or stream."""
        self._check_fitted()
        return self.policy_.new_state()

    def score(self, frame: pl.DataFrame, *, state: PolicyState | None = None) -> pl.DataFrame:
        """Input columns plus :data:`SCORED_COLUMNS`. Never changes the model; batch-independent scores. Pass
        the same ``state`` (:meth:`new_state`) for every batch of one file or stream, so that an alert budget
        counts across them; without it each call is decided on its own."""
        self._check_fitted()
        validated, x, anomaly, parts, reasons, assigned = self._unsupervised(frame)
        segment = assigned[0] if assigned is not None else None
        supervised = None
        if self.supervised_ is not None and frame.height:
            learner_input = self._learner_matrix(x, parts, assigned if self.supervised_segment_features_ else None)
            supervised = self.supervised_.predict_proba(learner_input)
        elif self.supervised_ is not None:
            supervised = np.empty(0)
        score = supervised if supervised is not None else anomaly
        alerts = self.policy_.decide(score, validated, state)
        return frame.with_columns(
            pl.Series("score", score, dtype=pl.Float64),
            pl.Series("anomaly_score", anomaly, dtype=pl.Float64),
            pl.Series("supervised_score", supervised, dtype=pl.Float64)
            if supervised is not None
            else pl.lit(None, dtype=pl.Float64).alias("supervised_score"),
            pl.Series("is_alert", alerts, dtype=pl.Boolean),
            pl.Series("segment", segment, dtype=pl.Int32)
            if segment is not None
            else pl.lit(-1, dtype=pl.Int32).alias("segment"),
            reasons.alias("reasons"),
            pl.lit(self.version_, dtype=pl.String).alias("model_version"),
        )

    def for_review(self, scored: pl.DataFrame, *, ids: Sequence[str] | None = None) -> ReviewRecords:
        """Scored rows as the label store keeps them: with their ids (the id column's values by default) and
        prepared feature vectors, so that every label joins back to the features."""
        self._check_fitted()
        if ids is None:
            if self.id_column is None or self.id_column not in scored.columns:
                raise ConfigError("the label store needs record ids: fit the bundle with --id-column")
            ids = [str(v) for v in scored.get_column(self.id_column).to_list()]
        vectors = self.preparer_.transform(self.preparer_.validate(scored))
        return ReviewRecords(scored, list(ids), vectors, self.alert_threshold)

    # ------------------------------------------------------------- persist
    def manifest(self) -> dict[str, Any]:
        self._check_fitted()
        schema = self.preparer_.schema_
        return {
            "segscope_bundle": True,
            "model_version": self.version_,
            "created_at": self.created_at_,
            "versions": _versions(),
            "feature_schema": schema.to_dict(),
            "feature_schema_hash": schema.hash,
            "dropped_columns": self.preparer_.dropped_,
            "components": [
                {
                    "role": "detector",
                    "name": det.name,
                    "class": type(det).__name__,
                    "params": det.get_params(),
                    "artifact": f"arrays/detector-{i}-{det.name}.npz",
                }
                for i, det in enumerate(self.ensemble_.detectors)
            ]
            + [
                {"role": "combiner", "name": self.ensemble_.combine, "artifact": "arrays/calibration.npz"},
                {
                    "role": "explainer",
                    "name": "tail-surprisal",
                    "params": {"top_k": self.explainer_.top_k},
                    "artifact": "arrays/explainer.npz",
                },
                self._segmenter_component(),
                self._supervised_component(),
            ],
            "config": self.config.model_dump(mode="json"),
            "policy": self.policy_.describe(),
            "training": self.training_,
            "label_snapshot": self.label_snapshot_,
            "parent_version": self.parent_version_,
            "promotion": self.promotion_,
        }

    def _segmenter_component(self) -> dict[str, Any]:
        if self.segmenter_ is None:
            return {"role": "segmenter", "name": None, "note": "not fitted (segment = -1)"}
        return {
            "role": "segmenter",
            "name": "umap-hdbscan-forest",
            "params": self.segmenter_.get_params(),
            "artifact": "arrays/segmenter.npz",
            "segments": int(self.segmenter_.segments_.size),
            "agreement_with_fit_labels": {
                "fit_sample": self.segmenter_.agreement_fit_,
                "held_out": self.segmenter_.agreement_held_out_,
            },
            "profiles": self.segment_profiles_,
            "lineage": getattr(self.segmenter_, "lineage_", {}),
        }

    def _supervised_component(self) -> dict[str, Any]:
        if self.supervised_ is None:
            return {"role": "supervised", "name": None, "note": "no fine-tuned model (supervised_score = null)"}
        name, _ = self.supervised_.learner.artifact()
        return {
            "role": "supervised",
            "name": self.supervised_.learner.name,
            "params": self.supervised_.describe(),
            "artifact": f"supervised/{name}",
            "arrays": "arrays/supervised.npz",
            "segment_features": self.supervised_segment_features_,
        }

    def save(self, path: str | Path) -> Path:
        """Write the bundle folder (atomically)."""
        self._check_fitted()
        arrays: dict[str, dict[str, np.ndarray]] = {}
        pickles: dict[str, bytes] = {}
        for i, det in enumerate(self.ensemble_.detectors):
            part = f"detector-{i}-{det.name}"
            blob = det.pickled()
            if blob is not None:
                pickles[part] = blob
            arrays[part] = det.state()
        arrays["calibration"] = self.ensemble_.state()
        arrays["explainer"] = self.explainer_.state()
        raw_files: dict[str, bytes] = {}
        if self.segmenter_ is not None:
            arrays["segmenter"] = self.segmenter_.state()
            calibration = self.segment_calibration_
            arrays["segment_calibration"] = calibration.state() if calibration is not None else {}
        if self.supervised_ is not None:
            arrays["supervised"] = self.supervised_.state()
            name, blob = self.supervised_.learner.artifact()
            raw_files[f"supervised/{name}"] = blob
        return bundle_io.write_bundle(
            path,
            manifest=self.manifest(),
            json_files={"features.json": self.preparer_.to_state()},
            arrays=arrays,
            pickles=pickles,
            raw_files=raw_files,
        )

    @classmethod
    def load(cls, path: str | Path, *, trusted: bool = False) -> Model:
        """Load and verify a bundle folder, or a registry's current version (see :mod:`segscope.bundle`)."""
        reader = bundle_io.BundleReader(resolve(path), trusted=trusted)
        manifest = reader.open()
        try:
            return cls._from_bundle(reader, manifest, path)
        except SegscopeError:
            raise
        except Exception as exc:  # anything else a damaged or hand-made bundle can raise: one clear error
            raise BundleError(
                f"bundle {path} is incomplete or damaged ({type(exc).__name__}: {str(exc)[:120]}); refit the bundle"
            ) from None

    @classmethod
    def _from_bundle(cls, reader: bundle_io.BundleReader, manifest: dict[str, Any], path: str | Path) -> Model:
        model = cls(config_from_dict(manifest["config"], source=f"bundle {path}"))
        prep = FeaturePreparer.from_state(reader.json("features.json"))
        if prep.schema_.hash != manifest["feature_schema_hash"]:
            raise BundleError(f"bundle {path}: features.json does not match the manifest's schema hash; refit")
        detectors = []
        for comp in (c for c in manifest["components"] if c["role"] == "detector"):
            det = make_detector(comp["name"], comp["params"])
            part = Path(comp["artifact"]).stem
            det.load_state(reader.arrays(part), pickled=reader.pickle_bytes(part) if det.needs_pickle else None)
            detectors.append(det)
        ensemble = AnomalyEnsemble(detectors, combine=model.config.combine)
        ensemble.load_state(reader.arrays("calibration"))
        names = list(prep.schema_.features)
        explainer = FeatureExplainer.from_state(
            reader.arrays("explainer"), names, [prep.expected_[f] for f in names], model.config.top_k_reasons
        )
        shared = ensemble.shared_ecdf()
        if shared is not None and np.array_equal(shared.sorted_ref, explainer.ecdf_.sorted_ref):
            explainer.ecdf_ = shared  # one fused pass computes ECOD and the reasons
        model.preparer_, model.ensemble_, model.explainer_ = prep, ensemble, explainer
        model.policy_ = restore_policy(model.config.policy, manifest["policy"])
        model.version_ = manifest["model_version"]
        model.created_at_ = manifest["created_at"]
        model.training_ = manifest["training"]
        model.manifest_ = manifest
        model.label_snapshot_ = manifest.get("label_snapshot")
        model.parent_version_ = manifest.get("parent_version")
        model.promotion_ = manifest.get("promotion")
        segmenter = next((c for c in manifest["components"] if c["role"] == "segmenter" and c["name"]), None)
        if segmenter is not None:
            from segscope.unsupervised.segment import Segmenter

            model.segmenter_ = Segmenter(**segmenter["params"])
            model.segmenter_.load_state(reader.arrays("segmenter"))
            model.segmenter_.lineage_ = segmenter.get("lineage", {})
            model.segment_profiles_ = segmenter["profiles"]
            packed = reader.arrays("segment_calibration")
            model.segment_calibration_ = SegmentCalibration.from_state(packed) if packed else None
        model.segment_expected_ = model._expected_table()
        supervised = next((c for c in manifest["components"] if c["role"] == "supervised" and c["name"]), None)
        if supervised is not None:
            described = supervised["params"]
            tuned = make_finetuned(
                supervised["name"],
                n_features=model.n_features,
                learner_params=described["learner_params"],
                prior=described["prior"],
                unlabelled_weight=described["unlabelled_weight"],
            )
            tuned.load_state(reader.arrays("supervised"), reader.raw(supervised["artifact"]))
            model.supervised_ = tuned
            model.supervised_segment_features_ = bool(supervised.get("segment_features", False))
        return model
