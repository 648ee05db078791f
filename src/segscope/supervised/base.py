"""The supervised layer: a learner fine-tuned on analyst labels, blended with what the labels cannot yet teach.

Analysts label few records, mostly anomalies, and the rest of the history is unlabelled, not normal. So:

* **weights** (positive-unlabelled): confirmed normals are full negatives, unlabelled rows are negatives with
  a small weight, labelled anomalies are up-weighted to balance the classes;
* **decision** ``z = w * logit(learner) + s - log(1 + d)``: ``s`` is the unsupervised ensemble's surprisal (the
  ranking that holds before any label), ``d`` the distance (in prepared-feature space) to the nearest
  *confirmed anomaly* (records like a known case are likely the same case), and ``w = n / (n + prior)`` the
  learner's weight, which grows with the number ``n`` of labelled anomalies: with 1-5 anomalies the blend
  leans on the unsupervised score (it cannot do much worse than it), with hundreds on the learner;
* **calibration**: Platt scaling of ``z`` fitted on out-of-fold decisions (3 folds, the anomalies spread over
  them), so ``supervised_score`` is a probability of "an analyst would confirm this".

Measured on ADBench's label-informed protocol in ``benchmarks/adbench_label_informed.py``.
"""

from __future__ import annotations

from typing import Any, Protocol, Self

import numpy as np

from segscope.exceptions import DataError, NotFittedError

__all__ = ["FineTuned", "Learner"]

#: At most this many confirmed anomalies are kept as exemplars for the proximity term.
MAX_EXEMPLARS = 512


class Learner(Protocol):
    name: str

    def get_params(self) -> dict[str, Any]: ...

    def pretrain(self, x: np.ndarray) -> Any:
        """Label-free preparation shared by every fit on the same rows (e.g. an encoder), or None."""
        ...

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray,
        monotone: np.ndarray,
        *,
        init: bytes | None = None,
        pretrained: Any = None,
    ) -> Self: ...

    def predict_raw(self, x: np.ndarray) -> np.ndarray: ...

    def artifact(self) -> tuple[str, bytes]: ...

    def load_artifact(self, blob: bytes) -> None: ...


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.asarray(np.log(p / (1 - p)))


def _nearest(x: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row to the nearest exemplar (inf without exemplars)."""
    if exemplars.shape[0] == 0:
        return np.full(x.shape[0], np.inf)
    from sklearn.neighbors import KDTree

    dist, _ = KDTree(exemplars).query(x, k=1)
    return np.asarray(dist[:, 0])


class FineTuned:
    """A learner plus the blend and calibration above; ``fit`` on the supervision matrix, ``predict_proba``."""

    def __init__(
        self, learner: Learner, *, n_features: int, prior: float = 5.0, unlabelled_weight: float = 0.2, seed: int = 0
    ) -> None:
        self.learner = learner
        self.n_features = n_features
        self.prior = prior
        self.unlabelled_weight = unlabelled_weight
        self.seed = seed

    def weights(self, y: np.ndarray, labelled: np.ndarray) -> np.ndarray:
        w = np.where(labelled, 1.0, self.unlabelled_weight)
        pos = y == 1
        if pos.any():
            w[pos] = w[~pos].sum() / pos.sum()
        return np.asarray(w)

    def _decision(self, raw: np.ndarray, x: np.ndarray, exemplars: np.ndarray, weight: float) -> np.ndarray:
        distance = _nearest(x[:, : self.n_features], exemplars)
        proximity = np.where(np.isfinite(distance), np.log1p(distance), 0.0)
        return np.asarray(weight * _logit(raw) + x[:, -1] - proximity)

    def fit(
        self, x: np.ndarray, y: np.ndarray, labelled: np.ndarray, monotone: np.ndarray, *, init: bytes | None = None
    ) -> Self:
        """``x``: supervision matrix (prepared features, detector surprisals, ensemble surprisal last); ``y``: 1
        for labelled anomalies; ``labelled``: rows an analyst labelled (anomaly or normal)."""
        pos = np.flatnonzero(y == 1)
        if pos.size == 0:
            raise DataError("fine-tuning needs at least one record labelled 'anomaly'; label some and retry")
        weight = self.weights(y, labelled)
        shared = self.learner.pretrain(x) if init is None else None  # once, label-free, reused by every fold
        self.learner_weight_ = float(pos.size / (pos.size + self.prior))
        rng = np.random.default_rng(self.seed)
        folds = np.asarray(rng.integers(0, 3, size=x.shape[0]), dtype=np.int64)
        folds[pos] = rng.permutation(np.arange(pos.size) % 3)  # spread the few anomalies over the folds
        oof = np.zeros(x.shape[0])
        for k in range(3):
            held = folds == k
            rest = ~held
            if not held.any():
                continue
            raw = np.full(held.sum(), 0.5)
            if (y[rest] == 1).any():
                fold_learner = type(self.learner)(**self.learner.get_params())
                fold_learner.fit(x[rest], y[rest], weight[rest], monotone, init=init, pretrained=shared)
                raw = fold_learner.predict_raw(x[held])
            exemplars = self._exemplars(x, np.flatnonzero((y == 1) & rest))
            oof[held] = self._decision(raw, x[held], exemplars, self.learner_weight_)
        self.platt_ = _fit_platt(oof, y)
        self.learner.fit(x, y, weight, monotone, init=init, pretrained=shared)
        self.exemplars_ = self._exemplars(x, pos)
        self.n_positives_ = int(pos.size)
        self.n_labelled_ = int(labelled.sum())
        return self

    def _exemplars(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if rows.size > MAX_EXEMPLARS:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, size=MAX_EXEMPLARS, replace=False))
        return np.ascontiguousarray(x[rows, : self.n_features])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "platt_"):
            raise NotFittedError("FineTuned is not fitted; call fit first")
        from scipy.special import expit

        z = self._decision(self.learner.predict_raw(x), x, self.exemplars_, self.learner_weight_)
        a, b = self.platt_
        return np.asarray(expit(a * z + b))

    def describe(self) -> dict[str, Any]:
        mode = "blend (leans on the unsupervised score)" if self.learner_weight_ < 0.5 else "learner-led blend"
        return {
            "learner": self.learner.name,
            "learner_params": self.learner.get_params(),
            "mode": mode,
            "learner_weight": round(self.learner_weight_, 4),
            "labelled_anomalies": self.n_positives_,
            "labelled_records": self.n_labelled_,
            "prior": self.prior,
            "unlabelled_weight": self.unlabelled_weight,
            "platt": list(self.platt_),
        }

    def state(self) -> dict[str, np.ndarray]:
        return {
            "platt": np.asarray(self.platt_),
            "exemplars": self.exemplars_,
            "meta": np.array([self.learner_weight_, self.n_positives_, self.n_labelled_], dtype=np.float64),
        }

    def load_state(self, arrays: dict[str, np.ndarray], blob: bytes) -> None:
        self.platt_ = (float(arrays["platt"][0]), float(arrays["platt"][1]))
        self.exemplars_ = np.ascontiguousarray(arrays["exemplars"])
        self.learner_weight_ = float(arrays["meta"][0])
        self.n_positives_, self.n_labelled_ = int(arrays["meta"][1]), int(arrays["meta"][2])
        self.learner.load_artifact(blob)


def _fit_platt(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: a regularised logistic regression of y on one score, slope kept in (0, 10] so the
    calibration always keeps the ranking and cannot blow up on separable (tiny) label sets."""
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():
        return 1.0, 0.0
    fit = LogisticRegression(C=1.0).fit(score.reshape(-1, 1), y)
    return float(np.clip(fit.coef_[0, 0], 1e-3, 10.0)), float(fit.intercept_[0])
