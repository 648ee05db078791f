"""Metrics against labels: AUCROC, AUCPR, precision@k and the alert policy's precision/recall."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from segscope.exceptions import DataError

__all__ = ["evaluate_scores"]


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
