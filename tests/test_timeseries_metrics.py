"""The NAB scorer reproduces NAB's published score of a published detector result file (ARTime on
machine_temperature, NAB commit ea702d7, MIT), in all three profiles; SKAB's point metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from segscope.metrics import nab_score, point_metrics

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("profile", ["standard", "reward_low_FP_rate", "reward_low_FN_rate"])
def test_nab_score_reproduces_the_published_artime_result(profile: str) -> None:
    meta = json.loads((DATA / "nab_machine_temperature_windows.json").read_text())
    results = pl.read_csv(DATA / "nab_ARTime_machine_temperature.csv.gz")
    windows = [(a[:19], b[:19]) for a, b in meta["windows"]]
    published = meta["published"][profile]
    detections = results["anomaly_score"].to_numpy() >= published["threshold"]
    got = nab_score(results["timestamp"].to_list(), detections, windows, profile)
    assert got["raw"] == pytest.approx(published["raw"], abs=1e-9)
    counts = meta["published"]["counts"]
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (counts["tp"], counts["fp"], counts["fn"], counts["tn"])


def test_nab_null_perfect_and_late_detections() -> None:
    stamps = list(range(10_000))
    windows = [(3000, 3199), (7000, 7199)]
    nothing = nab_score(stamps, np.zeros(10_000, dtype=bool), windows)
    assert nothing["raw"] == -2.0 and nothing["score"] == 0.0
    early = np.zeros(10_000, dtype=bool)
    early[[3000, 7000]] = True
    assert nab_score(stamps, early, windows)["score"] == pytest.approx(100.0, abs=1e-9)
    late = np.zeros(10_000, dtype=bool)
    late[[3190, 7190]] = True
    assert 0 < nab_score(stamps, late, windows)["score"] < 60  # detected, but only just before the window ends
    noisy = early.copy()
    noisy[5000:5100] = True  # 100 false positives
    assert nab_score(stamps, noisy, windows, "reward_low_FP_rate")["raw"] < nab_score(stamps, noisy, windows)["raw"]


def test_point_metrics() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    d = np.array([0, 1, 0, 0, 1, 1, 0, 0])
    got = point_metrics(y, d)
    assert got["far"] == 0.25 and got["mar"] == 0.5 and got["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
