"""The detector contract every detector keeps, and the reference sample helpers they share."""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from segscope._params import StoresParams
from segscope.exceptions import ConfigError, NotFittedError

__all__ = ["Detector", "reference_rows", "reference_sample"]


def _as_matrix(frame: pl.DataFrame | np.ndarray) -> np.ndarray:
    if isinstance(frame, pl.DataFrame):
        frame = frame.to_numpy()
    return np.ascontiguousarray(frame, dtype=np.float64)


class Detector(StoresParams):
    """Base class: ``__init__`` stores keyword parameters as attributes, ``fit`` validates them."""

    name: ClassVar[str]
    #: True when persisting the detector needs pickle (loading then requires ``trusted=True``).
    needs_pickle: ClassVar[bool] = False
    #: Scores of the fit rows, computed the way new rows are scored (set by fit).
    reference_scores_: np.ndarray
    n_features_: int

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        """Cheap parameters for the conformance suite."""
        return {}

    # the public, frame-based contract
    def fit(self, frame: pl.DataFrame | np.ndarray) -> Self:
        return self.fit_matrix(_as_matrix(frame))

    def score(self, frame: pl.DataFrame | np.ndarray) -> pl.Series:
        return pl.Series(self.name, self.score_matrix(_as_matrix(frame)), dtype=pl.Float64)

    def fit_matrix(self, x: np.ndarray) -> Self:
        self.check_params()
        if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
            raise ConfigError(f"{type(self).__name__} needs at least 2 rows and 1 feature; got shape {x.shape}")
        self.n_features_ = x.shape[1]
        self._fit(x)
        return self

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "n_features_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(frame) first")
        if x.shape[1] != self.n_features_:
            raise ConfigError(f"{type(self).__name__} was fitted on {self.n_features_} features; got {x.shape[1]}")
        if x.shape[0] == 0:
            return np.empty(0)
        return self._score(x)

    def _fit(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # persistence: parameters as JSON, fitted state as numeric NumPy arrays; a detector that needs_pickle also
    # hands out pickle bytes, which the bundle keeps in a .pkl file that only a trusted load reads
    def to_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def pickled(self) -> bytes | None:
        """Pickle bytes of state that has no array form (only when ``needs_pickle``)."""
        return None

    def load_state(self, arrays: dict[str, np.ndarray], *, pickled: bytes | None = None) -> None:
        raise NotImplementedError


def reference_rows(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Indices of a uniform sample of at most ``max_rows`` of ``n`` rows (all of them when n is small)."""
    if n <= max_rows:
        return np.arange(n)
    return np.asarray(np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False)), dtype=np.int64)


def reference_sample(x: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    return np.asarray(x[reference_rows(x.shape[0], max_rows, seed)])
