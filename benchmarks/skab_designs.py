"""Machine-state detector designs on SKAB's outlier track, before any of them goes into the maintenance pack.

    python benchmarks/skab_designs.py [--data ../shared/data] [--out skab_designs]

SKAB's protocol (its leaderboard, test split): each experiment's first 400 rows are its training rows; the rest
are scored, and the detections are judged point-wise against ``label`` (F1, false-alarm rate = FP / normal rows,
missed-alarm rate). The best published: Conv-AE F1 0.78 at FAR 13.6%. Every design here is causal (a row's
decision uses that row and the rows before it) and fitted per experiment on its own 400 training rows, as a
machine with its own history would be:

* the distance of the machine's sensors from its own baseline: standardised with the training rows' mean and
  standard deviation, Hotelling's T^2 on the first ``n`` principal components plus the residual Q (squared
  prediction error) of the rest;
* smoothed by a rolling mean over ``w`` rows; alarm while the smoothed distance stayed above ``k`` times its
  training 99th percentile for the last ``N`` rows (a held alarm that clears when the machine is back);
* "screened": a sensor whose training rows are mostly slow drift is left out of the distance (its noise ratio,
  std of first differences / std / sqrt(2), is 1 for white noise and near 0 for a trend; SKAB's Temperature and
  Thermocouple have medians 0.27 and 0.23, the other six 0.81-1.06): a machine that warms up is at a level its
  first 400 rows never had without being faulty, and after a fault such sensors stay away for minutes.

A form a per-machine stream can carry (each reading updates a few numbers of its machine's state): the distance
as the Mahalanobis distance of the screened sensors from the machine's training mean, with their full covariance
(``mahalanobis``: the sums behind a mean and a covariance accumulate reading by reading), the smoothing an
exponentially weighted mean of span ``w`` (``ewma``: alpha = 2 / (w + 1), carried on from the training rows), and
the hold a count of consecutive readings above the limit (the same as a rolling minimum over ``N``).

Results per experiment folder (``other`` 14 experiments, ``valve1`` 16, ``valve2`` 4) and over all 34. Writes
benchmarks/results/<out>.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from segscope.metrics import point_metrics

from _adbench import data_dir

SENSORS = (
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple", "Voltage",
    "Volume Flow RateRMS",
)  # fmt: skip
GROUPS = ("other", "valve1", "valve2")
RESULTS = Path(__file__).parent / "results"
Design = tuple[float | None, tuple[str, ...], int, int, int, float, str, str]
# name -> (screen cut on the noise ratio, or None; sensors left out by name; n, w, N, k; distance "pca" (T^2 on n
# components + Q) or "mahalanobis"; smoothing "mean" (rolling over w) or "ewma" (span w))
DESIGNS: dict[str, Design] = {
    "all eight sensors, w30 N10 k1.5": (None, (), 3, 30, 10, 1.5, "pca", "mean"),
    "all eight sensors, w10 N10 k1.0": (None, (), 3, 10, 10, 1.0, "pca", "mean"),
    "all eight sensors, w10 N10 k3.0": (None, (), 3, 10, 10, 3.0, "pca", "mean"),
    "screened (noise ratio >= 0.5), w10 N10 k1.0": (0.5, (), 3, 10, 10, 1.0, "pca", "mean"),
    "screened (noise ratio >= 0.5), w30 N1 k1.5": (0.5, (), 3, 30, 1, 1.5, "pca", "mean"),
    "screened (noise ratio >= 0.5), w10 N1 k2.0": (0.5, (), 3, 10, 1, 2.0, "pca", "mean"),
    "Temperature and Thermocouple left out by name, w30 N10 k1.5":
        (None, ("Temperature", "Thermocouple"), 3, 30, 10, 1.5, "pca", "mean"),
    "mahalanobis, screened (noise ratio >= 0.5), ewma w10 N10 k1.0": (0.5, (), 0, 10, 10, 1.0, "mahalanobis", "ewma"),
    "mahalanobis, screened (noise ratio >= 0.5), mean w10 N10 k1.0": (0.5, (), 0, 10, 10, 1.0, "mahalanobis", "mean"),
    "mahalanobis, screened (noise ratio >= 0.5), ewma w10 N5 k1.0": (0.5, (), 0, 10, 5, 1.0, "mahalanobis", "ewma"),
    "mahalanobis, screened (noise ratio >= 0.5), ewma w20 N10 k1.0": (0.5, (), 0, 20, 10, 1.0, "mahalanobis", "ewma"),
    "mahalanobis, screened (noise ratio >= 0.5), ewma w10 N10 k1.5": (0.5, (), 0, 10, 10, 1.5, "mahalanobis", "ewma"),
}  # fmt: skip


def experiments(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    frame = pl.read_parquet(data / "skab.parquet").filter(pl.col("split") != "anomaly_free")
    out = []
    for (name,), rows in frame.group_by("experiment", maintain_order=True):
        train, test = rows.filter(pl.col("split") == "train"), rows.filter(pl.col("split") == "test")
        out.append(
            (str(name), train.select(SENSORS).to_numpy(), test.select(SENSORS).to_numpy(), test["label"].to_numpy())
        )
    return out


def noise_ratio(train: np.ndarray) -> np.ndarray:
    return np.diff(train, axis=0).std(0) / (train.std(0) + 1e-12) / np.sqrt(2)


def distance(train: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """T^2 on the first n components + Q of the rest, for the training rows and for ``rows``."""
    mean, std = train.mean(0), train.std(0) + 1e-9
    _, s, vt = np.linalg.svd((train - mean) / std, full_matrices=False)
    n = min(n, train.shape[1] - 1) if train.shape[1] > 1 else 1
    v, variance = vt[:n].T, s[:n] ** 2 / (len(train) - 1)

    def of(a: np.ndarray) -> np.ndarray:
        z = (a - mean) / std
        t = z @ v
        return ((z - t @ v.T) ** 2).sum(1) + (t**2 / np.maximum(variance, 1e-12)).sum(1)

    return of(train), of(rows)


def mahalanobis(train: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The squared Mahalanobis distance from the training mean, with the training covariance (standardised first),
    for the training rows and for ``rows``."""
    mean, std = train.mean(0), train.std(0) + 1e-9
    inverse = np.linalg.pinv(np.atleast_2d(np.cov((train - mean) / std, rowvar=False)))

    def of(a: np.ndarray) -> np.ndarray:
        z = (a - mean) / std
        return np.einsum("ij,jk,ik->i", z, inverse, z)

    return of(train), of(rows)


def ewma(values: np.ndarray, span: int) -> np.ndarray:
    alpha, out, level = 2.0 / (span + 1), np.empty_like(values), float(values[0])
    for i, v in enumerate(values):
        level = alpha * v + (1.0 - alpha) * level
        out[i] = level
    return out


def detect(train: np.ndarray, rows: np.ndarray, design: Design) -> np.ndarray:
    cut, left_out, n, w, hold, k, kind, smoothing = design
    keep = np.array([s not in left_out for s in SENSORS])
    if cut is not None:
        keep &= noise_ratio(train) >= cut
    fit, new = (
        distance(train[:, keep], rows[:, keep], n) if kind == "pca" else mahalanobis(train[:, keep], rows[:, keep])
    )
    if smoothing == "ewma":  # carried on from the training rows, as a machine's state would be
        both = ewma(np.concatenate([fit, new]), w)
        smooth_fit, smooth = both[: fit.shape[0]], pl.Series(both[fit.shape[0] :])
    else:
        smooth_fit = pl.Series(fit).rolling_mean(w, min_samples=1).to_numpy()
        smooth = pl.Series(new).rolling_mean(w, min_samples=1)
    limit = k * np.quantile(smooth_fit, 0.99)
    return smooth.rolling_min(hold, min_samples=1).to_numpy() > limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="the data folder (default ../shared/data)")
    parser.add_argument("--out", default="skab_designs")
    args = parser.parse_args()
    runs = experiments(data_dir(args.data))
    results: dict[str, dict[str, Any]] = {}
    for name, design in DESIGNS.items():
        decided = [(exp, y, detect(train, test, design)) for exp, train, test, y in runs]
        row = {}
        for group in (*GROUPS, "all"):
            part = [(y, d) for exp, y, d in decided if group == "all" or exp.startswith(group + "/")]
            m = point_metrics(np.concatenate([y for y, _ in part]), np.concatenate([d for _, d in part]))
            row[group] = {"f1": round(m["f1"], 3), "far": round(100 * m["far"], 1), "mar": round(100 * m["mar"], 1)}
        results[name] = row
        print(f"{name:62s} " + "  ".join(f"{g} {r['f1']:.3f}/{r['far']:.1f}%" for g, r in row.items()), flush=True)
    lines = [
        "| design | " + " | ".join(f"{g} F1 / FAR %" for g in (*GROUPS, "all")) + " |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['f1']:.3f} / {r['far']:.1f}" for r in row.values()) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
