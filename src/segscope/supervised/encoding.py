"""Target encoding of high-cardinality categories for the supervised layer.

A column with hundreds of levels (token types, merchant ids) is too wide for one-vs-rest splits and too sparse
for XGBoost's partition splits on a few labels (measured: both lost to the rarity encoding alone on the Ethereum
accounts). Each level becomes its share of labelled anomalies, shrunk towards the overall share by
``smoothing`` pseudo-records (an m-estimate), so that a level seen twice says little. Training rows get
out-of-fold values (a row's own label never encodes its level); scoring uses the encoding of all rows.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from segscope.exceptions import NotFittedError

__all__ = ["TargetEncoding"]


class TargetEncoding:
    """``fit(codes, y, cardinalities)``, ``transform(codes)``; codes are level indices with NaN for unseen."""

    def __init__(self, *, smoothing: float = 20.0) -> None:
        self.smoothing = smoothing

    def _table(self, codes: np.ndarray, y: np.ndarray, cardinality: int) -> np.ndarray:
        """Encoding of each level (index ``cardinality`` = unseen at fit, and NaN codes)."""
        index = np.where(np.isnan(codes), cardinality, codes).astype(np.int64)
        prior = float(y.mean()) if y.size else 0.0
        count = np.bincount(index, minlength=cardinality + 1).astype(np.float64)
        hits = np.bincount(index, weights=y.astype(np.float64), minlength=cardinality + 1)
        table = (hits + self.smoothing * prior) / (count + self.smoothing)
        table[cardinality] = prior
        return np.asarray(table)

    @staticmethod
    def _apply(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
        index = np.where(np.isnan(codes), table.size - 1, codes).astype(np.int64)
        return np.asarray(table[np.clip(index, 0, table.size - 1)])

    def fit(self, codes: np.ndarray, y: np.ndarray, cardinalities: tuple[int, ...]) -> Self:
        self.tables_ = [self._table(codes[:, j], y, card) for j, card in enumerate(cardinalities)]
        return self

    def transform(self, codes: np.ndarray) -> np.ndarray:
        if not hasattr(self, "tables_"):
            raise NotFittedError("TargetEncoding is not fitted; call fit first")
        if not self.tables_:
            return np.empty((codes.shape[0], 0))
        return np.column_stack([self._apply(t, codes[:, j]) for j, t in enumerate(self.tables_)])

    def out_of_fold(
        self, codes: np.ndarray, y: np.ndarray, cardinalities: tuple[int, ...], folds: np.ndarray
    ) -> np.ndarray:
        """Each row encoded by the other folds' rows (for training the learner without target leakage)."""
        out = np.zeros((codes.shape[0], len(cardinalities)))
        for k in np.unique(folds):
            held = folds == k
            for j, card in enumerate(cardinalities):
                out[held, j] = self._apply(self._table(codes[~held, j], y[~held], card), codes[held, j])
        return out

    def to_state(self) -> dict[str, np.ndarray]:
        return {f"target_encoding_{j}": t for j, t in enumerate(self.tables_)}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], n: int) -> TargetEncoding:
        encoding = cls()
        encoding.tables_ = [np.asarray(arrays[f"target_encoding_{j}"], dtype=np.float64) for j in range(n)]
        return encoding
