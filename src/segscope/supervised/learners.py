"""Learners by name, and the one place a fine-tuned model (a learner plus its blend and calibration) is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segscope.exceptions import ConfigError
from segscope.supervised.base import FineTuned
from segscope.supervised.companion import COMPANION_WEIGHT

__all__ = ["LEARNERS", "make_finetuned", "make_learner"]

LEARNERS = ("xgboost", "torch")


def make_learner(name: str, **params: Any) -> Any:
    """A supervised learner by name (``xgboost`` or ``torch``)."""
    if name == "xgboost":
        from segscope.supervised.xgb import XGBoostLearner

        return XGBoostLearner(**params)
    if name == "torch":
        from segscope.supervised.nn import TorchLearner

        return TorchLearner(**params)
    raise ConfigError(f"unknown learner '{name}'; choose one of {list(LEARNERS)}")


def make_finetuned(
    name: str,
    *,
    n_features: int,
    seed: int = 0,
    learner_params: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    prior: float = 5.0,
    unlabelled_weight: float = 0.2,
    blend: str = "auto",
) -> FineTuned:
    """A not-yet-fitted :class:`FineTuned` around the learner ``name``. ``learner_params`` as stored in a bundle
    (they include the seed); otherwise the learner gets ``seed``. ``progress`` reports the torch learner's
    epochs."""
    params: dict[str, Any] = dict(learner_params) if learner_params is not None else {"seed": seed}
    if progress is not None and name == "torch":
        params["progress"] = progress
    return FineTuned(
        make_learner(name, **params),
        n_features=n_features,
        seed=seed,
        prior=prior,
        unlabelled_weight=unlabelled_weight,
        blend=blend,
        companion=COMPANION_WEIGHT if name == "xgboost" else 0.0,
    )
