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
from segscope.unsupervised._ecdf import ECDFTable
from segscope.unsupervised.calibrate import ReferenceCalibrator
from segscope.unsupervised.detect import Detector, ECODDetector

__all__ = ["AnomalyEnsemble", "SegmentCalibration"]


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

    def combine_surprisal(self, surprisal: np.ndarray) -> np.ndarray:
        """Combine per-detector surprisals (rows x detectors) into one raw ensemble score per row."""
        return self._combine(surprisal)

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

    # ------------------------------------------------------------------ shared ECDF
    def ecod_index(self) -> int | None:
        """Index of the ECOD detector, whose ECDF look-ups the reasons can share (one fused pass)."""
        return next((i for i, d in enumerate(self.detectors) if isinstance(d, ECODDetector)), None)

    def _ecod(self) -> ECODDetector | None:
        index = self.ecod_index()
        detector = self.detectors[index] if index is not None else None
        return detector if isinstance(detector, ECODDetector) else None

    def shared_ecdf(self) -> ECDFTable | None:
        ecod = self._ecod()
        return ecod.ecdf_ if ecod is not None else None

    def ecod_skew(self) -> np.ndarray | None:
        ecod = self._ecod()
        return ecod.skew_sign_ if ecod is not None else None

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, np.ndarray]:
        """The calibrators (one per detector, then the ensemble's) and the reference scores, as arrays; each
        detector stores its own state."""
        out: dict[str, np.ndarray] = {}
        for i, cal in enumerate([*self.calibrators_, self.final_]):
            out.update({f"{i}_{key}": value for key, value in cal.to_state().items()})
        out["reference_scores"] = self.reference_scores_
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state` wrote (the detectors must be loaded already)."""
        calibrators = [ReferenceCalibrator.from_state(_unpack(arrays, str(i))) for i in range(len(self.detectors) + 1)]
        self.calibrators_, self.final_ = calibrators[:-1], calibrators[-1]
        self.reference_scores_ = arrays["reference_scores"]


def _unpack(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k.split("_", 1)[1]: v for k, v in arrays.items() if k.split("_", 1)[0] == prefix}


class SegmentCalibration:
    """Segment-aware scoring: the ensemble's combined score calibrated against each segment's own members (segments
    with fewer than ``min_size`` members, and noise, keep the global calibration)."""

    def __init__(self, *, min_size: int = 50) -> None:
        self.min_size = min_size

    def fit(self, ensemble: AnomalyEnsemble, x: np.ndarray, segments: np.ndarray) -> SegmentCalibration:
        combined = ensemble.combine_surprisal(ensemble.detector_surprisal(x))
        self.calibrators_ = {
            int(seg): ReferenceCalibrator().fit(combined[segments == seg])
            for seg in np.unique(segments)
            if seg >= 0 and (segments == seg).sum() >= self.min_size
        }
        return self

    def apply(
        self, ensemble: AnomalyEnsemble, segments: np.ndarray, anomaly: np.ndarray, parts: np.ndarray
    ) -> np.ndarray:
        """``anomaly_score`` with members of calibrated segments re-scored; ``parts``' last column (the
        ensemble surprisal the learner sees) is updated in place to match."""
        if not self.calibrators_:
            return anomaly
        combined = ensemble.combine_surprisal(parts[:, :-1])
        anomaly = anomaly.copy()
        for seg, calibrator in self.calibrators_.items():
            rows = segments == seg
            if rows.any():
                surprisal = calibrator.surprisal(combined[rows])
                parts[rows, -1] = surprisal
                anomaly[rows] = -np.expm1(-surprisal)
        return anomaly

    def to_state(self) -> dict[str, np.ndarray]:
        calibrators = self.calibrators_.items()
        return {f"{seg}_{key}": value for seg, cal in calibrators for key, value in cal.to_state().items()}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray]) -> SegmentCalibration:
        out = cls()
        segments = sorted({int(k.split("_", 1)[0]) for k in arrays})
        out.calibrators_ = {seg: ReferenceCalibrator.from_state(_unpack(arrays, str(seg))) for seg in segments}
        return out
