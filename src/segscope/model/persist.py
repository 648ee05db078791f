"""A model's bundle: the manifest, and laying out each component's own state in the bundle folder and back
(``Model.save`` and ``Model.load`` call these)."""

from __future__ import annotations

import platform
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segscope import bundle as bundle_io
from segscope.config import config_from_dict
from segscope.exceptions import BundleError, SegscopeError
from segscope.features.entity import EntityFeatures
from segscope.features.prepare import FeaturePreparer
from segscope.registry import resolve
from segscope.schema import ColumnSpec
from segscope.supervised.companion import COMPANION_FILE
from segscope.supervised.learners import make_finetuned
from segscope.unsupervised.adapt import adapt_line
from segscope.unsupervised.detect import make_detector
from segscope.unsupervised.drift import DriftReference
from segscope.unsupervised.ensemble import AnomalyEnsemble, SegmentCalibration
from segscope.unsupervised.explain import FeatureExplainer
from segscope.unsupervised.threshold import restore_policy

if TYPE_CHECKING:
    from segscope.model import Model

__all__ = ["load", "manifest", "save"]

_LIBRARIES = ("segscope", "polars", "numpy", "scipy", "scikit-learn", "pyod", "numba", "pyarrow")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
            out[lib] = "unknown"
    return out


def manifest(self: Model) -> dict[str, Any]:
    """The bundle manifest of ``self``: versions, schema, components with their parameters, config, policy..."""
    self.check_fitted()
    schema = self.preparer_.schema_
    return {
        "segscope_bundle": True,
        "model_version": self.version_,
        "created_at": self.created_at_,
        "versions": _versions(),
        "feature_schema": schema.to_state(),
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
            _segmenter_component(self),
            _supervised_component(self),
            _entities_component(self),
        ],
        "config": self.config.model_dump(mode="json", exclude={"kafka", "messages"}),  # connection settings stay out
        # named so that a bundle missing it is refused (it is optional: bundles from before drift have none)
        "drift_reference": "drift.json" if self.drift_ is not None else None,
        "policy": self.policy_.describe(),
        "training": self.training_,
        "label_snapshot": self.label_snapshot_,
        "parent_version": self.parent_version_,
        "promotion": self.promotion_,
    }


def _segmenter_component(self: Model) -> dict[str, Any]:
    if self.segmenter_ is None:
        return {"role": "segmenter", "name": None, "note": "not fitted (segment = -1)"}
    return {
        "role": "segmenter",
        "name": "umap-hdbscan-forest",
        "params": self.segmenter_.get_params(),
        "artifact": "arrays/segmenter.npz",
        "segments": int(self.segmenter_.segments_.size),
        "hdbscan_noise_share": self.segmenter_.noise_share_,
        "agreement_with_fit_labels": {
            "fit_sample": self.segmenter_.agreement_fit_,
            "held_out": self.segmenter_.agreement_held_out_,
        },
        "profiles": self.segment_profiles_,
        "lineage": getattr(self.segmenter_, "lineage_", {}),
    }


def _entities_component(self: Model) -> dict[str, Any]:
    if self.entities_ is None:
        return {"role": "entities", "name": None, "note": "no per-entity features"}
    state = self.entities_.state_
    return {
        "role": "entities",
        "name": "entity-features",
        "features": self.entities_.names,
        "inputs": [asdict(c) for c in self.entity_inputs_],
        "artifacts": self.entities_.file_names(),
        "entities_at_end_of_history": state.entities,
        "late_records": state.late,
        **({"new_levels": self.entities_.levels_known(state)} if self.entities_.level_inputs() else {}),
        **({"machine_states": states} if (states := self.entities_.states_known(state)) else {}),
        **({"adapt": adapt_line(self.config, state)} if self.config.adapt is not None else {}),
    }


def _supervised_component(self: Model) -> dict[str, Any]:
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
        **({"companion_artifact": COMPANION_FILE} if self.supervised_.companion_ is not None else {}),
    }


def save(self: Model, path: str | Path) -> Path:
    """Write the bundle folder (atomically)."""
    self.check_fitted()
    arrays: dict[str, dict[str, np.ndarray]] = {}
    pickles: dict[str, bytes] = {}
    for i, det in enumerate(self.ensemble_.detectors):
        part = f"detector-{i}-{det.name}"
        blob = det.pickled()
        if blob is not None:
            pickles[part] = blob
        arrays[part] = det.to_state()
    arrays["calibration"] = self.ensemble_.to_state()
    arrays["explainer"] = self.explainer_.to_state()
    raw_files: dict[str, bytes] = {}
    if self.segmenter_ is not None:
        arrays["segmenter"] = self.segmenter_.to_state()
        calibration = self.segment_calibration_
        arrays["segment_calibration"] = calibration.to_state() if calibration is not None else {}
    if self.supervised_ is not None:
        arrays["supervised"] = self.supervised_.to_state()
        name, blob = self.supervised_.learner.artifact()
        raw_files[f"supervised/{name}"] = blob
        if self.supervised_.companion_ is not None:
            raw_files[COMPANION_FILE] = self.supervised_.companion_.artifact()
    if self.entities_ is not None:
        raw_files.update(self.entities_.to_state())
    json_files = {"features.json": self.preparer_.to_state()}
    if self.drift_ is not None:
        json_files["drift.json"] = self.drift_.to_state()
    return bundle_io.write_bundle(
        path,
        manifest=manifest(self),
        json_files=json_files,
        arrays=arrays,
        pickles=pickles,
        raw_files=raw_files,
    )


def load(cls: type[Model], path: str | Path, *, trusted: bool = False) -> Model:
    """Load and verify a bundle folder, or a registry's current version (see :mod:`segscope.bundle`)."""
    folder = resolve(path)
    reader = bundle_io.BundleReader(folder, trusted=trusted)
    manifest = reader.open()
    named = str(manifest.get("model_version"))
    if folder != Path(path) and named != folder.name:  # a registry's version: named by its bundle's version
        raise BundleError(
            f"registry {path}: version folder {folder.name} holds the bundle of version {named[:40]}; repair the "
            "registry or roll back"
        )
    try:
        return _from_bundle(cls, reader, manifest, path)
    except BundleError as exc:
        text = str(exc)
        raise BundleError(text if text.startswith("bundle ") else f"bundle {path}: {text}") from None
    except SegscopeError:
        raise
    except Exception as exc:  # anything else a damaged or hand-made bundle can raise: one clear error
        reason = (str(exc).strip().splitlines() or [""])[0][:120]
        raise BundleError(
            f"bundle {path} is incomplete or damaged ({type(exc).__name__}: {reason}); refit the bundle"
        ) from None


def _from_bundle(cls: type[Model], reader: bundle_io.BundleReader, manifest: dict[str, Any], path: str | Path) -> Model:
    model = cls(config_from_dict(manifest["config"], source=f"bundle {path}"))
    prep = FeaturePreparer.from_state(reader.json("features.json"))
    if prep.schema_.hash != manifest["feature_schema_hash"]:
        raise BundleError(f"bundle {path}: features.json does not match the manifest's schema hash; refit")
    detectors = []
    for comp in (c for c in manifest["components"] if c["role"] == "detector"):
        det = make_detector(comp["name"], comp["params"])
        part = Path(comp["artifact"]).stem
        det.load_state(reader.arrays(part), pickled=reader.pickle_bytes(part) if det.needs_pickle else None)
        if det.n_features_ != len(prep.schema_.features):
            raise BundleError(
                f"detector {det.name} was fitted on {det.n_features_} features but features.json lists "
                f"{len(prep.schema_.features)}; the bundle is damaged or was edited by hand: refit it"
            )
        detectors.append(det)
    ensemble = AnomalyEnsemble(detectors, combine=model.config.combine)
    ensemble.load_state(reader.arrays("calibration"))
    names = list(prep.schema_.features)
    explainer = FeatureExplainer.from_state(
        reader.arrays("explainer"),
        names,
        [prep.expected_[f] for f in names],
        model.config.top_k_reasons,
        shared=ensemble.shared_ecdf(),
    )
    model.preparer_, model.ensemble_, model.explainer_ = prep, ensemble, explainer
    model.policy_ = restore_policy(model.config.policy, manifest["policy"])
    if manifest.get("drift_reference") and "drift.json" not in reader.files_:
        raise BundleError(
            f"bundle {path}: the manifest names drift.json but the bundle does not hold it; restore the original "
            "bundle or refit"
        )
    if "drift.json" in reader.files_:
        columns = [(c.name, c.kind) for c in prep.schema_.columns]
        model.drift_ = DriftReference.from_state(reader.json("drift.json"), columns)
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
        model.segmenter_.load_state(reader.arrays("segmenter"), n_features=len(prep.schema_.features))
        model.segmenter_.lineage_ = segmenter.get("lineage", {})
        model.segment_profiles_ = segmenter["profiles"]
        packed = reader.arrays("segment_calibration")
        model.segment_calibration_ = SegmentCalibration.from_state(packed) if packed else None
    model.segment_expected_ = model._expected_table()
    entities = next((c for c in manifest["components"] if c["role"] == "entities" and c["name"]), None)
    if entities is not None:
        files = [reader.raw(rel) for rel in entities["artifacts"]]
        model.entities_ = EntityFeatures.from_state(model.config.entities, files)
        model.entity_inputs_ = tuple(ColumnSpec(**c) for c in entities["inputs"])
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
        companion = supervised.get("companion_artifact")
        tuned.load_state(
            reader.arrays("supervised"),
            reader.raw(supervised["artifact"]),
            companion=reader.raw(companion) if companion is not None else None,
        )
        model.supervised_ = tuned
        model.supervised_segment_features_ = bool(supervised.get("segment_features", False))
    return model
