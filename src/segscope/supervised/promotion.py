"""How a fine-tuned candidate is judged against the current version before it may serve.

The gate uses every label: the records are cut into folds, a candidate is trained (the whole fine-tuning
procedure) on the other folds and predicts the records of each fold it did not see, and these out-of-fold
predictions, pooled, are compared with the current version's scores of the same records. When the records have
an event time, the folds are blocks of time and each block is predicted by a candidate trained on the blocks
before it only (forward chaining: the earliest block only teaches), cut so that every block holds about as many
labelled anomalies; otherwise the folds are random, the labelled anomalies spread evenly over them. Labelled
anomalies are the positives; confirmed normals and unlabelled records the negatives (positive-unlabelled: a
random unlabelled record is almost always normal), so labels that name anomalies only are judged too. When the
analysts confirmed enough normals (``MIN_CONFIRMED_NORMALS``, and at least as many as the labelled anomalies), the
labelled anomalies are ranked against those only (:func:`judged_rows`): the unlabelled background holds the
anomalies nobody labelled yet, which a better model ranks high too, and counting them as normals hid gains that
were there (cardio, 26 labelled anomalies and 228 normals: out-of-fold AUCPR 0.21 vs 0.18 against the
background, better in 70% of resamples, while the candidate scored new records at 0.87 against 0.56).

The candidate is promoted when it is better by the chosen metric on those records and reliably so: in at least
95% of paired bootstrap resamples, anomalies and the rest resampled separately (each resample keeps as many
labelled anomalies as there are), and by a one-sided paired t-test at 5% on the terms the metric averages over
the labelled anomalies (:func:`paired_t`), so three anomalies are enough when the candidate ranks each far above
the current version, and not when two happen to rank a little higher. Shuffled labels then pass at most about
5% of the time; both error rates, measured on public data, are in the README (``benchmarks/served_model.py``). The
served candidate itself is trained on all records once the gate has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segscope.exceptions import DataError
from segscope.metrics import evaluate_scores

__all__ = [
    "GATE_FOLDS",
    "Folds",
    "break_ties",
    "compare",
    "gate_folds",
    "judged_rows",
    "paired_t",
    "per_anomaly",
    "reliability",
    "share_better_aucpr",
]

#: Folds of the gate (fewer when there are fewer labelled anomalies: each fold needs one). Each fold's candidate is
#: a whole fine-tuning, so the gate costs five of them; three cost less but teach each fold's candidate on two
#: thirds of the labels, and weak signals then fail the gate (vehicle claims, 36 labelled frauds: 100% of
#: resamples better with five folds, 94% with three, ``benchmarks/served_model.py``).
GATE_FOLDS = 5
#: With at least this many confirmed normals among the predicted records (and as many as labelled anomalies), the
#: gate ranks the labelled anomalies against them rather than against the unlabelled background.
MIN_CONFIRMED_NORMALS = 50


@dataclass(frozen=True)
class Folds:
    """Each record's fold (``-1``: the earliest block of a time-ordered gate, only ever taught from), the number of
    folds, and how they were cut."""

    fold: np.ndarray
    n_folds: int
    kind: str
    ordered: bool

    def training(self, k: int) -> np.ndarray:
        """Rows a candidate that predicts fold ``k`` may learn from."""
        return np.flatnonzero(self.fold < k) if self.ordered else np.flatnonzero((self.fold != k) & (self.fold >= 0))

    def evaluated(self) -> np.ndarray:
        return np.flatnonzero(self.fold >= (1 if self.ordered else 0))


def gate_folds(
    y: np.ndarray, *, times: np.ndarray | None, column: str | None, folds: int, rng: np.random.Generator
) -> Folds:
    """Folds for the gate (see the module docstring); ``y`` is 1 for labelled anomalies."""
    pos = np.flatnonzero(y == 1)
    if pos.size < 2:
        raise DataError(
            f"the promotion gate needs at least 2 labelled anomalies (one to learn from, one to check on); "
            f"got {pos.size}: label {'another anomaly' if pos.size else 'at least two anomalies'}"
        )
    if folds < 2:
        raise DataError(f"--folds must be at least 2; got {folds}")
    k = min(folds, pos.size)
    if times is not None:
        ranked = np.sort(times[pos])
        cuts = np.array([ranked[round(i * pos.size / k)] for i in range(1, k)])
        block = np.searchsorted(cuts, times, side="right").astype(np.int64)  # 0 .. k-1, in time
        block[block == 0] = -1
        kind = f"time-ordered on '{column}': {k} blocks, each predicted by a candidate taught on the earlier ones"
        return Folds(block, k, kind, ordered=True)
    fold = rng.integers(0, k, size=y.size).astype(np.int64)
    fold[pos] = rng.permutation(np.arange(pos.size) % k)
    return Folds(fold, k, f"{k} random folds (no time column)", ordered=False)


def judged_rows(y: np.ndarray, labelled: np.ndarray) -> tuple[np.ndarray, str]:
    """Which of the predicted records the gate judges (a mask) and what the labelled anomalies are ranked against:
    the confirmed normals when there are enough (module docstring), else every other record."""
    normals = int((labelled & (y != 1)).sum())
    if normals >= max(MIN_CONFIRMED_NORMALS, int((y == 1).sum())):
        return labelled.astype(bool), f"{normals:,} confirmed normals"
    others = int((y != 1).sum())
    return np.ones(y.size, bool), f"{others:,} other records ({normals} confirmed normals, the rest unlabelled)"


def compare(
    y: np.ndarray,
    current: np.ndarray,
    candidate: np.ndarray,
    metric: str,
    *,
    against: str = "the other records",
    confidence: float = 0.95,
    resamples: int = 400,
    seed: int = 0,
) -> dict[str, Any]:
    """The promotion decision on the gate's records: ``promote`` (candidate better by ``metric``, and in at least
    ``confidence`` of ``resamples`` stratified paired bootstrap resamples), the figures and a one-line reason that
    says what is missing when it is refused; ``against`` names the records the anomalies were ranked against."""
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return {"promote": False, "reason": "no labelled anomaly was predicted out of fold: label more anomalies"}
    cur, new = evaluate_scores(y, current), evaluate_scores(y, candidate)
    # judged with ties broken at random: AUCPR credits a tie-free ranking, even a random one, over a score with
    # large tied blocks (many records at one value), so labels that carry no signal could "beat" a tied model
    rng = np.random.default_rng(seed)
    current, candidate = break_ties(current, rng), break_ties(candidate, rng)
    share = share_better(y, current, candidate, metric, resamples=resamples, seed=seed)
    judged = {name: _metric(metric)(y, values) for name, values in (("cur", current), ("new", candidate))}
    better = judged["new"] > judged["cur"]
    p_value = paired_t(y, current, candidate, metric)
    promote = bool(better and share >= confidence and p_value <= 1 - confidence)
    if promote:
        verdict = "better"
    elif not better:
        verdict = "not better than the current version"
    else:
        verdict = f"not reliably better: label more anomalies ({n_pos} checked) to strengthen the evidence"
    return {
        "current": {k: cur[k] for k in ("aucroc", "aucpr")},
        "candidate": {k: new[k] for k in ("aucroc", "aucpr")},
        "calibration": reliability(y, candidate),
        "share_of_resamples_better": share,
        "paired_t_p_value": p_value,
        "promote": promote,
        "reason": f"{metric} {judged['new']:.4f} vs {judged['cur']:.4f} out of fold on {n_pos} labelled anomalies "
        f"against {against} (ties broken at random), "
        f"better in {share:.0%} of {resamples} resamples and paired t p={p_value:.3f} (needs {confidence:.0%} and "
        f"{1 - confidence:.2f}): {verdict}",
    }


def per_anomaly(y: np.ndarray, score: np.ndarray, metric: str) -> np.ndarray:
    """The terms ``metric`` averages over the labelled anomalies (ties already broken): AUCPR, the precision at each
    anomaly's rank; AUCROC, the share of the other records ranked below it."""
    order = np.argsort(-score, kind="stable")
    truth = y[order] == 1
    seen = np.arange(1, y.size + 1)
    if metric == "aucpr":
        return np.asarray(np.cumsum(truth)[truth] / seen[truth])
    negatives_above = np.cumsum(~truth)[truth]
    return np.asarray(1.0 - negatives_above / max(int((~truth).sum()), 1))


def paired_t(y: np.ndarray, current: np.ndarray, candidate: np.ndarray, metric: str) -> float:
    """One-sided p-value of a paired t-test that the candidate's per-anomaly terms (:func:`per_anomaly`) are higher.
    The bootstrap alone cannot judge a handful of anomalies: with two or three, every resample repeats the same
    few, and labels on random records were promoted whenever each happened to rank higher (a one-in-four or
    one-in-eight chance); the t-test asks as much of three anomalies as their spread warrants."""
    diff = per_anomaly(y, candidate, metric) - per_anomaly(y, current, metric)
    if diff.size < 2:
        return 1.0
    spread = float(np.std(diff, ddof=1))
    if spread == 0.0:
        return 0.0 if diff[0] > 0 else 1.0
    from scipy.stats import t

    return float(t.sf(float(np.mean(diff)) / (spread / np.sqrt(diff.size)), df=diff.size - 1))


def share_better(
    y: np.ndarray, current: np.ndarray, candidate: np.ndarray, metric: str, *, resamples: int, seed: int
) -> float:
    """Share of paired bootstrap resamples in which ``candidate`` beats ``current`` by ``metric``; anomalies and
    the rest are resampled separately, so every resample holds as many anomalies as ``y`` (with Poisson weights a
    handful of anomalies would often all drop out)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
    if metric == "aucpr":  # each score sorted once; a resample is a weight per record (paired)
        prepared = [_sorted_for_ap(y, s) for s in (current, candidate)]
        wins = 0
        for _ in range(resamples):
            weight = np.zeros(y.size)
            weight[pos] = rng.multinomial(pos.size, np.full(pos.size, 1.0 / pos.size))
            weight[neg] = rng.multinomial(neg.size, np.full(neg.size, 1.0 / neg.size))
            a, b = (_weighted_ap(*p, weight) for p in prepared)
            wins += b > a
        return wins / resamples
    score = _metric(metric)
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
