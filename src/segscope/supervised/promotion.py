"""How a fine-tuned candidate is judged against the current version before it may serve.

The gate uses the labels out of fold: the records are cut into folds, and each fold is predicted by a candidate
trained (the whole fine-tuning procedure) on folds it does not hold; these out-of-fold predictions, pooled, are
compared with the current version's scores of the same records. When the records have an event time, the folds
are blocks of time and each block is predicted by a candidate trained on the blocks before it only (forward
chaining: the earliest block only teaches), cut so that every block holds about as many labelled anomalies.
Otherwise the folds are random, the labelled anomalies spread evenly over them, and judged chained both ways
(:meth:`Folds.chains`): forward, each fold predicted by a candidate taught on the folds before it (the first only
teaches), and backward, on the folds after it (the last only teaches), each chain's test at half the level, the
candidate promoted when either passes. Each fold predicted by a candidate taught on *all* the others let labels
that carry nothing pass too often: two labelled anomalies that lie close teach each other's folds and rise
together (3 labelled anomalies: 6 of 200 at the 1% level, ``benchmarks/gate_null.py``); chained, of two folds one
teaches the other and never the reverse, so given the folds before it a fold's labelled anomalies are records
drawn at random from it. One chain alone halves the gate's power with a handful of labels (the first fold's
anomalies only teach, and the evidence is often there); the two chains judge every fold. Each fold's scores, the
current version's and the candidate's, are judged as percentiles of every record of the fold
(:func:`fold_percentiles`: a scale that uses no label). Labelled
anomalies are the positives; confirmed normals and unlabelled records the negatives (positive-unlabelled: a
random unlabelled record is almost always normal), so labels that name anomalies only are judged too. When the
analysts confirmed enough normals (``MIN_CONFIRMED_NORMALS``, and at least as many as the labelled anomalies), the
labelled anomalies are ranked against those only (:func:`judged_rows`): the unlabelled background holds the
anomalies nobody labelled yet, which a better model ranks high too, and counting them as normals hid gains that
were there (cardio, 26 labelled anomalies and 228 normals: out-of-fold AUCPR 0.21 vs 0.18 against the
background, better in 70% of resamples, while the candidate scored new records at 0.87 against 0.56).

The candidate is promoted when it is better by the chosen metric on those records and the gain is more than chance
gives: larger than on as many records drawn at random from the same folds in at least 99% of 2,000 draws
(:func:`permutation_p`; in each chain of random folds, 99.5%), and no single labelled anomaly carries it
(:func:`least_gain_without_one`). Labels that carry nothing pass this at most 1% of the time whatever their number
(the measured rate is in the docs); a few labelled anomalies lifted to the top of the list pass it (thyroid, 3
labelled anomalies, 2 judged in each chain: the candidate at AUCPR 0.90 on held-out records against 0.50, p=0.0005
in one chain, where a paired t-test on their own spread cannot judge two). With 2 labelled anomalies each chain
judges one, which alone always carries the gain: the gate promotes from 3. A second rule on the anomalies'
own spread (better in 95% of paired bootstrap resamples and by a one-sided paired t-test at 5%) also promoted
until it was measured alone: over 120 draws of ``benchmarks/served_model.py`` it added no promotion of a
truly better candidate and all 4 promotions of labels put on random records (the t-test takes the AUCPR terms
of 10 to 48 anomalies as independent, and they are not); both figures stay in the report, for information. Both
error rates, measured on public data, are in the docs. The served candidate itself is trained on all records once
the gate has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segscope.exceptions import DataError
from segscope.metrics import evaluate_scores

__all__ = [
    "GATE_FOLDS",
    "PERMUTATIONS",
    "Folds",
    "break_ties",
    "compare",
    "fold_percentiles",
    "gate_folds",
    "judged_rows",
    "least_gain_without_one",
    "paired_t",
    "per_anomaly",
    "permutation_p",
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
#: Random draws of the permutation test (:func:`permutation_p`): p-values down to 1 / 2,001.
PERMUTATIONS = 2000


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

    def chains(self) -> list[Folds]:
        """The folds as the gate's test judges them: time-ordered folds as they are; random folds chained both
        ways (forward: each fold taught on the ones before it, the first only teaching; backward: on the ones
        after it, the last only teaching), so that no two labelled anomalies teach each other's folds."""
        if self.ordered:
            return [self]
        k = self.n_folds
        forward = np.where(self.fold == 0, -1, self.fold)
        backward = np.where(self.fold == k - 1, -1, k - 1 - self.fold)
        return [
            Folds(forward, k, "forward", ordered=True),
            Folds(backward, k, "backward", ordered=True),
        ]


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
    return Folds(fold, k, f"{k} random folds (no time column), judged chained both ways", ordered=False)


def judged_rows(
    y: np.ndarray, labelled: np.ndarray, current: np.ndarray, confirmed: int | None = None
) -> tuple[np.ndarray, str]:
    """Which of the predicted records the gate judges (a mask) and what the labelled anomalies are ranked against:
    the confirmed normals when the analysts confirmed enough (``confirmed``, counted over every labelled record,
    those of a fold that only teaches too; None: those predicted; module docstring), else every other record.
    Also every other record when the current version (``current``: its scores of the records, on the scale
    judged) already ranks each labelled anomaly above every confirmed normal: against those, no candidate can
    be better, and the gain, if there is one, shows only against the unlabelled background (thyroid at 5%: 3
    labelled anomalies and 130 confirmed normals, 3 of 10 draws refused for that alone, all 3 promoted so)."""
    normals = int((labelled & (y != 1)).sum())
    enough = max(MIN_CONFIRMED_NORMALS, int((y == 1).sum()))
    others = int((y != 1).sum())
    if normals and (normals if confirmed is None else confirmed) >= enough:
        if current[y == 1].min(initial=np.inf) <= current[labelled & (y != 1)].max():
            return labelled.astype(bool), f"{normals:,} confirmed normals"
        return np.ones(y.size, bool), (
            f"{others:,} other records (the current version already ranks each labelled anomaly above the "
            f"{normals:,} confirmed normals)"
        )
    return np.ones(y.size, bool), f"{others:,} other records ({normals} confirmed normals, the rest unlabelled)"


def compare(
    y: np.ndarray,
    current: np.ndarray,
    candidate: np.ndarray,
    metric: str,
    *,
    against: str = "the other records",
    folds: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    scale: str = "",
    confidence: float = 0.99,
    resamples: int = 400,
    seed: int = 0,
) -> dict[str, Any]:
    """The promotion decision on the gate's records (``folds``: each record's gate fold, or None): ``promote``
    (candidate better by ``metric``, its gain larger than on random records of the same folds, one-sided at
    ``1 - confidence``: :func:`permutation_p`, and carried by no single labelled anomaly), the figures (with, for
    information, the share of ``resamples`` stratified paired bootstrap resamples in which it is better and the
    paired t-test's p-value) and a one-line reason that says what is missing when it is refused; ``against``
    names the records the anomalies were ranked against, ``scale`` how the scores were put on one scale;
    ``probabilities``: the candidate's, for the calibration figures, when ``candidate`` is on another scale."""
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
    p_value = permutation_p(y, current, candidate, metric, folds=folds, seed=seed)
    t_value = paired_t(y, current, candidate, metric)
    least = least_gain_without_one(y, current, candidate, metric)
    promote = bool(better and p_value <= 1 - confidence and least >= 0.0)
    if promote:
        verdict = "better"
    elif not better:
        verdict = "not better than the current version"
    elif p_value <= 1 - confidence:
        verdict = (
            f"not reliably better (the gain hangs on one labelled anomaly): label more anomalies ({n_pos} checked) "
            "to strengthen the evidence"
        )
    else:
        verdict = f"not reliably better: label more anomalies ({n_pos} checked) to strengthen the evidence"
    return {
        "current": {k: cur[k] for k in ("aucroc", "aucpr")},
        "candidate": {k: new[k] for k in ("aucroc", "aucpr")},
        "calibration": reliability(y, candidate if probabilities is None else probabilities),
        "share_of_resamples_better": share,
        "permutation_p_value": p_value,
        "least_gain_without_one": least,
        "paired_t_p_value": t_value,
        "promote": promote,
        "reason": f"{metric} {judged['new']:.4f} vs {judged['cur']:.4f} out of fold on {n_pos} labelled anomalies "
        f"against {against} ({scale}ties broken at random), a gain that random records of the same folds reach "
        f"with p={p_value:.4f} (needs {1 - confidence:.3g}): {verdict}",
    }


def _from_ranks(ranks: np.ndarray, n: int, metric: str) -> np.ndarray:
    """``metric`` for each row of ``ranks`` (the positives' ranks in one ordering, 1 = top, ties broken) among
    ``n`` records: AUCPR is the mean of j / (rank of the j-th positive), AUCROC the share of the other records
    ranked below the positives."""
    ranks = np.sort(ranks, axis=1)
    k = ranks.shape[1]
    if metric == "aucpr":
        return np.asarray((np.arange(1, k + 1) / ranks).mean(axis=1))
    above = (ranks - np.arange(1, k + 1)).sum(axis=1)  # other records ranked above each positive, summed
    return np.asarray(1.0 - above / (k * max(n - k, 1)))


def fold_percentiles(score: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each record's score as its percentile among every record of its fold (labelled or not; ties averaged): a
    scale that uses no label, so a fold's labelled anomalies shape neither their own fold's scale nor, when a
    fold's candidate is taught on the folds before it only, any earlier fold's."""
    from scipy.stats import rankdata

    out = np.empty(score.size)
    for k in np.unique(fold):
        here = fold == k
        out[here] = rankdata(score[here]) / here.sum()
    return out


def permutation_p(
    y: np.ndarray,
    current: np.ndarray,
    candidate: np.ndarray,
    metric: str,
    *,
    folds: np.ndarray | None = None,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> float:
    """One-sided p-value that the candidate's gain over the current version by ``metric`` (ties already broken) on
    the labelled anomalies is larger than on as many records drawn at random, each fold giving as many as it holds
    labelled anomalies (``folds``: each record's fold; None, one fold). The predictions are out of fold, so a
    record's label never shaped its own candidate score: when labels carry nothing, the labelled anomalies are
    records like any other of their fold, and this p-value is uniform whatever their number. Unlike the t-test on
    the anomalies' own spread, its reference is the thousands of other records: three anomalies that the candidate
    lifts to the top give a small p-value even when a fourth would be needed for the t-test."""
    n = y.size
    rank_cur, rank_new = (np.empty(n, np.int64) for _ in range(2))
    rank_cur[np.argsort(-current, kind="stable")] = np.arange(1, n + 1)
    rank_new[np.argsort(-candidate, kind="stable")] = np.arange(1, n + 1)
    positives = np.flatnonzero(y == 1)
    observed = _from_ranks(rank_new[positives][None], n, metric) - _from_ranks(rank_cur[positives][None], n, metric)
    fold = np.zeros(n, np.int64) if folds is None else folds
    rng = np.random.default_rng(seed)
    drawn = []
    for k in np.unique(fold[positives]):
        members = np.flatnonzero(fold == k)
        drawn.append(_subsets(members, int(y[members].sum()), permutations, rng))
    rows = np.concatenate(drawn, axis=1)
    null = _from_ranks(rank_new[rows], n, metric) - _from_ranks(rank_cur[rows], n, metric)
    return float((1 + np.sum(null >= observed[0] - 1e-12)) / (permutations + 1))


def least_gain_without_one(y: np.ndarray, current: np.ndarray, candidate: np.ndarray, metric: str) -> float:
    """The candidate's smallest gain by ``metric`` (ties already broken) over the current version when any one
    labelled anomaly is left out: below 0 when the gain hangs on one anomaly (one lifted to the top, the others
    dropped), which the permutation test alone would credit, since random records are rarely lifted that far."""
    positives = np.flatnonzero(y == 1)
    if positives.size < 2:
        return -np.inf
    n = y.size
    least = np.inf
    ranks = []
    for score in (current, candidate):
        rank = np.empty(n, np.int64)
        rank[np.argsort(-score, kind="stable")] = np.arange(1, n + 1)
        ranks.append(rank[positives])
    k = positives.size
    others = ~np.eye(k, dtype=bool)
    for start in range(0, k, 500):  # rows: which anomaly is left out
        stop = min(start + 500, k)
        gains = np.zeros(stop - start)
        for sign, rank in ((-1.0, ranks[0]), (1.0, ranks[1])):
            kept = np.broadcast_to(rank, (stop - start, k))[others[start:stop]].reshape(stop - start, k - 1)
            kept = kept - (kept > rank[start:stop, None])  # the records below the one left out move up
            gains += sign * _from_ranks(kept, n - 1, metric)
        least = min(least, float(gains.min()))
    return least


def _subsets(members: np.ndarray, m: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``m``-subsets of ``members`` (one a row), drawn in batches of about two million keys."""
    if m >= members.size:
        return np.tile(members, (count, 1))
    batch = max(1, 2_000_000 // members.size)
    parts = []
    for start in range(0, count, batch):
        keys = rng.random((min(batch, count - start), members.size))
        parts.append(members[np.argpartition(keys, m - 1, axis=1)[:, :m]])
    return np.concatenate(parts)


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
