"""Bundle folders: ``manifest.json`` + artifacts in safe formats, written atomically, verified on load.

Layout::

    bundle/
      manifest.json          format version, versions, schema + hash, components, parameters, checksums ...
      features.json          fitted feature preparation (levels, medians, scales)
      arrays/<part>.npz      NumPy arrays (allow_pickle=False), one file per component
      arrays/<part>.pkl      only for components that cannot be stored otherwise; loading needs trusted=True

Writing goes to a temporary sibling folder that is renamed into place, so a crash never leaves a half bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from segscope.exceptions import BundleError
from segscope.sinks.files import publish

__all__ = ["FORMAT_VERSION", "BundleReader", "write_bundle"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bundle(
    target: str | Path,
    *,
    manifest: dict[str, Any],
    json_files: dict[str, Any],
    arrays: dict[str, dict[str, np.ndarray]],
    pickles: dict[str, bytes] | None = None,
    raw_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a bundle folder atomically; an existing bundle at ``target`` is replaced."""
    target = Path(target)
    if target.exists() and not (target / MANIFEST).is_file() and (not target.is_dir() or any(target.iterdir())):
        raise BundleError(f"{target} exists and is not a segscope bundle; choose an empty or new folder for --bundle")
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        files: dict[str, str] = {}
        for name, payload in json_files.items():
            _fsync_write(tmp / name, json.dumps(payload, indent=1, sort_keys=True).encode())
        (tmp / "arrays").mkdir()
        for part, values in arrays.items():
            path = tmp / "arrays" / f"{part}.npz"
            with path.open("wb") as fh:
                np.savez(fh, allow_pickle=False, **values)
        for part, blob in (pickles or {}).items():
            _fsync_write(tmp / "arrays" / f"{part}.pkl", blob)
        for rel, blob in (raw_files or {}).items():  # native formats (e.g. XGBoost JSON)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            _fsync_write(tmp / rel, blob)
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files[path.relative_to(tmp).as_posix()] = _sha256(path)
        full = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "files": files,
            "executes_code": sorted(f"arrays/{p}.pkl" for p in (pickles or {})),
        }
        _fsync_write(tmp / MANIFEST, json.dumps(full, indent=1, sort_keys=True).encode())
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / "bundle")
        publish(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class BundleReader:
    """Opens a bundle, checks format version and checksums, and hands out its parts."""

    def __init__(self, path: str | Path, *, trusted: bool = False) -> None:
        self.path = Path(path)
        self.trusted = trusted

    def open(self) -> dict[str, Any]:
        """Read and verify the manifest; returns it."""
        manifest_path = self.path / MANIFEST
        if not self.path.exists():
            raise BundleError(f"bundle {self.path} does not exist; run `segscope fit DATA --bundle {self.path}` first")
        if not manifest_path.is_file():
            raise BundleError(
                f"{self.path} is not a segscope bundle (no manifest.json); pass the folder `segscope fit` wrote"
            )
        try:
            manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(
                f"bundle {self.path}: manifest.json is not valid JSON ({str(exc).splitlines()[0]}); refit the bundle"
            ) from None
        version = manifest.get("format_version")
        if not isinstance(version, int):
            raise BundleError(f"bundle {self.path}: manifest.json has no format_version; refit the bundle")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"bundle {self.path} has format version {version}, newer than this segscope supports "
                f"({FORMAT_VERSION}); upgrade segscope (pip install -U segscope) to load it"
            )
        files = manifest.get("files", {})
        for rel, expected in files.items():
            file = self.path / rel
            if not file.is_file():
                raise BundleError(
                    f"bundle {self.path}: file {rel} listed in manifest.json is missing; restore or refit the bundle"
                )
            if _sha256(file) != expected:
                raise BundleError(
                    f"bundle {self.path}: {rel} does not match its checksum in manifest.json (changed after it "
                    "was saved); restore the original bundle or refit"
                )
        if manifest.get("executes_code") and not self.trusted:
            raise BundleError(
                f"bundle {self.path} holds pickled components ({', '.join(manifest['executes_code'])}) that run "
                "code when loaded; load it only if you trust its origin, with --trust-bundle (trusted=True)"
            )
        self.manifest_ = manifest
        return manifest

    def json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def arrays(self, part: str) -> dict[str, np.ndarray]:
        with np.load(self.path / "arrays" / f"{part}.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def raw(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    def pickle_bytes(self, part: str) -> bytes | None:
        path = self.path / "arrays" / f"{part}.pkl"
        if not path.is_file():
            return None
        if not self.trusted:  # pragma: no cover - open() already refused
            raise BundleError("refusing to read a pickle from an untrusted bundle")
        return path.read_bytes()


def fingerprint_file(path: str | Path) -> str:
    """sha256 of a data file's bytes: the training-data fingerprint."""
    return _sha256(Path(path))
