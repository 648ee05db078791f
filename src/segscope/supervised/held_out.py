"""Fine-tuned scores of the rows a model was fitted on, as if they were new: what its alert policy is set on."""

from __future__ import annotations

from typing import Any

import numpy as np

from segscope.supervised.base import FineTuned
from segscope.supervised.stored import no_nan

__all__ = ["held_out_proba"]


def held_out_proba(
    tuned: FineTuned,
    x: np.ndarray,
    y: np.ndarray,
    labelled: np.ndarray,
    rows: np.ndarray,
    *,
    init: bytes | None = None,
    pretrained: Any = None,
) -> np.ndarray:
    """``tuned.predict_proba`` of its fitted rows ``rows`` as if they were new: in two halves (the labelled
    anomalies split between them), each by the fitted blend over a learner with the same parameters taught on
    every row but that half, its proximity measured to the labelled anomalies taught. The fitted rows' own scores
    are pulled towards their training labels (the labelled anomalies up, the unlabelled rows down, the anomalies
    hidden among them most), so a threshold set on them does not keep its rate on new records. ``pretrained``:
    the learner's label-free pre-training to reuse (as the gate's folds do)."""
    from scipy.special import expit

    layout = tuned.layout_
    rng, half = np.random.default_rng(tuned.seed), np.zeros(rows.size, dtype=np.int64)
    for group in (y[rows] == 1, y[rows] != 1):
        half[group] = rng.permutation(int(group.sum())) % 2
    out = np.empty(rows.size)
    for k in range(2):
        held = rows[half == k]
        if not held.size:
            continue
        taught = np.ones(x.shape[0], dtype=bool)
        taught[held] = False
        raw = np.full(held.size, 0.5)  # the blend without a learner (its weight 0) reads no prediction
        if tuned.blend_[0] != 0.0:
            raw = tuned.fold_predictions(x, y, labelled, layout, taught, held, {}, init=init, pretrained=pretrained)
        exemplars = tuned._exemplars(x[:, : layout.n_features], np.flatnonzero(taught & (y == 1)))
        z = tuned.decision(raw, x[held], exemplars)
        if tuned.companion_ is not None:  # the companion taught without the half too
            companion = tuned.companion_.refit(x[taught], y[taught], layout, tuned.max_onehot)
            z = tuned.companion_.served(z, x[held], companion)
        out[half == k] = expit(z)
    return no_nan(out)
