"""What a supervised learner offers: the protocol the XGBoost and torch learners follow (:mod:`segscope.supervised.xgb`,
:mod:`segscope.supervised.nn`), which :class:`~segscope.supervised.base.FineTuned` drives."""

from __future__ import annotations

from typing import Any, Protocol, Self

import numpy as np

__all__ = ["Learner"]


class Learner(Protocol):
    """A supervised learner. Its ``categories`` parameter (if it has one) lists the number of levels of the
    trailing columns of ``x`` that hold category codes."""

    name: str

    def get_params(self) -> dict[str, Any]: ...

    def alternatives(self) -> list[dict[str, Any]]:
        """Parameter sets to compare out of fold when there are enough labelled anomalies (the first is the
        default, kept unless another is reliably better); empty when nothing is chosen."""
        ...

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

    def n_inputs(self) -> int: ...
