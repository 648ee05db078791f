"""Learners by name."""

from __future__ import annotations

from typing import Any

from segscope.exceptions import ConfigError

__all__ = ["LEARNERS", "make_learner"]

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
