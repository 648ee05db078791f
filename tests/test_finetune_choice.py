"""The fine-tuning's capacity and blend, chosen on the promotion gate's folds (segscope.supervised.selection)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from segscope.supervised.base import FineTuned, Layout
from segscope.supervised.promotion import gate_folds
from segscope.supervised.selection import choose, out_of_fold
from segscope.supervised.xgb import XGBoostLearner

LAYOUT = Layout(n_features=4, surprisal=4, monotone=(0.0, 0.0, 0.0, 0.0, 1.0))


def _interaction(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Anomalies that no sum of one-feature effects can rank: an extreme first feature is anomalous only with
    the second on the *opposite* side (4 prepared features, then a surprisal column that knows nothing)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4))
    y = ((x[:, 0] > 0.9) & (x[:, 1] < 0.5)) | ((x[:, 0] < 0.1) & (x[:, 1] > 0.5))
    return np.hstack([x, rng.random((n, 1))]), y.astype(np.int64)


def _chosen(labelled: int, times: np.ndarray | None = None) -> tuple[str, list[str], FineTuned, dict[str, float]]:
    x, truth = _interaction(4000, seed=0)
    y = np.zeros_like(truth)
    y[np.flatnonzero(truth)[:labelled]] = 1
    gate = gate_folds(y, times=times, column="t" if times is not None else None, folds=5, rng=np.random.default_rng(0))
    tuned = FineTuned(XGBoostLearner(seed=0), n_features=4, seed=0)
    candidates = out_of_fold(tuned, x, y, y == 1, LAYOUT, gate)
    names = candidates.names(int(y.sum()))
    name = choose(candidates.y, candidates.values, names)
    _, taken = candidates.gate_scores(int(y.sum()))
    assert len(taken) == (gate.n_folds - 1 if gate.ordered else gate.n_folds)
    tuned.fit(x, y, y == 1, LAYOUT, chosen=candidates.chosen(name, "on the gate's folds"))
    return name, taken, tuned, candidates.table()


def test_depth_and_blend_are_chosen_on_the_gate_folds_when_labels_show_them() -> None:
    """300 labelled anomalies that are a combination of two features: the gate's folds show deeper trees ranking
    them better than stumps; the served model takes that choice (its parameters are what the bundle records) and
    ranks new records far better than stumps would."""
    name, _, tuned, table = _chosen(300)
    assert not name.startswith("stumps"), (name, table)
    assert len(table) == 3 * len(XGBoostLearner().alternatives())  # every configuration with every blend
    assert tuned.learner.get_params()["max_depth"] > 1
    assert tuned.describe()["blend_by"] == "on the gate's folds"
    assert set(tuned.describe()["out_of_fold_aucpr"]) == {"learner", "stack", "prior", "unsupervised"}
    new_x, new_y = _interaction(4000, seed=1)
    stumps = FineTuned(XGBoostLearner(seed=0, max_depth=1), n_features=4, seed=0, blend="learner")
    x, truth = _interaction(4000, seed=0)
    y = np.zeros_like(truth)
    y[np.flatnonzero(truth)[:300]] = 1
    stumps.fit(x, y, y == 1, LAYOUT)
    chosen_aucpr = average_precision_score(new_y, tuned.predict_proba(new_x))
    assert chosen_aucpr > 0.8 and chosen_aucpr > average_precision_score(new_y, stumps.predict_proba(new_x)) + 0.3


def test_with_few_labelled_anomalies_only_the_prior_blend_is_chosen() -> None:
    """Ten labelled anomalies: out-of-fold AUCPR on so few cannot be trusted to leave the prior blend (which leans
    on the unsupervised score and on the labelled anomalies' neighbourhoods), so only its depths compete; and the
    first block of a time-ordered gate takes the simplest candidate (nothing before it to choose on)."""
    times = np.arange(4000, dtype=np.float64)
    name, taken, tuned, _ = _chosen(10, times=times)
    assert name.endswith("prior blend") and tuned.blend_kind_ == "prior"
    assert taken[0] == "stumps, prior blend" and all(t.endswith("prior blend") for t in taken)


def test_a_simpler_candidate_within_noise_of_the_best_is_kept() -> None:
    """The best out-of-fold AUCPR wins only when it beats each simpler candidate in most bootstrap resamples; a
    lead of a lucky anomaly or two is noise, and the simpler one is kept."""
    rng = np.random.default_rng(0)
    y = np.zeros(3000, dtype=np.int64)
    y[:30] = 1
    simple = rng.normal(size=3000) + 1.5 * y
    slightly = simple + rng.normal(scale=0.3, size=3000)  # another ranking, a higher AUCPR by luck
    clearly = rng.normal(size=3000) + 4.0 * y
    assert average_precision_score(y, slightly) > average_precision_score(y, simple)
    values = {"simple": simple, "slightly better": slightly}
    assert choose(y, values, ["simple", "slightly better"]) == "simple"
    assert choose(y, values, ["simple", "slightly better"], noise=0.5) == "slightly better"  # argmax
    values = {"simple": simple, "clearly better": clearly}
    assert choose(y, values, ["simple", "clearly better"]) == "clearly better"
    assert choose(y, values, ["clearly better", "simple"]) == "clearly better"  # the best, when it is simplest
