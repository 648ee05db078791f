"""A watched folder: every file that lands in it is scored once, into a folder of outputs, across restarts.

Each file is one ``score`` job (:func:`segscope.pipeline.score_file`: all or nothing, its own scoring state).
What was done is kept in a ledger beside the outputs (``.segscope-watch.json``, written atomically after each
output is in place), so a restart scores only what is new; a file whose size or modification time changed is
new again. A file is taken once it has kept its size for ``settle`` seconds (writers that write in place); a
writer that renames a finished file into the folder is always safe, and names that start with a dot or end in
``.tmp``/``.part`` are never taken. A file that fails is recorded with its one-line reason and left alone
until it changes; symbolic links are never followed. With a registry as the bundle, each file is scored with
the version CURRENT names when the file starts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segscope import registry
from segscope._io import EXTENSIONS, write_text_atomic
from segscope.exceptions import BundleError, ConfigError, SegscopeError
from segscope.labels.store import LabelStore
from segscope.model import Model
from segscope.pipeline import score_file

__all__ = ["LEDGER", "FolderWatch", "Outcome", "ledger_summary"]

log = logging.getLogger("segscope.watch")

#: The ledger's name in the output folder.
LEDGER = ".segscope-watch.json"
_PARTIAL = (".tmp", ".part", ".partial", ".crdownload", ".inprogress")
_FORMATS = ("parquet", "csv", "ndjson")


@dataclass(frozen=True)
class Outcome:
    """What became of one input file (a ledger entry)."""

    size: int
    mtime_ns: int
    status: str  # "scored" or "failed"
    out: str | None = None
    rows: int = 0
    alerts: int = 0
    model_version: str | None = None
    error: str | None = None


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
    ) -> None:
        self.folder, self.bundle, self.out_dir = Path(folder), Path(bundle), Path(out_dir)
        self.trusted, self.out_format, self.settle = trusted, out_format, settle
        self.batch_size, self.store = batch_size, store
        self._refused: str | None = None  # the last promotion that did not load (logged once)
        self.waiting: list[str] = []  # files of the last poll not settled yet

    # ------------------------------------------------------------- set-up
    def _check(self) -> None:
        if self.out_format not in _FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(_FORMATS)}; got {self.out_format!r}")
        if not self.folder.is_dir():
            raise ConfigError(f"{self.folder}: no such folder to watch; create it or name an existing one")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.out_dir.resolve() == self.folder.resolve():
            raise ConfigError(
                f"--out-dir {self.out_dir} is the watched folder: outputs would be scored as inputs; "
                "write them to another folder"
            )

    def ledger(self) -> dict[str, Outcome]:
        """What was done so far, by input file name."""
        path = self.out_dir / LEDGER
        if not path.exists():
            return {}
        try:
            raw = json.loads(path.read_text())
            return {str(name): Outcome(**entry) for name, entry in raw["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{path}: the watch ledger is unreadable ({type(exc).__name__}); move it away to score every "
                "file of the folder again"
            ) from None

    def _save(self, done: dict[str, Outcome]) -> None:
        files = {name: asdict(outcome) for name, outcome in sorted(done.items())}
        write_text_atomic(self.out_dir / LEDGER, json.dumps({"files": files}, indent=1) + "\n")

    # ------------------------------------------------------------- one pass
    def _candidates(self) -> dict[str, tuple[int, int]]:
        found = {}
        for path in self.folder.iterdir():
            name = path.name
            if name.startswith(".") or name.lower().endswith(_PARTIAL) or path.suffix.lower() not in EXTENSIONS:
                continue
            try:
                stat = path.stat()
            except OSError:  # removed between the listing and the look
                continue
            # a link could make a drop folder read any local file into an output others see: regular files only
            if path.is_file() and not path.is_symlink():
                found[name] = (stat.st_size, stat.st_mtime_ns)
        return found

    def _model(self, current: Model | None) -> Model:
        """The model for the next file: loaded once, again when a registry's CURRENT moves. A promoted version
        that does not load is logged and the current one keeps scoring (a bad promotion stops no watch)."""
        if current is None:
            return Model.load(self.bundle, trusted=self.trusted)
        if not registry.is_registry(self.bundle):
            return current
        try:
            if registry.current_version(self.bundle) == current.version:
                return current
            return Model.load(self.bundle, trusted=self.trusted)
        except BundleError as exc:
            if str(exc) != self._refused:
                log.error("%s; still scoring with version %s", exc, current.version)
                self._refused = str(exc)
            return current

    def _output(self, name: str, done: dict[str, Outcome]) -> Path:
        out = self.out_dir / f"{Path(name).stem}.scored.{self.out_format}"
        clash = [other for other, o in done.items() if o.out == str(out) and other != name]
        if clash:
            raise ConfigError(f"{name} and {clash[0]} would both be scored into {out.name}: rename one of them")
        return out

    def poll(
        self, seen: dict[str, tuple[int, int]], model: Model | None, *, wait: bool = True
    ) -> tuple[list[tuple[str, Outcome]], Model | None]:
        """Score every settled file not in the ledger as it is; ``seen`` holds the sizes of the last poll (a
        file is settled once unchanged between two polls and older than ``settle``). ``wait=False`` takes every
        file older than ``settle`` at once."""
        done = self.ledger()
        results: list[tuple[str, Outcome]] = []
        found = self._candidates()
        now = time.time_ns()
        self.waiting = []
        for name, (size, mtime_ns) in sorted(found.items()):
            before = done.get(name)
            if before is not None and (before.size, before.mtime_ns) == (size, mtime_ns):
                continue
            steady = not wait or seen.get(name) == (size, mtime_ns)
            if not steady or now - mtime_ns < self.settle * 1e9:
                self.waiting.append(name)
                continue
            model = self._model(model)
            outcome = self._score(name, size, mtime_ns, model, done)
            done[name] = outcome
            self._save(done)
            results.append((name, outcome))
        seen.clear()
        seen.update(found)
        return results, model

    def _score(self, name: str, size: int, mtime_ns: int, model: Model, done: dict[str, Outcome]) -> Outcome:
        try:
            out = self._output(name, done)
            summary = score_file(model, self.folder / name, out, batch_size=self.batch_size, store=self.store)
        except SegscopeError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return Outcome(size, mtime_ns, "failed", model_version=model.version, error=reason)
        return Outcome(size, mtime_ns, "scored", str(out), summary.rows, summary.alerts, model.version)

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
        lock = os.open(self.out_dir / ".segscope-watch.lock", os.O_RDWR | os.O_CREAT, 0o600)
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
        self.ledger()  # an unreadable ledger is an error before any work
        seen: dict[str, tuple[int, int]] = {}
        model: Model | None = None
        did: list[tuple[str, Outcome]] = []
        last = time.monotonic()
        while True:
            results, model = self.poll(seen, model, wait=not once)
            for name, outcome in results:
                if on_file is not None:
                    on_file(name, outcome)
            did += results
            if once:
                return did
            if results:
                last = time.monotonic()
            elif idle_exit is not None and time.monotonic() - last >= idle_exit:
                return did
            time.sleep(every)


def ledger_summary(outcomes: list[tuple[str, Outcome]]) -> dict[str, Any]:
    """Counts of a run, for the closing line."""
    scored = [o for _, o in outcomes if o.status == "scored"]
    return {
        "scored": len(scored),
        "failed": len(outcomes) - len(scored),
        "rows": sum(o.rows for o in scored),
        "alerts": sum(o.alerts for o in scored),
    }
