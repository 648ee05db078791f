"""A watched folder: every file that lands in it is scored once, into a folder of outputs, across restarts.

Each file is one ``score`` job (:func:`segscope.pipeline.score_file`, a run of the one scoring loop
:func:`segscope.run.run`: all or nothing, its own scoring state).
What was done is kept in a ledger beside the outputs (``.segscope-watch.json``, written atomically after each
output is in place), so a restart scores only what is new; a file whose size or modification time changed is
new again. A file is taken once it has kept its size for ``settle`` seconds (writers that write in place); a
writer that renames a finished file into the folder is always safe, and names that start with a dot or end in
``.tmp``/``.part`` are never taken. A file that fails is recorded with its one-line reason and left alone
until it changes. Only regular files are read, through the descriptor opened (without following a link) when
the file was chosen: a name swapped for a link meanwhile, or a name that is a pattern (``[ab].csv``), never
reads another file. With a registry as the bundle, each file is scored with the version CURRENT names when the
file starts. With ``state_dir``, files are scored in name order and each continues the entities' state the one
before left (:mod:`segscope.file_state`); without it each file starts from the end of the bundle's history.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segscope._io import EXTENSIONS, write_text_atomic
from segscope.exceptions import ConfigError, SegscopeError, SegscopeWarning, SourceError
from segscope.labels.store import LabelStore
from segscope.model import Model
from segscope.model.watcher import ModelWatcher
from segscope.pipeline import score_file

__all__ = ["LEDGER", "FolderWatch", "Outcome", "ledger_summary"]

log = logging.getLogger("segscope.watch")

#: The ledger's name in the output folder.
LEDGER = ".segscope-watch.json"
_PARTIAL = (".tmp", ".part", ".partial", ".crdownload", ".inprogress")
_FORMATS = ("parquet", "csv", "ndjson")


@dataclass(frozen=True)
class Outcome:
    """What became of one input file (a ledger entry); ``out`` is the output's name in the output folder."""

    size: int
    mtime_ns: int
    status: str  # "scored" or "failed"
    out: str | None = None
    rows: int = 0
    alerts: int = 0
    model_version: str | None = None
    error: str | None = None
    inode: int = 0


_Key = tuple[int, int, int]  # size, modification time, inode: a file replaced by another is new


class FolderWatch:
    """Scores the files of ``folder`` into ``out_dir`` (``<stem>.scored.<format>``); :meth:`run` polls."""

    def __init__(
        self,
        folder: str | Path,
        bundle: str | Path,
        out_dir: str | Path,
        *,
        trusted: bool = False,
        out_format: str = "parquet",
        settle: float = 2.0,
        batch_size: int = 200_000,
        store: LabelStore | None = None,
        state_dir: str | Path | None = None,
    ) -> None:
        self.folder, self.bundle, self.out_dir = Path(folder), Path(bundle), Path(out_dir)
        self.trusted, self.out_format, self.settle = trusted, out_format, settle
        self.batch_size, self.store = batch_size, store
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._watcher: ModelWatcher | None = None  # the model, reloaded when a registry's CURRENT moves
        self._done: dict[str, Outcome] | None = None  # the ledger, read once (the lock makes this the only writer)
        self.waiting: list[str] = []  # files of the last poll not settled yet

    # ------------------------------------------------------------- set-up
    def _check(self) -> None:
        if self.out_format not in _FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(_FORMATS)}; got {self.out_format!r}")
        if not self.folder.is_dir():
            raise ConfigError(f"{self.folder}: no such folder to watch; create it or name an existing one")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out-dir {self.out_dir}: {self._cannot(exc)}") from None
        if self.out_dir.resolve() == self.folder.resolve():
            raise ConfigError(
                f"--out-dir {self.out_dir} is the watched folder: outputs would be scored as inputs; "
                "write them to another folder"
            )

    @staticmethod
    def _cannot(exc: OSError) -> str:
        return f"cannot write there ({exc.strerror or type(exc).__name__}); choose a folder you can write to"

    def ledger(self) -> dict[str, Outcome]:
        """What was done so far, by input file name."""
        if self._done is not None:
            return self._done
        path = self.out_dir / LEDGER
        if not path.exists():
            self._done = {}
            return self._done
        try:
            raw = json.loads(path.read_text())
            self._done = {str(name): Outcome(**entry) for name, entry in raw["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ConfigError(
                f"{path}: the watch ledger is unreadable ({type(exc).__name__}); move it away to score every "
                "file of the folder again"
            ) from None
        return self._done

    def _save(self, done: dict[str, Outcome], present: set[str]) -> None:
        """The ledger of the files still in the folder (a deleted input's entry goes: the ledger stays small)."""
        files = {name: asdict(outcome) for name, outcome in sorted(done.items()) if name in present}
        try:
            write_text_atomic(self.out_dir / LEDGER, json.dumps({"files": files}, indent=1) + "\n")
        except OSError as exc:
            raise ConfigError(f"--out-dir {self.out_dir}: {self._cannot(exc)}") from None

    def _sweep(self) -> None:
        """Remove what a watch killed mid-file left in the output folder (outputs and ledgers not yet renamed
        into place, staging folders); the lock says no other watch is writing there."""
        for path in self.out_dir.iterdir():
            name = path.name
            ours = ".scored." in name or name.startswith(f"{LEDGER}.")
            if name.startswith(".") and name.endswith(".tmp") and ours and path.is_file():
                path.unlink(missing_ok=True)
            elif name.startswith(".staging.") and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------- one pass
    def _candidates(self) -> dict[str, _Key]:
        found = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            raise ConfigError(
                f"{self.folder}: the watched folder is gone or unreadable ({exc.strerror or exc}); restore it"
            ) from None
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.lower().endswith(_PARTIAL) or Path(name).suffix.lower() not in EXTENSIONS:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:  # removed between the listing and the look
                continue
            # a link could make a drop folder read any local file into an output others see: regular files only
            if stat.S_ISREG(info.st_mode):
                found[name] = (info.st_size, info.st_mtime_ns, info.st_ino)
        return found

    def _output(self, name: str, done: dict[str, Outcome]) -> str:
        stem = os.fsencode(Path(name).stem).decode("utf-8", "backslashreplace")  # writers need a UTF-8 name
        out = f"{stem}.scored.{self.out_format}"
        clash = [other for other, o in done.items() if o.out == out and other != name]
        if clash:
            raise ConfigError(f"{name} and {clash[0]} would both be scored into {out}: rename one of them")
        return out

    def poll(
        self,
        seen: dict[str, _Key],
        *,
        wait: bool = True,
        on_file: Callable[[str, Outcome], None] | None = None,
    ) -> list[tuple[str, Outcome]]:
        """Score every settled file not in the ledger as it is; ``seen`` holds the sizes of the last poll (a
        file is settled once unchanged between two polls and older than ``settle``). ``wait=False`` takes every
        file older than ``settle`` at once. ``on_file`` hears of each file as it is done."""
        done = self.ledger()
        results: list[tuple[str, Outcome]] = []
        found = self._candidates()
        now = time.time_ns()
        self.waiting = []
        for name, key in sorted(found.items()):
            before = done.get(name)
            if before is not None and (before.size, before.mtime_ns, before.inode) == key:
                continue
            steady = not wait or seen.get(name) == key
            if not steady or now - key[1] < self.settle * 1e9:
                self.waiting.append(name)
                continue
            outcome = self._score(name, key, self._model(), done)
            done[name] = outcome
            self._save(done, set(found))
            results.append((name, outcome))
            if on_file is not None:
                on_file(name, outcome)
        seen.clear()
        seen.update(found)
        return results

    def _model(self) -> Model:
        """The model for the next file (a promoted version that does not load is logged by the watcher, and the
        current one keeps scoring: a bad promotion stops no watch)."""
        if self._watcher is None:
            self._watcher = ModelWatcher(self.bundle, self.trusted)
        else:
            self._watcher.refresh()
        return self._watcher.model

    @contextmanager
    def _staged(self, name: str, key: _Key) -> Iterator[Path]:
        """The file as chosen: opened without following a link, checked to be the regular file that was listed,
        and handed to the readers under a plain name that leads to that descriptor (``/proc/self/fd``)."""
        try:
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(
                f"cannot open it ({exc.strerror or exc}): it was replaced, removed or is a link"
            ) from None
        staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=self.out_dir))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_ino != key[2]:
                raise SourceError("it changed between the listing and the read: it is taken at the next look")
            staged = staging / f"input{Path(name).suffix.lower()}"
            os.symlink(f"/proc/self/fd/{fd}", staged)
            yield staged
        finally:
            os.close(fd)
            shutil.rmtree(staging, ignore_errors=True)

    def _score(self, name: str, key: _Key, model: Model, done: dict[str, Outcome]) -> Outcome:
        size, mtime_ns, inode = key
        staged = ""
        try:
            out = self._output(name, done)
            with warnings.catch_warnings(record=True) as said, self._staged(name, key) as path:
                warnings.simplefilter("always", SegscopeWarning)
                staged = str(path)
                summary = score_file(
                    model, path, self.out_dir / out, batch_size=self.batch_size, store=self.store,
                    state_dir=self.state_dir, name=name,
                )  # fmt: skip
            for warning in said:  # each warning names the file it is about
                message = str(warning.message).replace(staged + ": ", "")
                if issubclass(warning.category, SegscopeWarning):
                    warnings.warn(f"{name}: {message}", SegscopeWarning, 2)
                else:  # a library's own warning, as it came
                    warnings.warn_explicit(message, warning.category, warning.filename, warning.lineno)
        except SegscopeError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(staged + ": ", "")
            return Outcome(size, mtime_ns, "failed", model_version=model.version, error=reason, inode=inode)
        except Exception as exc:  # one file must not stop the folder: said, recorded, the others scored
            log.exception("%s: scoring failed unexpectedly", ascii(name))
            reason = f"internal error ({type(exc).__name__}: {str(exc).strip()[:200]}); please report it"
            return Outcome(size, mtime_ns, "failed", model_version=model.version, error=reason, inode=inode)
        return Outcome(size, mtime_ns, "scored", out, summary.rows, summary.alerts, model.version, inode=inode)

    # ------------------------------------------------------------- the loop
    def run(
        self,
        *,
        every: float = 2.0,
        once: bool = False,
        idle_exit: float | None = None,
        on_file: Callable[[str, Outcome], None] | None = None,
    ) -> list[tuple[str, Outcome]]:
        """Poll every ``every`` seconds until interrupted; ``once``: score what is there (settled) and return;
        ``idle_exit``: return after that many seconds without a new file. Returns what this run did."""
        self._check()
        try:
            lock = os.open(self.out_dir / ".segscope-watch.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"--out-dir {self.out_dir}: {self._cannot(exc)}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the process ends, however it ends
        except BlockingIOError:
            os.close(lock)
            raise ConfigError(
                f"another segscope watch writes to {self.out_dir}: stop it, or give this one its own --out-dir"
            ) from None
        try:
            return self._loop(every, once, idle_exit, on_file)
        finally:
            os.close(lock)

    def _loop(
        self, every: float, once: bool, idle_exit: float | None, on_file: Callable[[str, Outcome], None] | None
    ) -> list[tuple[str, Outcome]]:
        self._done = None
        self.ledger()  # an unreadable ledger is an error before any work
        self._sweep()
        seen: dict[str, _Key] = {}
        self._watcher = None
        self._model()  # a bundle that does not load is an error at start-up
        did: list[tuple[str, Outcome]] = []
        last = time.monotonic()
        while True:
            results = self.poll(seen, wait=not once, on_file=on_file)
            did += results
            if once:
                return did
            if results:
                last = time.monotonic()
            elif idle_exit is not None and time.monotonic() - last >= idle_exit:
                return did
            time.sleep(every)


def ledger_summary(outcomes: list[tuple[str, Outcome]]) -> dict[str, Any]:
    """Counts of a run, for the closing line: each file by how it ended (a file that failed while being written
    and was scored once complete counts as scored)."""
    last = dict(outcomes)
    scored = [o for o in last.values() if o.status == "scored"]
    return {
        "scored": len(scored),
        "failed": len(last) - len(scored),
        "rows": sum(o.rows for o in scored),
        "alerts": sum(o.alerts for o in scored),
    }
