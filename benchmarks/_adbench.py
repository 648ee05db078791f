"""Helpers shared by the benchmark scripts: ADBench's protocol, and the sets with known groups that the segment
benchmarks use (reads ../shared/data, never the package)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.model_selection import train_test_split

from segscope.config import SegscopeConfig
from segscope.model import Model
from segscope.supervised.base import Layout

ADBENCH_SETS = (
    "kdd99_http",
    "kdd99_smtp",
    "unsw_nb15_backdoor",
    "thyroid",
    "annthyroid",
    "cardio",
    "satimage2",
    "mammography",
    "pendigits",
)
SEEDS = (1, 2, 3)


def data_dir(arg: str | None = None) -> Path:
    path = Path(arg or os.environ.get("SEGSCOPE_DATA", "../shared/data"))
    if not path.is_dir():
        raise SystemExit(f"data folder {path} not found; pass --data PATH (default ../shared/data)")
    return path


def load_set(data: Path, name: str) -> pl.DataFrame:
    frame = pl.read_parquet(data / f"{name}.parquet")
    return frame.select([c for c in frame.columns if c == "label" or frame[c].dtype.is_numeric()])


def load_nslkdd(data: Path, rows: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """nslkdd's prepared features (``rows`` sampled rows, the attack columns, label, difficulty and split dropped
    before fitting) and its true groups {attack_category, attack_type}."""
    from segscope.features.prepare import FeaturePreparer

    frame = pl.read_parquet(data / "nslkdd.parquet").sample(rows, seed=0)
    truth = {c: frame[c].to_numpy() for c in ("attack_category", "attack_type")}
    prep = FeaturePreparer(drop=("attack_category", "attack_type", "label", "difficulty", "split")).fit(frame)
    return prep.transform(prep.validate(frame)), truth


def load_image_segments() -> tuple[np.ndarray, np.ndarray]:
    """river's bundled ImageSegments (2,310 rows, 7 classes): prepared features and the classes."""
    from river import datasets

    from segscope.features.prepare import FeaturePreparer

    rows = [(x, y) for x, y in datasets.ImageSegments()]
    frame = pl.DataFrame([x for x, _ in rows])
    prep = FeaturePreparer().fit(frame)
    return prep.transform(prep.validate(frame)), np.array([y for _, y in rows])


def split(frame: pl.DataFrame, seed: int, max_rows: int = 10_000) -> tuple[pl.DataFrame, pl.DataFrame]:
    """ADBench: subsample to 10k rows if larger, then a 70/30 stratified split, per seed."""
    rng = np.random.default_rng(seed)
    if frame.height > max_rows:
        frame = frame[np.sort(rng.choice(frame.height, size=max_rows, replace=False))]
    idx = np.arange(frame.height)
    tr, te = train_test_split(idx, test_size=0.3, stratify=frame["label"].to_numpy(), random_state=seed)
    return frame[np.sort(tr)], frame[np.sort(te)]


def fitted_matrices(
    train: pl.DataFrame, test: pl.DataFrame, seed: int
) -> tuple[Model, np.ndarray, Layout, np.ndarray, np.ndarray]:
    """segscope's unsupervised layer fitted on ``train`` without labels ("label" dropped), and the supervision
    matrices of both splits: (model, x_train, layout, x_test, the test split's anomaly scores)."""
    model = Model(SegscopeConfig(seed=seed).with_features(id_column=None, drop=("label",))).fit(train)
    x_train, layout, _ = model.supervision_matrix(train)
    x_test, _, anomaly_test = model.supervision_matrix(test)
    return model, x_train, layout, x_test, anomaly_test


def reveal(train: pl.DataFrame, k: int, seed: int) -> np.ndarray:
    """The labels an analyst gave: ``k`` of the train split's anomalies (all of them where fewer), drawn with
    ``seed``, as 1; everything else 0 (unlabelled)."""
    positives = np.flatnonzero(train["label"].to_numpy() == 1)
    y = np.zeros(train.height, dtype=np.int64)
    y[np.random.default_rng(seed).choice(positives, size=min(k, positives.size), replace=False)] = 1
    return y


def n_labelled(frame_full_anomalies: int, ratio: float) -> int:
    """ADBench: ceil(n_anomalies(full data) * 0.7 * gamma), at least one."""
    return max(1, math.ceil(frame_full_anomalies * 0.7 * ratio))


def published(data: Path, metric: str, setting: str = "unsupervised", ratio: str = "") -> dict[str, dict[str, float]]:
    """{segscope_set: {method: value}} from baselines_adbench.csv."""
    out: dict[str, dict[str, float]] = {}
    with (data / "baselines_adbench.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["metric"] != metric or row["setting"] != setting or row["labeled_anomaly_ratio_pct"] != ratio:
                continue
            try:
                value = float(row["value_pct"])
            except ValueError:
                continue
            out.setdefault(row["segscope_set"], {})[row["method"]] = value
    return out
