"""Calibration of raw detector scores against the fit-time reference distribution.

A raw score ``s`` maps to ``p(s)``, the share of reference records scoring at most ``s`` (interpolated), so
scores of different detectors become comparable. Above the reference's 98th percentile the empirical CDF is
replaced by an exponential tail fitted to the reference excesses (peaks over threshold, as in SPOT), which keeps
the map strictly increasing beyond the largest reference score: extreme records stay ranked instead of all
tying at 1.0. Work is done in *surprisal* ``-log(1 - p)``, which stays finite and linear in the tail.
"""

from __future__ import annotations

import math
from typing import Self

import numba as nb
import numpy as np

from segscope._arrays import take
from segscope.exceptions import BundleError, NotFittedError
from segscope.unsupervised import _ecdf

__all__ = ["ReferenceCalibrator"]

_GRID_POINTS = 2049
_TAIL_P = 0.98


class ReferenceCalibrator:
    """Fit on reference raw scores; :meth:`surprisal` and :meth:`probability` map new raw scores."""

    def __init__(self, *, tail_p: float = _TAIL_P, grid_points: int = _GRID_POINTS) -> None:
        self.tail_p = tail_p
        self.grid_points = grid_points

    def fit(self, reference: np.ndarray) -> Self:
        ref = np.sort(np.asarray(reference, dtype=np.float64))
        ref = ref[np.isfinite(ref)]
        n = ref.shape[0]
        if n == 0:
            raise ValueError("calibration needs at least one finite reference score")
        # ECDF at each distinct value: share of reference <= value (last index of a run of ties)
        values, first = np.unique(ref, return_index=True)
        last = np.append(first[1:], n) - 1
        probs = (last + 1.0) / (n + 1.0)
        if values.shape[0] > self.grid_points:
            keep = np.unique(np.linspace(0, values.shape[0] - 1, self.grid_points).round().astype(np.int64))
            values, probs = values[keep], probs[keep]
        tail_idx = int(np.searchsorted(probs, self.tail_p, side="left"))
        tail_idx = min(tail_idx, values.shape[0] - 1)
        q_t, p_t = float(values[tail_idx]), float(probs[tail_idx])
        excess = ref[ref > q_t] - q_t
        scale = float(excess.mean()) if excess.size else 0.0
        if not scale > 0:
            spread = float(ref[-1] - ref[0])
            scale = spread * 0.05 if spread > 0 else max(abs(q_t) * 1e-6, 1e-12)
        self.values_, self.probs_ = values, probs
        self.index_ = _ecdf.build_ecdf(values[:, None])
        self.tail_q_, self.tail_p_, self.tail_scale_ = q_t, p_t, scale
        return self

    def surprisal(self, raw: np.ndarray) -> np.ndarray:
        """``-log(1 - p(raw))``: 0 for the lowest scores, growing without bound in the tail."""
        if not hasattr(self, "values_"):
            raise NotFittedError("ReferenceCalibrator is not fitted; call fit(reference_scores) first")
        raw = np.ascontiguousarray(raw, dtype=np.float64).reshape(-1)
        values, probs = np.ascontiguousarray(self.values_), np.ascontiguousarray(self.probs_)
        index = self.index_
        body, excess, bad = _interpolate(
            raw,
            values,
            probs,
            (index.values[0], index.cell_start[0], index.sub_start[0], int(index.steps[0]), float(index.inv_width[0])),
            self.tail_q_,
            self.tail_p_,
            self.tail_scale_,
        )
        if bad:  # np.interp's slope overflows between reference values a subnormal apart: interpolate by share
            rows = np.isnan(body) & ~np.isnan(raw)
            body[rows] = np.minimum(self._interpolate_by_share(raw[rows]), self.tail_p_)
        out = -np.log1p(-body)  # NumPy's log1p, as for the reference
        out += excess
        return np.asarray(out)

    def _interpolate_by_share(self, raw: np.ndarray) -> np.ndarray:
        """The ECDF between reference values as ``p0 + t * (p1 - p0)``, ``t`` the share of the gap covered."""
        j = np.clip(np.searchsorted(self.values_, raw, side="right") - 1, 0, max(self.values_.shape[0] - 2, 0))
        k = np.minimum(j + 1, self.values_.shape[0] - 1)
        gap = self.values_[k] - self.values_[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.clip(np.where(gap > 0, (raw - self.values_[j]) / gap, 1.0), 0.0, 1.0)
        body = self.probs_[j] + share * (self.probs_[k] - self.probs_[j])
        return np.asarray(np.where(raw < self.values_[0], 0.0, body))

    def probability(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated score in [0, 1]."""
        return np.asarray(-np.expm1(-self.surprisal(raw)))

    def to_state(self) -> dict[str, np.ndarray]:
        return {
            "values": self.values_,
            "probs": self.probs_,
            "tail": np.array([self.tail_q_, self.tail_p_, self.tail_scale_]),
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray]) -> ReferenceCalibrator:
        cal = cls()
        cal.values_ = take(arrays, "values", "calibration", shape=(None,), finite=True, min_size=1)
        cal.probs_ = take(arrays, "probs", "calibration", shape=cal.values_.shape)
        cal.index_ = _ecdf.build_ecdf(cal.values_[:, None])
        cal.tail_q_, cal.tail_p_, cal.tail_scale_ = (float(v) for v in take(arrays, "tail", "calibration", shape=(3,)))
        tail_ok = np.isfinite(cal.tail_q_) and np.isfinite(cal.tail_scale_) and cal.tail_scale_ > 0
        if not (tail_ok and 0 <= cal.tail_p_ < 1 and ((cal.probs_ >= 0) & (cal.probs_ <= 1)).all()):
            raise BundleError("calibration: probabilities or tail out of range; the bundle is damaged: refit it")
        return cal


@nb.njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _interpolate(
    raw: np.ndarray,
    values: np.ndarray,
    probs: np.ndarray,
    index: tuple[np.ndarray, np.ndarray, np.ndarray, int, float],
    tail_q: float,
    tail_p: float,
    tail_scale: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The two parts of :meth:`ReferenceCalibrator.surprisal` in one pass: the ECDF ``np.interp(raw, values, probs,
    left=0)`` (its formula, step for step) capped at ``tail_p``, and the exponential tail's excess above ``tail_q``
    (0 below it). Rows whose interpolation is not finite are NaN, and counted (the caller redoes them). Where
    ``x`` falls among the values is found through ``index`` (the values' own ECDF table, its arrays as
    ``_ecdf._rank`` takes them): 5x faster than a binary search over the whole grid."""
    n, k = raw.shape[0], values.shape[0]
    distinct, cells, sub_start, steps, inv_width = index
    body = np.empty(n)
    excess = np.zeros(n)
    bad = 0
    for i in nb.prange(n):
        x = raw[i]
        if math.isnan(x):
            body[i] = x
            continue
        if x > tail_q:  # the tail: capped, so that a degenerate (near-constant) reference never overflows
            body[i] = tail_p
            excess[i] = min((x - tail_q) / tail_scale, 1e12)
            continue
        if x < values[0]:
            p = 0.0
        elif x >= values[k - 1]:
            p = probs[k - 1]
        else:
            # how many values are <= x, less one (kept inside the grid should a damaged bundle's be unsorted)
            j = min(max(int(_ecdf._rank(distinct, cells, sub_start, steps, values[0], inv_width, x)) - 1, 0), k - 2)
            if values[j] == x:
                p = probs[j]
            else:
                slope = (probs[j + 1] - probs[j]) / (values[j + 1] - values[j])
                p = slope * (x - values[j]) + probs[j]
                if math.isnan(p):
                    p = slope * (x - values[j + 1]) + probs[j + 1]
                    if math.isnan(p) and probs[j] == probs[j + 1]:
                        p = probs[j]
        if math.isfinite(p):
            body[i] = min(p, tail_p)
        else:
            body[i] = math.nan
            bad += 1
    return body, excess, bad
