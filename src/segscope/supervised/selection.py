"""The fine-tuning's capacity and blend, chosen on the promotion gate's folds.

A candidate is a learner configuration (XGBoost: stumps and depth 4 with 200 trees at rate 0.1, XGBoost's own
depth and rate, depth 6 with 100 trees at rate 0.3, and a plain XGBoost: those with every record weighted alike,
no sampling and no monotone constraint, :meth:`~segscope.supervised.xgb.XGBoostLearner.alternatives`) with a
blend (the prior blend, the learner alone, the stack of the learner and the unsupervised surprisal;
:mod:`segscope.supervised.base`). Every candidate is judged on
the predictions the gate makes anyway: for each of the gate's folds, one learner per configuration taught on the
rows that fold may learn from predicts the fold (the blends cost nothing more). So the choice costs one fit per
configuration and fold, and it is judged as the gate judges, forward in time when the records have an event time.

The rule: the candidate with the best out-of-fold AUCPR, unless a simpler one is within noise of it (the best
beats it in fewer than ``WITHIN_NOISE`` of stratified bootstrap resamples); candidates are ordered simplest first
(shallower trees first; for each depth the prior blend, then the learner alone, then the stack). With fewer than
``PRIOR_BELOW`` labelled anomalies only the prior blend is considered: out-of-fold AUCPR on a few dozen anomalies
chose the learner alone where the prior blend ranked later records better.

The gate itself judges the choice honestly: each fold is predicted by the candidate the rule picks from the other
folds' predictions (from the earlier folds' when the folds are chained, :mod:`segscope.supervised.promotion`; the
first fold that is predicted takes the simplest candidate), its values put on one scale by Platt scaling fitted on
the other folds (never on the fold's own labels, which the gate's permutation test needs:
:meth:`Candidates.gate_scores`) and averaged in log-odds with the plain XGBoost companion's predictions of the fold,
scaled the same way, as the served model averages them (:mod:`segscope.supervised.companion`); random folds, judged
chained both ways, are then ranked as percentiles of each fold's records. The served candidate is the rule's pick
from every fold, each predicted by a candidate taught on all the others (the fits shared with the chains: ``cache``
of :func:`out_of_fold`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from segscope.supervised.base import PRIOR_BELOW, FineTuned, Layout
from segscope.supervised.blend import Chosen, aucpr, fit_platt, fit_stack, logit, proximity
from segscope.supervised.companion import averaged, companion_fold_logits
from segscope.supervised.promotion import Folds

__all__ = ["WITHIN_NOISE", "Candidates", "choose", "out_of_fold"]

#: A candidate is preferred to a simpler one only when it is better in at least this share of bootstrap
#: resamples of the out-of-fold predictions (about one standard error); below it the difference is noise.
WITHIN_NOISE = 0.84
_RESAMPLES = 200
#: The bootstrap of the choice resamples at most this many records that are not labelled anomalies.
_MAX_NEGATIVES = 20_000
_BLENDS = ("prior", "learner", "stack")


@dataclass
class Candidates:
    """Every candidate's out-of-fold values on the gate's predicted ``rows`` (``fold``: each row's fold)."""

    configs: list[dict[str, Any]]
    rows: np.ndarray
    fold: np.ndarray
    ordered: bool
    y: np.ndarray
    learner: list[np.ndarray]  # per configuration: the learner's logit
    surprisal: np.ndarray
    proximity: np.ndarray  # to the labelled anomalies the row's fold was taught on
    values: dict[str, np.ndarray]  # per candidate name, in order (simplest first)
    pretrained: Any = None
    companion: np.ndarray | None = None  # the plain XGBoost companion's logits (None: no companion)
    companion_weight: float = 0.0

    def names(self, n_pos: int) -> list[str]:
        """Candidates the rule may pick with ``n_pos`` labelled anomalies, simplest first."""
        names = list(self.values)
        return [n for n in names if n.endswith("prior blend")] if n_pos < PRIOR_BELOW else names

    def table(self) -> dict[str, float]:
        """Every candidate's out-of-fold AUCPR."""
        return {name: round(aucpr(self.y, value), 4) for name, value in self.values.items()}

    def chosen(self, name: str, by: str) -> Chosen:
        """The candidate ``name`` for :meth:`FineTuned.fit` (``by``: how it was chosen)."""
        index = list(self.values).index(name)
        config, blend = index // len(_BLENDS), _BLENDS[index % len(_BLENDS)]
        names = list(self.values)[config * len(_BLENDS) : (config + 1) * len(_BLENDS)]
        figures = {kind: aucpr(self.y, self.values[n]) for kind, n in zip(_BLENDS, names, strict=True)}
        figures["unsupervised"] = aucpr(self.y, self.surprisal)
        return Chosen(
            params=self.configs[config],
            blend=blend,
            rows=self.rows,
            learner=self.learner[config],
            proximity=self.proximity,
            figures=figures,
            by=by,
            pretrained=self.pretrained,
            companion=self.companion,
        )

    def gate_scores(self, n_pos: int, *, noise: float = WITHIN_NOISE, seed: int = 0) -> tuple[np.ndarray, list[str]]:
        """Out-of-fold probabilities for the gate: each fold scored by the candidate chosen (among those
        :meth:`names` allows with ``n_pos`` labelled anomalies) from the other (ordered: the earlier) folds'
        predictions; and the candidate each fold took."""
        names = list(self.values)
        scores, taken = np.empty(self.rows.size), []
        for k in np.unique(self.fold):
            here, others = self.fold == k, self.fold != k
            ref = (self.fold < k) if self.ordered else others
            y = self.y[ref]
            if 0 < y.sum() < y.size:
                values = {n: v[ref] for n, v in self.values.items()}
                name = choose(y, values, self.names(n_pos), noise=noise, seed=seed)
            else:
                name = names[0]
            # scaled on the other folds' labels only: a scale fitted on the fold's own labels would place its
            # labelled anomalies among the other folds' records by where they are, and lift them above records
            # drawn at random from the same fold (the permutation test's reference)
            # (a lone predicted fold, the first of two time blocks, has no other: any scale ranks it alike)
            scale = others if others.any() else here
            a, c = fit_platt(self.values[name][scale], self.y[scale])
            z = a * self.values[name][here] + c
            if self.companion is not None:  # averaged with the companion on the same scale, as served
                a, c = fit_platt(self.companion[scale], self.y[scale])
                z = averaged(z, a * self.companion[here] + c, self.companion_weight)
            scores[here] = 1.0 / (1.0 + np.exp(-z))
            taken.append(name)
        return scores, taken


def _label(params: dict[str, Any]) -> str:
    depth = params.get("max_depth")
    if params.get("plain"):
        return "plain XGBoost"
    if depth is None:
        return "the learner"
    if depth == 1:
        return "stumps"
    return f"depth {depth}" + (f", {params['n_estimators']} trees" if "n_estimators" in params else "")


def out_of_fold(
    tuned: FineTuned,
    x: np.ndarray,
    y: np.ndarray,
    labelled: np.ndarray,
    layout: Layout,
    gate: Folds,
    *,
    init: bytes | None = None,
    step: Callable[[str], None] | None = None,
    cache: dict[tuple[bytes, bytes, int], np.ndarray] | None = None,
) -> Candidates:
    """Fit one learner per configuration (``tuned.learner.alternatives()``, or its own parameters) and gate fold,
    and build every candidate's out-of-fold values."""
    say = step or (lambda _: None)
    configs = tuned.learner.alternatives() or [{}]
    pretrained = tuned.learner.pretrain(tuned.learner_inputs(x, y, layout)) if init is None else None
    rows = gate.evaluated()
    fold = gate.fold[rows]
    learner = [np.full(rows.size, np.nan) for _ in configs]
    companion = np.zeros(rows.size)
    near = np.zeros(rows.size)
    weight = np.zeros(rows.size)
    features = x[:, : layout.n_features]
    clip = float(tuned.proximity_clip)
    for k in np.unique(fold):
        taught, here = gate.training(int(k)), fold == k
        held = rows[here]
        positives = taught[y[taught] == 1]
        if positives.size == 0:  # nothing to learn from: the rows stay unjudged
            continue
        fits = f"{len(configs)} learners" if len(configs) > 1 else "fine-tuning"
        say(f"gate {int(k) + 1}/{gate.n_folds}: {fits} on {taught.size:,} records, predicting {held.size:,}")
        for j, params in enumerate(configs):
            key = (taught.tobytes(), held.tobytes(), j)  # the same fit for another of the gate's chains
            raw = cache.get(key) if cache is not None else None
            if raw is None:
                raw = tuned.fold_predictions(
                    x, y, labelled, layout, taught, held, params, init=init, pretrained=pretrained
                )
                if cache is not None:
                    cache[key] = raw
            learner[j][here] = logit(raw)
        if tuned.companion > 0:
            key = (taught.tobytes(), held.tobytes(), -1)
            logits = cache.get(key) if cache is not None else None
            if logits is None:
                logits = companion_fold_logits(x, y, layout, tuned.max_onehot, tuned.seed, taught, held)
                if cache is not None:
                    cache[key] = logits
            companion[here] = logits
        near[here] = proximity(features[held], features[positives], clip)
        weight[here] = positives.size / (positives.size + tuned.prior)
    judged = ~np.isnan(learner[0])
    rows, fold, near, weight = rows[judged], fold[judged], near[judged], weight[judged]
    learner = [values[judged] for values in learner]
    comp = companion[judged] if tuned.companion > 0 else None
    surprisal, truth = x[rows, layout.surprisal], y[rows]
    values: dict[str, np.ndarray] = {}
    for params, logits in zip(configs, learner, strict=True):
        label = _label(params)
        values[f"{label}, prior blend"] = weight * logits + surprisal - tuned.proximity_weight * near
        values[f"{label}, learner alone"] = logits
        values[f"{label}, stack"] = _cross_fitted_stack(logits, surprisal, truth, fold, gate.ordered)
    return Candidates(
        configs, rows, fold, gate.ordered, truth, learner, surprisal, near, values, pretrained, comp, tuned.companion
    )


def _cross_fitted_stack(
    learner: np.ndarray, surprisal: np.ndarray, y: np.ndarray, fold: np.ndarray, ordered: bool
) -> np.ndarray:
    """The stack's values, each fold's from weights fitted on the other folds (``ordered``: on the earlier ones,
    whose candidates never saw the fold's labels; the first fold predicted takes both parts at weight 1)."""
    both = np.column_stack([learner, surprisal])
    stacked = np.zeros(y.size)
    for k in np.unique(fold):
        here = fold == k
        ref = (fold < k) if ordered else ~here
        if ref.any():
            a, b, c = fit_stack(both[ref], y[ref])
        else:
            a, b, c = (1.0, 1.0, 0.0) if ordered else fit_stack(both, y)
        stacked[here] = a * learner[here] + b * surprisal[here] + c
    return stacked


def choose(
    y: np.ndarray, values: dict[str, np.ndarray], order: list[str], *, noise: float = WITHIN_NOISE, seed: int = 0
) -> str:
    """The best of ``order`` by AUCPR, unless an earlier (simpler) one is within noise of it: the best beats it
    in fewer than ``noise`` of stratified bootstrap resamples (anomalies and the rest resampled separately)."""
    figures = {name: aucpr(y, values[name]) for name in order}
    best = max(order, key=lambda name: figures[name])  # the first of equals
    simpler = order[: order.index(best)]
    if not simpler:
        return best
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
    if neg.size > _MAX_NEGATIVES:
        neg = rng.choice(neg, _MAX_NEGATIVES, replace=False)
    keep = np.sort(np.r_[pos, neg])
    truth = y[keep] == 1
    weight = np.empty((_RESAMPLES, keep.size))  # the same resamples for every candidate: paired
    for part in (truth, ~truth):
        weight[:, part] = rng.multinomial(part.sum(), np.full(part.sum(), 1.0 / part.sum()), size=_RESAMPLES)
    top = _resampled_aucpr(truth, values[best][keep], weight)
    for name in simpler:
        if np.mean(top > _resampled_aucpr(truth, values[name][keep], weight)) < noise:
            return name
    return best


def _resampled_aucpr(truth: np.ndarray, score: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Average precision under each row of ``weight`` (one resample a row), ties as one threshold (as
    scikit-learn computes it)."""
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    w = weight[:, order]
    tp = np.cumsum(w * truth[order], axis=1)[:, ends]
    seen = np.cumsum(w, axis=1)[:, ends]
    steps = np.diff(tp, axis=1, prepend=0.0)
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    total = tp[:, -1]
    return np.asarray(np.sum(steps * precision, axis=1) / np.where(total > 0, total, 1.0))
