"""Optional dependencies, imported where used, with an error that names the fix."""

from __future__ import annotations

import importlib
from types import ModuleType

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
