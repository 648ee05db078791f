"""Column-wise empirical CDFs of a reference and the compiled kernels that look rows up in them (ECOD, COPOD and
the reasons' tail surprisals), one row at a time, so a record's result never depends on the other rows it is
computed with.

Each column keeps its distinct reference values with, for each rank ``r`` (how many distinct values are at most
``v``), how many reference values lie below: a look-up is a search for ``r`` and two reads of counts, from which
the tail surprisals ``log(m + 1) - log(count + 1)`` follow. The search is narrowed by a two-level index: uniform
buckets over the column's range, each split into as many sub-buckets as it holds distinct values (twice), so a
skewed or heavy-tailed column, whose values crowd into a few uniform buckets, still has about one value per
sub-bucket. A value's sub-bucket ("cell") is computed by one compiled function for building and looking up alike,
and cells are monotone in the value, so a cell's range of ranks is exact: the index only speeds the search.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

__all__ = ["ECDFTable", "build_ecdf", "ecdf_outlier_scores", "top_contributions"]

#: first-level buckets over each column's range
BUCKETS = 2048
#: sub-buckets per distinct value in a bucket
SPLIT = 2
#: fewest rows per block: each feature's table is read for a block of rows before the next feature's, so blocks
#: are as large as the threads allow (a table stays in cache for many rows: 2-3x faster than blocks of 1-2k rows)
_MIN_BLOCK = 8192
_LOG2 = math.log(2.0)


_KernelArrays = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]


class ECDFTable(NamedTuple):
    """A column-wise ECDF (exact counts, see the module docstring)."""

    sorted_ref: np.ndarray  # (features, m), each row sorted: what a bundle stores
    values: np.ndarray  # (features, K + pad): the distinct values, then +inf
    below: np.ndarray  # (features, K + pad): reference values below each distinct value (past K: all, m)
    low: np.ndarray  # (features,) smallest reference value
    high: np.ndarray  # (features,) largest reference value
    inv_width: np.ndarray  # (features,) first-level buckets per unit (0 for a constant column)
    sub_start: np.ndarray  # (features, BUCKETS + 1) first cell of each bucket (the last: the number of cells)
    cell_start: np.ndarray  # (features, cells + 1) distinct values in the cells before each cell
    steps: np.ndarray  # (features,) search steps: 2**steps exceeds the most distinct values in one cell
    tail_width: np.ndarray  # (features, 2): spread of the lowest / highest 1% of the reference

    def kernel_arrays(self) -> _KernelArrays:
        """The arrays a look-up kernel takes, in the order :func:`_lookup`'s callers unpack them."""
        return (
            self.values,
            self.below,
            self.cell_start,
            self.sub_start,
            self.steps,
            self.low,
            self.high,
            self.inv_width,
            self.tail_width,
        )


@nb.njit(cache=True, inline="always")
def _cell(v: float, low: float, inv_width: float, sub_start: np.ndarray) -> int:
    """The cell of ``v`` (``low <= v <= high``): monotone non-decreasing in ``v``."""
    t = (v - low) * inv_width
    b = min(max(int(t), 0), BUCKETS - 1)
    first = np.int64(sub_start[b])
    n = np.int64(sub_start[b + 1]) - first
    return int(first + min(max(int((t - b) * n), 0), int(n) - 1))


def _cells_of(values: np.ndarray, low: float, inv_width: float, sub_start: np.ndarray) -> np.ndarray:
    """:func:`_cell` of each of ``values`` (finite, in ``[low, high]``) by the same float operations, in NumPy: a
    bundle's load builds its tables without Numba, whose first use (about 0.4 s) is then left to a warm-up that
    runs while the input is read or the clients connect."""
    t = (values - low) * inv_width
    b = np.clip(t.astype(np.int64), 0, BUCKETS - 1)
    first = sub_start[b].astype(np.int64)
    n = sub_start[b + 1].astype(np.int64) - first
    return first + np.clip(((t - b) * n).astype(np.int64), 0, n - 1)


def build_ecdf(reference: np.ndarray) -> ECDFTable:
    """The :class:`ECDFTable` of a (rows, features) reference matrix."""
    sorted_ref = np.ascontiguousarray(np.sort(reference, axis=0).T)
    d, m = sorted_ref.shape
    low, high = sorted_ref[:, 0].copy(), sorted_ref[:, -1].copy()
    span = high - low
    with np.errstate(over="ignore"):  # a span so small that the buckets per unit overflow: one bucket
        inv_width = np.where(span > 0, BUCKETS / np.where(span > 0, span, 1.0), 0.0)
    inv_width = np.where(np.isfinite(inv_width), inv_width, 0.0)
    sub_start = np.zeros((d, BUCKETS + 1), dtype=np.int64)
    columns, cell_parts = [], []
    for j in range(d):
        values, first = np.unique(sorted_ref[j], return_index=True)
        # each value's first-level bucket, by the arithmetic of _cell (one sub-bucket per bucket so far)
        sub_start[j] = np.arange(BUCKETS + 1)
        per_bucket = np.bincount(_cells_of(values, low[j], inv_width[j], sub_start[j]), minlength=BUCKETS)
        sub_start[j] = np.concatenate([[0], np.cumsum(np.maximum(SPLIT * per_bucket, 1))])
        cells = _cells_of(values, low[j], inv_width[j], sub_start[j])
        columns.append((values, first))
        cell_parts.append(np.searchsorted(cells, np.arange(sub_start[j, -1] + 1), side="left"))
    steps = np.array([int(np.diff(part).max()).bit_length() for part in cell_parts], dtype=np.int64)
    k_max = max(values.shape[0] for values, _ in columns)
    width = k_max + 1 + (1 << int(steps.max()))  # +inf after each column's values, as far as a search reads
    table_values = np.full((d, width), np.inf)
    below = np.full((d, width), m, dtype=np.uint16 if m < 2**16 else np.int32)  # 2 bytes where they fit
    for j, (values, first) in enumerate(columns):
        table_values[j, : values.shape[0]] = values
        below[j, : values.shape[0]] = first
    # 2 bytes a count where they fit: a smaller table to keep in cache
    cell_start = np.zeros((d, max(p.shape[0] for p in cell_parts)), dtype=np.uint16 if k_max < 2**16 else np.int32)
    for j, part in enumerate(cell_parts):
        cell_start[j, : part.shape[0]] = part
    q = min(max(1, int(0.01 * (m - 1))), m - 1)  # a one-row reference: no spread (the fallback below)
    spread = np.column_stack([sorted_ref[:, q] - sorted_ref[:, 0], sorted_ref[:, -1] - sorted_ref[:, m - 1 - q]])
    fallback = np.where(span > 0, span / max(m, 1), 1.0)[:, None]
    tail_width = np.ascontiguousarray(np.where(spread > 0, spread, fallback))
    return ECDFTable(sorted_ref, table_values, below, low, high, inv_width, sub_start, cell_start, steps, tail_width)


@nb.njit(cache=True, inline="always")
def _rank(
    values: np.ndarray, cells: np.ndarray, sub_start: np.ndarray, steps: int, low: float, inv_width: float, v: float
) -> np.int64:
    """How many distinct values are at most ``v`` (``low <= v <= high``): within the cell's values, a fixed number
    of halvings with no data-dependent branch, so that the look-ups of many rows overlap."""
    r = np.int64(cells[_cell(v, low, inv_width, sub_start)])
    for s in range(steps - 1, -1, -1):
        r += (1 << s) if values[r + (1 << s) - 1] <= v else 0
    return r


@nb.njit(cache=True, inline="always")
def _counts(
    values: np.ndarray,
    below: np.ndarray,
    low: float,
    high: float,
    tail_width: np.ndarray,
    m: int,
    v: float,
    r: np.int64,
) -> tuple[float, float, float, int]:
    """:func:`_lookup` given ``v``'s rank ``r`` (not read for a value outside the reference)."""
    if not v >= low:
        return 1.0, m + 1.0, math.log1p((low - v) / tail_width[0]), -1
    if v > high:
        return m + 1.0, 1.0, math.log1p((v - high) / tail_width[1]), 1
    le = np.int64(below[r])
    lt = np.int64(below[r - 1]) if values[r - 1] == v else le  # a value in the reference counts on both sides
    return le + 1.0, m - lt + 1.0, 0.0, 0


@nb.njit(cache=True, inline="always")
def _lookup(
    values: np.ndarray,
    below: np.ndarray,
    cells: np.ndarray,
    sub_start: np.ndarray,
    steps: int,
    low: float,
    high: float,
    inv_width: float,
    tail_width: np.ndarray,
    m: int,
    v: float,
) -> tuple[float, float, float, int]:
    """One feature's (#reference <= v + 1, #reference >= v + 1, extra surprisal beyond the reference, side) of
    ``v`` (the arrays are that feature's rows of the table): for a value outside the reference range the extra is
    ``log(1 + distance / tail width)`` (without it every value past the largest seen would score as that largest
    value); side -1 below the reference (NaN too: its surprisal is NaN), 1 above it, else 0."""
    r = _rank(values, cells, sub_start, steps, low, inv_width, v) if low <= v <= high else np.int64(0)
    return _counts(values, below, low, high, tail_width, m, v, r)


@nb.njit(cache=True, inline="always")
def _ranks4(
    values: np.ndarray,
    cells: np.ndarray,
    sub_start: np.ndarray,
    steps: int,
    low: float,
    high: float,
    inv_width: float,
    v0: float,
    v1: float,
    v2: float,
    v3: float,
) -> tuple[np.int64, np.int64, np.int64, np.int64]:
    """:func:`_rank` of four values in lockstep (four independent chains of reads overlap: the fused kernel 1.4x
    faster than one look-up after another); a value outside the reference searches for ``low``, its rank unused."""
    c0 = v0 if low <= v0 <= high else low
    c1 = v1 if low <= v1 <= high else low
    c2 = v2 if low <= v2 <= high else low
    c3 = v3 if low <= v3 <= high else low
    r0 = np.int64(cells[_cell(c0, low, inv_width, sub_start)])
    r1 = np.int64(cells[_cell(c1, low, inv_width, sub_start)])
    r2 = np.int64(cells[_cell(c2, low, inv_width, sub_start)])
    r3 = np.int64(cells[_cell(c3, low, inv_width, sub_start)])
    for s in range(steps - 1, -1, -1):
        step = 1 << s
        r0 += step if values[r0 + step - 1] <= c0 else 0
        r1 += step if values[r1 + step - 1] <= c1 else 0
        r2 += step if values[r2 + step - 1] <= c2 else 0
        r3 += step if values[r3 + step - 1] <= c3 else 0
    return r0, r1, r2, r3


def _block_size(n: int) -> int:
    """Rows per block: two blocks a thread, none under ``_MIN_BLOCK`` rows (the results are the same for any)."""
    n_blocks = max(1, min(n // _MIN_BLOCK, 2 * nb.get_num_threads()))
    return max(1, -(-n // n_blocks))


@nb.njit(cache=True, parallel=True, nogil=True)
def _outlier_scores(
    x: np.ndarray,
    values: np.ndarray,
    below: np.ndarray,
    cells: np.ndarray,
    sub_start: np.ndarray,
    steps: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    inv_width: np.ndarray,
    tail_width: np.ndarray,
    m: int,
    skew_sign: np.ndarray,
    copod: bool,
    block: int,
) -> np.ndarray:
    n, d = x.shape
    log_m1 = math.log(m + 1.0)
    out = np.zeros(n)
    for b in nb.prange((n + block - 1) // block):
        for j in range(d):
            vj, bj, cj, sj, st, lw, hg, w, tw = (
                values[j],
                below[j],
                cells[j],
                sub_start[j],
                steps[j],
                low[j],
                high[j],
                inv_width[j],
                tail_width[j],
            )
            s = skew_sign[j]
            lo, hi = b * block, min(n, (b + 1) * block)
            i = lo
            while i < hi:
                if i + 4 <= hi:
                    v0, v1, v2, v3 = x[i, j], x[i + 1, j], x[i + 2, j], x[i + 3, j]
                    r0, r1, r2, r3 = _ranks4(vj, cj, sj, st, lw, hg, w, v0, v1, v2, v3)
                    _add_outlier(out, i, _counts(vj, bj, lw, hg, tw, m, v0, r0), s, copod, log_m1)
                    _add_outlier(out, i + 1, _counts(vj, bj, lw, hg, tw, m, v1, r1), s, copod, log_m1)
                    _add_outlier(out, i + 2, _counts(vj, bj, lw, hg, tw, m, v2, r2), s, copod, log_m1)
                    _add_outlier(out, i + 3, _counts(vj, bj, lw, hg, tw, m, v3, r3), s, copod, log_m1)
                    i += 4
                else:
                    _add_outlier(out, i, _lookup(vj, bj, cj, sj, st, lw, hg, w, tw, m, x[i, j]), s, copod, log_m1)
                    i += 1
    return out


@nb.njit(cache=True, inline="always")
def _add_outlier(
    out: np.ndarray, i: int, found: tuple[float, float, float, int], s: float, copod: bool, log_m1: float
) -> None:
    """Row ``i``'s ECOD or COPOD term of one feature, added to its score."""
    cl, cr, extra, side = found
    if copod:
        ul = log_m1 - math.log(cl) + (extra if side < 0 else 0.0)
        ur = log_m1 - math.log(cr) + (extra if side > 0 else 0.0)
        uskew = ul if s < 0 else (ur if s > 0 else ul + ur)
        out[i] += max(uskew, 0.5 * (ul + ur))
    elif s == 0:  # ECOD with a symmetric column: both tails add up (one log)
        out[i] += 2.0 * log_m1 - math.log(cl * cr) + extra
    else:  # max(left, right, skew tail) = the smaller tail count's surprisal (one log)
        out[i] += log_m1 - math.log(min(cl, cr)) + extra


def ecdf_outlier_scores(x: np.ndarray, table: ECDFTable, skew_sign: np.ndarray, copod: bool) -> np.ndarray:
    """ECOD (Li et al. 2022): sum over features of max(left, right, skew-chosen tail); with ``copod``,
    COPOD (Li et al. 2020): sum of max(skew-chosen tail, mean of both tails). ``x`` is (rows, features)."""
    t, block = table, _block_size(x.shape[0])
    return np.asarray(
        _outlier_scores(
            x,
            *t.kernel_arrays(),
            t.sorted_ref.shape[1],
            skew_sign,
            copod,
            block,
        )
    )


@nb.njit(cache=True, parallel=True, nogil=True)
def _top_contributions(
    x: np.ndarray,
    values: np.ndarray,
    below: np.ndarray,
    cells: np.ndarray,
    sub_start: np.ndarray,
    steps: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    inv_width: np.ndarray,
    tail_width: np.ndarray,
    m: int,
    k: int,
    skew_sign: np.ndarray,
    with_ecod: bool,
    block: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n, d = x.shape
    log_m1 = math.log(m + 1.0)
    idx = np.zeros((n, k), dtype=np.int32)
    val = np.full((n, k), -1.0)
    total = np.zeros(n)
    ecod = np.zeros(n if with_ecod else 0)
    for b in nb.prange((n + block - 1) // block):
        for j in range(d):
            vj, bj, cj, sj, st, lw, hg, w, tw = (
                values[j],
                below[j],
                cells[j],
                sub_start[j],
                steps[j],
                low[j],
                high[j],
                inv_width[j],
                tail_width[j],
            )
            sym = skew_sign[j] == 0
            lo, hi = b * block, min(n, (b + 1) * block)
            i = lo
            while i < hi:
                if i + 4 <= hi:
                    v0, v1, v2, v3 = x[i, j], x[i + 1, j], x[i + 2, j], x[i + 3, j]
                    r0, r1, r2, r3 = _ranks4(vj, cj, sj, st, lw, hg, w, v0, v1, v2, v3)
                    _add_top(idx, val, total, ecod, i, j, _counts(vj, bj, lw, hg, tw, m, v0, r0), sym, log_m1)
                    _add_top(idx, val, total, ecod, i + 1, j, _counts(vj, bj, lw, hg, tw, m, v1, r1), sym, log_m1)
                    _add_top(idx, val, total, ecod, i + 2, j, _counts(vj, bj, lw, hg, tw, m, v2, r2), sym, log_m1)
                    _add_top(idx, val, total, ecod, i + 3, j, _counts(vj, bj, lw, hg, tw, m, v3, r3), sym, log_m1)
                    i += 4
                else:
                    found = _lookup(vj, bj, cj, sj, st, lw, hg, w, tw, m, x[i, j])
                    _add_top(idx, val, total, ecod, i, j, found, sym, log_m1)
                    i += 1
    return idx, np.maximum(val, 0.0), total, ecod


@nb.njit(cache=True, inline="always")
def _add_top(
    idx: np.ndarray,
    val: np.ndarray,
    total: np.ndarray,
    ecod: np.ndarray,
    i: int,
    j: int,
    found: tuple[float, float, float, int],
    symmetric: bool,
    log_m1: float,
) -> None:
    """Feature ``j``'s contribution to row ``i``: its total, its ECOD score (when ``ecod`` has rows), its
    descending top-k list."""
    cl, cr, extra, _ = found
    u = log_m1 - math.log(min(cl, cr)) + extra
    if ecod.shape[0]:
        ecod[i] += 2.0 * log_m1 - math.log(cl * cr) + extra if symmetric else u
    c = max(u - _LOG2, 0.0)
    total[i] += c
    k = val.shape[1]
    if c > val[i, k - 1]:  # insert into the row's descending top-k list
        pos = k - 1
        while pos > 0 and val[i, pos - 1] < c:
            val[i, pos] = val[i, pos - 1]
            idx[i, pos] = idx[i, pos - 1]
            pos -= 1
        val[i, pos] = c
        idx[i, pos] = j


def top_contributions(
    x: np.ndarray, table: ECDFTable, k: int, skew_sign: np.ndarray, with_ecod: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the ``k`` features with the largest two-sided tail surprisal above the median's (log 2),
    their contributions (descending) and the row's total contribution; with ``with_ecod`` also the ECOD score
    from the same look-ups (the pipeline fuses the two when ECOD and the reasons share a reference)."""
    t, block = table, _block_size(x.shape[0])
    return _top_contributions(
        x,
        *t.kernel_arrays(),
        t.sorted_ref.shape[1],
        k,
        skew_sign,
        with_ecod,
        block,
    )
