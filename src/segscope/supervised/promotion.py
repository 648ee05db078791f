"""How a fine-tuned candidate is trained and judged: the held-out split, the bounded training rows, and the
promotion decision against the current version (plus the candidate's calibration on held-out labels).

Records are split in time (the latest ``holdout`` share, when there is a time column) or at random; the
candidate trains on the earlier part and both versions are compared on the held-out part, with labelled
anomalies as positives and everything else there (confirmed normals and unlabelled records) as negatives. A
candidate is promoted only when it is better by the chosen metric, and reliably so: in at least 95% of paired
bootstrap resamples of the held-out records; with no labelled anomaly held out there is nothing to show, so no
promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segscope.exceptions import DataError
from segscope.metrics import evaluate_scores

__all__ = [
    "HeldOut",
    "break_ties",
    "compare",
    "reliability",
    "share_better_aucpr",
    "split_holdout",
    "training_rows",
]


@dataclass(frozen=True)
class HeldOut:
    """Row indices of the training and held-out parts, and how they were chosen."""

    train: np.ndarray
    held: np.ndarray
    kind: str


def split_holdout(
    n: int, holdout: float, *, times: np.ndarray | None, column: str | None, rng: np.random.Generator
) -> HeldOut:
    """The latest ``holdout`` share by ``times`` (physical values, nulls first), else a random share."""
    if not 0.05 <= holdout <= 0.9:
        raise DataError(f"--holdout must be between 0.05 and 0.9; got {holdout}")
    if times is not None:
        order = np.argsort(times, kind="stable")
        is_held = np.zeros(n, dtype=bool)
        is_held[order[round(n * (1 - holdout)) :]] = True
        kind = f"time-ordered on '{column}' (latest {holdout:.0%} held out)"
    else:
        is_held = rng.random(n) < holdout
        kind = f"random {holdout:.0%} held out (no time column)"
    return HeldOut(np.flatnonzero(~is_held), np.flatnonzero(is_held), kind)


def training_rows(
    split: HeldOut, y: np.ndarray, labelled: np.ndarray, *, cap: int, rng: np.random.Generator
) -> np.ndarray:
    """Every labelled record of the training part plus at most ``cap`` unlabelled ones (sorted indices)."""
    train = split.train
    if not y[train].any():
        raise DataError(
            f"no labelled anomaly falls in the training part ({split.kind}); label more anomalies or lower --holdout"
        )
    unlabelled = train[~labelled[train]]
    if unlabelled.size > cap:
        unlabelled = np.sort(rng.choice(unlabelled, size=cap, replace=False))
    return np.sort(np.concatenate([train[labelled[train]], unlabelled]))


def compare(
    y_held: np.ndarray,
    current: np.ndarray,
    candidate: np.ndarray,
    metric: str,
    *,
    confidence: float = 0.95,
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The promotion decision: ``promote`` (candidate better by ``metric`` on the held-out records, and in at
    least ``confidence`` of ``resamples`` paired bootstrap resamples of them), the figures and a reason."""
    if y_held.sum() == 0 or y_held.sum() == y_held.size:
        return {"promote": False, "reason": "no labelled anomaly among the held-out records: cannot show it is better"}
    cur, new = evaluate_scores(y_held, current), evaluate_scores(y_held, candidate)
    # judged with ties broken at random: AUCPR credits a tie-free ranking, even a random one, over a score with
    # large tied blocks (many records at one value), so labels that carry no signal could "beat" a tied model
    rng = np.random.default_rng(seed)
    current, candidate = break_ties(current, rng), break_ties(candidate, rng)
    share = bootstrap_share_better(y_held, current, candidate, metric, resamples=resamples, seed=seed)
    judged = {name: _metric(metric)(y_held, values) for name, values in (("cur", current), ("new", candidate))}
    better = judged["new"] > judged["cur"]
    promote = better and share >= confidence
    verdict = "better" if promote else ("not better" if not better else "not reliably better")
    return {
        "current": {k: cur[k] for k in ("aucroc", "aucpr")},
        "candidate": {k: new[k] for k in ("aucroc", "aucpr")},
        "calibration": reliability(y_held, candidate),
        "share_of_resamples_better": share,
        "promote": bool(promote),
        "reason": f"{metric} {judged['new']:.4f} vs {judged['cur']:.4f} (ties broken at random), better in "
        f"{share:.0%} of {resamples} resamples (needs {confidence:.0%}): {verdict}",
    }


def bootstrap_share_better(
    y: np.ndarray, current: np.ndarray, candidate: np.ndarray, metric: str, *, resamples: int, seed: int
) -> float:
    """Share of paired bootstrap resamples in which ``candidate`` beats ``current`` by ``metric`` (AUCPR: Poisson
    weights, see :func:`share_better_aucpr`; AUCROC: anomalies and the rest resampled separately). A gain that a
    few held-out anomalies produce by chance rarely holds in 95% of them (a one-sided test at 5%)."""
    if metric == "aucpr":  # the fast path: each score sorted once, Poisson weights per resample (paired)
        return share_better_aucpr(y, current, candidate, resamples=resamples, seed=seed)
    score = _metric(metric)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
    wins = 0
    for _ in range(resamples):
        rows = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        wins += score(y[rows], candidate[rows]) > score(y[rows], current[rows])
    return wins / resamples


def _metric(metric: str) -> Any:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return average_precision_score if metric == "aucpr" else roc_auc_score


def break_ties(score: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``score`` with tied values put in a random order and every other order kept: a jitter below half the
    smallest gap between distinct values."""
    distinct = np.unique(score)
    gaps = np.diff(distinct)
    step = float(gaps.min()) if gaps.size else 1.0
    return np.asarray(score + rng.uniform(0.0, 0.5 * step, size=score.size))


def share_better_aucpr(y: np.ndarray, base: np.ndarray, other: np.ndarray, *, resamples: int, seed: int) -> float:
    """Share of Poisson-bootstrap resamples (the same weights for both: paired) in which ``other`` has a higher
    AUCPR than ``base``. Each score is sorted once; a resample costs O(rows)."""
    rng = np.random.default_rng(seed)
    prepared = [_sorted_for_ap(y, s) for s in (base, other)]
    wins = 0
    for _ in range(resamples):
        weight = rng.poisson(1.0, size=y.size).astype(np.float64)
        a, b = (_weighted_ap(*p, weight) for p in prepared)
        wins += b > a
    return wins / resamples


def _sorted_for_ap(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order by descending score, labels in that order, the last index of each run of tied scores)."""
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    return order, y[order].astype(np.float64), ends


def _weighted_ap(order: np.ndarray, y: np.ndarray, ends: np.ndarray, weight: np.ndarray) -> float:
    """Average precision with sample weights, ties as one threshold (as scikit-learn computes it)."""
    w = weight[order]
    tp = np.cumsum(w * y)[ends]
    seen = np.cumsum(w)[ends]
    if tp[-1] <= 0:
        return 0.0
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    recall_step = np.diff(np.r_[0.0, tp]) / tp[-1]
    return float(np.sum(recall_step * precision))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Brier score and expected calibration error of probabilities ``p`` against labels ``y``."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(ece)}
