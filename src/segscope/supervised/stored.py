"""Checks of a fine-tuned layer's stored state, at load and as its scores leave it: a bundle whose weights pass
the array checks but overflow, or whose exemplars make every load build a search tree over millions of rows, is
one :class:`BundleError`, never NaN scores that silently never alert."""

from __future__ import annotations

import numpy as np

from segscope._arrays import take
from segscope.exceptions import BundleError

__all__ = ["MAX_EXEMPLARS", "bounded_weights", "checked_exemplars", "no_nan"]

#: At most this many confirmed anomalies are kept as exemplars (the "prior" blend's proximity term).
MAX_EXEMPLARS = 512

#: Blend and calibration weights past any a fit gives (they are logistic-regression coefficients on logits and
#: surprisals): products of huge ones overflow into NaN scores.
_MAX_WEIGHT = 1e6


def bounded_weights(values: np.ndarray, key: str) -> np.ndarray:
    if (np.abs(values) > _MAX_WEIGHT).any():
        raise BundleError(f"supervised: '{key}' holds weights past +-{_MAX_WEIGHT:g}; the bundle is damaged: refit it")
    return values


def checked_exemplars(arrays: dict[str, np.ndarray], width: int) -> np.ndarray:
    """The labelled anomalies the proximity term measures against: finite, at most ``MAX_EXEMPLARS`` (a search
    tree is built over them at every load)."""
    exemplars = take(arrays, "exemplars", "supervised", shape=(None, width), finite=True)
    if exemplars.shape[0] > MAX_EXEMPLARS:
        raise BundleError(
            f"supervised: {exemplars.shape[0]:,} exemplars, at most {MAX_EXEMPLARS} are kept; the bundle is damaged: "
            "refit it"
        )
    return exemplars


def no_nan(probability: np.ndarray) -> np.ndarray:
    """Scores as they leave the supervised layer: a NaN never alerts, so it is an error, not an output (what a
    damaged model's weights give: its inputs hold no NaN)."""
    bad = int(np.isnan(probability).sum())
    if bad:
        raise BundleError(
            f"the fine-tuned layer scored {bad:,} of {probability.size:,} records as NaN; the bundle is damaged: "
            "roll back or refit it"
        )
    return probability
