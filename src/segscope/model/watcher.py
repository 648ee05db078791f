"""The model a long-running job scores with (a stream, a watched folder): loaded once, and again when a registry's
CURRENT pointer moves; with the scoring state and drift tracker that go with it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numba
import polars as pl

from segscope import registry
from segscope.model import Model

__all__ = ["ModelWatcher", "warm_up"]

log = logging.getLogger(__name__)


def warm_up(model: Model, *, threads: int | None = None) -> threading.Thread:
    """Score a record of missing values in a thread, while the input is read or the clients connect: Numba loads
    its own modules (about 0.4 s) and each kernel from its cache at their first call, before the first output
    otherwise. ``threads``: Numba's threads for that thread (as the scoring thread will use). Join it before
    scoring with ``model``. Whatever it raises is left to the first batch to say."""
    kinds = {"numeric": pl.Float64(), "boolean": pl.Boolean(), "categorical": pl.String()}

    def run() -> None:
        if threads is not None:
            numba.set_num_threads(threads)  # per thread
        columns = model.input_schema().columns
        try:
            model.score(
                pl.DataFrame([pl.Series(c.name, [None], kinds.get(c.kind, pl.Datetime("us"))) for c in columns])
            )
        except Exception:
            log.debug("warm-up scoring failed", exc_info=True)

    # not a daemon: the interpreter waits for it before finalizing. A daemon thread still in Polars or Arrow when
    # a run ended early (a refused Kafka login) was ended by pthread_exit inside their C++ frames: SIGABRT.
    thread = threading.Thread(target=run, name="segscope-warm-up")
    thread.start()
    return thread


class ModelWatcher:
    """Holds the scoring model and its scoring state; reloads both when a registry's CURRENT pointer moves. A new
    CURRENT that does not load (damaged, untrusted, removed) is logged once and the current model keeps scoring:
    a stream is not stopped by a bad promotion, and a later promotion or a rollback is picked up as usual."""

    def __init__(self, bundle: Path, trusted: bool) -> None:
        self.bundle, self.trusted = bundle, trusted
        self.model = Model.load(bundle, trusted=trusted)
        self.state = self.model.new_state()  # an alert budget counts across batches, for the life of the stream
        self.drift = self.model.drift_tracker()  # a new one every stats window
        self.pointer = registry.current_version(bundle) if registry.is_registry(bundle) else None
        self.refused: str | None = None  # the last CURRENT that did not load (logged once)

    def warm_up(self) -> threading.Thread:
        """:func:`warm_up` on one thread, as the stream scores: join it before scoring."""
        return warm_up(self.model, threads=1)

    def refresh(self) -> bool:
        if self.pointer is None:
            return False
        try:
            pointer = registry.current_version(self.bundle)
        except Exception:  # a pointer being replaced or damaged: keep scoring with the current model
            return False
        if pointer == self.pointer or pointer == self.refused:
            if pointer == self.pointer:
                self.refused = None  # rolled back: the same version may be promoted (and tried) again
            return False
        before = self.model
        try:
            model = Model.load(self.bundle, trusted=self.trusted)
        except Exception as exc:  # whatever the new version's files raise: it does not score, the current one does
            self.refused = pointer
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.error(
                "registry %s: CURRENT now names version %s, which does not load (%s); still scoring with version "
                "%s: promote a loadable version or roll back",
                self.bundle, pointer, reason, before.version,
            )  # fmt: skip
            return False
        self.model = model
        entities = self.state.entities
        self.state = self.model.new_state()
        if entities is not None and before.entity_meaning == self.model.entity_meaning:
            self.state.entities = entities  # a promoted version continues each entity where the stream is
        self.drift = self.model.drift_tracker()
        self.pointer = pointer
        return True
