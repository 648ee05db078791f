"""Numba kernels behind the detectors: pure functions on arrays, one row at a time, so a record's result
never depends on the other rows it is computed with."""

from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(cache=True, parallel=True, nogil=True)
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


_FOREST_BLOCK = 256


@nb.njit(cache=True, parallel=True, nogil=True)
def forest_depths(
    x: np.ndarray, feature: np.ndarray, threshold: np.ndarray, leaf_value: np.ndarray, depth: int
) -> np.ndarray:
    """Sum over trees of each row's isolation depth, on complete binary trees of fixed ``depth``.

    Trees are stored heap-ordered (children of node i at 2i+1, 2i+2), ``feature``/``threshold`` shaped
    (trees, 2**depth - 1), ``leaf_value`` (trees, 2**depth). A fixed number of branch-free steps per tree and
    blocks of rows walking one tree at a time keep the walk fast. ``x`` and ``threshold`` are float32, as
    scikit-learn's trees compare. ``feature`` is unsigned and the walk counts nodes in unsigned integers: numba
    adds a negative-index wrap-around to every signed index, which costs a third of the walk.
    """
    n = x.shape[0]
    n_trees = feature.shape[0]
    n_internal = np.uint64(feature.shape[1])
    one, two, root = np.uint64(1), np.uint64(2), np.uint64(0)
    out = np.zeros(n)
    n_blocks = (n + _FOREST_BLOCK - 1) // _FOREST_BLOCK
    for b in nb.prange(n_blocks):
        lo = b * _FOREST_BLOCK
        hi = min(n, lo + _FOREST_BLOCK)
        for t in range(n_trees):
            feat = feature[t]
            thr = threshold[t]
            leaves = leaf_value[t]
            i = lo
            while i + 8 <= hi:  # eight independent walks at once hide the load latency of each step
                r0, r1, r2, r3 = x[i], x[i + 1], x[i + 2], x[i + 3]
                r4, r5, r6, r7 = x[i + 4], x[i + 5], x[i + 6], x[i + 7]
                n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = root
                for _ in range(depth):
                    n0 = two * n0 + one + np.uint64(r0[feat[n0]] > thr[n0])
                    n1 = two * n1 + one + np.uint64(r1[feat[n1]] > thr[n1])
                    n2 = two * n2 + one + np.uint64(r2[feat[n2]] > thr[n2])
                    n3 = two * n3 + one + np.uint64(r3[feat[n3]] > thr[n3])
                    n4 = two * n4 + one + np.uint64(r4[feat[n4]] > thr[n4])
                    n5 = two * n5 + one + np.uint64(r5[feat[n5]] > thr[n5])
                    n6 = two * n6 + one + np.uint64(r6[feat[n6]] > thr[n6])
                    n7 = two * n7 + one + np.uint64(r7[feat[n7]] > thr[n7])
                out[i] += leaves[n0 - n_internal]
                out[i + 1] += leaves[n1 - n_internal]
                out[i + 2] += leaves[n2 - n_internal]
                out[i + 3] += leaves[n3 - n_internal]
                out[i + 4] += leaves[n4 - n_internal]
                out[i + 5] += leaves[n5 - n_internal]
                out[i + 6] += leaves[n6 - n_internal]
                out[i + 7] += leaves[n7 - n_internal]
                i += 8
            while i < hi:
                node = root
                row = x[i]
                for _ in range(depth):
                    node = two * node + one + np.uint64(row[feat[node]] > thr[node])
                out[i] += leaves[node - n_internal]
                i += 1
    return out


@nb.njit(cache=True, parallel=True, nogil=True)
def forest_class_proba(
    x: np.ndarray,
    roots: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    value: np.ndarray,
) -> np.ndarray:
    """Mean class distribution over the trees of a classification forest, per row.

    Nodes of all trees are concatenated (``roots`` = each tree's first node; ``left < 0`` marks a leaf);
    ``value`` is (nodes, classes), each leaf's class distribution. Splits compare in float32 as scikit-learn's.
    """
    n = x.shape[0]
    n_classes = value.shape[1]
    n_trees = roots.shape[0]
    out = np.zeros((n, n_classes))
    for i in nb.prange(n):
        for t in range(n_trees):
            node = roots[t]
            while left[node] >= 0:
                node = left[node] if x[i, feature[node]] <= threshold[node] else right[node]
            for c in range(n_classes):
                out[i, c] += value[node, c]
        for c in range(n_classes):
            out[i, c] /= n_trees
    return out


@nb.njit(cache=True, nogil=True, parallel=True)
def drift_counts(values: np.ndarray, edges: np.ndarray, low: float, high: float) -> tuple[np.ndarray, int]:
    """One pass over a column for the drift guard: counts per bin (``len(edges) + 1`` bins, a value's bin being
    ``searchsorted(edges, v, side='left')``: how many edges lie below it), then missing (NaN); and how many
    present values fall outside ``[low, high]``. Blocks of rows in parallel, each edge compared with a block's
    values at once (a loop that vectorises; NaN compares below no edge, so it lands in bin 0 and is moved out)."""
    n_edges, n = edges.shape[0], values.shape[0]
    block = 4096
    blocks = (n + block - 1) // block
    counts = np.zeros((blocks, n_edges + 2), dtype=np.int64)
    outside = np.zeros(blocks, dtype=np.int64)
    for b in nb.prange(blocks):
        start = b * block
        size = min(block, n - start)
        bins = np.zeros(size, dtype=np.int64)
        for e in range(n_edges):
            edge = edges[e]
            for i in range(size):
                bins[i] += edge < values[start + i]
        missing = 0
        out = 0
        for i in range(size):
            v = values[start + i]
            missing += v != v
            out += (v < low) | (v > high)
        for i in range(size):
            counts[b, bins[i]] += 1
        counts[b, 0] -= missing
        counts[b, n_edges + 1] = missing
        outside[b] = out
    return counts.sum(axis=0), int(outside.sum())


# reassociation lets the sum over features vectorise; it is fixed at compile time, so still the same per row
@nb.njit(cache=True, parallel=True, nogil=True, fastmath={"reassoc", "contract"})
def nearest_distances(
    x: np.ndarray, reference: np.ndarray, projection: np.ndarray, axis: np.ndarray, k: int
) -> np.ndarray:
    """Euclidean distances from each row of ``x`` to its ``k`` nearest reference rows, ascending (rows x k).

    Exact, one row at a time. The reference is sorted by its ``projection`` on one ``axis`` (its first principal
    direction); the search walks outwards from the row's own projection, nearer side first, and stops when the
    gap along the axis alone exceeds the k-th best distance (it bounds every distance beyond). Same sums in the
    same order whatever the batch."""
    n, d = x.shape
    m = reference.shape[0]
    out = np.empty((n, k))
    for i in nb.prange(n):
        best = np.full(k, np.inf)
        q = 0.0
        for f in range(d):
            q += x[i, f] * axis[f]
        hi = np.searchsorted(projection, q)
        lo = hi - 1
        while lo >= 0 or hi < m:
            gap_lo = q - projection[lo] if lo >= 0 else np.inf
            gap_hi = projection[hi] - q if hi < m else np.inf
            if gap_lo <= gap_hi:
                j, gap = lo, gap_lo
                lo -= 1
            else:
                j, gap = hi, gap_hi
                hi += 1
            if gap * gap > best[k - 1]:
                break
            total = 0.0
            for f in range(d):
                diff = x[i, f] - reference[j, f]
                total += diff * diff
            if total < best[k - 1]:
                pos = k - 1
                while pos > 0 and best[pos - 1] > total:
                    best[pos] = best[pos - 1]
                    pos -= 1
                best[pos] = total
        for c in range(k):
            out[i, c] = math.sqrt(best[c])
    return out


@nb.njit(cache=True, parallel=True, nogil=True)
def cblof_scores(x: np.ndarray, centres: np.ndarray, large: np.ndarray, n_clusters: int) -> np.ndarray:
    """CBLOF (He et al. 2003, unweighted as PyOD's default), averaged over clusterings: ``centres`` stacks
    ``n_clusters`` centres per clustering. A row in a large cluster scores its distance to that centre; in a small
    one, its distance to the nearest large centre of the same clustering."""
    n, d = x.shape
    n_bags = centres.shape[0] // n_clusters
    out = np.empty(n)
    for i in nb.prange(n):
        total = 0.0
        for b in range(n_bags):
            own, own_dist, nearest_large = -1, np.inf, np.inf
            for c in range(b * n_clusters, (b + 1) * n_clusters):
                dist = 0.0
                for f in range(d):
                    diff = x[i, f] - centres[c, f]
                    dist += diff * diff
                if dist < own_dist:
                    own, own_dist = c, dist
                if large[c] and dist < nearest_large:
                    nearest_large = dist
            total += math.sqrt(own_dist if large[own] else nearest_large)
        out[i] = total / n_bags
    return out


_POW10 = np.array([10.0**k for k in range(300)])  # exact up to 1e22, then within half an ulp
#: "00" to "99": two digits at a time
_PAIRS = np.array([ord(c) for k in range(100) for c in f"{k:02d}"], dtype=np.uint8)
_LOG10_2 = math.log10(2.0)


@nb.njit(cache=True, inline="always")
def _write_digits(buf: np.ndarray, pos: int, u: np.uint64) -> int:
    """The decimal digits of ``u`` at ``buf[pos:]``; the position after them."""
    ten = np.uint64(10)
    count, rest = 1, u // ten
    while rest > 0:
        rest //= ten
        count += 1
    for q in range(count - 1, -1, -1):
        buf[pos + q] = np.uint8(48) + np.uint8(u % ten)
        u //= ten
    return pos + count


@nb.njit(cache=True, inline="always")
def _scaled(a: float, e: int) -> float:
    """``a * 10**(5 - e)`` in one rounding (a multiplication or a division by an exact power while it is exact)."""
    k = 5 - e
    scaled: float = a * _POW10[k] if k >= 0 else a / _POW10[-k]  # 1e-290 < a < 1e290: |k| < 300
    return scaled


@nb.njit(cache=True, inline="always")
def _six_digits(a: float) -> tuple[int, int, bool]:
    """``a > 0`` rounded to six significant digits: (N, e) with ``a ~ N * 10**(e - 5)``, 100000 <= N <= 999999,
    and False when ``a`` lies so near a tie that float arithmetic cannot tell the correct rounding. The decimal
    exponent comes from the binary one (``a`` in [2**(b-1), 2**b)), which leaves two candidates: no logarithm."""
    b = math.frexp(a)[1]
    e = math.floor((b - 1) * _LOG10_2)  # the exponent is e or e + 1
    scaled = _scaled(a, e)
    if scaled >= 1000000.0:
        e += 1
        scaled = _scaled(a, e)
    whole = math.floor(scaled)
    frac = scaled - whole
    n = int(whole) + (1 if frac > 0.5 else 0)
    if n == 1000000:
        n = 100000
        e += 1
    return n, e, abs(frac - 0.5) > 1e-6


@nb.njit(cache=True, inline="always")
def _format_one(out: np.ndarray, v: float) -> int:
    """``v`` as reasons print it (see :func:`format_numbers`) at ``out[0:]``: its length, or -1 when it is left
    for Python."""
    a = abs(v)
    zero, point = np.uint8(48), np.uint8(46)
    if v != v:
        out[0], out[1], out[2], out[3] = 110, 117, 108, 108  # null
        return 4
    pos = 0
    if a < 1e15 and v == math.floor(v):
        if v < 0:
            out[0] = 45
            pos = 1
        return _write_digits(out, pos, np.uint64(a))
    if not (1e-290 < a < 1e290):
        return -1
    six, e, exact = _six_digits(a)
    if not exact:
        return -1
    if v < 0:
        out[0] = 45
        pos = 1
    # the six digits at out[pos + 18:] (scratch past the longest form), two at a time
    d = pos + 18
    hi, lo = six // 10000, six % 10000
    out[d], out[d + 1] = _PAIRS[2 * hi], _PAIRS[2 * hi + 1]
    out[d + 2], out[d + 3] = _PAIRS[2 * (lo // 100)], _PAIRS[2 * (lo // 100) + 1]
    out[d + 4], out[d + 5] = _PAIRS[2 * (lo % 100)], _PAIRS[2 * (lo % 100) + 1]
    last = 5  # the last digit that is not a trailing zero
    while last > 0 and out[d + last] == zero:
        last -= 1
    if a < 1e-4 and e == -4:  # rounded up to 0.0001: %g writes it without an exponent
        out[pos], out[pos + 1], out[pos + 2], out[pos + 3], out[pos + 4] = 48, 46, 48, 48, 48
        out[pos + 5] = out[d]
        return pos + 6
    if a < 1e-4 or a >= 1e15:  # %g's exponent form
        out[pos] = out[d]
        pos += 1
        if last > 0:
            out[pos] = point
            pos += 1
            for q in range(1, last + 1):
                out[pos] = out[d + q]
                pos += 1
        out[pos] = 101  # e
        out[pos + 1] = 45 if e < 0 else 43
        pos += 2
        if abs(e) < 10:
            out[pos] = zero
            pos += 1
        return _write_digits(out, pos, np.uint64(abs(e)))
    before = e + 1  # digits before the point
    if before >= 6:
        for q in range(6):
            out[pos + q] = out[d + q]
        pos += 6
        for _ in range(before - 6):
            out[pos] = zero
            pos += 1
        out[pos], out[pos + 1] = point, zero
        return pos + 2
    # fixed-length writes whatever the digits (the lengths vary from value to value, and branches on them would
    # be mispredicted): 1 <= before <= 5 writes seven bytes, the point among the digits; below 1, "0.000" and
    # then the six digits from where the zeros end (a >= 1e-4: at most three zeros)
    if before >= 1:
        for q in range(7):
            src = q - (1 if q > before else 0)
            out[pos + q] = point if q == before else out[d + src]
        return pos + max(last, before) + 2
    out[pos], out[pos + 1], out[pos + 2], out[pos + 3], out[pos + 4] = 48, 46, 48, 48, 48
    start = pos + 2 - before
    for q in range(6):
        out[start + q] = out[d + q]
    return start + last + 1


@nb.njit(cache=True, nogil=True, parallel=True)
def format_numbers(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numbers as reasons print them, as the buffers of an Arrow string-view array (16-byte views, strings of up
    to 12 bytes inside them, longer ones in the data buffer), and a mask of the values left for Python's
    formatting (infinities, magnitudes past 1e290 either way, near-ties; their views are empty): NaN as ``null``;
    whole numbers under 1e15 as integers; under 1e-4 or from 1e15 as ``%.6g``; others as the decimal of their six
    significant digits, ``.0`` when that is whole (``0.000123457``, ``123457.0``, ``-2.5``). Blocks of values are
    formatted in parallel; the few longer than 12 bytes are then laid into the data buffer in order."""
    n = values.shape[0]
    views = np.zeros((n, 16), dtype=np.uint8)
    longer = np.empty((n, 24), dtype=np.uint8)  # the longest form, '-0.000123457' or '-999999000000000.0', fits
    lengths = np.zeros(n, dtype=np.int64)  # of the forms longer than 12 bytes; 0 for the others
    left = np.zeros(n, dtype=np.bool_)
    block = 4096
    for b in nb.prange((n + block - 1) // block):
        scratch = np.empty(32, dtype=np.uint8)
        for i in range(b * block, min(n, (b + 1) * block)):
            length = _format_one(scratch, values[i])
            if length < 0:
                left[i] = True
                continue
            views[i, 0] = np.uint8(length)  # little-endian int32: lengths are under 256
            if length <= 12:
                for q in range(length):
                    views[i, 4 + q] = scratch[q]
                continue
            lengths[i] = length
            for q in range(length):
                longer[i, q] = scratch[q]
    data = np.empty(int(lengths.sum()), dtype=np.uint8)
    pos = 0
    for i in range(n):
        length = lengths[i]
        if length == 0:
            continue
        for q in range(4):
            views[i, 4 + q] = longer[i, q]
        for q in range(length):
            data[pos + q] = longer[i, q]
        # buffer 0 (bytes 8-11 stay zero), offset little-endian
        views[i, 12] = np.uint8(pos & 0xFF)
        views[i, 13] = np.uint8((pos >> 8) & 0xFF)
        views[i, 14] = np.uint8((pos >> 16) & 0xFF)
        views[i, 15] = np.uint8((pos >> 24) & 0xFF)
        pos += length
    return views, data, left
