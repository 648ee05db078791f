"""Metrics against labels: AUCROC, AUCPR, precision@k and the alert policy's precision/recall; for time series
the NAB score (windows, three cost profiles) and SKAB's point-wise F1 / false-alarm / missed-alarm rates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from segscope.exceptions import DataError

__all__ = ["NAB_PROFILES", "evaluate_scores", "nab_score", "point_metrics"]


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, alerts: np.ndarray | None = None) -> dict[str, Any]:
    """Ranking and alert metrics; ``labels`` are 1 = anomaly, 0 = normal."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.shape[0]:
        raise DataError(
            f"the label column has only one class ({n_pos} anomalies in {labels.shape[0]} rows); "
            "evaluation needs both anomalies (1) and normal records (0)"
        )
    from sklearn.metrics import average_precision_score, roc_auc_score  # 2 s to import: not at a stream's start

    order = np.argsort(-scores, kind="stable")
    out: dict[str, Any] = {
        "rows": int(labels.shape[0]),
        "anomalies": n_pos,
        "aucroc": float(roc_auc_score(labels, scores)),
        "aucpr": float(average_precision_score(labels, scores)),
    }
    for k in (10, 100, n_pos):
        top = labels[order[: min(k, labels.shape[0])]]
        key = "precision_at_n_anomalies" if k == n_pos else f"precision_at_{k}"
        out[key] = float(top.mean())
    if alerts is not None:
        alerts = np.asarray(alerts, dtype=bool)
        tp = int((alerts & (labels == 1)).sum())
        out["alerts"] = int(alerts.sum())
        out["alert_precision"] = float(tp / alerts.sum()) if alerts.any() else 0.0
        out["alert_recall"] = float(tp / n_pos)
    return out


# ----------------------------------------------------------------------------------------- time series
#: NAB's cost profiles (weights of a detected window, a false positive, a missed window).
NAB_PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}


def _scaled_sigmoid(position: float) -> float:
    """NAB's reward by relative position: -1 = the window's left edge (0.987), 0 its right edge (0), positive
    past it (down to -1)."""
    return -1.0 if position > 3.0 else 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def nab_score(
    timestamps: Sequence[Any],
    detections: np.ndarray,
    windows: Sequence[tuple[Any, Any]],
    profile: str = "standard",
    *,
    probation: float = 0.15,
) -> dict[str, float]:
    """The NAB score of one series, implemented from the published description (Lavin & Ahmad 2015; NAB's
    scorer): windows are entered and left at the rows whose timestamps equal their bounds (the first row of a
    repeated timestamp); the first ``min(15% of rows, 750)`` rows are probationary and not scored; in each window
    only the earliest detection counts, rewarded by a scaled sigmoid of its position (tp weight), a window without
    a detection costs the fn weight, and every detection outside a window costs the fp weight times a sigmoid of
    its distance past the preceding window (the full weight before the first). Returns raw, the file-normalised
    score ``100 * (raw - null) / (perfect - null)`` and the row counts tp/fp/fn/tn."""
    tp_w, fp_w, fn_w = NAB_PROFILES[profile]
    stamps = list(timestamps)
    n = len(stamps)
    first: dict[Any, int] = {}
    for i, t in enumerate(stamps):
        first.setdefault(t, i)
    pending = [(first[a], first[b]) for a, b in windows if a in first and b in first]
    probationary = min(math.floor(probation * n), probation * 5000)
    max_tp = _scaled_sigmoid(-1.0)
    best: dict[int, float] = {}
    scored_windows: set[int] = set()
    fp_sum = 0.0
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    current: tuple[int, int] | None = None
    previous: tuple[int, int] | None = None  # (right index, width) of the last window left
    w = -1
    for i in range(n):
        if pending and current is None and i == pending[0][0]:
            start, right = pending.pop(0)
            current, w = (right, right - start + 1), w + 1
        if current is not None:
            weighted = _scaled_sigmoid(-(current[0] - i + 1) / current[1]) * tp_w / max_tp
        elif previous is None:
            weighted = -1.0 * fp_w
        else:
            weighted = _scaled_sigmoid(abs(previous[0] - i) / (previous[1] - 1)) * fp_w
        if i >= probationary:
            hit = bool(detections[i])
            if current is not None:
                scored_windows.add(w)
                counts["tp" if hit else "fn"] += 1
                if hit:
                    best[w] = max(best.get(w, -fn_w), weighted)
            else:
                counts["fp" if hit else "tn"] += 1
                fp_sum += weighted if hit else 0.0
        if current is not None and i == current[0]:
            previous, current = current, None
    raw = fp_sum + sum(best.get(k, -fn_w) for k in scored_windows)
    null = -fn_w * len(scored_windows)
    perfect = tp_w * len(scored_windows)
    normalised = 100.0 * (raw - null) / (perfect - null) if perfect > null else 0.0
    return {"raw": raw, "score": normalised, **{k: float(v) for k, v in counts.items()}}


def point_metrics(labels: np.ndarray, detections: np.ndarray) -> dict[str, float]:
    """Point-wise F1, false-alarm rate (FP / normal rows) and missed-alarm rate (FN / anomalous rows), as the
    SKAB leaderboard reports outlier detection."""
    y, d = np.asarray(labels).astype(bool), np.asarray(detections).astype(bool)
    tp, fp, fn, tn = int((y & d).sum()), int((~y & d).sum()), int((y & ~d).sum()), int((~y & ~d).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "far": fp / (fp + tn) if fp + tn else 0.0, "mar": fn / (fn + tp) if fn + tp else 0.0}
