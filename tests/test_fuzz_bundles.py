"""Mutation fuzzing of bundles (``tests/fuzz_bundle.py``, in a child process): one change per case to any file of
a bundle (array values, shapes and types, JSON leaves, bytes), every checksum recomputed as an attacker would,
then load and score. Every case must score or be refused in one line; a crash fails the test and names the case.

The suite runs a fixed 60 cases per kind of bundle (every detector, segments, a fine-tuned XGBoost, per-entity
state); the same script ran 300 cases per kind when this was written (``python -m tests.fuzz_bundle BUNDLE DATA
SEED CASES``) and found the cases the array, JSON and Arrow checks now refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from segscope import Model
from segscope.config import DetectorConfig, SegscopeConfig
from segscope.labels.parse import normalise_labels
from segscope.testing.data import make_transactions
from segscope.tuning import finetune

ROOT = Path(__file__).resolve().parents[1]
CASES = 60


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    folder = tmp_path_factory.mktemp("fuzz")
    make_transactions(300, seed=3).write_parquet(folder / "new.parquet")
    return folder, make_transactions(3000, seed=0)


def _every_detector(history: pl.DataFrame, target: Path) -> Path:
    names = ["iforest", "ecod", "copod", "hbos", "knn", "cblof"]
    cfg = SegscopeConfig(detectors=tuple(DetectorConfig(name=n) for n in names))
    Model(cfg.with_features(id_column="txn_id", drop=("is_fraud",))).fit(history).save(target)
    return target


def _fine_tuned(history: pl.DataFrame, target: Path) -> Path:
    base = Model(SegscopeConfig().with_features(id_column="txn_id", drop=("is_fraud",))).fit(history)
    fraud = history.filter(pl.col("is_fraud") == 1).head(40)["txn_id"].to_list()
    normal = history.filter(pl.col("is_fraud") == 0).head(40)["txn_id"].to_list()
    names = ["anomaly"] * len(fraud) + ["normal"] * len(normal)
    labels = normalise_labels(pl.DataFrame({"id": fraud + normal, "label": names}))
    candidate, _ = finetune(base, history, labels)
    assert candidate.supervised is not None
    candidate.save(target)
    return target


def _entities(history: pl.DataFrame, target: Path) -> Path:
    features = [
        {"kind": "zscore", "of": "ln(amount + 1)", "window": "1d", "name": "z"},
        {"kind": "first_seen", "of": "country"},
        {"kind": "new_level", "of": "amount"},
    ]
    cfg = SegscopeConfig.model_validate(
        {
            "features": {"id_column": "txn_id", "drop": ["is_fraud"]},
            "entities": [{"key": "merchant_category", "time": "ts", "features": features}],
        }
    )
    Model(cfg).fit(history).save(target)
    return target


@pytest.mark.parametrize(
    ("kind", "seed"), [("detectors", 0), ("segments", 10_000), ("finetuned", 20_000), ("entities", 30_000)]
)
def test_mutated_bundles_score_or_are_refused_never_crash(
    kind: str, seed: int, fuzz_data: tuple[Path, pl.DataFrame], segments_model: Model, tmp_path: Path
) -> None:
    folder, history = fuzz_data
    target = tmp_path / kind
    if kind == "detectors":
        _every_detector(history, target)
    elif kind == "segments":
        segments_model.save(target)
    elif kind == "finetuned":
        _fine_tuned(history, target)
    else:
        _entities(history, target)
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_bundle", str(target), str(folder / "new.parquet"), str(seed), str(CASES)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    outcomes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    last = outcomes[-1] if outcomes else None
    assert result.returncode == 0, f"crashed (rc {result.returncode}) on {last}: {result.stderr[-1500:]}"
    finished = [o for o in outcomes if o["status"] != "running"]
    assert len(finished) == CASES, result.stdout[-1500:]
    bad = [o for o in finished if o["status"] not in ("scored", "refused")]
    assert not bad, bad
    assert any(o["status"] == "refused" for o in finished) and any(o["status"] == "scored" for o in finished)
