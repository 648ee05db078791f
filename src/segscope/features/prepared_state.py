"""The typed form of ``features.json`` (what :class:`~segscope.features.prepare.FeaturePreparer` saves): a bundle's
file is checked against it before anything reads it, so wrong types are one :class:`BundleError`, not a failure
halfway through scoring."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from segscope._stored_json import Strict, validated
from segscope.exceptions import BundleError

__all__ = ["check_state"]


#: a number every scaled value is computed with: finite (a scale also above 0: features divide by it)
_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _NumericStats(Strict):
    center: _Finite
    scale: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    kind: Literal["numeric", "boolean", "datetime", "missing"]
    expected: str


class _CategoricalStats(Strict):
    levels: list[str]
    mode: str
    rarity: list[_Finite]
    unseen_rarity: _Finite


class _Params(Strict):
    id_column: str | None
    drop: list[str]
    max_categories: Annotated[int, Field(ge=1)]
    clip: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class _State(Strict):
    """What ``features.json`` holds, typed: a bundle's file is checked against it before anything uses it."""

    params: _Params
    schema_: dict[str, Any] = Field(alias="schema")
    numeric: dict[str, _NumericStats]
    categorical: dict[str, _CategoricalStats]
    dropped: dict[str, str]
    expected: dict[str, str]
    source_column: dict[str, str]


def check_state(state: Any) -> dict[str, Any]:
    checked = validated(_State, state, "features.json")
    features = list(checked.numeric) + list(checked.categorical)
    listed = checked.schema_.get("features")
    if not isinstance(listed, list) or len(set(map(str, listed))) != len(listed) or set(listed) != set(features):
        raise BundleError(
            "features.json: schema.features does not list each numeric and categorical feature once; refit the bundle"
        )
    columns = {c.get("name") for c in checked.schema_.get("columns", []) if isinstance(c, dict)}
    unknown = [f for f in features if f not in checked.source_column or f not in checked.expected]
    unknown += [f for f in features if f in checked.source_column and checked.source_column[f] not in columns]
    if unknown:
        raise BundleError(f"features.json: feature(s) {unknown[:5]} have no source column; refit the bundle")
    for name, stats in checked.categorical.items():
        if len(stats.rarity) != len(stats.levels):
            raise BundleError(f"features.json: {name} has {len(stats.levels)} levels but {len(stats.rarity)} rarities")
    return checked.model_dump(by_alias=True)
