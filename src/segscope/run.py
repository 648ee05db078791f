"""The one scoring loop: a :class:`~segscope.sources.base.Source` hands out batches, the model scores each with one
:class:`RunState` (an alert budget counts across them, each entity carries on), a :class:`~segscope.sinks.base.Sink`
writes them, and the source commits each batch once its output is safe.

``segscope score`` (a file: :func:`segscope.pipeline.score_file`) and ``segscope watch`` (each file that lands in a
folder) run through :func:`run`; ``segscope stream`` scores and writes each polled batch with :func:`score_batch`
and :func:`write_batch`, around them what only Kafka has. What only some sources and sinks can do is asked for by
capability (``isinstance`` on a runtime-checkable protocol), never by their type:

* :class:`AllOrNothing`: a sink whose output appears only when it is closed (a file), so a check of the whole
  input may come after the last batch (a file's repeated ids) instead of before the first.
* :class:`KeepsDeadLetters`: a sink that keeps the records a source could not turn into rows (a dead-letter
  topic); for any other sink they are counted and left.
* :class:`Transactional` with a :class:`Positioned` source: each batch's outputs and the source's positions after it
  are one transaction (Kafka's exactly-once), instead of the source's commit after the output is flushed.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import polars as pl

from segscope.exceptions import DataError, SchemaError, SinkError
from segscope.model import Model, ScoringState
from segscope.sinks.base import Sink
from segscope.sources.base import Batch, DeadLetter, Source
from segscope.unsupervised.drift import DriftTracker

__all__ = [
    "AllOrNothing",
    "KeepsDeadLetters",
    "Positioned",
    "RunState",
    "Transactional",
    "prefetch",
    "run",
    "score_batch",
    "write_batch",
]

_T = TypeVar("_T")


def _never() -> bool:
    return False


@runtime_checkable
class KeepsDeadLetters(Protocol):
    """A sink that keeps the records a source could not use, with the batch they came in."""

    def dead_letters(self, letters: list[DeadLetter], topic: str | None = None, batch: Batch | None = None) -> None: ...


@runtime_checkable
class AllOrNothing(Protocol):
    """A sink whose output appears only when ``close`` succeeds (a file renamed into place), when
    ``all_or_nothing``: a run may still refuse its input after the last batch and leave nothing behind."""

    all_or_nothing: bool


@runtime_checkable
class Positioned(Protocol):
    """A source that reads from positions it commits and can go back to (Kafka: a consumer group's offsets)."""

    def commit_positions(self, positions: dict[Any, int]) -> None: ...

    def rewind(self, stopping: Callable[[], bool] = _never) -> dict[Any, int]: ...

    def group_metadata(self) -> Any: ...


@runtime_checkable
class Transactional(Protocol):
    """A sink whose outputs of a batch commit together with a :class:`Positioned` source's positions after it, when
    it has a ``transactional_id``; ``commit_transaction`` returns False when the transaction was aborted instead."""

    transactional_id: str | None

    def begin(self, stopping: Callable[[], bool] = _never) -> None: ...

    def commit_transaction(
        self, positions: dict[Any, int], group_metadata: Any, stopping: Callable[[], bool] = _never
    ) -> bool: ...


@dataclass
class RunState:
    """What one run carries from batch to batch: the model's scoring state (an alert budget's counts, each
    entity's state), the drift tracker, and what was scored so far (``dead_letters``: records the source could
    not turn into rows)."""

    scoring: ScoringState | None = None
    drift: DriftTracker | None = None
    rows: int = 0
    alerts: int = 0
    batches: int = 0
    dead_letters: int = 0

    @classmethod
    def start(cls, model: Model, *, from_start: bool = False) -> RunState:
        """A new run of ``model`` (``from_start``: entities from an empty state, as at the start of the history)."""
        return cls(model.new_state(from_start=from_start), model.drift_tracker())


def score_batch(batch: Batch, model: Model, state: RunState) -> pl.DataFrame | None:
    """The batch's rows scored with the run's state, and counted (None when it has none); a row named in an error
    is numbered from the start of the run (the batch's ``start``)."""
    state.batches += 1
    state.dead_letters += len(batch.dead)
    if not batch.frame.height:
        return None
    try:
        scored = model.score(batch.frame, state=state.scoring, drift=state.drift)
    except (SchemaError, DataError) as exc:
        if not batch.start:
            raise
        raise type(exc)(_shift_row(str(exc), batch.start)) from None
    state.rows += scored.height
    state.alerts += int(scored.get_column("is_alert").sum())
    return scored


def _shift_row(message: str, offset: int) -> str:
    return re.sub(r"row (\d+)", lambda m: f"row {int(m.group(1)) + offset}", message, count=1)


def write_batch(batch: Batch, scored: pl.DataFrame | None, sink: Sink) -> None:
    """The scored rows to the sink with their batch, and the batch's dead letters to a sink that keeps them (told
    of every batch, one without rows or dead letters too: its positions are done once it is)."""
    if scored is not None:
        sink.write(scored, batch)
    if isinstance(sink, KeepsDeadLetters):
        sink.dead_letters(batch.dead, batch=batch)


def run(
    source: Source,
    model: Model,
    sink: Sink,
    state: RunState,
    *,
    ahead: bool = False,
    on_batch: Callable[[Batch, pl.DataFrame | None], None] | None = None,
    on_end: Callable[[RunState], None] | None = None,
    stopping: Callable[[], bool] = _never,
) -> RunState:
    """Every batch of ``source`` scored by ``model`` with ``state`` and written to ``sink``, then committed: by the
    source once the sink has flushed it or, with a :class:`Transactional` sink and a :class:`Positioned` source,
    with the batch's outputs in one transaction. After the last batch ``on_end`` (a check that may still refuse
    the run) and the sink is closed; on any error it is aborted (nothing half-written) and the error raised. The
    source is closed in any case. ``on_batch`` hears of each batch once it is written. ``ahead``: the source is
    read and the next batch scored in threads while this one is written (sources and sinks that allow it:
    files)."""
    tx = sink if isinstance(sink, Transactional) and sink.transactional_id is not None else None
    positioned = source if isinstance(source, Positioned) else None
    if tx is not None and positioned is None:
        raise SinkError("a transactional sink commits the source's positions, and this source has none")
    source.open()
    try:
        batches = prefetch(source.iter_batches(), depth=1) if ahead else source.iter_batches()
        scored = ((batch, score_batch(batch, model, state)) for batch in batches)
        for batch, frame in prefetch(scored) if ahead else scored:
            if tx is not None:
                tx.begin(stopping)
            write_batch(batch, frame, sink)
            if on_batch is not None:
                on_batch(batch, frame)
            if tx is not None and positioned is not None:
                if not tx.commit_transaction(batch.position or {}, positioned.group_metadata(), stopping):
                    raise SinkError("a batch's transaction was aborted; its records are read again by the next run")
            else:
                sink.flush()
                source.commit(batch)
        if on_end is not None:
            on_end(state)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        source.close()
    return state


def prefetch(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """Run ``items`` ahead in a thread, at most ``depth`` items; errors re-raise in the consumer, in their place."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(("item", item))
            slots.put(("done", None))
        except BaseException as exc:  # handed to the consumer
            slots.put(("error", exc))

    worker = threading.Thread(target=produce, name="segscope-score", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
