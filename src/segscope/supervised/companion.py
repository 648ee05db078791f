"""A plain XGBoost served beside the fine-tuned model, the two averaged in log-odds.

The fine-tuned model reads the unsupervised surprisals and leans on them while labels are few; a plain XGBoost
(XGBoost's defaults: depth 6, 100 trees at rate 0.3, every record weighted alike, unlabelled records as normal) on
the prepared features and category codes alone ranks records differently: their average is at least the plain
XGBoost by AUCROC and AUCPR on every set measured, and above the fine-tuned model alone where the plain XGBoost sees
what it missed, at some AUCPR where the fine-tuned model alone was far ahead (``benchmarks/served_model.py``,
docs/benchmarks.md). Each is put on the scale of
"an analyst would confirm this" by Platt scaling on the promotion gate's out-of-fold predictions, so a companion
that learnt little (a handful of labels) gets a flat slope and moves the served score little; the served log-odds
are ``(1 - weight) * fine-tuned + weight * companion``, and the gate judges that average.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from segscope._arrays import take
from segscope.exceptions import BundleError
from segscope.supervised.blend import fit_platt, logit
from segscope.supervised.layout import Layout
from segscope.supervised.stored import bounded_weights

__all__ = ["COMPANION_FILE", "COMPANION_WEIGHT", "Companion", "averaged", "companion_fold_logits"]

#: The companion's share of the served log-odds: at a third, mammography's AUCROC (5% labelled) only tied the plain
#: XGBoost's; at a half every set measured was at least it on both figures.
COMPANION_WEIGHT = 0.5
#: The companion's model in a bundle.
COMPANION_FILE = "supervised/companion-xgboost.json"


def _columns(layout: Layout, max_onehot: int) -> tuple[list[int], list[int]]:
    """(the supervision matrix's columns the companion reads: prepared features, then the codes of categories of at
    most ``max_onehot`` levels; those categories' numbers of levels)."""
    base = len(layout.monotone)
    codes, _ = layout.split_categories(max_onehot)
    return [*range(layout.n_features), *(base + j for j in codes)], [layout.categories[j] for j in codes]


def averaged(fine_tuned: np.ndarray, companion: np.ndarray, weight: float) -> np.ndarray:
    """The served log-odds (and the gate's, out of fold): the two calibrated log-odds averaged at ``weight``."""
    return np.asarray((1 - weight) * fine_tuned + weight * companion)


def _plain(seed: int, categories: list[int]) -> Any:
    from segscope.supervised.xgb import XGBoostLearner

    return XGBoostLearner(
        max_depth=6, n_estimators=100, learning_rate=0.3, plain=True, seed=seed, categories=categories
    )


def _taught(x: np.ndarray, y: np.ndarray, layout: Layout, max_onehot: int, seed: int) -> tuple[Any, list[int]]:
    columns, categories = _columns(layout, max_onehot)
    inputs = x[:, columns]
    learner = _plain(seed, categories).fit(inputs, y, np.ones(y.size), np.zeros(inputs.shape[1]))
    return learner, columns


def companion_fold_logits(
    x: np.ndarray, y: np.ndarray, layout: Layout, max_onehot: int, seed: int, taught: np.ndarray, held: np.ndarray
) -> np.ndarray:
    """The logits a companion taught on rows ``taught`` gives rows ``held`` (the gate's out-of-fold values)."""
    learner, columns = _taught(x[taught], y[taught], layout, max_onehot, seed)
    return logit(np.asarray(learner.predict_raw(x[held][:, columns])))


class Companion:
    """``fit(x, y, layout, max_onehot, fold_logits, fold_y)`` (the out-of-fold logits its scale is fitted on), then
    :meth:`log_odds` of new rows and :meth:`served` to average them with the fine-tuned model's."""

    def __init__(self, *, weight: float = COMPANION_WEIGHT, seed: int = 0) -> None:
        self.weight = weight
        self.seed = seed

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        layout: Layout,
        max_onehot: int,
        fold_logits: np.ndarray,
        fold_y: np.ndarray,
    ) -> Self:
        self.learner_, columns = _taught(x, y, layout, max_onehot, self.seed)
        self.columns_ = np.asarray(columns, dtype=np.int64)
        self.scale_ = np.asarray(fit_platt(fold_logits, fold_y), dtype=np.float64)
        self.out_of_fold_ = (fold_logits, fold_y)
        return self

    def log_odds(self, x: np.ndarray, learner: Any = None) -> np.ndarray:
        """The companion's calibrated log-odds for rows ``x`` (``learner``: another taught companion, same scale)."""
        raw = (learner or self.learner_).predict_raw(x[:, self.columns_])
        return np.asarray(self.scale_[0] * logit(np.asarray(raw)) + self.scale_[1])

    def served(self, fine_tuned: np.ndarray, x: np.ndarray, learner: Any = None) -> np.ndarray:
        """The served log-odds: the fine-tuned model's ``fine_tuned`` averaged with the companion's."""
        return averaged(fine_tuned, self.log_odds(x, learner), self.weight)

    def refit(self, x: np.ndarray, y: np.ndarray, layout: Layout, max_onehot: int) -> Any:
        """A companion learner taught on these rows only (the held-out scores of the alert policy's rows)."""
        return _taught(x, y, layout, max_onehot, self.seed)[0]

    def describe(self) -> dict[str, Any]:
        from segscope.supervised.blend import aucpr

        described: dict[str, Any] = {
            "model": "plain XGBoost (depth 6, 100 trees at rate 0.3, records weighted alike) on the prepared "
            "features and category codes",
            "weight": self.weight,
            "scale": [round(float(v), 4) for v in self.scale_],
        }
        if hasattr(self, "out_of_fold_"):
            described["out_of_fold_aucpr"] = round(aucpr(self.out_of_fold_[1], self.out_of_fold_[0]), 4)
        return described

    def to_state(self) -> dict[str, np.ndarray]:
        return {
            "companion": np.array([self.weight, *self.scale_], dtype=np.float64),
            "companion_columns": self.columns_.astype(np.float64),
        }

    def artifact(self) -> bytes:
        return bytes(self.learner_.artifact()[1])

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], blob: bytes, layout: Layout, max_onehot: int) -> Companion:
        owner = "supervised"
        weights = bounded_weights(take(arrays, "companion", owner, shape=(3,), finite=True), "companion")
        if not 0.0 < weights[0] < 1.0:
            raise BundleError(f"{owner}: the companion's weight {weights[0]:g} is not in (0, 1); refit the bundle")
        columns, categories = _columns(layout, max_onehot)
        stored = take(arrays, "companion_columns", owner, shape=(None,), finite=True)
        if not np.array_equal(stored, np.asarray(columns, dtype=np.float64)):
            raise BundleError(
                f"{owner}: the companion's columns do not match its layout; the bundle is damaged: refit it"
            )
        companion = cls(weight=float(weights[0]))
        companion.scale_ = weights[1:]
        companion.columns_ = np.asarray(columns, dtype=np.int64)
        companion.learner_ = _plain(0, categories)
        companion.learner_.load_artifact(blob, owner=COMPANION_FILE)  # errors name the companion's file
        if companion.learner_.n_inputs() != len(columns):
            raise BundleError(
                f"{COMPANION_FILE}: its model reads {companion.learner_.n_inputs()} columns, its layout gives "
                f"{len(columns)}; the bundle is damaged or edited: refit it"
            )
        return companion
