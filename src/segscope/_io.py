"""File plumbing every layer shares: the format an extension names, and writes that are whole or nothing.

Outputs are written to a temporary sibling and renamed into place (``os.replace`` is atomic within a folder),
so a crash or an error never leaves a half-written file; :func:`publish` gives the result the permissions a
plain create would (``mkstemp``/``mkdtemp`` make them private).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from segscope._typing import FileFormat
from segscope.exceptions import SourceError

__all__ = [
    "EXTENSIONS",
    "STAMP_BYTES",
    "STATE_FILE_BYTES",
    "detect_format",
    "fsync_write",
    "publish",
    "read_regular",
    "sha256_file",
    "write_bytes_atomic",
    "write_text_atomic",
]

EXTENSIONS: dict[str, FileFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}


def detect_format(path: str | Path) -> FileFormat:
    """Return the file format implied by the extension of ``path``."""
    suffix = Path(path).suffix.lower()
    try:
        return EXTENSIONS[suffix]
    except KeyError:
        known = ", ".join(sorted(EXTENSIONS))
        raise SourceError(f"{path}: unknown file extension '{suffix or '(none)'}'; use one of {known}") from None


# read once at import (setting the umask to read it is not thread-safe)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def publish(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished temporary file or folder into place, with the permissions a plain create would give."""
    os.chmod(tmp, (0o777 if Path(tmp).is_dir() else 0o666) & ~_UMASK)
    os.replace(tmp, path)


def fsync_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and make sure it reached the disk."""
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file whole or not at all (temporary sibling, fsync, rename)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write a file whole or not at all (temporary sibling, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: the largest stamp (a small JSON file naming a state's config and format) read by :func:`read_regular`
STAMP_BYTES = 1 << 16
#: the largest entity state file read (one entity block's Arrow file, in a state folder or a stream's checkpoints)
STATE_FILE_BYTES = 4 << 30


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of ``path`` when it is a regular file (not a link, FIFO or device, which could point elsewhere or
    block for ever) of at most ``limit`` bytes; an :class:`OSError` saying which it is otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        if info.st_size > limit:
            raise OSError(0, f"{info.st_size:,} bytes, more than the {limit:,} such a file may hold")
        return fh.read(limit + 1)[:limit]
