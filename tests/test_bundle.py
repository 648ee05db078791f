from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from segscope import BundleError, Model
from segscope.bundle import FORMAT_VERSION
from segscope.config import DetectorConfig, SegscopeConfig


def test_manifest_contents(bundle: Path, model: Model) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["model_version"] == model.version
    assert {"segscope", "polars", "numpy", "pyod", "scikit-learn", "python"} <= set(manifest["versions"])
    assert manifest["feature_schema_hash"] == model.feature_schema.hash
    assert manifest["feature_schema"]["id_column"] == "txn_id"
    assert [c["name"] for c in manifest["components"] if c["role"] == "detector"] == ["iforest", "ecod"]
    assert len(manifest["training"]["fingerprint"]) == 64
    assert manifest["label_snapshot"] is None
    assert manifest["executes_code"] == []
    for rel, digest in manifest["files"].items():
        assert (bundle / rel).is_file()
        assert len(digest) == 64
    # artifacts are NumPy archives without pickled objects
    for npz in (bundle / "arrays").glob("*.npz"):
        with np.load(npz, allow_pickle=False) as data:
            assert all(data[k].dtype != object for k in data.files)


def test_tampered_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    target = copy / "features.json"
    state = json.loads(target.read_text())
    state["numeric"]["amount"]["center"] = 0.0
    target.write_text(json.dumps(state))
    with pytest.raises(BundleError, match="features.json does not match its checksum"):
        Model.load(copy)


def test_missing_artifact_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "partial"
    shutil.copytree(bundle, copy)
    next((copy / "arrays").glob("detector-*.npz")).unlink()
    with pytest.raises(BundleError, match="is missing"):
        Model.load(copy)


def test_newer_format_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "newer"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer than this segscope supports"):
        Model.load(copy)


def test_pickled_components_need_trust(history: pl.DataFrame, new_records: pl.DataFrame, tmp_path: Path) -> None:
    cfg = SegscopeConfig(
        detectors=(DetectorConfig(name="iforest"), DetectorConfig(name="pyod", params={"model": "LOF"}))
    ).with_features(id_column="txn_id", drop=("is_fraud",))
    model = Model(cfg).fit(history)
    model.save(tmp_path / "b")
    with pytest.raises(BundleError, match="trust-bundle"):
        Model.load(tmp_path / "b")
    trusted = Model.load(tmp_path / "b", trusted=True)
    # same process, same CPU: exact
    assert trusted.score(new_records)["score"].equals(model.score(new_records)["score"])


def test_batch_dependent_pyod_detectors_are_refused(history: pl.DataFrame) -> None:
    from segscope.exceptions import ConfigError

    cfg = SegscopeConfig(detectors=(DetectorConfig(name="pyod", params={"model": "ECOD"}),)).with_features(
        id_column="txn_id", drop=("is_fraud",)
    )
    with pytest.raises(ConfigError, match="different scores in different batches"):
        Model(cfg).fit(history)


def test_save_replaces_atomically_and_refuses_foreign_folders(model: Model, tmp_path: Path) -> None:
    target = tmp_path / "b"
    model.save(target)
    model.save(target)  # replacing a bundle is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folders left
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a segscope bundle"):
        model.save(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
