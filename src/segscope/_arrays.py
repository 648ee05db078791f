"""Checks for fitted state read back from a bundle: shapes, kinds and index ranges, before any compiled kernel
sees the arrays.

A bundle someone handed over is loaded without ``--trust-bundle``; its arrays reach Numba kernels and XGBoost,
which index memory with stored numbers unchecked. Every component's ``load_state`` therefore states the shapes
it expects and the ranges its indices must lie in, and anything else is a :class:`BundleError`, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from segscope.exceptions import BundleError

__all__ = ["check_indices", "take"]

#: "f": any real numbers (returned as float64), "i": whole numbers (int64), "b": booleans
_KINDS = {"f": ("biuf", np.float64), "i": ("biu", np.int64), "b": ("b", np.bool_)}


def _fail(owner: str, problem: str) -> BundleError:
    return BundleError(f"{owner}: {problem}; the bundle is damaged or was edited by hand: refit it")


def take(
    arrays: Mapping[str, np.ndarray],
    key: str,
    owner: str,
    *,
    shape: tuple[int | None, ...],
    kind: str = "f",
    finite: bool = False,
    min_size: int = 0,
) -> np.ndarray:
    """``arrays[key]`` as a contiguous array of ``kind``, with ``shape`` (``None``: any length on that axis)."""
    if key not in arrays:
        raise _fail(owner, f"the array '{key}' is missing")
    value = np.asarray(arrays[key])
    allowed, dtype = _KINDS[kind]
    if value.dtype.kind not in allowed:
        raise _fail(owner, f"'{key}' holds {value.dtype}, expected {dtype.__name__}")
    if value.ndim != len(shape) or any(w is not None and w != got for w, got in zip(shape, value.shape, strict=True)):
        wanted = "(" + ", ".join("any" if w is None else str(w) for w in shape) + ")"
        raise _fail(owner, f"'{key}' has shape {value.shape}, expected {wanted}")
    if value.size < min_size:
        raise _fail(owner, f"'{key}' holds {value.size} value(s), at least {min_size} expected")
    out: np.ndarray = np.ascontiguousarray(value, dtype=dtype)
    if finite and kind == "f" and not np.isfinite(out).all():
        raise _fail(owner, f"'{key}' holds values that are not finite numbers")
    return out


def check_indices(values: np.ndarray, low: int, high: int, owner: str, what: str) -> None:
    """Every value in ``[low, high)``."""
    if values.size and (int(values.min()) < low or int(values.max()) >= high):
        raise _fail(owner, f"{what} must lie in [{low}, {high}) but range over [{values.min()}, {values.max()}]")
