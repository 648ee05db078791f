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
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from segscope._io import STATE_FILE_BYTES, fsync_write, publish, read_regular, sha256_file
from segscope.exceptions import BundleError

__all__ = ["FORMAT_VERSION", "BundleReader", "is_version_name", "write_bundle"]

#: 2: the manifest carries its own checksum (``manifest_sha256``); version-1 bundles load without it.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: Largest uncompressed array file (and all arrays of one bundle together) a load accepts: a small crafted npz
#: can otherwise ask for gigabytes. Ten times the largest part seen in a fit of 1M x 100 rows.
MAX_ARRAY_BYTES = 2 << 30
#: Largest unpacked / stored size of an array file above 1 MiB: a bundle recompressed by a tool still loads.
COMPRESSION_RATIO = 16
#: Largest manifest and JSON part a load reads (checked before a byte is read or hashed, as every file's size: a
#: handed-over bundle's file, or a hard link in it to a file elsewhere, is not read whole only to be refused).
MANIFEST_BYTES = 64 << 20
JSON_BYTES = 256 << 20


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own ``manifest_sha256`` (keys sorted, compact JSON)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
        if (target / "CURRENT").is_file() and (target / "versions").is_dir():  # registry.CURRENT, .VERSIONS
            raise BundleError(
                f"{target} is a registry of model versions (`segscope finetune` adds to it), which fitting does not "
                "replace; fit into a new folder for --bundle"
            )
        raise BundleError(f"{target} exists and is not a segscope bundle; choose an empty or new folder for --bundle")
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        files: dict[str, str] = {}
        for name, payload in json_files.items():
            fsync_write(tmp / name, json.dumps(payload, indent=1, sort_keys=True).encode())
        (tmp / "arrays").mkdir()
        for part, values in arrays.items():
            path = tmp / "arrays" / f"{part}.npz"
            with path.open("wb") as fh:
                np.savez(fh, allow_pickle=False, **values)
        for part, blob in (pickles or {}).items():
            fsync_write(tmp / "arrays" / f"{part}.pkl", blob)
        for rel, blob in (raw_files or {}).items():  # native formats (e.g. XGBoost JSON)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            fsync_write(tmp / rel, blob)
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files[path.relative_to(tmp).as_posix()] = sha256_file(path)
        full = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "files": files,
            "executes_code": sorted(f"arrays/{p}.pkl" for p in (pickles or {})),
        }
        full["manifest_sha256"] = manifest_digest(full)
        fsync_write(tmp / MANIFEST, json.dumps(full, indent=1, sort_keys=True).encode())
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


#: What a version name (and so a folder name in a registry) may look like: no separators, no "..".
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Artifact types that hold data only; ``.pkl`` runs code when loaded and needs ``trusted=True``.
_DATA_SUFFIXES = {".json", ".npz", ".safetensors", ".arrow"}  # .arrow: Arrow IPC tables (entity state), no code
_CODE_SUFFIXES = {".pkl"}


def is_version_name(name: object) -> bool:
    """A plain version name: letters, digits, ``.``, ``_``, ``-``; no path separators, not ``.``/``..``."""
    return isinstance(name, str) and bool(VERSION_NAME.match(name)) and name not in (".", "..")


def _safe_relative(rel: object) -> str | None:
    """``rel`` when it is a plain relative POSIX path inside the bundle, else None."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return None
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts) or "/".join(parts) != rel:
        return None
    return rel


def _largest(rel: str) -> int:
    """The most bytes a bundle file named ``rel`` may hold (arrays: the most a load unpacks)."""
    suffix = PurePosixPath(rel).suffix
    return JSON_BYTES if suffix == ".json" else STATE_FILE_BYTES if suffix == ".arrow" else MAX_ARRAY_BYTES


class BundleReader:
    """Opens a bundle, checks format version and checksums, and hands out its parts.

    What the bundle may do is decided here, never by its manifest: every file in the folder must be listed
    in ``files`` with a matching sha256 (an unlisted file, a symlink or a path leaving the folder is refused),
    artifacts that can run code (``.pkl``) need ``trusted=True`` whatever the manifest claims, and arrays are
    read with ``allow_pickle=False`` and refused when they hold bytes rather than numbers.
    """

    def __init__(self, path: str | Path, *, trusted: bool = False) -> None:
        self.path = Path(path)
        self.trusted = trusted

    def _fail(self, problem: str, fix: str = "restore the original bundle or refit") -> BundleError:
        return BundleError(f"bundle {self.path}: {problem}; {fix}")

    def open(self) -> dict[str, Any]:
        """Read and verify the manifest; returns it."""
        manifest_path = self.path / MANIFEST
        if not self.path.exists():
            raise BundleError(f"bundle {self.path} does not exist; run `segscope fit DATA --bundle {self.path}` first")
        if self.path.is_symlink() or manifest_path.is_symlink():
            raise self._fail("is a symbolic link", "pass the bundle folder itself")
        if not manifest_path.is_file():
            raise BundleError(
                f"{self.path} is not a segscope bundle (no manifest.json); pass the folder `segscope fit` wrote"
            )
        try:
            manifest = json.loads(read_regular(manifest_path, MANIFEST_BYTES).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # ValueError: bad JSON, or an integer of 4,300+ digits
            reason = str(exc).splitlines()[0][:120]
            raise self._fail(f"manifest.json is not valid JSON ({reason})", "refit the bundle") from None
        except OSError as exc:  # errno 0: read_regular's own refusal (its size, its kind)
            fix = "refit the bundle" if exc.errno == 0 else "check the folder's permissions"
            raise self._fail(f"cannot read manifest.json ({exc.strerror})", fix) from None
        except RecursionError:
            raise self._fail("manifest.json is nested too deeply to be a manifest", "refit the bundle") from None
        if not isinstance(manifest, dict):
            raise self._fail("manifest.json does not hold a JSON object", "refit the bundle")
        version = manifest.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise self._fail("manifest.json has no format_version", "refit the bundle")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"bundle {self.path} has format version {version}, newer than this segscope supports "
                f"({FORMAT_VERSION}); upgrade segscope (pip install -U segscope) to load it"
            )
        if version >= 2 and manifest.get("manifest_sha256") != manifest_digest(manifest):
            raise BundleError(
                f"bundle {self.path}: manifest.json does not match its own checksum (changed after it was saved); "
                "restore the original bundle or refit"
            )
        if not is_version_name(manifest.get("model_version")):
            raise self._fail(
                f"model_version {str(manifest.get('model_version'))[:60]!r} is not a plain name (letters, digits, "
                "'.', '_', '-')"
            )
        self.files_ = self._verify_files(manifest.get("files"))
        needs_trust = sorted(rel for rel in self.files_ if PurePosixPath(rel).suffix in _CODE_SUFFIXES)
        if needs_trust and not self.trusted:
            raise BundleError(
                f"bundle {self.path} holds pickled components ({', '.join(needs_trust)}) that run code when "
                "loaded; load it only if you trust its origin, with --trust-bundle (trusted=True)"
            )
        self.manifest_ = manifest
        return manifest

    def _verify_files(self, files: object) -> dict[str, str]:
        """Every file on disk listed, every listed file present, regular, inside the folder and unchanged."""
        if not isinstance(files, dict) or not files:
            raise self._fail("manifest.json has no 'files' table of checksums, so nothing in it can be verified")
        for rel, digest in files.items():
            if _safe_relative(rel) is None:
                raise self._fail(f"manifest.json lists the path {str(rel)[:80]!r}, which leaves the bundle folder")
            if rel == MANIFEST:
                raise self._fail("manifest.json lists itself among its files")
            suffix = PurePosixPath(rel).suffix
            if suffix not in _DATA_SUFFIXES | _CODE_SUFFIXES:
                kinds = ".json, .npz, .safetensors, .arrow, .pkl"
                raise self._fail(f"{rel} is not an artifact type segscope writes ({kinds})")
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise self._fail(f"the checksum of {rel} in manifest.json is not a sha256")
        root = self.path.resolve()
        on_disk: dict[str, int] = {}  # each file's size
        for folder, dirs, names in os.walk(self.path, followlinks=False):
            for name in [*dirs, *names]:
                full = Path(folder) / name
                rel = full.relative_to(self.path).as_posix()
                if full.is_symlink():
                    raise self._fail(f"{rel} is a symbolic link (bundles hold only regular files)")
                if name in names:
                    info = full.lstat()
                    if not stat.S_ISREG(info.st_mode):  # a pipe or device would block or lie
                        raise self._fail(f"{rel} is not a regular file")
                    on_disk[rel] = info.st_size
        unlisted = sorted(set(on_disk) - set(files) - {MANIFEST})
        if unlisted:
            raise self._fail(f"{unlisted[0]} is not listed in manifest.json (unlisted files are refused)")
        for rel, expected in files.items():
            file = self.path / rel
            if rel not in on_disk:
                raise BundleError(
                    f"bundle {self.path}: file {rel} listed in manifest.json is missing; restore or refit the bundle"
                )
            if not file.resolve().is_relative_to(root):
                raise self._fail(f"{rel} resolves outside the bundle folder")
            if on_disk[rel] > _largest(rel):
                raise self._fail(
                    f"{rel} holds {on_disk[rel]:,} bytes, more than the {_largest(rel):,} a bundle's "
                    f"{PurePosixPath(rel).suffix} file may hold"
                )
            try:
                actual = sha256_file(file)
            except OSError as exc:
                raise self._fail(f"cannot read {rel} ({exc.strerror})", "check the folder's permissions") from None
            if actual != expected:
                raise BundleError(
                    f"bundle {self.path}: {rel} does not match its checksum in manifest.json (changed after it "
                    "was saved); restore the original bundle or refit"
                )
        return dict(files)

    def _listed(self, rel: str) -> Path:
        if not isinstance(rel, str) or rel not in getattr(self, "files_", {}):  # a manifest's value: any JSON
            raise self._fail(f"{str(rel)[:80]!r} is not one of the files listed in manifest.json")
        return self.path / rel

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.raw(name).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._fail(f"{name} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
        except RecursionError:
            raise self._fail(f"{name} is nested too deeply") from None

    def arrays(self, part: str) -> dict[str, np.ndarray]:
        """The arrays of ``arrays/<part>.npz``: numbers only, each no larger than its header says and the archive
        holds, and all of the bundle's together under :data:`MAX_ARRAY_BYTES`."""
        rel = f"arrays/{part}.npz"
        path = self._listed(rel)
        try:
            with zipfile.ZipFile(path) as archive:
                self._check_sizes(rel, archive)
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise self._fail(f"{rel} is not a readable NumPy archive ({str(exc)[:120]})") from None
        for key, value in arrays.items():
            # model state is numbers; bytes in an array are how a pickle would be smuggled past the trust check
            if key == "pickle" or value.dtype.kind not in "biuf" or (value.dtype.kind in "iu" and value.itemsize == 1):
                raise self._fail(f"{rel} holds '{key}' as {value.dtype} bytes, not model state (a hidden pickle?)")
            if value.dtype.kind == "b" and value.size and int(value.view(np.uint8).max()) > 1:
                raise self._fail(f"{rel} holds '{key}' as booleans with other bytes than 0 and 1 (hidden bytes?)")
        return arrays

    def _check_sizes(self, rel: str, archive: zipfile.ZipFile) -> None:
        """Refuse before allocating: each member's header shape must fit the bytes the member holds."""
        for info in archive.infolist():
            # bundles store their arrays uncompressed (np.savez): a member that unpacks to many times its stored
            # bytes is a compression bomb (2 MB asking for 2 GB and three times that while loading)
            if info.file_size > COMPRESSION_RATIO * info.compress_size + (1 << 20):
                raise self._fail(
                    f"{rel}: {info.filename} unpacks {info.compress_size:,} stored bytes into {info.file_size:,}; "
                    "segscope writes arrays uncompressed (a compression bomb?)"
                )
            self.array_bytes_ = getattr(self, "array_bytes_", 0) + info.file_size
            if info.file_size > MAX_ARRAY_BYTES or self.array_bytes_ > MAX_ARRAY_BYTES:
                raise self._fail(
                    f"{rel} holds {info.file_size:,} bytes in {info.filename}, over the {MAX_ARRAY_BYTES:,}-byte "
                    "limit for a bundle's arrays"
                )
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=10_000)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=10_000)
                header = member.tell()
            needed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if needed != info.file_size - header:
                raise self._fail(
                    f"{rel}: {info.filename} declares shape {shape} of {dtype} ({needed:,} bytes) but holds "
                    f"{info.file_size - header:,} bytes"
                )

    def raw(self, rel: str) -> bytes:
        """A listed file's bytes, read as a regular file within its size limit (it may have changed since
        :meth:`open` verified it)."""
        try:
            return read_regular(self._listed(rel), _largest(rel))
        except OSError as exc:
            raise self._fail(f"cannot read {rel} ({exc.strerror})") from None

    def pickle_bytes(self, part: str) -> bytes | None:
        rel = f"arrays/{part}.pkl"
        if rel not in getattr(self, "files_", {}):
            return None
        if not self.trusted:  # open() already refused; never hand out a pickle from an untrusted bundle
            raise BundleError("refusing to read a pickle from an untrusted bundle; pass --trust-bundle")
        return self.raw(rel)
