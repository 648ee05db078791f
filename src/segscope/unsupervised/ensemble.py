"""The unsupervised anomaly layer: detectors, each calibrated against the fit-time reference, combined.

Per-detector scores become surprisals ``-log(1 - p)`` (see :mod:`.calibrate`); the ensemble averages them
(or takes the max) and calibrates the result once more against the reference, so ``anomaly_score`` is "the
share of the history this record is more anomalous than", with a fitted tail beyond the history's extremes.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from segscope._typing import CombineMethod
from segscope.exceptions import NotFittedError
from segscope.unsupervised.calibrate import ReferenceCalibrator
from segscope.unsupervised.detect import Detector

__all__ = ["AnomalyEnsemble"]


class AnomalyEnsemble:
    """Fit detectors on the prepared matrix; :meth:`score` gives ``anomaly_score`` in [0, 1]."""

    def __init__(self, detectors: list[Detector], *, combine: CombineMethod = "mean") -> None:
        self.detectors = detectors
        self.combine = combine

    def fit(self, x: np.ndarray) -> Self:
        self.calibrators_ = []
        for det in self.detectors:
            det.fit_matrix(x)
            self.calibrators_.append(ReferenceCalibrator().fit(det.reference_scores_))
        reference = np.column_stack(
            [cal.surprisal(det.reference_scores_) for det, cal in zip(self.detectors, self.calibrators_, strict=True)]
        )
        self.final_ = ReferenceCalibrator().fit(self._combine(reference))
        self.reference_scores_ = self.final_.probability(self._combine(reference))
        return self

    def _combine(self, surprisal: np.ndarray) -> np.ndarray:
        if self.combine == "max":
            return np.asarray(surprisal.max(axis=1))
        return np.asarray(surprisal.mean(axis=1))

    def detector_surprisal(self, x: np.ndarray, raw: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """Calibrated surprisal of each detector (rows x detectors); ``raw`` holds raw scores already computed
        for some detectors (by index)."""
        if not hasattr(self, "final_"):
            raise NotFittedError("AnomalyEnsemble is not fitted; call fit(matrix) first")
        raw = raw or {}
        return np.column_stack(
            [
                cal.surprisal(raw[i] if i in raw else det.score_matrix(x))
                for i, (det, cal) in enumerate(zip(self.detectors, self.calibrators_, strict=True))
            ]
        )

    def score(self, x: np.ndarray, raw: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """``anomaly_score`` in [0, 1] for each row of the prepared matrix."""
        return self.score_with_parts(x, raw)[0]

    def score_with_parts(
        self, x: np.ndarray, raw: dict[int, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``anomaly_score`` and the parts behind it: each detector's calibrated surprisal and the ensemble's
        (rows x detectors + 1), which the supervised layer uses as features."""
        surprisal = self.detector_surprisal(x, raw)
        final = self.final_.surprisal(self._combine(surprisal))
        return np.asarray(-np.expm1(-final)), np.column_stack([surprisal, final])
