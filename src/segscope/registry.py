"""A model registry: a folder of bundle versions with a current-version pointer and a promotion log.

::

    registry/
      CURRENT                 the version that scores (one line; replaced atomically)
      versions/<version>/     bundle folders (see segscope.bundle)
      promotions.jsonl        every promotion and rollback, with its reason and figures

``Model.load(registry)`` loads the current version, so every command that takes ``--bundle`` takes a registry;
a running stream can watch ``CURRENT`` to pick up promotions between batches.

``CURRENT`` may only name a folder in ``versions/`` (a plain version name, never a path). ``versions/`` and every
version in it are real folders inside the registry: a symbolic link there (which could make the registry load a
bundle from anywhere) is refused, not skipped. Changes to the pointer and the log happen under an exclusive lock on
the registry folder (``flock``), so concurrent promotions from several processes are serialised: each log entry's
``previous`` is the version that really was current, and a promotion can be made conditional on the version it was
judged against still being current (compare-and-swap).

A version is made current (promotion, rollback, a new registry) only once its bundle verifies: the manifest and
every file's checksum (:class:`~segscope.bundle.BundleReader`). Whether its pickled components may run is not
decided here but by whoever loads it (``--trust-bundle``); loading the model is above this layer, so a stream
watching the registry keeps scoring with its version when a new ``CURRENT`` does not load.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segscope._io import publish, write_text_atomic
from segscope.bundle import MANIFEST, BundleReader, is_version_name
from segscope.exceptions import BundleError

__all__ = [
    "PromotionConflictError",
    "current_version",
    "ensure_registry",
    "is_registry",
    "list_versions",
    "locked",
    "log",
    "resolve",
    "rollback",
    "set_current",
    "verify_version",
]

CURRENT = "CURRENT"
VERSIONS = "versions"
LOG = "promotions.jsonl"


class PromotionConflictError(BundleError):
    """The current version changed after a candidate was judged against it."""


def is_registry(path: str | Path) -> bool:
    return (Path(path) / CURRENT).is_file()


def _versions_folder(path: Path) -> Path:
    """``path/versions``, refused when it is a symbolic link."""
    folder = path / VERSIONS
    if folder.is_symlink():
        raise BundleError(
            f"registry {path}: {VERSIONS}/ is a symbolic link (to {os.readlink(folder)}); a registry's versions must "
            f"be a real folder inside it: replace the link with the folder it points to"
        )
    return folder


def resolve(path: str | Path) -> Path:
    """The bundle folder to load: the current version of a registry, or ``path`` itself."""
    path = Path(path)
    if not is_registry(path):
        return path
    version = current_version(path)
    target = _versions_folder(path) / version
    if target.is_symlink() or not target.is_dir():
        raise BundleError(f"registry {path}: CURRENT names version {version}, which is missing; run segscope rollback")
    if not target.resolve().is_relative_to((path / VERSIONS).resolve()):
        raise BundleError(f"registry {path}: version {version} resolves outside {path / VERSIONS}; repair the registry")
    return target


def current_version(path: str | Path) -> str:
    """The version ``CURRENT`` names; refused unless it is a plain version name (never a path)."""
    file = Path(path) / CURRENT
    if file.is_symlink():  # refused unread: its target could be any file (and the error would show it)
        raise BundleError(
            f"registry {path}: CURRENT is a symbolic link; write the version name into a plain file instead "
            f"(`segscope promote {path} --version V`)"
        )
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise BundleError(f"registry {path}: cannot read CURRENT ({exc.strerror}); check its permissions") from None
    try:
        version = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        version = None
    if version is None or not is_version_name(version):
        shown = repr(raw[:40]) if version is None else repr(version[:60])
        raise BundleError(
            f"registry {path}: CURRENT holds {shown}, not a version name from {VERSIONS}/; "
            f"point it at one with `segscope promote {path} --version V`"
        )
    return version


def list_versions(path: str | Path) -> list[str]:
    """Versions, oldest first: by the creation second in the name, then by when the manifest was written (two
    versions made within one second would otherwise sort by their fingerprints). A folder that is not a registry
    has none; a registry with none, or with a symbolic link in ``versions/``, is refused (:class:`BundleError`)."""
    path = Path(path)
    folder = _versions_folder(path)
    entries = list(folder.iterdir()) if folder.is_dir() else []
    links = sorted(p.name for p in entries if p.is_symlink())
    if links:
        raise BundleError(
            f"registry {path}: {VERSIONS}/{links[0]} is a symbolic link; versions must be real folders inside the "
            f"registry: remove the link (or replace it with the folder it points to)"
        )
    found = [p for p in entries if is_version_name(p.name) and (p / MANIFEST).is_file()]
    if not found and is_registry(path):
        raise BundleError(
            f"registry {path} has no versions (no bundle folder with a {MANIFEST} in {folder}); restore its "
            f"{VERSIONS}/ folder from a backup, or start again from a bundle `segscope fit` wrote"
        )
    found.sort(key=lambda p: (p.name[:15], (p / MANIFEST).stat().st_mtime_ns, p.name))
    return [p.name for p in found]


def verify_version(path: str | Path, version: str) -> None:
    """Refuse (:class:`BundleError`) a version whose bundle does not verify: its manifest and every file's
    checksum. Integrity only: a pickled component is the loader's decision (``trusted``), not a promotion's."""
    try:
        BundleReader(_versions_folder(Path(path)) / version, trusted=True).open()
    except BundleError as exc:
        raise BundleError(f"registry {path}: version {version} cannot be made current: {exc}") from None


def log(path: str | Path) -> list[dict[str, Any]]:
    """The promotion log, oldest first (a line cut short by a crash is skipped)."""
    file = _log_file(Path(path))
    if not file.is_file():
        return []
    entries = []
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # a line cut short, a 4,300-digit number, nesting too deep
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


_held: dict[str, int] = {}
_held_guard = threading.Lock()


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the registry's exclusive lock (``flock`` on the folder itself; re-entrant within a process)."""
    key = str(Path(path).resolve())
    with _held_guard:
        if _held.get(key):
            _held[key] += 1
            fd = None
        else:
            fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    if fd is None:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def set_current(
    path: str | Path,
    version: str,
    *,
    action: str,
    detail: dict[str, Any] | None = None,
    expected: str | None = None,
    verify: bool = True,
) -> None:
    """Point CURRENT at ``version`` (atomically, under the registry lock) and log why, once its bundle verifies
    (:func:`verify_version`; ``verify=False`` for a bundle the caller has just verified). With ``expected``, only
    if that version is still current (else :class:`PromotionConflictError`)."""
    path = Path(path)
    with locked(path):
        if version not in list_versions(path):
            raise BundleError(f"registry {path} has no version {version}; versions: {list_versions(path)}")
        previous = current_version(path) if is_registry(path) else None
        if expected is not None and previous != expected:
            raise PromotionConflictError(
                f"registry {path}: the current version changed from {expected} to {previous} in the meantime"
            )
        if previous == version:
            return  # already current: nothing to change or log
        if verify:
            verify_version(path, version)
        _point(path, version, action=action, previous=previous, detail=detail)


def _log_file(path: Path) -> Path:
    """``path/promotions.jsonl``, refused when it is a symbolic link or not a plain file (a link would have each
    promotion appended to whatever file it names)."""
    file = path / LOG
    if file.is_symlink() or (file.exists() and not file.is_file()):
        raise BundleError(
            f"registry {path}: {LOG} is a symbolic link or not a plain file; replace it with the plain file it "
            "should be (or remove it: the log starts again)"
        )
    return file


def _point(path: Path, version: str, *, action: str, previous: str | None, detail: dict[str, Any] | None) -> None:
    """Write CURRENT (atomically) and append the log entry that says why; the log is opened first (never through a
    link), so a log that cannot be written leaves CURRENT as it was."""
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "version": version,
        "previous": previous,
        **(detail or {}),
    }
    try:
        fd = os.open(_log_file(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise BundleError(f"registry {path}: cannot write {LOG} ({exc.strerror}); check the folder") from None
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        write_text_atomic(path / CURRENT, version + "\n")
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rollback(path: str | Path) -> tuple[str, str]:
    """Make current again the version that was current before the current one was promoted; returns
    (from, to). Only promotions count: a version made current by a rollback goes back to what preceded its own
    promotion (rolling back twice walks back twice, it does not undo the first rollback)."""
    path = Path(path)
    with locked(path):
        now = current_version(path)
        held = set(list_versions(path))  # an entry naming a version no longer held is passed over
        earlier = [
            e["previous"]
            for e in log(path)
            if e.get("version") == now
            and e.get("action") != "rollback"
            and is_version_name(e.get("previous"))
            and e["previous"] != now
            and e["previous"] in held
        ]
        if not earlier:
            raise BundleError(f"registry {path}: version {now} has no earlier current version to roll back to")
        set_current(path, earlier[-1], action="rollback", detail={"reason": f"rolled back from {now}"})
        return now, earlier[-1]


def _manifest_version(bundle: Path) -> str:
    try:
        version = json.loads((bundle / MANIFEST).read_bytes().decode("utf-8")).get("model_version")
    except (OSError, ValueError, AttributeError):
        version = None
    if not is_version_name(version):
        raise BundleError(f"bundle {bundle}: its manifest has no plain model_version; refit the bundle")
    return str(version)


def ensure_registry(path: str | Path, *, seed_bundle: str | Path | None = None) -> Path:
    """Make ``path`` a registry. A plain bundle at ``path`` becomes its first version; an empty or new folder
    gets ``seed_bundle`` (copied) as its first, current version."""
    path = Path(path)
    if is_registry(path):
        return path
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    with locked(parent):  # two processes turning the same bundle into a registry: one does it
        if is_registry(path):
            return path
        if (path / MANIFEST).is_file():  # a plain bundle: move it into versions/<its version>
            version = _manifest_version(path)
            BundleReader(path, trusted=True).open()  # a damaged bundle stays as it is: nothing moved
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.reg-", dir=parent))
            (staging / VERSIONS).mkdir()
            # CURRENT and its log first, then two renames back to back: a kill leaves the plain bundle or a whole
            # registry (not a folder of versions without CURRENT, which nothing loads)
            detail = {"reason": "registry created from a plain bundle"}
            try:
                _point(staging, version, action="created", previous=None, detail=detail)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)  # the bundle has not moved
                raise
            os.replace(path, staging / VERSIONS / version)  # verified above
            publish(staging, path)  # the permissions a plain mkdir gives, not mkdtemp's 0700
            return path
        if path.exists() and any(path.iterdir()):
            raise BundleError(f"{path} exists and is neither a bundle nor a registry; choose an empty or new folder")
        if seed_bundle is None:
            raise BundleError(f"{path} is empty; a registry needs a first version")
        version = _manifest_version(Path(seed_bundle))
        BundleReader(seed_bundle, trusted=True).open()  # before anything is created
        path.mkdir(parents=True, exist_ok=True)
        shutil.copytree(seed_bundle, path / VERSIONS / version, symlinks=True)
        detail = {"reason": f"registry seeded from {seed_bundle}"}
        set_current(path, version, action="created", detail=detail, verify=False)  # verified before the copy
        return path
