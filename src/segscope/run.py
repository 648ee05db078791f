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
* :class:`Polling`: a source asked for what it has now (a batch or None), so a long-running job gets control
  between polls (:class:`Hooks`), and goes back to its last commit when what was written since may be lost
  (:class:`~segscope.exceptions.BackToLastCommit`: a :class:`Positioned` source rewinds, a :class:`Renewable` one
  may start a new client, a :class:`DropsInFlight` sink drops what it had in flight).
* :class:`Acknowledging`: a sink that decides the commit point: batches are written without waiting, and the
  source commits the positions of those whose outputs the sink says are safe (Kafka's at-least-once). When the
  hooks allow it (:meth:`Hooks.score_ahead`), each batch is scored in a thread while the one before is written.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import numba
import polars as pl

from segscope.exceptions import BackToLastCommit, DataError, SchemaError, SinkError
from segscope.model import Model, ScoringState
from segscope.sinks.base import Sink
from segscope.sources.base import Batch, DeadLetter, Source
from segscope.unsupervised.drift import DriftTracker

__all__ = [
    "Acknowledging",
    "AllOrNothing",
    "DropsInFlight",
    "Hooks",
    "KeepsDeadLetters",
    "Polling",
    "Positioned",
    "Renewable",
    "RunState",
    "Swapping",
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


@runtime_checkable
class Polling(Protocol):
    """A source asked for what it has now: a batch, or None when nothing came within its own short wait (or within
    ``timeout_ms``: 0 takes only what it holds already)."""

    def poll(self, timeout_ms: int | None = None) -> Batch | None: ...


@runtime_checkable
class Renewable(Protocol):
    """A source that can replace its client by a new one starting at the last commit (a consumer that lost its
    cluster while a new one reaches it)."""

    def renew(self) -> None: ...


@runtime_checkable
class Acknowledging(Protocol):
    """A sink that decides the commit point: ``write`` does not wait, ``done_positions()`` returns the positions of
    the batches whose outputs are all safe since the last call (merged, in order), ``flush()`` waits for all."""

    def done_positions(self) -> dict[Any, int]: ...


@runtime_checkable
class DropsInFlight(Protocol):
    """A sink that can give up what it has in flight when the run goes back to the last commit (``reset``), and
    count afterwards what did commit after all (``settle_uncertain``: the positions the source went back to)."""

    def reset(self) -> int: ...

    def settle_uncertain(self, committed: dict[Any, int]) -> None: ...


class Hooks:
    """What a long-running job does around a polling run (:func:`run` with a :class:`Polling` source); each
    defaults to nothing. Stream extras (a model swapped, stats, an idle exit, a labels topic) live here."""

    def started(self) -> None:
        """The source is open (connected), before the first poll."""

    def before(self, batch: Batch, state: RunState) -> None:
        """Before ``batch`` is scored: the state it continues is restored (a checkpoint of a new partition)."""

    def between(self, batch: Batch | None, state: RunState) -> bool:
        """After each poll, its batch (if any) written and the commits made: False ends the run. May raise
        :class:`~segscope.exceptions.BackToLastCommit` (a source that lost its cluster)."""
        return True

    def recovered(self, failure: BackToLastCommit) -> None:
        """The run went back to its last commit after ``failure``: state past it is dropped."""

    def score_ahead(self) -> bool:
        """Whether the next batch may be scored in a thread while the one before is written and the one after
        polled (only what scoring changes is read or changed meanwhile: no per-partition state saved with the
        batch's positions, no transaction)."""
        return False

    #: Set by the run while it scores ahead: writes (and commits) the batch scored ahead now, as partitions leave.
    drain: Callable[[], None] | None = None


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


class Swapping(Protocol):
    """What holds the model a run scores with when it may change between polls (a registry's promotion taken
    over: :class:`segscope.model.watcher.ModelWatcher`)."""

    model: Model


def run(
    source: Source,
    model: Model | Swapping,
    sink: Sink,
    state: RunState,
    *,
    ahead: bool = False,
    on_batch: Callable[[Batch, pl.DataFrame | None], None] | None = None,
    on_end: Callable[[RunState], None] | None = None,
    stopping: Callable[[], bool] = _never,
    hooks: Hooks | None = None,
) -> RunState:
    """Every batch of ``source`` scored by ``model`` with ``state`` and written to ``sink``, then committed: by the
    source once the sink has flushed it; with an :class:`Acknowledging` sink, the positions it says are safe; with
    a :class:`Transactional` sink and a :class:`Positioned` source, with the batch's outputs in one transaction.
    ``on_batch`` hears of each batch once it is written, before it is committed. After the last batch (a
    :class:`Polling` source: once ``stopping()`` or ``hooks.between`` says so) ``on_end`` (a check that may still
    refuse the run) and the sink is closed; on any error it is aborted (nothing half-written) and the error
    raised. The source is closed in any case. ``ahead``: the source is read and the next batch scored in threads
    while this one is written (iterated sources and sinks that allow it: files)."""
    tx = sink if isinstance(sink, Transactional) and sink.transactional_id is not None else None
    positioned = source if isinstance(source, Positioned) else None
    if tx is not None and positioned is None:
        raise SinkError("a transactional sink commits the source's positions, and this source has none")
    acks = sink if tx is None and positioned is not None and isinstance(sink, Acknowledging) else None
    hooks = hooks or Hooks()

    def scorer() -> Model:
        return model if isinstance(model, Model) else model.model

    def commit(batch: Batch, frame: pl.DataFrame | None) -> None:
        write_batch(batch, frame, sink)
        if on_batch is not None:
            on_batch(batch, frame)
        if tx is not None and positioned is not None:
            if not tx.commit_transaction(batch.position or {}, positioned.group_metadata(), stopping):
                raise BackToLastCommit("the transaction was aborted", aborted=True)
        elif acks is not None:
            _commit_acknowledged(acks, positioned)
        else:
            sink.flush()
            source.commit(batch)

    source.open()
    try:
        hooks.started()
        if isinstance(source, Polling) and tx is None and acks is not None and hooks.score_ahead():
            _polls_ahead(source, acks, sink, state, hooks, stopping, scorer, commit)
        elif isinstance(source, Polling):
            _polls(source, positioned, sink, state, hooks, stopping, scorer, commit, tx is not None)
        else:
            batches = prefetch(source.iter_batches(), depth=1) if ahead else source.iter_batches()

            def scored_one(batch: Batch) -> tuple[Batch, pl.DataFrame | None]:
                hooks.before(batch, state)
                return batch, score_batch(batch, scorer(), state)

            scored = (scored_one(batch) for batch in batches)
            for batch, frame in prefetch(scored) if ahead else scored:
                if tx is not None:
                    tx.begin(stopping)
                try:
                    commit(batch, frame)
                except BackToLastCommit as failure:  # batches iterated cannot come again
                    raise SinkError(f"{failure}; its records are read again by the next run") from None
        if acks is not None:
            sink.flush()
            _commit_acknowledged(acks, positioned)
        if on_end is not None:
            on_end(state)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        source.close()
    return state


def _commit_acknowledged(sink: Acknowledging, source: Positioned | None) -> None:
    done = sink.done_positions()
    if done and source is not None:
        source.commit_positions(done)


def _polls(
    source: Polling,
    positioned: Positioned | None,
    sink: Sink,
    state: RunState,
    hooks: Hooks,
    stopping: Callable[[], bool],
    scorer: Callable[[], Model],
    commit: Callable[[Batch, pl.DataFrame | None], None],
    transactions: bool,
) -> None:
    """Poll until ``stopping()`` or ``hooks.between`` ends the run; after a failure that may have lost what was
    written since the last commit, back to it (``positioned``), waiting a little longer each time it comes again in
    a row (at most 30 s)."""
    failed = 0
    while not stopping():
        try:
            batch = source.poll()
            if batch is not None:
                if transactions:
                    cast(Transactional, sink).begin(stopping)
                hooks.before(batch, state)
                commit(batch, score_batch(batch, scorer(), state))
            elif isinstance(sink, Acknowledging) and not transactions:
                _commit_acknowledged(sink, positioned)
            if not hooks.between(batch, state):
                return
            failed = 0
        except BackToLastCommit as failure:
            if positioned is None:
                raise
            failed += 1
            _recover(failure, failed, positioned, sink, transactions, hooks, stopping)


def _polls_ahead(
    source: Polling,
    acks: Acknowledging,
    sink: Sink,
    state: RunState,
    hooks: Hooks,
    stopping: Callable[[], bool],
    scorer: Callable[[], Model],
    commit: Callable[[Batch, pl.DataFrame | None], None],
) -> None:
    """:func:`_polls` with each batch scored in a thread while the batch before it is written and the one after it
    polled and decoded (the kernels and Polars let go of the interpreter's lock; the rest of the loop holds it).
    The hooks run while nothing is scored: ``between`` once the batch ahead is scored, before it is written, and
    ``before`` the next is handed to the thread; partitions leaving (``hooks.drain``) write the batch ahead first."""
    positioned = cast(Positioned, source)
    threads = numba.get_num_threads()  # the caller's, for the scoring thread too (Numba's is per thread)
    pending: tuple[Batch, Future[pl.DataFrame | None]] | None = None

    def drain() -> None:
        nonlocal pending
        if pending is not None:
            (batch, scoring), pending = pending, None
            commit(batch, scoring.result())

    def drop() -> None:  # back to the last commit: the batch ahead is not written (it comes again)
        nonlocal pending
        if pending is not None:
            (_, scoring), pending = pending, None
            wait([scoring])

    hooks.drain = drain
    with ThreadPoolExecutor(1, "segscope-score", initializer=numba.set_num_threads, initargs=(threads,)) as pool:
        failed = 0
        try:
            while not stopping():
                try:
                    # with a batch being scored, what is there already: a quiet topic does not hold its outputs back
                    batch = source.poll(0 if pending is not None else None)
                    done, pending = pending, None
                    frame = done[1].result() if done is not None else None
                    going = True if done is None and batch is not None else hooks.between(done and done[0], state)
                    if batch is not None and going:
                        hooks.before(batch, state)
                        pending = (batch, pool.submit(score_batch, batch, scorer(), state))
                    if done is not None:
                        commit(done[0], frame)
                    elif batch is None:
                        _commit_acknowledged(acks, positioned)
                    if not going:
                        return
                    failed = 0
                except BackToLastCommit as failure:
                    drop()
                    failed += 1
                    _recover(failure, failed, positioned, sink, False, hooks, stopping)
            drain()  # stopping: what was polled is written, then committed by the run's end
        except BaseException:
            drop()
            raise
        finally:
            hooks.drain = None


def _recover(
    failure: BackToLastCommit,
    failed: int,
    positioned: Positioned,
    sink: Sink,
    transactions: bool,
    hooks: Hooks,
    stopping: Callable[[], bool],
) -> None:
    """Back to the last commit after ``failure``, the ``failed``-th in a row: from the second on, after a wait
    that doubles each time (at most 30 s)."""
    _back_to_last_commit(failure, positioned, sink, transactions, stopping)
    hooks.recovered(failure)
    if failed > 1:
        pause = time.monotonic() + min(2.0 ** (failed - 2), 30.0)
        while not stopping() and time.monotonic() < pause:
            time.sleep(0.2)


def _back_to_last_commit(
    failure: BackToLastCommit, source: Positioned, sink: Sink, transactions: bool, stopping: Callable[[], bool]
) -> None:
    """Outputs in flight dropped (with transactions the aborted one already was), the source back at its committed
    positions (``renew``: a new client starts there), and what did commit after all counted by the sink."""
    drops = sink if isinstance(sink, DropsInFlight) else None
    if drops is not None and not transactions:
        drops.reset()
    if failure.renew and isinstance(source, Renewable):
        source.renew()
        committed: dict[Any, int] = {}
    else:
        committed = source.rewind(stopping)
    if drops is not None:
        drops.settle_uncertain(committed)


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
