"""Typed JSON files of a bundle (``features.json``, ``drift.json``): strict pydantic models, and a file that does
not fit its model as one :class:`BundleError` naming the first field that does not."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from segscope.exceptions import BundleError

__all__ = ["Strict", "validated"]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


_M = TypeVar("_M", bound=BaseModel)


def validated(model: type[_M], state: Any, name: str) -> _M:
    """``state`` (the parsed JSON file ``name``) as ``model``, or one :class:`BundleError`."""
    try:
        return model.model_validate(state)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])[:120]
        raise BundleError(f"{name}: {where}: {first['msg']}; the bundle is damaged or edited: refit it") from None
