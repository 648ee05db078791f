"""``get_params`` from ``__init__``'s keyword names (scikit-learn's convention), for components that store
their parameters as attributes of the same name."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["StoresParams"]


class StoresParams:
    """Mixin: ``get_params()`` returns every ``__init__`` keyword, except display hooks in ``_not_params``."""

    _not_params: tuple[str, ...] = ()

    def get_params(self) -> dict[str, Any]:
        names = inspect.signature(type(self).__init__).parameters
        return {n: getattr(self, n) for n in names if n != "self" and n not in self._not_params}
