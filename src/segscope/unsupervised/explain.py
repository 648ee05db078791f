"""Reasons: the top-k features that drove a record's score, with its value and the expected (normal) value.

A feature's contribution is how far into the tails of its own fit-time distribution the record's value lies:
``max(-log P(ref <= x), -log P(ref >= x)) - log 2`` (zero at the median), reported as a share of the record's
total so the top reasons read as "62% of what makes this record unusual".
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl

from segscope.exceptions import NotFittedError
from segscope.unsupervised import _kernels

__all__ = ["REASON_DTYPE", "FeatureExplainer"]

REASON_DTYPE = pl.List(
    pl.Struct({"feature": pl.String, "value": pl.String, "expected": pl.String, "contribution": pl.Float64})
)
_LOG2 = float(np.log(2.0))


class FeatureExplainer:
    """Fit on the prepared reference matrix; :meth:`explain` returns the ``reasons`` column."""

    def __init__(self, *, top_k: int = 3, max_reference: int = 20_000) -> None:
        self.top_k = top_k
        self.max_reference = max_reference

    def fit(self, x: np.ndarray, feature_names: list[str], expected: list[str]) -> Self:
        ref = x
        if x.shape[0] > self.max_reference:
            idx = np.random.default_rng(1).choice(x.shape[0], size=self.max_reference, replace=False)
            ref = x[np.sort(idx)]
        self.sorted_ref_ = np.ascontiguousarray(np.sort(ref, axis=0).T)
        self.feature_names_ = list(feature_names)
        self.expected_ = list(expected)
        return self

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-cell contribution (rows x features), >= 0."""
        if not hasattr(self, "sorted_ref_"):
            raise NotFittedError("FeatureExplainer is not fitted; call fit(reference) first")
        left, right = _kernels.tail_surprisal(x, self.sorted_ref_)
        return np.asarray(np.maximum(np.maximum(left, right) - _LOG2, 0.0))

    def explain(self, x: np.ndarray, values: pl.DataFrame, expected: np.ndarray | None = None) -> pl.Series:
        """The ``reasons`` column for prepared rows ``x`` whose readable values are ``values``.

        ``expected`` optionally gives a per-row expected value (rows x features), e.g. a segment's typical
        values; by default the fit-time values are used.
        """
        n, d = x.shape
        k = min(self.top_k, d)
        if n == 0:
            return pl.Series("reasons", [], dtype=REASON_DTYPE)
        contrib = self.contributions(x)
        top = np.argpartition(-contrib, k - 1, axis=1)[:, :k] if k < d else np.tile(np.arange(d), (n, 1))
        order = np.argsort(-np.take_along_axis(contrib, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_contrib = np.take_along_axis(contrib, top, axis=1)
        totals = contrib.sum(axis=1, keepdims=True)
        share = np.divide(top_contrib, totals, out=np.zeros_like(top_contrib), where=totals > 0)

        flat_idx = top.reshape(-1)
        names = pl.Series("feature", self.feature_names_, dtype=pl.String).gather(flat_idx)
        if expected is None:
            exp = pl.Series("expected", self.expected_, dtype=pl.String).gather(flat_idx)
        else:
            exp = pl.Series("expected", np.take_along_axis(expected, top, axis=1).reshape(-1), dtype=pl.String)
        value = (
            values.select(pl.concat_list(pl.all()).alias("v"))
            .with_columns(idx=pl.Series(top.astype(np.uint32)).reshape((n, k)).arr.to_list())
            .select(pl.col("v").list.gather(pl.col("idx")))
            .get_column("v")
            .explode()
            .alias("value")
        )
        flat = pl.DataFrame([names, value, exp, pl.Series("contribution", share.reshape(-1).round(4))])
        return (
            flat.select(pl.struct(pl.all()).alias("reasons")).get_column("reasons").reshape((n, k)).cast(REASON_DTYPE)
        )

    def state(self) -> dict[str, np.ndarray]:
        return {"sorted_ref": self.sorted_ref_}

    @classmethod
    def from_state(
        cls, arrays: dict[str, np.ndarray], feature_names: list[str], expected: list[str], top_k: int
    ) -> FeatureExplainer:
        exp = cls(top_k=top_k)
        exp.sorted_ref_ = np.ascontiguousarray(arrays["sorted_ref"])
        exp.feature_names_, exp.expected_ = list(feature_names), list(expected)
        return exp
