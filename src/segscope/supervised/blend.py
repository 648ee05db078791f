"""The pieces a blend is made of (logits, the proximity to labelled anomalies, the stack, Platt scaling) and a
choice made before fitting (:class:`Chosen`): used by :class:`~segscope.supervised.base.FineTuned` and by the
choice made on the promotion gate's folds (:mod:`segscope.supervised.selection`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NO_CLIP", "Chosen", "aucpr", "fit_platt", "fit_stack", "logit", "nearest", "proximity"]


@dataclass(frozen=True)
class Chosen:
    """The learner's parameters and the blend, chosen before :meth:`FineTuned.fit` (on the promotion gate's
    folds): ``rows`` predicted out of fold, the learner's logit and the proximity to the labelled anomalies it
    was not taught on at those rows (what the blend's weights are fitted on), every candidate's out-of-fold
    AUCPR, how the choice was made, a label-free pre-training to reuse (or None), and the plain XGBoost
    companion's out-of-fold logits at ``rows`` (or None: no companion; :mod:`segscope.supervised.companion`)."""

    params: dict[str, Any]
    blend: str
    rows: np.ndarray
    learner: np.ndarray
    proximity: np.ndarray
    figures: dict[str, float]
    by: str
    pretrained: Any = None
    companion: np.ndarray | None = None


#: Bundles fine-tuned before the proximity clip measured distances on the prepared features as they are.
NO_CLIP = np.inf


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.asarray(np.log(p / (1 - p)))


def nearest(x: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row to the nearest exemplar (inf without exemplars)."""
    if exemplars.shape[0] == 0:
        return np.full(x.shape[0], np.inf)
    from sklearn.neighbors import KDTree

    dist, _ = KDTree(exemplars).query(x, k=1)
    return np.asarray(dist[:, 0])


def proximity(x: np.ndarray, exemplars: np.ndarray, clip: float = NO_CLIP) -> np.ndarray:
    """log(1 + distance to the nearest exemplar), both clipped to +-``clip``; 0 without exemplars."""
    if np.isfinite(clip):
        x, exemplars = np.clip(x, -clip, clip), np.clip(exemplars, -clip, clip)
    distance = nearest(x, exemplars)
    return np.asarray(np.where(np.isfinite(distance), np.log1p(distance), 0.0))


def aucpr(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, score)) if 0 < y.sum() < y.size else 0.0


def fit_stack(both: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logistic regression of y on (logit(learner), surprisal) with both weights positive: a part that would
    get a weight <= 0 is left out (with one label the learner says nothing, and the stack is the surprisal)."""
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():
        return np.array([1.0, 0.0, 0.0])
    fit = LogisticRegression(C=1.0).fit(both, y)
    if (fit.coef_[0] > 0).all():
        return np.array([*fit.coef_[0], fit.intercept_[0]])
    keep = int(np.argmax(fit.coef_[0]))  # the part that still raises the score
    a, c = fit_platt(both[:, keep], y)
    return np.array([a, 0.0, c]) if keep == 0 else np.array([0.0, a, c])


def fit_platt(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: a regularised logistic regression of y on one score, slope kept in (0, 10] so the
    calibration always keeps the ranking and cannot blow up on separable (tiny) label sets."""
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():
        return 1.0, 0.0
    fit = LogisticRegression(C=1.0).fit(score.reshape(-1, 1), y)
    return float(np.clip(fit.coef_[0, 0], 1e-3, 10.0)), float(fit.intercept_[0])
