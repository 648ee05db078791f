"""The level grids of ``new_level`` entity features. At fit, the range of the feature's input over the history is
cut into equal levels: each entity with at least :data:`MIN_OWN` readings in the history gets its own grid (a fleet
of machines of different ranges), the others, and entities first seen later, the grid of every entity together.
A reading's level is ``floor((value - start) / step)``, the same step continuing beyond the range."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import polars as pl

from segscope.config import EntityFeatureConfig
from segscope.exceptions import BundleError, DataError

#: the key of the grid of every entity together
ALL = "\0all"
#: readings an entity needs in the history for a grid of its own
MIN_OWN = 100
#: where each grid lives in a bundle
FILE = "entities/levels.json"

Range = tuple[float, float, int]  # lowest, highest, number of finite values
Ranges = dict[str, dict[str, Range]]  # feature -> entity key (ALL: every entity) -> range
Grids = dict[str, dict[str, tuple[float, float]]]  # feature -> entity key -> (start, step)


def ranges(values: np.ndarray, keys: pl.Series | None) -> dict[str, Range]:
    """The finite range of ``values``, over all rows and per entity ``keys`` (null keys count only in ALL)."""
    finite = np.isfinite(values)
    x = values[finite]
    out: dict[str, Range] = {ALL: (float(x.min()), float(x.max()), int(x.size)) if x.size else (np.inf, -np.inf, 0)}
    if keys is not None and x.size:
        per = (
            pl.DataFrame({"k": keys.cast(pl.String), "v": values})
            .filter(pl.Series(finite) & pl.col("k").is_not_null())
            .group_by("k")
            .agg(pl.col("v").min().alias("lo"), pl.col("v").max().alias("hi"), pl.len().alias("n"))
        )
        for key, lo, hi, n in per.iter_rows():
            out[key] = (float(lo), float(hi), int(n))
    return out


def widest(a: Ranges, b: Ranges) -> Ranges:
    """Two batches' ranges as one."""
    out = {name: dict(per) for name, per in a.items()}
    for name, per in b.items():
        mine = out.setdefault(name, {})
        for key, (lo, hi, n) in per.items():
            old = mine.get(key)
            mine[key] = (lo, hi, n) if old is None else (min(old[0], lo), max(old[1], hi), old[2] + n)
    return out


def _grid(low: float, high: float, levels: int) -> tuple[float, float]:
    """The range cut into ``levels``; a flat range (or one too narrow or too wide for a float step) gets levels 1%
    of its largest value wide (any move off it is new)."""
    step = (high - low) / levels
    if not (np.isfinite(step) and step > 0):
        step = max(abs(low), abs(high), 1e-9) * 0.01
    return low, step


def grids(history: Ranges, levels: dict[str, int]) -> Grids:
    out: Grids = {}
    for name, per in history.items():
        low, high, n = per.get(ALL, (np.inf, -np.inf, 0))
        if not n:
            raise DataError(
                f"entity feature '{name}' (new_level) has no finite value in the fit history to set its levels"
            )
        out[name] = {ALL: _grid(low, high, levels[name])}
        out[name].update(
            {k: _grid(lo, hi, levels[name]) for k, (lo, hi, c) in per.items() if k != ALL and c >= MIN_OWN}
        )
    return out


def codes(values: np.ndarray, keys: pl.Series | None, grid: dict[str, tuple[float, float]]) -> pl.Series:
    """Each row's level on its entity's grid (null where the value is missing or not finite)."""
    start, step = grid[ALL]
    starts, steps = np.full(values.shape[0], start), np.full(values.shape[0], step)
    own = [k for k in grid if k != ALL]
    if keys is not None and own:
        text = keys.cast(pl.String)

        def per_row(i: int, default: float) -> np.ndarray:
            mapped = text.replace_strict(own, [grid[k][i] for k in own], default=default, return_dtype=pl.Float64)
            return mapped.fill_null(default).to_numpy()

        starts, steps = per_row(0, start), per_row(1, step)
    with np.errstate(over="ignore", invalid="ignore"):  # values past a float's range: the farthest level
        level = np.floor(np.clip((values - starts) / steps, -1e15, 1e15))
    return pl.Series("level", level).fill_nan(None).cast(pl.Int64)


def dump(grids: Grids) -> bytes:
    return json.dumps({name: {k: list(g) for k, g in per.items()} for name, per in grids.items()}).encode()


def load(data: bytes | None, names: set[str]) -> Grids:
    """The grids a bundle keeps, checked: exactly the config's ``new_level`` features, each with the grid of every
    entity, finite starts and positive finite steps."""
    try:
        raw = json.loads(data) if data is not None else {}
        out = {
            str(name): {str(k): (float(g[0]), float(g[1])) for k, g in per.items() if len(g) == 2}
            for name, per in raw.items()
        }
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeDecodeError):
        out = {}
    ok = set(out) == names and all(
        ALL in per and all(np.isfinite(a) and np.isfinite(b) and b > 0 for a, b in per.values()) for per in out.values()
    )
    if not ok:
        raise BundleError(f"{FILE} does not hold a level grid for each of {sorted(names)}; refit the bundle")
    return out


def deviation_checks(features: Sequence[EntityFeatureConfig]) -> list[tuple[int, list[int], float]]:
    """Per ``new_level`` feature with ``min_deviation``: its column among the block's ``features`` (one column
    each, in order), the columns of its ``zscore`` features of the same input, the deviation a new level needs."""
    return [
        (i, [j for j, g in enumerate(features) if g.kind == "zscore" and g.of == f.of], f.min_deviation)
        for i, f in enumerate(features)
        if f.kind == "new_level" and f.min_deviation is not None
    ]


def confirm_deviations(out: np.ndarray, checks: list[tuple[int, list[int], float]]) -> None:
    """Set to 0, in place, each new level of ``out`` (the kernel's rows) whose reading lies within the least
    deviation from every trailing mean :func:`deviation_checks` names (no deviation yet: within)."""
    for column, zscores, least in checks:
        deviation = np.nan_to_num(np.abs(out[:, zscores]), nan=0.0).max(axis=1)
        out[:, column] = np.where((out[:, column] == 1.0) & (deviation < least), 0.0, out[:, column])
