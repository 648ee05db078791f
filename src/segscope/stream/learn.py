"""The learning loop beside a stream (``segscope learn``): when analysts have given enough new labels, fine-tune
the registry's current version on the label store's records, let the promotion gate decide, and log one line per
decision. A stream scoring from the same registry (``segscope stream --bundle REGISTRY``) hot-swaps between two
batches when the gate promotes (:class:`~segscope.stream.parts.ModelWatcher`).

* **When**: the store is polled every ``every`` seconds; the labels stored since the last fine-tune are counted
  (every analyst decision, from the page, the JSON API, ``segscope label add`` or the labels topic a stream
  consumes; a changed label counts, an unchanged repeat is not stored). At ``min_labels`` it fine-tunes, or,
  with ``max_wait``, on fewer once the first of them has waited that long (counted from when this learner saw
  it), so a slow trickle of labels still reaches the model.
* **What**: the fine-tune is the caller's function (:func:`segscope.pipeline.finetune_file`, a layer above this
  one) on the registry and the store: the store's records are the training data, its current labels the labels;
  the candidate is written to the registry whether or not the gate promotes it, and promoted by compare-and-swap.
* **One at a time**: ``learning.lock`` in the registry is held (``flock``) for each fine-tune, so two learners on
  one registry never fine-tune at once (the other waits for its turn at its next poll).
* **Where it left off**: ``learning.json`` in the registry keeps the newest label id the last fine-tune saw (for
  this store), so a restarted learner waits for labels that are really new; a new registry or another store
  counts every stored label as new.
* **Failures**: a fine-tune that fails (a store without a labelled anomaly, a stored value that does not read) is
  one line, and the loop waits for ``min_labels`` more labels; a store it cannot reach is one line, and it retries.
* **The queue**: after a promotion, the stored records are re-scored with the new version, so the analysts'
  review queue ranks by the model that serves (``rescore=False`` leaves that to ``segscope serve --bundle``).
* **Stopping**: :meth:`LearnLoop.stop` (SIGTERM/SIGINT with :meth:`LearnLoop.stop_on_signals`) ends the wait at
  once and abandons a fine-tune in progress at its next step, before anything is written (a candidate is written
  whole or not at all).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segscope import registry
from segscope._io import write_text_atomic
from segscope.bundle import MANIFEST
from segscope.exceptions import BundleError, ConfigError, DataError, SegscopeError
from segscope.labels._open import hide_password
from segscope.labels.store import LabelStore
from segscope.model import Model
from segscope.supervised.learners import LEARNERS

__all__ = ["LOCK", "STATE", "FineTune", "LearnLoop", "LearnOptions", "LearnStats", "Stopped", "check_registry"]

log = logging.getLogger("segscope.learn")

STATE = "learning.json"
LOCK = "learning.lock"

#: :func:`segscope.pipeline.finetune_file`'s signature: (bundle, *, store, ...) -> (candidate, report, registry)
FineTune = Callable[..., tuple[Any, dict[str, Any], Path]]


@dataclass(frozen=True)
class LearnOptions:
    #: the registry the stream scores from (``segscope stream --bundle REGISTRY``)
    registry: Path
    #: label store URL: the records the stream kept and the analysts' labels
    store: str
    #: new labels that start a fine-tune
    min_labels: int = 50
    #: seconds between two looks at the store
    every: float = 30.0
    #: fine-tune on fewer than min_labels new labels once the first has waited this many seconds (None: never)
    max_wait: float | None = None
    #: exit after this many seconds without a new label and with nothing to fine-tune (None: run until stopped)
    idle_exit: float | None = None
    learner: str = "xgboost"
    #: folds of the promotion gate (None: the gate's default)
    folds: int | None = None
    trusted: bool = False
    #: after a promotion, re-score the stored records with the new version (the queue ranks by it)
    rescore: bool = True


@dataclass
class LearnStats:
    finetunes: int = 0
    promoted: list[str] = field(default_factory=list)
    refused: int = 0
    failed: int = 0


class Stopped(Exception):
    """Raised inside a fine-tune when the loop is asked to stop: abandoned before anything is written."""


def check_registry(path: Path) -> None:
    """Refuse (one line) a ``--bundle`` that is not a registry: the learner adds versions to a registry, and a
    stream hot-swaps only when it scores from one."""
    if registry.is_registry(path):
        registry.resolve(path)  # CURRENT names a version that is there
        return
    if not path.exists():
        raise BundleError(f"--bundle {path} does not exist; pass the registry `segscope stream --bundle` scores from")
    if (path / MANIFEST).is_file():
        raise BundleError(
            f"--bundle {path} is a plain bundle, not a registry: add --init to make it one in place (its version "
            f"becomes the first, current one), then start `segscope stream --bundle {path}` on it so the stream "
            "hot-swaps what the learner promotes"
        )
    raise BundleError(
        f"--bundle {path} is neither a registry nor a bundle (no CURRENT, no {MANIFEST}); pass the folder "
        "`segscope fit --out` wrote, with --init to make it a registry"
    )


class LearnLoop:
    """Run with :meth:`run` until :meth:`stop` (or ``idle_exit``); one instance per process and registry."""

    def __init__(
        self, options: LearnOptions, finetune: FineTune, *, on_line: Callable[[str], None] | None = None
    ) -> None:
        if options.min_labels < 1:
            raise ConfigError(f"--min-labels must be at least 1; got {options.min_labels}")
        if options.learner not in LEARNERS:
            raise ConfigError(f"--learner {options.learner!r}: use one of {', '.join(LEARNERS)}")
        if not options.every > 0:
            raise ConfigError(f"--every must be a positive number of seconds; got {options.every}")
        if options.max_wait is not None and not options.max_wait > 0:
            raise ConfigError(f"--max-wait must be a positive number of seconds; got {options.max_wait}")
        self.options = options
        self.finetune = finetune
        self.say = on_line or log.info
        self.stats = LearnStats()
        self._stopping = False
        self._said: dict[str, str] = {}  # the last line of each kind of waiting, said once until it changes

    # ---------------------------------------------------------------- stopping
    def stop(self) -> None:
        """Stop at once when waiting, or at the next step of a fine-tune (nothing of it written)."""
        self._stopping = True

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT stop the loop (call from the main thread)."""

        def handler(signum: int, frame: Any) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def _check_stop(self, _step: str) -> None:
        if self._stopping:
            raise Stopped

    # ---------------------------------------------------------------- the loop
    def run(self) -> LearnStats:
        opts = self.options
        path = opts.registry
        check_registry(path)
        model = Model.load(path, trusted=opts.trusted)  # an untrusted pickle, a damaged bundle: refused now
        if model.id_column is None:
            raise DataError(
                f"registry {path}: version {model.version} has no id column, and labels reach records by id; "
                "refit with --id-column"
            )
        os.close(_open_lock(path))  # a registry this user cannot write in: refused now, not at the first fine-tune
        store = LabelStore.open(opts.store, create=False)
        shown = hide_password(opts.store)
        try:
            seen = self._load_state(shown)
            pending, _ = store.labels_after(seen)
            wait = f" or {opts.max_wait:g} s after the first of fewer" if opts.max_wait is not None else ""
            self.say(
                f"learn: registry {path} (version {model.version}), label store {shown}: fine-tunes after "
                f"{opts.min_labels:,} new labels{wait} ({pending:,} so far), checking every {opts.every:g} s"
            )
            last_change, before = time.monotonic(), pending
            first_new: float | None = None  # when this learner first saw a label not fine-tuned on yet
            while not self._stopping:
                try:
                    fresh, newest = store.labels_after(seen)
                except Exception as exc:  # a server that went away, a locked file: say so once, try again
                    self._once("store", f"learn: cannot read label store {shown} ({_first_line(exc)}); trying again")
                    self._sleep(opts.every)
                    continue
                self._said.pop("store", None)
                if newest < seen:  # the store was emptied or replaced: its labels are all new
                    seen = 0
                    fresh, newest = store.labels_after(seen)
                if fresh != before:
                    last_change, before = time.monotonic(), fresh
                first_new = (first_new or time.monotonic()) if fresh else None
                due = first_new is not None and self._waited(first_new)
                if fresh >= opts.min_labels or due:
                    done = self._turn(store, shown, seen, 1 if due else opts.min_labels)
                    if done is None:  # stopped mid-way
                        break
                    if done != seen:
                        seen, before, last_change, first_new = done, 0, time.monotonic(), None
                elif opts.idle_exit is not None and time.monotonic() - last_change > opts.idle_exit:
                    self.say(f"learn: no new label for {opts.idle_exit:g} s; exiting")
                    break
                self._sleep(opts.every)
        finally:
            store.close()
        return self.stats

    def _once(self, kind: str, line: str) -> None:
        if self._said.get(kind) != line:
            self.say(line)
        self._said[kind] = line

    def _waited(self, since: float) -> bool:
        return self.options.max_wait is not None and time.monotonic() - since >= self.options.max_wait

    def _turn(self, store: LabelStore, shown: str, seen: int, minimum: int) -> int | None:
        """One fine-tune and its decision when ``minimum`` labels are new; returns the newest label id it saw
        (``seen`` when it did not run: another learner holds the registry, the store went away), None when
        stopped mid-way (nothing written)."""
        opts, path = self.options, self.options.registry
        with _learning_lock(path) as held:
            if held is not None:
                other = f"learn: another learner (pid {held}) is fine-tuning registry {path}; waiting for it"
                self._once("lock", other)
                return seen
            try:
                fresh, newest = store.labels_after(seen)
                other_seen = self._load_state(shown)  # another learner may have fine-tuned on these labels meanwhile
                if seen < other_seen <= newest:
                    seen = other_seen
                    fresh, _ = store.labels_after(seen)
                    if fresh < minimum:
                        return seen
                current = store.labels()
                version = registry.current_version(path)
            except BundleError as exc:
                self._once("registry", f"learn: {exc}; waiting")
                return seen
            except Exception as exc:  # the store went away between two looks
                self._once("store", f"learn: cannot read label store {shown} ({_first_line(exc)}); trying again")
                return seen
            self._said.clear()
            anomalies = int((current["label"] == "anomaly").sum())
            counts = f"{current.height:,} labels ({anomalies:,} anomalies, {current.height - anomalies:,} normal)"
            why = f" (the first waited {opts.max_wait:g} s)" if fresh < opts.min_labels else ""
            self.say(f"learn: {fresh:,} new labels{why}, {counts} in all: fine-tuning version {version}")
            started = time.monotonic()
            outcome: dict[str, Any] = {}
            try:
                candidate, report, _ = self.finetune(
                    path,
                    store=opts.store,
                    learner=opts.learner,
                    trusted=opts.trusted,
                    on_step=self._check_stop,
                    **({"folds": opts.folds} if opts.folds is not None else {}),
                )
            except Stopped:
                self.say(f"learn: stopped while fine-tuning version {version}; nothing was written")
                return None
            except SegscopeError as exc:
                self.stats.failed += 1
                outcome = {"failed": _first_line(exc)}
                self.say(
                    f"learn: fine-tuning version {version} on {counts} failed: {_first_line(exc)}; waiting for "
                    f"{opts.min_labels:,} more labels"
                )
            except Exception as exc:  # not a data problem segscope knows: still one line, and the service goes on
                self.stats.failed += 1
                outcome = {"failed": f"{type(exc).__name__}: {_first_line(exc)}"}
                self.say(
                    f"learn: fine-tuning version {version} failed unexpectedly ({type(exc).__name__}: "
                    f"{_first_line(exc)}); waiting for {opts.min_labels:,} more labels"
                )
            else:
                self.stats.finetunes += 1
                outcome = {"candidate": candidate.version, "promoted": bool(report.get("promote"))}
                self._decision(version, candidate.version, report, counts, fresh, time.monotonic() - started)
            self._save_state(shown, newest, version, outcome)
            if outcome.get("promoted") and opts.rescore:
                self._rescore(store, candidate)
            return newest

    def _rescore(self, store: LabelStore, model: Model) -> None:
        """Re-score the stored records an earlier version scored, so the review queue ranks by the version that
        now serves (batch by batch: a stop leaves the rest for the next promotion or `serve --bundle`)."""
        done = 0
        try:
            for ids, frame in store.stale_records(model.version):
                if self._stopping:
                    break
                done += store.add_records(model.for_review(model.score(frame), ids=ids), source="rescore")
        except Exception as exc:  # the queue keeps the old scores: not a reason to stop learning
            self.say(f"learn: re-scoring the stored records stopped after {done:,}: {_first_line(exc)}")
            return
        self.say(f"learn: {done:,} stored records re-scored with version {model.version} (the queue ranks by it)")

    def _decision(
        self, version: str, candidate: str, report: dict[str, Any], counts: str, fresh: int, seconds: float
    ) -> None:
        metric = str(report.get("metric", "aucpr"))
        figures = ""
        if isinstance(report.get("current"), dict) and isinstance(report.get("candidate"), dict):
            before, after = report["current"].get(metric), report["candidate"].get(metric)
            if isinstance(before, float) and isinstance(after, float) and f"{after:.4f}" not in str(report["reason"]):
                figures = f", gate {metric.upper()} {before:.3f} -> {after:.3f}"  # unless the reason says them
        tail = f"; {counts}, {fresh:,} new{figures}; {seconds:.0f} s"
        if report.get("promote"):
            self.stats.promoted.append(candidate)
            self.say(f"learn: promoted version {candidate} (was {version}): {report.get('reason')}{tail}")
        else:
            self.stats.refused += 1
            self.say(f"learn: kept version {version}, candidate {candidate} not promoted: {report.get('reason')}{tail}")

    # ---------------------------------------------------------------- state
    def _load_state(self, shown: str) -> int:
        """The newest label id the last fine-tune of this registry saw in this store (0: none yet)."""
        try:
            state = json.loads((self.options.registry / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        if not isinstance(state, dict) or state.get("store") != shown:
            return 0
        seen = state.get("label_id")
        return seen if isinstance(seen, int) and 0 <= seen < 2**63 else 0  # a database integer (an edited file)

    def _save_state(self, shown: str, newest: int, version: str, outcome: dict[str, Any]) -> None:
        state = {
            "store": shown,
            "label_id": newest,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "fine_tuned": version,
            **outcome,
        }
        try:
            write_text_atomic(self.options.registry / STATE, json.dumps(state, sort_keys=True) + "\n")
        except OSError as exc:
            self.say(f"learn: cannot write {self.options.registry / STATE} ({exc.strerror}); a restart counts again")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _open_lock(path: Path) -> int:
    try:
        return os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"registry {path}: cannot open {LOCK} ({exc.strerror}); the learner needs to write in the registry "
            "folder: run it as the user that owns it"
        ) from None


@contextmanager
def _learning_lock(path: Path) -> Iterator[str | None]:
    """Hold ``learning.lock`` for a fine-tune: yields None when held, else the holder's pid (as written)."""
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            yield holder
            return
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
