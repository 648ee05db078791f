"""A model registry: a folder of bundle versions with a current-version pointer and a promotion log.

::

    registry/
      CURRENT                 the version that scores (one line; replaced atomically)
      versions/<version>/     bundle folders (see segscope.bundle)
      promotions.jsonl        every promotion and rollback, with its reason and figures

``Model.load(registry)`` loads the current version, so every command that takes ``--bundle`` takes a registry;
a running stream can watch ``CURRENT`` to pick up promotions between batches.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segscope.bundle import MANIFEST
from segscope.exceptions import BundleError
from segscope.sinks.files import write_text_atomic

__all__ = ["current_version", "ensure_registry", "is_registry", "list_versions", "log", "resolve", "set_current"]

CURRENT = "CURRENT"
VERSIONS = "versions"
LOG = "promotions.jsonl"


def is_registry(path: str | Path) -> bool:
    return (Path(path) / CURRENT).is_file()


def resolve(path: str | Path) -> Path:
    """The bundle folder to load: the current version of a registry, or ``path`` itself."""
    path = Path(path)
    if not is_registry(path):
        return path
    version = current_version(path)
    target = path / VERSIONS / version
    if not target.is_dir():
        raise BundleError(f"registry {path}: CURRENT names version {version}, which is missing; run segscope rollback")
    return target


def current_version(path: str | Path) -> str:
    return (Path(path) / CURRENT).read_text(encoding="utf-8").strip()


def list_versions(path: str | Path) -> list[str]:
    """Versions, oldest first: by the creation second in the name, then by when the manifest was written (two
    versions made within one second would otherwise sort by their fingerprints)."""
    folder = Path(path) / VERSIONS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if (p / MANIFEST).is_file()]
    found.sort(key=lambda p: (p.name[:15], (p / MANIFEST).stat().st_mtime_ns, p.name))
    return [p.name for p in found]


def log(path: str | Path) -> list[dict[str, Any]]:
    file = Path(path) / LOG
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_pointer(path: Path, version: str) -> None:
    write_text_atomic(path / CURRENT, version + "\n")


def set_current(path: str | Path, version: str, *, action: str, detail: dict[str, Any] | None = None) -> None:
    """Point CURRENT at ``version`` (atomically) and log why."""
    path = Path(path)
    if version not in list_versions(path):
        raise BundleError(f"registry {path} has no version {version}; versions: {list_versions(path)}")
    previous = current_version(path) if is_registry(path) else None
    if previous == version:
        return  # already current: nothing to change or log
    _write_pointer(path, version)
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "version": version,
        "previous": previous,
        **(detail or {}),
    }
    with (path / LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")


def ensure_registry(path: str | Path, *, seed_bundle: str | Path | None = None) -> Path:
    """Make ``path`` a registry. A plain bundle at ``path`` becomes its first version; an empty or new folder
    gets ``seed_bundle`` (copied) as its first, current version."""
    path = Path(path)
    if is_registry(path):
        return path
    if (path / MANIFEST).is_file():  # a plain bundle: move it into versions/<its version>
        version = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["model_version"]
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.reg-", dir=path.parent))
        os.replace(path, staging / "bundle")
        (staging / VERSIONS).mkdir()
        os.replace(staging / "bundle", staging / VERSIONS / version)
        os.replace(staging, path)
        set_current(path, version, action="created", detail={"reason": "registry created from a plain bundle"})
        return path
    if path.exists() and any(path.iterdir()):
        raise BundleError(f"{path} exists and is neither a bundle nor a registry; choose an empty or new folder")
    if seed_bundle is None:
        raise BundleError(f"{path} is empty; a registry needs a first version")
    path.mkdir(parents=True, exist_ok=True)
    version = json.loads((Path(seed_bundle) / MANIFEST).read_text(encoding="utf-8"))["model_version"]
    shutil.copytree(seed_bundle, path / VERSIONS / version)
    set_current(path, version, action="created", detail={"reason": f"registry seeded from {seed_bundle}"})
    return path
