"""The typed form of ``drift.json`` (what :meth:`~segscope.unsupervised.drift.DriftReference.to_state` writes):
a bundle's file is checked against it at load, so a damaged or hand-made one is one :class:`BundleError`, not a
failure at the first batch's drift count."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from segscope._stored_json import Strict, validated
from segscope.exceptions import BundleError

__all__ = ["check_state"]

_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Share = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _NumericState(Strict):
    column: str
    part: Literal["", "hour", "weekday"]
    name: str
    low: float
    high: float
    edges: list[_Finite]
    shares: list[_Share]
    whole: bool


class _CategoricalState(Strict):
    name: str
    levels: list[str]
    shares: list[_Share]
    seen: list[str]


class _State(Strict):
    alert_rate: _Share | None
    fit_rows: Any = None  # read leniently: bundles saved before it was kept have none
    numeric: list[_NumericState]
    categorical: list[_CategoricalState]


def check_state(state: Any, columns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``drift.json`` typed, the bins each reference counts into consistent, its columns input ``columns`` ((name,
    kind) pairs) of the kind it tracks."""
    checked = validated(_State, state, "drift.json")
    for i, num in enumerate(checked.numeric):
        if len(num.shares) != len(num.edges) + 2 or any(b <= a for a, b in itertools.pairwise(num.edges)):
            raise BundleError(f"drift.json: numeric.{i} ({num.name[:40]}) has bins that do not fit its edges; refit it")
        if math.isnan(num.low) or math.isnan(num.high) or num.low > num.high:
            raise BundleError(f"drift.json: numeric.{i} ({num.name[:40]}) has no fit range; refit the bundle")
    for i, cat in enumerate(checked.categorical):
        if len(cat.shares) != len(cat.levels) + 2 or len(set(cat.levels)) != len(cat.levels):
            raise BundleError(f"drift.json: categorical.{i} ({cat.name[:40]}) has shares that do not fit its levels")
    kinds = dict(columns)
    wrong = [n.column for n in checked.numeric if kinds.get(n.column) != ("datetime" if n.part else "numeric")]
    wrong += [c.name for c in checked.categorical if kinds.get(c.name) != "categorical"]
    if wrong:
        raise BundleError(
            f"drift.json: column(s) {[w[:40] for w in wrong[:3]]} are not input columns of that kind in "
            "features.json; the bundle is damaged or edited: refit it"
        )
    return checked.model_dump()
