"""Numba kernels behind the detectors: pure functions on arrays, one row at a time, so a record's result
never depends on the other rows it is computed with."""

from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(cache=True, inline="always")
def _count_le(ref: np.ndarray, x: float) -> int:
    """Number of values in sorted ``ref`` that are <= x (binary search)."""
    lo, hi = 0, ref.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if ref[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(cache=True, inline="always")
def _count_lt(ref: np.ndarray, x: float) -> int:
    lo, hi = 0, ref.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if ref[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(cache=True, parallel=True)
def tail_surprisal(x: np.ndarray, sorted_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right tail surprisal ``-log P(ref <= x)`` and ``-log P(ref >= x)`` per cell.

    ``sorted_ref`` is (features, m) with each row sorted. Probabilities use (count + 1) / (m + 1) so that a
    value outside the reference gets a finite, largest surprisal.
    """
    n, d = x.shape
    m = sorted_ref.shape[1]
    left = np.empty((n, d))
    right = np.empty((n, d))
    log_m1 = math.log(m + 1.0)
    for i in nb.prange(n):
        for j in range(d):
            ref = sorted_ref[j]
            v = x[i, j]
            le = _count_le(ref, v)
            ge = m - _count_lt(ref, v)
            left[i, j] = log_m1 - math.log(le + 1.0)
            right[i, j] = log_m1 - math.log(ge + 1.0)
    return left, right


@nb.njit(cache=True, parallel=True)
def ecod_scores(left: np.ndarray, right: np.ndarray, skew_sign: np.ndarray) -> np.ndarray:
    """ECOD (Li et al. 2022): sum over features of max(left, right, skew-chosen tail)."""
    n, d = left.shape
    out = np.empty(n)
    for i in nb.prange(n):
        total = 0.0
        for j in range(d):
            ul, ur = left[i, j], right[i, j]
            s = skew_sign[j]
            uskew = ul if s < 0 else (ur if s > 0 else ul + ur)
            total += max(ul, ur, uskew)
        out[i] = total
    return out


@nb.njit(cache=True, parallel=True)
def copod_scores(left: np.ndarray, right: np.ndarray, skew_sign: np.ndarray) -> np.ndarray:
    """COPOD (Li et al. 2020): sum over features of max(skew-chosen tail, mean of both tails)."""
    n, d = left.shape
    out = np.empty(n)
    for i in nb.prange(n):
        total = 0.0
        for j in range(d):
            ul, ur = left[i, j], right[i, j]
            s = skew_sign[j]
            uskew = ul if s < 0 else (ur if s > 0 else ul + ur)
            total += max(uskew, 0.5 * (ul + ur))
        out[i] = total
    return out


@nb.njit(cache=True, parallel=True)
def hbos_scores(
    x: np.ndarray, lo: np.ndarray, width: np.ndarray, heights: np.ndarray, alpha: float, tol: float
) -> np.ndarray:
    """HBOS (Goldstein & Dengel 2012): sum over features of -log(normalised bin height + alpha).

    Values within ``tol`` bins outside the fitted range take the edge bin; further out, height 0.
    """
    n, d = x.shape
    n_bins = heights.shape[1]
    out = np.empty(n)
    for i in nb.prange(n):
        total = 0.0
        for j in range(d):
            pos = (x[i, j] - lo[j]) / width[j]
            if pos >= n_bins and pos < n_bins + tol:
                pos = n_bins - 1.0
            if pos < 0.0 and pos > -tol:
                pos = 0.0
            h = 0.0
            if pos >= 0.0 and pos < n_bins:
                h = heights[j, int(pos)]
            total += -math.log(h + alpha)
        out[i] = total
    return out


@nb.njit(cache=True, parallel=True)
def forest_depths(
    x: np.ndarray,
    roots: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    leaf_value: np.ndarray,
) -> np.ndarray:
    """Sum over trees of the isolation depth of each row (scikit-learn's definition).

    Splits compare in float32, as scikit-learn's trees do.
    """
    n = x.shape[0]
    out = np.empty(n)
    for i in nb.prange(n):
        total = 0.0
        for t in range(roots.shape[0]):
            node = roots[t]
            while left[node] >= 0:
                node = left[node] if np.float32(x[i, feature[node]]) <= threshold[node] else right[node]
            total += leaf_value[node]
        out[i] = total
    return out
