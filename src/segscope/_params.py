"""One way to declare, store and check parameters, for every component (detectors, alert policies, learners,
the segmenter).

A component stores its ``__init__`` keywords as attributes of the same name (``get_params`` reads them back, as
scikit-learn does), declares a ``_constraints`` table, and calls :meth:`StoresParams.check_params` at the start
of ``fit`` (never in ``__init__``, so cloning and ``set_params``-style copies stay possible). Every refusal uses
one template::

    The 'quantile' parameter of QuantileThreshold must be a float in the range (0, 1). Got 1.5 instead.

:func:`invalid_values` derives values each constraint must refuse, so tests are generated from the tables.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from segscope.exceptions import ConfigError

__all__ = ["Constraint", "Interval", "Options", "Sizes", "StoresParams", "check_params", "invalid_values"]


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (int or float) between ``low`` and ``high`` (None = unbounded)."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: Literal["both", "left", "right", "neither"] = "both"
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        low_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        high_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return low_ok and high_ok

    def describe(self) -> str:
        name = "an int" if self.kind is int else "a float"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        return f"{name} in the range {left}{low}, {high}{right}" + (" or None" if self.nullable else "")


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        return any(value == v and type(value) is type(v) for v in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values) + (" or None" if self.nullable else "")


@dataclass(frozen=True)
class IsInstance:
    """Any value of the given types (e.g. a string naming a column)."""

    kinds: tuple[type, ...]
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        return isinstance(value, self.kinds) and not (isinstance(value, bool) and bool not in self.kinds)

    def describe(self) -> str:
        names = " or ".join(k.__name__ for k in self.kinds)
        return f"a {names}" + (" or None" if self.nullable else "")


@dataclass(frozen=True)
class Sizes:
    """A list of ints, each at least ``low`` (e.g. the number of levels of each categorical column)."""

    low: int = 0

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= self.low for v in value
        )

    def describe(self) -> str:
        return f"a list of ints >= {self.low}"


Constraint = Interval | Options | IsInstance | Sizes


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def check_params(owner: str, params: dict[str, Any], constraints: dict[str, Constraint]) -> None:
    """Refuse unknown parameters and values outside their constraint, with one message template."""
    for key, value in params.items():
        constraint = constraints.get(key)
        if constraint is None:
            raise ConfigError(f"{owner} has no parameter '{key}'. Known parameters: {sorted(constraints)}.")
        if not constraint.accepts(value):
            raise ConfigError(
                f"The '{key}' parameter of {owner} must be {constraint.describe()}. Got {value!r} instead."
            )


def invalid_values(constraint: Constraint) -> Iterator[Any]:
    """Values ``constraint`` must refuse: out of range, of the wrong type, None when not nullable."""
    if not getattr(constraint, "nullable", False):
        yield None
    if isinstance(constraint, Interval):
        yield "1"
        yield True
        yield float("nan")
        if constraint.kind is int:
            yield 1.5
        if constraint.low is not None:
            yield constraint.low - (1 if constraint.kind is int else 1e-9 * max(1.0, abs(constraint.low)))
            if constraint.closed in ("right", "neither"):
                yield constraint.kind(constraint.low)
        if constraint.high is not None:
            yield constraint.high + (1 if constraint.kind is int else 1e-9 * max(1.0, abs(constraint.high)))
            if constraint.closed in ("left", "neither"):
                yield constraint.kind(constraint.high)
    elif isinstance(constraint, Options):
        yield "not-an-option"
        yield 12345
    elif isinstance(constraint, Sizes):
        yield "12"
        yield [constraint.low - 1]
        yield [1.5]
    else:
        yield object()


class StoresParams:
    """Mixin: ``get_params()`` returns every ``__init__`` keyword (except display hooks in ``_not_params``);
    ``check_params()`` validates them against ``_constraints``."""

    _not_params: ClassVar[tuple[str, ...]] = ()
    _constraints: ClassVar[dict[str, Constraint]] = {}

    def get_params(self) -> dict[str, Any]:
        names = inspect.signature(type(self).__init__).parameters
        return {n: getattr(self, n) for n in names if n not in ("self", "args", "kwargs") and n not in self._not_params}

    def check_params(self) -> None:
        check_params(type(self).__name__, self.get_params(), self._constraints)
