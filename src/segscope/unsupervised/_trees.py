"""Shared code for the compiled trees (the isolation forest and the segmenter's distilled forest)."""

from __future__ import annotations

import numpy as np

__all__ = ["float32_thresholds"]


def float32_thresholds(threshold: np.ndarray) -> np.ndarray:
    """scikit-learn's float64 split thresholds as float32 values that split float32 inputs identically.

    scikit-learn compares float32 features with float64 thresholds: ``x <= t`` holds exactly when
    ``x <= t`` rounded *down* to float32, so the rounding must never go up.
    """
    thr32 = threshold.astype(np.float32)
    return np.asarray(
        np.where(thr32.astype(np.float64) > threshold, np.nextafter(thr32, np.float32(-np.inf)), thr32),
        dtype=np.float32,
    )
