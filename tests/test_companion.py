"""The plain XGBoost companion served beside the fine-tuned model (segscope.supervised.companion): its log-odds
averaged with the fine-tuned model's, the gate judging that average, kept in the bundle."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from scipy.special import logit
from sklearn.metrics import roc_auc_score

from segscope import Model
from segscope.supervised.companion import COMPANION_WEIGHT
from segscope.supervised.selection import Candidates
from segscope.testing.data import make_transactions

#: Scores of one model in one process, computed two ways (float sums in another order).
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def tuned(fine_tuned_transactions: tuple[Model, dict[str, Any]]) -> tuple[Model, pl.DataFrame, dict[str, Any]]:
    candidate, report = fine_tuned_transactions
    return candidate, make_transactions(2000, seed=1), report


def test_the_served_score_averages_the_fine_tuned_model_and_its_companion(
    tuned: tuple[Model, pl.DataFrame, dict[str, Any]],
) -> None:
    candidate, later, report = tuned
    supervised = candidate.supervised
    assert supervised is not None and supervised.companion_ is not None
    described = report["supervised"]["companion"]
    assert described["weight"] == COMPANION_WEIGHT and 0 < described["scale"][0] <= 10
    x, _, _ = candidate.supervision_matrix(later, with_segments=candidate.supervised_sees_segments)
    served = candidate.score(later)["supervised_score"].to_numpy()
    np.testing.assert_allclose(served, supervised.predict_proba(x), rtol=0, atol=TOLERANCE)
    alone = copy.copy(supervised)
    alone.companion_ = None
    companion = supervised.companion_.log_odds(x)
    expected = (1 - COMPANION_WEIGHT) * logit(alone.predict_proba(x)) + COMPANION_WEIGHT * companion
    np.testing.assert_allclose(logit(served), expected, rtol=0, atol=1e-6)
    assert np.abs(logit(served) - logit(alone.predict_proba(x))).max() > 0.1  # it moves the served score
    frauds = later["is_fraud"].to_numpy()
    assert roc_auc_score(frauds, companion) > 0.8  # and learnt the frauds from 40 labels on its own


def test_a_bundle_keeps_the_companion(tuned: tuple[Model, pl.DataFrame, dict[str, Any]], tmp_path: Path) -> None:
    candidate, later, _ = tuned
    candidate.save(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    component = next(c for c in manifest["components"] if c["role"] == "supervised")
    assert component["companion_artifact"] == "supervised/companion-xgboost.json"
    assert component["params"]["companion"]["weight"] == COMPANION_WEIGHT
    loaded = Model.load(tmp_path / "bundle")
    assert loaded.supervised is not None and loaded.supervised.companion_ is not None
    np.testing.assert_allclose(
        loaded.score(later)["supervised_score"].to_numpy(),
        candidate.score(later)["supervised_score"].to_numpy(),
        rtol=0,
        atol=TOLERANCE,
    )


def _candidates(companion: np.ndarray | None) -> Candidates:
    """Two random folds of 200 records, 10 labelled anomalies each; the only candidate knows nothing."""
    rng = np.random.default_rng(0)
    y = np.zeros(400, dtype=np.int64)
    y[rng.choice(400, 20, replace=False)] = 1
    noise = rng.normal(size=400)
    return Candidates(
        configs=[{}],
        rows=np.arange(400),
        fold=np.repeat([0, 1], 200),
        ordered=False,
        y=y,
        learner=[noise],
        surprisal=noise,
        proximity=np.zeros(400),
        values={"the learner, prior blend": noise},
        companion=companion,
        companion_weight=COMPANION_WEIGHT if companion is not None else 0.0,
    )


def test_the_gate_judges_the_average_with_the_companion() -> None:
    """What the gate compares with the current version is what would be served: a companion that ranks the
    labelled anomalies first lifts the gate's out-of-fold scores, a candidate without one does not."""
    without = _candidates(None)
    knows = without.y + np.random.default_rng(1).normal(scale=0.1, size=400)
    scores, _ = without.gate_scores(20)
    averaged, _ = _candidates(knows).gate_scores(20)
    assert roc_auc_score(without.y, scores) < 0.7
    assert roc_auc_score(without.y, averaged) > 0.95
