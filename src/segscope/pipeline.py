"""Wires the layers: files -> frames -> features -> unsupervised layer -> alert policy -> sinks.

``Model`` is what a bundle holds; :func:`fit_file`, :func:`score_file` and :func:`evaluate_file` are what the
CLI calls.
"""

from __future__ import annotations

import copy
import hashlib
import io
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl

from segscope import bundle as bundle_io
from segscope.config import SegscopeConfig
from segscope.exceptions import (
    BundleError,
    DataError,
    NotFittedError,
    SchemaError,
    SegscopeError,
    SegscopeWarning,
    SinkError,
)
from segscope.features.prepare import FeaturePreparer, check_unique_ids
from segscope.sinks.files import open_sink, write_batches
from segscope.sources.files import check_unique_ids as check_file_ids
from segscope.sources.files import count_rows, detect_format, iter_batches, read_file, sample_rows, scan_file
from segscope.store.labelstore import LabelStore, candidate_rows
from segscope.unsupervised.detect import make_detector
from segscope.unsupervised.ensemble import AnomalyEnsemble
from segscope.unsupervised.explain import REASON_DTYPE, FeatureExplainer, readable_typical
from segscope.unsupervised.threshold import PolicyState, make_policy, restore_policy

__all__ = ["SCORED_COLUMNS", "Model", "ScoreSummary", "evaluate_file", "fit_file", "score_file"]

#: Columns every scored frame gains, in this order (PRODUCT.md, "Contracts").
SCORED_COLUMNS = ("score", "anomaly_score", "supervised_score", "is_alert", "segment", "reasons", "model_version")

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
    #: Per-segment calibration of the ensemble's combined score (segment-aware scoring), by segment id.
    segment_calibrators_: dict[int, Any] | None = None
    #: Per-segment typical values for reasons (built from the profile cards at fit and load).
    segment_expected_: tuple[pl.Series, np.ndarray] | None = None
    #: The fine-tuned learner, when this version has one (``supervised_score`` is null otherwise).
    supervised_: Any = None
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
        detectors = [make_detector(d.name, d.params) for d in cfg.detectors]
        ensemble = AnomalyEnsemble(detectors, combine=cfg.combine).fit(x)
        step("calibrating and fitting the alert policy")
        shared = _ecod_index(ensemble)
        explainer = FeatureExplainer(top_k=cfg.top_k_reasons).fit(
            x,
            list(prep.schema_.features),
            [prep.expected_[f] for f in prep.schema_.features],
            ecdf=ensemble.detectors[shared].ecdf_ if shared is not None else None,  # type: ignore[attr-defined]
        )
        policy = make_policy(cfg.policy).fit(ensemble.reference_scores_, frame)
        self.segmenter_ = None
        self.segment_profiles_: list[dict[str, Any]] = []
        self.segment_expected_ = None
        if cfg.segments.enabled:
            from segscope.unsupervised.segment import Segmenter

            step("segmenting (UMAP + HDBSCAN on a sample, distilled into a forest)")
            s = cfg.segments
            self.segmenter_ = Segmenter(
                sample_size=s.sample_size,
                n_neighbors=s.n_neighbors,
                n_components=s.n_components,
                min_cluster_size=s.min_cluster_size,
                min_confidence=s.min_confidence,
                seed=cfg.seed,
            ).fit(x, previous=previous.segmenter_ if previous is not None else None)
            labels = self.segmenter_.assign(x)[0]  # once, for both the calibrators and the profile cards
            self.segment_calibrators_ = {}
            if s.aware_scoring:
                self.segment_calibrators_ = _fit_segment_calibrators(ensemble, x, labels, s.min_segment_size)
            alerts = policy.decide(ensemble.reference_scores_, frame) if cfg.policy.kind != "budget" else None
            self.segment_profiles_ = _segment_profiles(
                self.segmenter_, labels, x, prep, *prep.readable_values(validated), alerts
            )
        created = datetime.now(UTC)
        fingerprint = fingerprint or _frame_fingerprint(frame)
        self.preparer_, self.ensemble_, self.explainer_, self.policy_ = prep, ensemble, explainer, policy
        self.shared_ecod_ = shared
        self.created_at_ = created.isoformat(timespec="seconds")
        self.version_ = f"{created:%Y%m%d-%H%M%S}-{fingerprint[:8]}"
        self.training_ = {
            "rows": int(total_rows if total_rows is not None else frame.height),
            "fit_rows": int(frame.height),
            "fingerprint": fingerprint,
            "columns": frame.columns,
            "reference_alert_rate": float(policy.decide(ensemble.reference_scores_, frame).mean())
            if cfg.policy.kind != "budget"
            else None,
        }
        self.segment_expected_ = self._segment_expected_table()
        return self

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

    # ---------------------------------------------------------------- score
    def _segment_aware(self, segments: np.ndarray | None, anomaly: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """Re-calibrate the combined score of records in segments that have their own calibration."""
        if not self.segment_calibrators_ or segments is None:
            return anomaly
        combined = self.ensemble_._combine(parts[:, :-1])
        anomaly = anomaly.copy()
        for seg, calibrator in self.segment_calibrators_.items():
            rows = segments == seg
            if rows.any():
                surprisal = calibrator.surprisal(combined[rows])
                parts[rows, -1] = surprisal
                anomaly[rows] = -np.expm1(-surprisal)
        return anomaly

    def _segment_expected_table(self) -> tuple[pl.Series, np.ndarray] | None:
        """Per-segment typical values for reasons, from the profile cards: (table of values, segment id -> row;
        the last row holds the overall values, for noise). Built once at fit or load, never while scoring."""
        if not self.segment_profiles_:
            return None
        cards = [c for c in self.segment_profiles_ if c["segment"] >= 0 and "typical_values" in c]
        names = list(self.preparer_.schema_.features)
        overall = [self.preparer_.expected_[f] for f in names]
        rows = [*([c["typical_values"][f] for f in names] for c in cards), overall]
        table = pl.Series("expected", [v for row in rows for v in row], dtype=pl.String)
        lookup = np.full(max([c["segment"] for c in cards], default=0) + 2, len(cards), dtype=np.int64)
        for i, c in enumerate(cards):
            lookup[c["segment"]] = i
        return table, lookup

    def _segment_expected(self, segments: np.ndarray | None) -> tuple[pl.Series, np.ndarray] | None:
        """Reasons compare a segment member's values with its segment's typical values (noise: the overall ones)."""
        if segments is None or self.segment_expected_ is None:
            return None
        table, lookup = self.segment_expected_
        return table, lookup[np.where((segments >= 0) & (segments < lookup.size - 1), segments, lookup.size - 1)]

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
        shared = self.shared_ecod_
        skew = self.ensemble_.detectors[shared].skew_sign_ if shared is not None else None  # type: ignore[attr-defined]
        idx, val, total, ecod = self.explainer_.top_contributions(x, skew)
        anomaly, parts = self.ensemble_.score_with_parts(x, {shared: ecod} if shared is not None else None)
        assigned = self.segmenter_.assign(x) if self.segmenter_ is not None else None  # once per batch
        segments = assigned[0] if assigned is not None else None
        anomaly = self._segment_aware(segments, anomaly, parts)
        reasons = pl.Series("reasons", [], dtype=REASON_DTYPE)
        if with_reasons:
            expected = self._segment_expected(segments)
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
        with_segments = self._learner_sees_segments() if with_segments is None else with_segments
        matrix = self._learner_matrix(x, parts, assigned if with_segments else None)
        monotone = np.zeros(matrix.shape[1])
        monotone[x.shape[1] : x.shape[1] + parts.shape[1]] = 1.0
        return matrix, monotone, anomaly

    def _learner_sees_segments(self) -> bool:
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
        calibration: dict[str, np.ndarray] = {}
        for i, cal in enumerate([*self.ensemble_.calibrators_, self.ensemble_.final_]):
            for key, value in cal.state().items():
                calibration[f"{i}_{key}"] = value
        calibration["reference_scores"] = self.ensemble_.reference_scores_
        arrays["calibration"] = calibration
        arrays["explainer"] = self.explainer_.state()
        raw_files: dict[str, bytes] = {}
        if self.segmenter_ is not None:
            arrays["segmenter"] = self.segmenter_.state()
            arrays["segment_calibration"] = {
                f"{seg}_{key}": value
                for seg, cal in (self.segment_calibrators_ or {}).items()
                for key, value in cal.state().items()
            }
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
        """Load and verify a bundle folder (see :mod:`segscope.bundle`)."""
        from segscope.registry import resolve

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
        from segscope.config import config_from_dict
        from segscope.unsupervised.calibrate import ReferenceCalibrator

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
        cal = reader.arrays("calibration")
        calibrators = []
        for i in range(len(detectors) + 1):
            calibrators.append(
                ReferenceCalibrator.from_state(
                    {k.split("_", 1)[1]: v for k, v in cal.items() if k.startswith(f"{i}_")}
                )
            )
        ensemble.calibrators_, ensemble.final_ = calibrators[:-1], calibrators[-1]
        ensemble.reference_scores_ = cal["reference_scores"]
        explainer = FeatureExplainer.from_state(
            reader.arrays("explainer"),
            list(prep.schema_.features),
            [prep.expected_[f] for f in prep.schema_.features],
            model.config.top_k_reasons,
        )
        shared = _ecod_index(ensemble)
        if shared is not None and np.array_equal(
            ensemble.detectors[shared].ecdf_.sorted_ref,  # type: ignore[attr-defined]
            explainer.ecdf_.sorted_ref,
        ):
            explainer.ecdf_ = ensemble.detectors[shared].ecdf_  # type: ignore[attr-defined]
        else:
            shared = None
        model.preparer_, model.ensemble_, model.explainer_ = prep, ensemble, explainer
        model.shared_ecod_ = shared
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
            model.segment_profiles_ = segmenter["profiles"]
            model.segmenter_.lineage_ = segmenter.get("lineage", {})
            from segscope.unsupervised.calibrate import ReferenceCalibrator as _Cal

            packed = reader.arrays("segment_calibration")
            segs = sorted({int(k.split("_", 1)[0]) for k in packed})
            model.segment_calibrators_ = {
                seg: _Cal.from_state({k.split("_", 1)[1]: v for k, v in packed.items() if k.startswith(f"{seg}_")})
                for seg in segs
            }
        model.segment_expected_ = model._segment_expected_table()
        supervised = next((c for c in manifest["components"] if c["role"] == "supervised" and c["name"]), None)
        if supervised is not None:
            model.supervised_ = _load_supervised(reader, supervised, model.n_features)
            model.supervised_segment_features_ = bool(supervised.get("segment_features", False))
        return model


# ------------------------------------------------------------------ file jobs
def _fit_segment_calibrators(
    ensemble: AnomalyEnsemble, x: np.ndarray, segments: np.ndarray, min_size: int
) -> dict[int, Any]:
    """A calibrator of the combined score per segment with enough members (noise stays global)."""
    from segscope.unsupervised.calibrate import ReferenceCalibrator

    combined = ensemble._combine(ensemble.detector_surprisal(x))
    return {
        int(seg): ReferenceCalibrator().fit(combined[segments == seg])
        for seg in np.unique(segments)
        if seg >= 0 and (segments == seg).sum() >= min_size
    }


def _segment_profiles(
    segmenter: Any,
    labels: np.ndarray,
    x: np.ndarray,
    prep: FeaturePreparer,
    readable: np.ndarray,
    categorical: dict[int, pl.Series],
    alerts: np.ndarray | None,
) -> list[dict[str, Any]]:
    """A profile card per segment: size, anomaly rate, and the features that set it apart (standardised mean
    difference against the rest), with typical values."""
    names = list(prep.schema_.features)
    cards = []
    for seg in [*segmenter.segments_.tolist(), -1]:
        members = labels == seg
        if not members.any():
            continue
        rest = ~members
        mean_in, mean_out = x[members].mean(axis=0), x[rest].mean(axis=0) if rest.any() else x.mean(axis=0)
        pooled = np.sqrt((x[members].var(axis=0) + (x[rest].var(axis=0) if rest.any() else 0)) / 2) + 1e-9
        effect = (mean_in - mean_out) / pooled
        top = np.argsort(-np.abs(effect))[:5]
        with warnings.catch_warnings():  # categorical columns are all-NaN here: their typical value is the mode
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(readable[members], axis=0)
        typical: list[Any] = [None if np.isnan(v) else round(float(v), 4) for v in medians]
        typical_text = readable_typical(medians, names)
        for j, strings in categorical.items():
            typical[j] = typical_text[j] = strings.filter(pl.Series(members)).mode().sort()[0]
        cards.append(
            {
                "segment": int(seg),
                "size": int(members.sum()),
                "share": float(members.mean()),
                "anomaly_rate": float(alerts[members].mean()) if alerts is not None else None,
                "distinguishing": [
                    {
                        "feature": names[j],
                        "effect_size": round(float(effect[j]), 3),
                        "typical": typical[j],
                        "expected_overall": prep.expected_[names[j]],
                    }
                    for j in top
                ],
                # every feature's typical value in the segment: what reasons compare a member's values with
                "typical_values": dict(zip(names, typical_text, strict=True)),
            }
        )
    return cards


def _load_supervised(reader: bundle_io.BundleReader, component: dict[str, Any], n_features: int) -> Any:
    from segscope.supervised.base import FineTuned
    from segscope.supervised.finetune import make_learner

    described = component["params"]
    tuned = FineTuned(
        make_learner(component["name"], **described["learner_params"]),
        n_features=n_features,
        prior=described["prior"],
        unlabelled_weight=described["unlabelled_weight"],
    )
    tuned.load_state(reader.arrays("supervised"), reader.raw(component["artifact"]))
    return tuned


def _ecod_index(ensemble: AnomalyEnsemble) -> int | None:
    from segscope.unsupervised.detect import ECODDetector

    return next((i for i, d in enumerate(ensemble.detectors) if isinstance(d, ECODDetector)), None)


def fit_file(
    path: str | Path,
    config: SegscopeConfig | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
    previous: Model | None = None,
) -> Model:
    """Fit a model on a history file (a uniform sample of at most ``max_fit_rows`` rows)."""
    cfg = config if config is not None else SegscopeConfig()
    step = on_step or (lambda _: None)
    step("reading history")
    total = count_rows(path)
    if total == 0:
        raise DataError(f"{path}: the file has a header but no rows; fit needs at least one row")
    sample = sample_rows(path, total, cfg.max_fit_rows, cfg.seed)
    if detect_format(path) == "csv":
        _warn_other_separator(path, sample.columns)
    if cfg.features.id_column is not None and total > sample.height and cfg.features.id_column in sample.columns:
        check_file_ids(path, cfg.features.id_column)
    return Model(cfg).fit(
        sample, fingerprint=bundle_io.fingerprint_file(path), total_rows=total, on_step=on_step, previous=previous
    )


def _warn_other_separator(path: str | Path, columns: list[str]) -> None:
    """A ';'- or tab-separated file read as CSV becomes one wide column; say so instead of fitting on it."""
    for name in columns:
        for sep, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in name:
                warnings.warn(
                    f"{path}: column {name[:60]!r} holds {label}s: the file looks {label}-separated, but CSV files "
                    "are read comma-separated; convert it to commas (or Parquet) and fit again",
                    SegscopeWarning,
                    stacklevel=3,
                )
                return


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    alerts: int
    seconds: float
    out: str
    #: records added to the label store (alerts and queue candidates), when one was given
    stored: int = 0


def _check_columns(path: str | Path, model: Model) -> None:
    schema = scan_file(path).collect_schema()
    missing = [c.name for c in model.preparer_.schema_.columns if c.name not in schema]
    id_col = model.preparer_.schema_.id_column
    if id_col is not None and id_col not in schema:
        missing.append(id_col)
    if missing:
        raise SchemaError(
            f"{path}: column(s) {missing} are missing; the bundle was fitted with them: add them to the "
            "input (null is allowed) or refit without them (--drop)"
        )


def iter_scored(model: Model, path: str | Path, *, batch_size: int = 200_000) -> Iterator[pl.DataFrame]:
    """Score a file batch by batch (bounded memory); checks the schema and ids before the first batch, and warns
    when a fitted numeric column is null in every row of the file."""
    model._check_fitted()
    _check_columns(path, model)
    id_col = model.preparer_.schema_.id_column
    if id_col is not None:
        check_file_ids(path, id_col)
    state = model.new_state()
    offset = 0
    numeric = [c.name for c in model.preparer_.schema_.columns if c.kind == "numeric"]
    present = dict.fromkeys(numeric, 0)
    for batch in iter_batches(path, batch_size=batch_size):
        try:
            yield model.score(batch, state=state)
        except (SchemaError, DataError) as exc:
            # row numbers in messages are batch-relative; make them file-relative
            raise type(exc)(_shift_row(str(exc), offset)) from None
        for name in numeric:
            present[name] += batch.height - batch.get_column(name).null_count()
        offset += batch.height
    if offset == 0:
        raise DataError(f"{path}: the file has a header but no rows; there is nothing to score")
    empty = [name for name, count in present.items() if count == 0]
    if empty:
        warnings.warn(
            f"{path}: column(s) {empty} are null in every row (numeric at fit): scored as missing, which lowers "
            "their records' scores; check the input or refit without them (--drop)",
            SegscopeWarning,
            stacklevel=2,
        )


def _shift_row(message: str, offset: int) -> str:
    import re

    return re.sub(r"row (\d+)", lambda m: f"row {int(m.group(1)) + offset}", message, count=1)


def score_file(
    model: Model,
    path: str | Path,
    out: str | Path,
    *,
    batch_size: int = 200_000,
    on_batch: Callable[[int], None] | None = None,
    store: LabelStore | None = None,
) -> ScoreSummary:
    """Score ``path`` into ``out`` (format by extension, ``-`` = NDJSON on stdout). All or nothing. With ``store``,
    each batch's alerts and queue candidates are added to the label store once the output is complete."""
    if str(out) != "-" and Path(out).exists() and Path(out).resolve() == Path(path).resolve():
        raise SinkError(f"--out {out} is the input file; write the scores to another file (the input is kept)")
    start = time.perf_counter()
    counts = {"rows": 0, "alerts": 0}
    kept: list[pl.DataFrame] = []

    def batches() -> Iterator[pl.DataFrame]:
        for scored in iter_scored(model, path, batch_size=batch_size):
            counts["rows"] += scored.height
            counts["alerts"] += int(scored.get_column("is_alert").sum())
            if store is not None:
                kept.append(scored[candidate_rows(model, scored, limit=2000)])
            if on_batch is not None:
                on_batch(scored.height)
            yield scored

    if str(out) == "-":
        sink = open_sink(out)
        for scored in batches():
            sink.write(scored)
        sink.close()
    else:
        detect_format(out)
        schema = scored_schema(model, scan_file(path).collect_schema())
        write_batches(_prefetch(batches()), schema, out)
    stored = store.add_records(model, pl.concat(kept), source=Path(path).name) if store is not None and kept else 0
    return ScoreSummary(
        rows=counts["rows"], alerts=counts["alerts"], seconds=time.perf_counter() - start, out=str(out), stored=stored
    )


def _prefetch(items: Iterator[pl.DataFrame], depth: int = 2) -> Iterator[pl.DataFrame]:
    """Run ``items`` one step ahead in a thread, so scoring the next batch overlaps writing the last one
    (the compiled kernels and Polars' writer release the GIL). Errors re-raise in the consumer."""
    import queue
    import threading

    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(("item", item))
            slots.put(("done", None))
        except BaseException as exc:  # handed to the consumer
            slots.put(("error", exc))

    worker = threading.Thread(target=produce, name="segscope-score", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def scored_schema(model: Model, input_schema: pl.Schema) -> pl.Schema:
    """The schema of scored frames for a given input schema (input columns, then the scored columns)."""
    dtypes: dict[str, pl.DataType] = dict(input_schema)
    probe = model.score(pl.DataFrame(schema=input_schema))
    for name in SCORED_COLUMNS:
        dtypes[name] = probe.schema[name]
    return pl.Schema(dtypes)


def evaluate_file(model: Model, path: str | Path, label_column: str, *, batch_size: int = 200_000) -> dict[str, Any]:
    """Score a labelled file and compare with its labels (1 = anomaly)."""
    from segscope.evaluate import evaluate_scores

    model._check_fitted()
    if label_column in {c.name for c in model.preparer_.schema_.columns}:
        raise SchemaError(
            f"the label column '{label_column}' is a feature of this bundle, so the model has seen the answer; "
            f"refit with --drop {label_column}"
        )
    schema = scan_file(path).collect_schema()
    if label_column not in schema:
        raise SchemaError(f"{path}: label column '{label_column}' not found; columns are {list(schema)[:20]}")
    labels, scores, alerts = [], [], []
    for scored in iter_scored(model, path, batch_size=batch_size):
        lab = scored.get_column(label_column)
        if lab.null_count():
            raise DataError(
                f"label column '{label_column}' has missing values; label every row (1 = anomaly, 0 = normal)"
            )
        try:
            lab_arr = lab.cast(pl.Int64, strict=True).to_numpy()
        except pl.exceptions.PolarsError:
            raise DataError(f"label column '{label_column}' must hold 0/1 (or true/false); got {lab.dtype}") from None
        if not np.isin(lab_arr, [0, 1]).all():
            raise DataError(
                f"label column '{label_column}' must hold only 0 and 1; got {sorted(set(lab_arr.tolist()))[:5]}"
            )
        labels.append(lab_arr)
        scores.append(scored.get_column("score").to_numpy())
        alerts.append(scored.get_column("is_alert").to_numpy())
    return evaluate_scores(np.concatenate(labels), np.concatenate(scores), np.concatenate(alerts))


# ------------------------------------------------------------------ fine-tuning
def _time_column(model: Model, frame: pl.DataFrame) -> str | None:
    """The column that orders records in time: the alert policy's, else the first datetime feature column."""
    policy_column = model.config.policy.time_column
    if policy_column and policy_column in frame.columns:
        return policy_column
    return next((c.name for c in model.preparer_.schema_.columns if c.kind == "datetime"), None)


def finetune(
    current: Model,
    history: pl.DataFrame,
    labels: pl.DataFrame,
    *,
    learner: str = "xgboost",
    holdout: float = 0.3,
    metric: str = "aucpr",
    labels_source: str = "labels",
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Model, dict[str, Any]]:
    """Fine-tune a new version of ``current`` on analyst labels and decide whether it should be promoted.

    ``history`` holds the labelled records (joined by the bundle's id column) and unlabelled ones. Records are
    split in time (the latest ``holdout`` share, when there is a time column) or at random; the candidate is
    trained on the earlier part and both models are compared on the held-out part, with labelled anomalies
    as positives and everything else there (confirmed normals and unlabelled records) as negatives. The
    candidate is to be promoted only when it is better by ``metric``. Returns (candidate, report).
    """
    from segscope.evaluate import evaluate_scores
    from segscope.supervised.base import FineTuned
    from segscope.supervised.finetune import make_learner

    step = on_step or (lambda _: None)
    current._check_fitted()
    id_col = current.preparer_.schema_.id_column
    if id_col is None:
        raise DataError("fine-tuning joins labels to records by id, and this bundle has none; refit with --id-column")
    if id_col not in history.columns:
        raise SchemaError(f"the history has no id column '{id_col}'; pass the --data the bundle was fitted on")
    if not 0.05 <= holdout <= 0.9:
        raise DataError(f"--holdout must be between 0.05 and 0.9; got {holdout}")
    check_unique_ids(history, id_col)
    ids = history.get_column(id_col).cast(pl.String)
    unknown = labels.filter(~pl.col("id").is_in(ids.implode()))
    if unknown.height:
        raise DataError(
            f"{unknown.height} label(s) in {labels_source} refer to ids not in the history (e.g. "
            f"{unknown['id'][0]!r}); pass the --data that holds the labelled records"
        )
    joined = history.with_columns(ids.alias("__id")).join(
        labels.select(pl.col("id").alias("__id"), pl.col("label").alias("__label")), on="__id", how="left"
    )
    label = joined.get_column("__label")
    y = (label == 1).fill_null(False).to_numpy().astype(np.int64)
    labelled = label.is_not_null().to_numpy()
    time_col = _time_column(current, history)
    rng = np.random.default_rng(current.config.seed)
    if time_col is not None:
        order = np.argsort(history.get_column(time_col).to_physical().fill_null(0).to_numpy(), kind="stable")
        is_held = np.zeros(history.height, dtype=bool)
        is_held[order[round(history.height * (1 - holdout)) :]] = True
        split_kind = f"time-ordered on '{time_col}' (latest {holdout:.0%} held out)"
    else:
        is_held = rng.random(history.height) < holdout
        split_kind = f"random {holdout:.0%} held out (no time column)"
    train_rows, held_rows = np.flatnonzero(~is_held), np.flatnonzero(is_held)
    if not y[train_rows].any():
        raise DataError(
            f"no labelled anomaly falls in the training part ({split_kind}); label more anomalies or lower --holdout"
        )
    # a bounded training set: every labelled record plus a sample of the unlabelled ones
    cap = current.config.max_fit_rows
    unlabelled_train = train_rows[~labelled[train_rows]]
    if unlabelled_train.size > cap:
        unlabelled_train = np.sort(rng.choice(unlabelled_train, size=cap, replace=False))
    fit_rows = np.sort(np.concatenate([train_rows[labelled[train_rows]], unlabelled_train]))
    step(f"preparing {fit_rows.size:,} training records ({int(y[fit_rows].sum())} labelled anomalies)")
    with_segments = current._learner_sees_segments()
    x_fit, monotone, _ = current.supervision_matrix(history[fit_rows], with_segments=with_segments)
    init = None
    same_inputs = current.supervised_segment_features_ == with_segments
    if current.supervised_ is not None and current.supervised_.learner.name == learner and same_inputs:
        init = current.supervised_.learner.artifact()[1]  # continue from the previous booster
    step(f"fine-tuning the {learner} learner" + (" (continued from the current version)" if init else ""))
    extra = {"progress": on_progress} if learner == "torch" else {}
    tuned = FineTuned(
        make_learner(learner, seed=current.config.seed, **extra),
        n_features=current.n_features,
        seed=current.config.seed,
    )
    tuned.fit(x_fit, y[fit_rows], labelled[fit_rows], monotone, init=init)

    step("calibrating the alert policy on the supervised score")
    candidate = copy.copy(current)
    candidate.supervised_ = tuned
    candidate.supervised_segment_features_ = with_segments
    reference_rows = fit_rows if fit_rows.size <= cap else np.sort(rng.choice(fit_rows, size=cap, replace=False))
    reference = tuned.predict_proba(x_fit[np.searchsorted(fit_rows, reference_rows)])
    candidate.policy_ = make_policy(current.config.policy).fit(reference, history[reference_rows])
    created = datetime.now(UTC)
    label_digest = hashlib.sha256(labels.sort("id").write_csv().encode()).hexdigest()
    candidate.created_at_ = created.isoformat(timespec="seconds")
    version_digest = hashlib.sha256(f"{label_digest}|{learner}|{current.version}".encode()).hexdigest()
    candidate.version_ = f"{created:%Y%m%d-%H%M%S}-{version_digest[:8]}"
    candidate.parent_version_ = current.version
    candidate.label_snapshot_ = {
        "source": labels_source,
        "sha256": label_digest,
        "labels": int(labels.height),
        "anomalies": int((labels["label"] == 1).sum()),
        "normals": int((labels["label"] == 0).sum()),
        "used_for_training": int(labelled[fit_rows].sum()),
    }

    step("comparing with the current version on the held-out records")
    held = history[held_rows]
    y_held = y[held_rows]
    report: dict[str, Any] = {
        "metric": metric,
        "split": split_kind,
        "held_out_records": int(held_rows.size),
        "held_out_labelled_anomalies": int(y_held.sum()),
        "supervised": tuned.describe(),
        "continued_from": current.version if init else None,
    }
    if y_held.sum() == 0 or y_held.sum() == y_held.size:
        report.update(promote=False, reason="no labelled anomaly among the held-out records: cannot show it is better")
    else:
        cur = evaluate_scores(y_held, current.score(held)["score"].to_numpy())
        new_scores = candidate.score(held)["score"].to_numpy()
        new = evaluate_scores(y_held, new_scores)
        better = new[metric] > cur[metric]
        report.update(
            current={k: cur[k] for k in ("aucroc", "aucpr")},
            candidate={k: new[k] for k in ("aucroc", "aucpr")},
            calibration=_reliability(y_held, new_scores),
            promote=bool(better),
            reason=f"{metric} {new[metric]:.4f} vs {cur[metric]:.4f}: " + ("better" if better else "not better"),
        )
    candidate.promotion_ = report
    return candidate, report


def _reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Brier score and expected calibration error of probabilities ``p`` against labels ``y``."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(ece)}


def finetune_file(
    bundle: str | Path,
    data: str | Path,
    labels_path: str | Path | pl.DataFrame,
    *,
    labels_source: str | None = None,
    learner: str = "xgboost",
    out: str | Path | None = None,
    holdout: float = 0.3,
    metric: str = "aucpr",
    trusted: bool = False,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Model, dict[str, Any], Path]:
    """The `segscope finetune` job: load, fine-tune, add the candidate to the registry at ``out`` (default: the
    bundle itself, turned into a registry) and promote it when it is better. Returns (candidate, report, path)."""
    from segscope import registry
    from segscope.supervised.labels import load_labels

    step = on_step or (lambda _: None)
    current = Model.load(bundle, trusted=trusted)
    labels = labels_path if isinstance(labels_path, pl.DataFrame) else load_labels(labels_path)
    step("reading history")
    history = read_file(data)
    candidate, report = finetune(
        current,
        history,
        labels,
        learner=learner,
        holdout=holdout,
        metric=metric,
        labels_source=labels_source or str(labels_path),
        on_step=on_step,
        on_progress=on_progress,
    )
    target = Path(out) if out is not None else Path(bundle)
    if target.resolve() == Path(bundle).resolve():
        registry.ensure_registry(target)
    else:
        registry.ensure_registry(target, seed_bundle=registry.resolve(bundle))
    with registry.locked(target):  # judged against current.version: promote only if it is still current
        now = registry.current_version(target)
        if report["promote"] and now != current.version:
            report.update(
                promote=False,
                reason=f"{report['reason']}, but the current version changed from {current.version} to {now} while "
                "fine-tuning; run finetune again to compare with it",
            )
        base, n = candidate.version, 1
        while (target / registry.VERSIONS / candidate.version).exists():  # the same tuning twice in one second
            candidate.version_ = f"{base}-{n}"
            n += 1
        step(f"writing version {candidate.version}")
        candidate.save(target / registry.VERSIONS / candidate.version)
        if report["promote"]:
            registry.set_current(
                target,
                candidate.version,
                action="promote",
                detail={"reason": report["reason"]},
                expected=current.version,
            )
    return candidate, report, target
