"""Mutation fuzzing of bundle files, run in a child process by ``tests/test_fuzz_bundles.py`` (a crash of the
compiled kernels or XGBoost kills this process, not pytest).

``python -m tests.fuzz_bundle BUNDLE DATA SEED CASES``: each case copies BUNDLE, changes one thing in one of its
files as an attacker would (an array element set to a boundary value, an array's shape or type changed, a JSON
leaf replaced, bytes cut or flipped), recomputes every checksum, then loads the copy and scores DATA with it.
Every outcome must be a score or a one-line segscope error; the case about to run is printed first (flushed), so
a crash names it. Prints one JSON line per case and ``done N``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from segscope import Model, SegscopeError
from segscope.bundle import manifest_digest

_VALUES = [0, -1, 1, 2, 7, -(2**31), 2**31 - 1, 2**40, 1e9, -1e9, 1e300, float("nan"), float("inf"), -float("inf")]


def rehash(bundle: Path, manifest: dict[str, Any] | None = None) -> None:
    """What an attacker does after editing: every checksum recomputed, the manifest's own included."""
    manifest = manifest if manifest is not None else json.loads((bundle / "manifest.json").read_text())
    for rel in manifest.get("files", {}):
        if (bundle / rel).is_file():
            manifest["files"][rel] = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def edit_npz(bundle: Path, part: str, edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    """``arrays/<part>.npz`` of ``bundle`` edited in place, every checksum recomputed."""
    path = bundle / "arrays" / f"{part}.npz"
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    edit(arrays)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    rehash(bundle)


def _mutate_npz(path: Path, rng: np.random.Generator) -> str:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if not arrays:
        return "empty npz"
    key = str(rng.choice(sorted(arrays)))
    value = arrays[key]
    how = rng.integers(5)
    if how <= 1 and value.size:  # one element to a boundary value, in the array's own type when it can hold it
        new = _VALUES[rng.integers(len(_VALUES))]
        flat = value.copy().reshape(-1)
        at = int(rng.integers(flat.size))
        if value.dtype.kind in "iub" and not (
            isinstance(new, int) and np.can_cast(np.min_scalar_type(new), value.dtype)
        ):
            flat = flat.astype(np.float64)
        flat[at] = new
        arrays[key] = flat.reshape(value.shape)
        change = f"{key}[{at}] = {new}"
    elif how == 2 and value.ndim:  # one row fewer or more on an axis
        axis = int(rng.integers(value.ndim))
        if rng.random() < 0.5 and value.shape[axis] > 0:
            arrays[key] = np.delete(value, -1, axis=axis)
            change = f"{key} one fewer on axis {axis}"
        else:
            extra = np.take(value, [0], axis=axis) if value.shape[axis] else np.zeros_like(value)
            arrays[key] = np.concatenate([value, extra], axis=axis)
            change = f"{key} one more on axis {axis}"
    elif how == 3:  # another type
        kind = ["int32", "int64", "float32", "bool", "uint16"][rng.integers(5)]
        arrays[key] = (
            np.nan_to_num(value).astype(kind) if value.dtype.kind == "f" and kind != "float32" else value.astype(kind)
        )
        change = f"{key} as {kind}"
    else:
        change = f"{key} removed"
        del arrays[key]
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    return change


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(node, list):
        return [p for i, v in enumerate(node[:50]) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _mutate_json(path: Path, rng: np.random.Generator) -> str:
    data = json.loads(path.read_bytes())
    leaves = [p for p in _leaves(data) if p]
    if not leaves:
        return "no leaf"
    where = leaves[int(rng.integers(len(leaves)))]
    choices: list[Any] = [*_VALUES[:10], None, "", "x" * 300, [], {}, [1, 2, 3], True, "../../etc/passwd"]
    new = choices[int(rng.integers(len(choices)))]
    node = data
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = new
    path.write_text(json.dumps(data))
    return f"{'.'.join(map(str, where))} = {str(new)[:40]!r}"


def _mutate_bytes(path: Path, rng: np.random.Generator) -> str:
    blob = bytearray(path.read_bytes())
    if rng.random() < 0.5 and blob:
        cut = int(rng.integers(len(blob)))
        path.write_bytes(bytes(blob[:cut]))
        return f"cut at {cut}"
    for _ in range(4):
        if blob:
            blob[int(rng.integers(len(blob)))] = int(rng.integers(256))
    path.write_bytes(bytes(blob))
    return "4 bytes flipped"


def run_case(source: Path, data: pl.DataFrame, seed: int, work: Path) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    bundle = work / f"case-{seed}"
    shutil.copytree(source, bundle)
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.json")
    target = files[int(rng.integers(len(files)))] if rng.random() < 0.9 else bundle / "manifest.json"
    rel = target.relative_to(bundle).as_posix()
    if target.suffix == ".npz":
        change = _mutate_npz(target, rng)
    elif target.suffix == ".json":
        change = _mutate_json(target, rng)
    else:
        change = _mutate_bytes(target, rng)
    rehash(bundle)
    case = {"seed": str(seed), "file": rel, "change": change}
    print(json.dumps({**case, "status": "running"}), flush=True)
    try:
        model = Model.load(bundle)
        scored = model.score(data)
        outcome = "scored" if scored.height == data.height else "wrong row count"
    except SegscopeError as exc:
        text = str(exc)
        outcome = "refused" if text and "\n" not in text else f"bad message: {text[:200]!r}"
    except Exception as exc:  # a traceback for the user: the fuzz target
        outcome = f"unexpected {type(exc).__name__}: {str(exc)[:200]}"
    shutil.rmtree(bundle, ignore_errors=True)
    return {**case, "status": outcome}


def main() -> None:
    source, data_path, first, cases = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    data = pl.read_parquet(data_path)
    with tempfile.TemporaryDirectory() as work:
        for seed in range(first, first + cases):
            print(json.dumps(run_case(source, data, seed, Path(work))), flush=True)
    print(f"done {cases}", flush=True)


if __name__ == "__main__":
    main()


def arrow_bomb(data: bytes, column: str = "acc") -> bytes:
    """An Arrow file as a compression bomb: ``column``'s values buffer (written compressed) declares it unpacks to a
    terabyte, the rest unchanged. Arrow would allocate that before it looked at the data."""
    frame = pl.read_ipc(data)
    dtype = frame.schema[column]
    width = dtype.size if isinstance(dtype, pl.Array) else 1
    prefix = (frame.height * width * 8).to_bytes(8, "little")
    assert data.count(prefix) == 1, "the values buffer's length prefix is not unique in the file"
    return data.replace(prefix, (1 << 40).to_bytes(8, "little"))
