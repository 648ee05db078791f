"""Writes tests/golden/: a small bundle (with segments and segment-aware scoring) and a registry with a fine-tuned
XGBoost version, written by segscope before the architecture moves, plus their scores of a fixed input.

Run once with segscope at commit 9435906:
``PYTHONPATH=<that checkout>/src python tests/golden/make_golden.py tests/golden``
"""

import shutil
import sys
from pathlib import Path

import polars as pl

from segscope.config import DetectorConfig, SegmentsConfig, SegscopeConfig
from segscope.pipeline import Model, finetune_file
from segscope.testing.data import make_transactions

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
out.mkdir(parents=True)
history = make_transactions(1500, seed=0)
history.write_parquet(out / "history.parquet")
new = make_transactions(300, seed=7)
new.write_parquet(out / "input.parquet")
cfg = SegscopeConfig(
    detectors=(
        DetectorConfig(name="iforest", params={"n_estimators": 25}),
        DetectorConfig(name="ecod", params={"max_reference": 500}),
        DetectorConfig(name="hbos"),
    ),
    segments=SegmentsConfig(enabled=True, sample_size=800, aware_scoring=True, min_segment_size=20),
).with_features(id_column="txn_id", drop=("is_fraud",))
model = Model(cfg).fit(history)
model.save(out / "bundle")
Model.load(out / "bundle").score(new).write_parquet(out / "bundle-scores.parquet")

small = (
    DetectorConfig(name="iforest", params={"n_estimators": 25}),
    DetectorConfig(name="ecod", params={"max_reference": 500}),
)
plain = Model(SegscopeConfig(detectors=small).with_features(id_column="txn_id", drop=("is_fraud",))).fit(history)
plain.save(out / "registry")
frauds = history.filter(pl.col("is_fraud") == 1)
labels = pl.DataFrame({"id": frauds["txn_id"], "label": [1] * frauds.height})
labels.write_csv(out / "labels.csv")
candidate, report, _ = finetune_file(out / "registry", out / "history.parquet", out / "labels.csv")
print("promoted", report["promote"], report["reason"])
if not report["promote"]:
    from segscope import registry

    registry.set_current(out / "registry", candidate.version, action="promote", detail={"reason": "golden: by hand"})
(out / "history.parquet").unlink()
(out / "labels.csv").unlink()
Model.load(out / "registry").score(new).write_parquet(out / "registry-scores.parquet")
