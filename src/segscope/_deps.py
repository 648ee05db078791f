"""Optional dependencies, imported where used, with an error that names the fix."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from segscope.exceptions import MissingDependencyError


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise an error that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the Python package '{module.split('.')[0]}', which is not installed; "
            f"install it with: pip install 'segscope[{extra}]'"
        ) from exc


def lazy_names(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562): each name of ``where`` imported from its module on first use and
    kept in the package, so later lookups find it without this function."""

    def lookup(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return lookup
