"""What the columns of a supervision matrix hold (:class:`Layout`), and the check of a stored one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segscope.exceptions import BundleError

__all__ = ["Layout", "checked_layout"]


@dataclass(frozen=True)
class Layout:
    """What the columns of a supervision matrix hold: ``n_features`` prepared features first, then the detector
    surprisals and optional segment columns (``monotone`` has one entry per column up to here; the ensemble's
    surprisal is column ``surprisal``), then one category code per categorical feature (``categories``: their
    fit-time number of levels; NaN = a value never seen at fit)."""

    n_features: int
    surprisal: int
    monotone: tuple[float, ...]
    categories: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        return len(self.monotone) + len(self.categories)

    def split_categories(self, max_onehot: int) -> tuple[list[int], list[int]]:
        """Indices (into ``categories``) of the categories a learner reads as codes (at most ``max_onehot``
        levels) and of those it target-encodes (more)."""
        codes = [j for j, n in enumerate(self.categories) if n <= max_onehot]
        return codes, [j for j, n in enumerate(self.categories) if n > max_onehot]

    def to_state(self) -> np.ndarray:
        head = [self.n_features, self.surprisal, len(self.monotone), len(self.categories)]
        return np.asarray([*head, *self.monotone, *self.categories], dtype=np.float64)

    @classmethod
    def from_state(cls, values: np.ndarray) -> Layout:
        n_features, surprisal, n_monotone, n_categories = (int(v) for v in values[:4])
        monotone = tuple(float(v) for v in values[4 : 4 + n_monotone])
        categories = tuple(int(v) for v in values[4 + n_monotone : 4 + n_monotone + n_categories])
        return cls(n_features, surprisal, monotone, categories)


def checked_layout(values: np.ndarray, n_features: int) -> Layout:
    """A stored layout that fits the model: its prepared features are the model's, the surprisal column is one of
    its columns, each category has at least one level (the learner's matrix is built from it)."""
    if values.size < 4 or values[:4].min() < 0 or values[:4].max() > 1e6:
        raise BundleError("supervised: its 'layout' is not a layout; the bundle is damaged: refit it")
    layout = Layout.from_state(values)
    if values.size != 4 + len(layout.monotone) + len(layout.categories) or len(layout.categories) != int(values[3]):
        raise BundleError("supervised: its 'layout' is cut short; the bundle is damaged: refit it")
    if layout.n_features != n_features or not layout.n_features <= layout.surprisal < len(layout.monotone):
        raise BundleError(
            f"supervised: its layout reads {layout.n_features} features (the model has {n_features}) and surprisal "
            f"column {layout.surprisal}; the bundle is damaged: refit it"
        )
    if any(not 1 <= c <= 1 << 20 for c in layout.categories):
        raise BundleError("supervised: a category's number of levels is out of range; the bundle is damaged: refit it")
    return layout
