"""`segscope stream`: one run of the scoring loop (:func:`segscope.run.run`, as `segscope score`). A
:class:`~segscope.sources.kafka.KafkaSource` is polled for micro-batches, the model scores them and a
:class:`~segscope.sinks.kafka.KafkaSink` writes the scored records, alerts and dead letters, and the source commits;
what only a stream does between polls is its hooks (:class:`_Kafka`).

* **At-least-once** (default): batches are produced without waiting; a batch's consumer positions are committed
  once the broker acknowledged all its outputs, in order. A crash re-delivers at most the batches in flight,
  whose records come out again with the same ``id``.
* **Exactly-once** (``exactly_once``): each batch's outputs and its consumer positions are one Kafka
  transaction; readers of the outputs with ``read_committed`` see every input record once.

Processes with the same ``group`` share the topic's partitions. A registry given as ``bundle`` is watched between
batches: a promoted version takes over without a restart (one that does not load is logged once and the version
scoring goes on). With per-entity features, ``state_dir`` keeps each partition's entity state with the offsets
(:mod:`segscope.stream.checkpoint`: stamped, and refused when damaged or written by another stream).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numba
import polars as pl

from segscope._kafka import TP, Client
from segscope._kafka_setup import KafkaSettings
from segscope._wire import WireSettings
from segscope.exceptions import BackToLastCommit, SinkError
from segscope.labels.queue import candidate_rows
from segscope.labels.store import LabelStore
from segscope.run import Hooks, RunState, run
from segscope.sinks.kafka import KafkaSink
from segscope.sinks.wire import codecs
from segscope.sources.base import Batch
from segscope.sources.kafka import STRANDED_CHECK, KafkaSource, TopicReader
from segscope.stream.checkpoint import EntityCheckpoints, Stamp
from segscope.stream.parts import (
    Interrupted,
    Metrics,
    ModelWatcher,
    consume_labels,
    stop_on_signals,
    transactional_id,
)
from segscope.unsupervised.adapt import adapt_line
from segscope.unsupervised.drift import adaptation_of

__all__ = ["StreamOptions", "StreamStats", "run_stream"]

log = logging.getLogger("segscope.stream")
#: Seconds without a message (and between tries) before positions whose commit was not confirmed are committed again.
RECOMMIT_IDLE = 5.0


@dataclass(frozen=True)
class StreamOptions:
    bundle: Path
    bootstrap: str
    in_topic: str
    out_topic: str
    alerts_topic: str | None = None
    dlq_topic: str | None = None
    group: str = "segscope"
    batch_size: int = 20_000
    #: how long a poll waits for a message when none is there (a poll takes what the client holds, up to batch_size)
    poll_timeout_ms: int = 100
    max_message_bytes: int = 65_536
    stats_interval: float = 10.0
    metrics_port: int | None = None
    idle_exit: float | None = None
    trusted: bool = False
    #: label store URL: alerts and queue candidates of every batch are kept there (before the commit)
    store: str | None = None
    #: topic of analyst labels (JSON: id, label, analyst[, category, note]) consumed into the store
    labels_topic: str | None = None
    #: outputs and consumer positions in one transaction per batch
    exactly_once: bool = False
    transactional_id: str | None = None
    #: skip records of aborted and open transactions (Kafka's default for consumers is read_uncommitted)
    read_committed: bool = True
    client: Client = "confluent"
    compression: str = "lz4"
    #: per-entity state checkpoints, with the offsets they belong to (bundles with ``entities:``)
    state_dir: Path | None = None
    #: Avro or Protobuf messages with a schema registry (and Avro output); JSON by default
    wire: WireSettings = field(default_factory=WireSettings)
    #: client properties (TLS, SASL, timeouts) over the defaults, and how long to wait for the cluster at start
    kafka: KafkaSettings = field(default_factory=KafkaSettings)

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.in_topic}.dlq"


@dataclass
class StreamStats:
    """What the stream did; the record counts are of batches whose outputs are acknowledged (at-least-once) or
    committed (exactly-once), so each record counts once however often an outage made it come again:
    ``records_in`` = ``records_out`` (scored and written) + ``dead_letters`` (messages that could not be scored)
    + ``refused`` (scored, but refused by the output topic, dead-lettered in their place). ``dead_letters`` also
    counts the labels topic's. ``recovered``: times the stream went back to its last commit (aborted
    transactions included)."""

    records_in: int = 0
    records_out: int = 0
    alerts: int = 0
    dead_letters: int = 0
    refused: int = 0
    stored: int = 0
    labels_in: int = 0
    batches: int = 0
    aborted: int = 0
    recovered: int = 0
    model_versions: list[str] = field(default_factory=list)


class _Kafka(Hooks):
    """What the stream does around the one loop's polls: the model hot-swapped, entity checkpoints restored before
    a batch and saved before its commit, the label store, the labels topic, counts from acknowledged deliveries,
    stats and lag lines, the stranded consumer replaced, the idle exit."""

    def __init__(
        self,
        options: StreamOptions,
        watcher: ModelWatcher,
        source: KafkaSource,
        sink: KafkaSink,
        checkpoints: EntityCheckpoints | None,
        stats: StreamStats,
        on_stats: Callable[[str], None] | None,
    ) -> None:
        self.options, self.watcher, self.source, self.sink = options, watcher, source, sink
        self.checkpoints, self.stats, self.on_stats = checkpoints, stats, on_stats
        self.eos = options.exactly_once
        self.store = LabelStore.open(options.store) if options.store is not None else None
        self.metrics = Metrics(options.metrics_port)
        self.labels: TopicReader | None = None
        if options.labels_topic is not None:
            self.labels = TopicReader(
                bootstrap=options.bootstrap,
                topic=options.labels_topic,
                group=f"{options.group}.labels",
                client=options.client,
                settings=options.kafka,
            )
        self.flags = {"running": True, "connecting": True}
        self.warming: threading.Thread | None = None
        self.last_stats = self.last_message = self.window_start = self.recommitted = time.monotonic()
        self.window_in, self.batch_started = 0, 0.0

    def stopping(self) -> bool:
        return not self.flags["running"]

    def started(self) -> None:
        if self.labels is not None:
            self.labels.open()
        self.flags["connecting"] = False
        if self.metrics.enabled:
            self.metrics.version.info({"version": self.watcher.model.version})
        self.last_stats = self.last_message = self.window_start = time.monotonic()

    def before(self, batch: Batch, state: RunState) -> None:
        self.last_message, self.batch_started = time.monotonic(), time.perf_counter()
        if self.warming is not None:
            self.warming.join()
            self.warming = None
        entities = self.watcher.state.entities
        if self.checkpoints is not None and entities is not None:
            self.checkpoints.prepare(batch, entities)

    def written(self, batch: Batch, scored: pl.DataFrame | None) -> None:
        """Before the commit: the store's records (a crash re-delivers, re-adding is an update) and the entity
        checkpoint at the batch's positions."""
        if self.store is not None and scored is not None:
            review = self.watcher.model.for_review(scored, ids=batch.ids)
            self.store.add_records(
                review.subset(candidate_rows(scored, review.threshold, 2000)), source=self.options.in_topic
            )
        entities = self.watcher.state.entities
        if self.checkpoints is not None and entities is not None:
            self.checkpoints.save(entities, batch.position or {})

    def between(self, batch: Batch | None, state: RunState) -> bool:
        options, source, stats, metrics = self.options, self.source, self.stats, self.metrics
        if batch is not None:
            if self.eos and self.checkpoints is not None:
                self.checkpoints.prune(batch.position or {})
            if metrics.enabled:
                metrics.batch_seconds.observe(time.perf_counter() - self.batch_started)
        self._prune()
        if self.labels is not None and self.store is not None and options.labels_topic is not None:
            stats.labels_in += consume_labels(
                self.labels, self.store, self.sink, options.labels_topic, self.eos, self.stopping
            )
        self.window_in += self.count()
        self._refresh(state)
        now = time.monotonic()
        if batch is None and now - self.last_message >= STRANDED_CHECK and source.stranded():
            log.warning(
                "the consumer has fetched nothing for %.0f s and lost the cluster, which answers a new client: a "
                "new consumer takes over from the last commit", now - self.last_message,
            )  # fmt: skip
            raise BackToLastCommit("the consumer lost the cluster", renew=True)
        if batch is None and not self.eos and min(now - self.last_message, now - self.recommitted) >= RECOMMIT_IDLE:
            self.recommitted = now  # a last commit lost in an outage: made again, or the group stays short of the end
            source.recommit()
        if batch is None and options.idle_exit is not None and now - self.last_message > options.idle_exit:
            self.settle()
            self.count()
            # every partition of the topic, not only this member's; everything consumed is written now, so
            # (at-least-once) a lost last commit is made again rather than keeping the group short for good
            if source.group_done(recommit=not self.eos):
                return False
        if now - self.last_stats >= options.stats_interval:
            self._stats(now, state)
        return True

    def recovered(self, failure: BackToLastCommit) -> None:
        self.stats.recovered += 1
        if failure.aborted:
            self.stats.aborted += 1
        elif not self.eos and not failure.renew:
            log.warning("%s; the batches in flight were dropped, processed again from the last commit", failure)
        if self.checkpoints is not None:
            self._reset_entities()

    def ended(self, state: RunState) -> None:
        self.settle()  # SIGTERM: what was in flight is drained and committed
        self.count()

    def score_ahead(self) -> bool:
        # entity checkpoints are saved with each batch's positions, so its state must be that batch's alone
        return not self.eos and self.checkpoints is None

    def revoked(self, partitions: list[TP]) -> None:
        if self.drain is not None:
            self.drain()  # the batch scored ahead is written first: its records were polled from them too
        self.settle()  # partitions leave only after their work is committed
        if self.checkpoints is not None and self.watcher.state.entities is not None:
            self._reset_entities()  # those kept too: a kicked-out member resumes them at the commit, behind its state

    def settle(self) -> None:
        """At-least-once: every batch in flight acknowledged and its positions committed."""
        if not self.eos:
            self.sink.flush()
            done: dict[TP, int] = self.sink.done_positions()
            if done:
                self.source.commit_positions(done)
            self._prune()

    def _prune(self) -> None:
        if not self.eos and self.checkpoints is not None:  # only past commits the broker confirmed: the group may
            confirmed = self.source.confirmed()  # resume at them
            if confirmed:
                self.checkpoints.prune(confirmed)

    def _reset_entities(self) -> None:
        """Every partition's entities start again from the bundle's end-of-history state and are restored from
        their checkpoint at the offset they resume at (only dropping a partition's changed entities would lose
        the end-of-history state of those first changed after the commit)."""
        assert self.checkpoints is not None
        self.watcher.state.entities = self.watcher.model.new_state().entities
        self.checkpoints.restored.clear()

    def _refresh(self, state: RunState) -> None:
        """A version promoted in the registry takes over (its scoring state and drift tracker the run's)."""
        watcher = self.watcher
        kept = watcher.state.entities
        if not watcher.refresh():
            return
        state.scoring, state.drift = watcher.state, watcher.drift
        self.stats.model_versions.append(watcher.model.version)
        log.info("switched to model version %s", watcher.model.version)
        swapped = watcher.state.entities
        if self.checkpoints is not None and swapped is not None and swapped is not kept:  # entities restarted
            self.checkpoints.rebase(Stamp.of(watcher.model, self.options.in_topic, self.options.group))
        if self.metrics.enabled:
            self.metrics.version.info({"version": watcher.model.version})

    def count(self) -> int:
        """Take the sink's counts of what is done into the stats and the metrics; returns the records new."""
        stats, metrics, done = self.stats, self.metrics, self.sink.delivered
        new = done.records_in - stats.records_in
        if metrics.enabled:
            metrics.records_in.inc(new)
            metrics.records_out.inc(done.scored - stats.records_out)
            metrics.alerts.inc(done.alerts - stats.alerts)
            metrics.dead.inc(done.dead_letters - stats.dead_letters)
            metrics.refused.inc(done.refused - stats.refused)
        stats.records_in, stats.records_out, stats.alerts = done.records_in, done.scored, done.alerts
        stats.dead_letters, stats.refused, stats.batches = done.dead_letters, done.refused, done.batches
        return new

    def _stats(self, now: float, state: RunState) -> None:
        stats, watcher = self.stats, self.watcher
        lag = self.source.lag(ask=self.window_in == 0)  # nothing consumed lately: the ends as the broker says
        rate = self.window_in / max(now - self.window_start, 1e-9)
        drifted = None
        if watcher.drift is not None and watcher.drift.rows:  # this window's records vs the fit data
            report = watcher.drift.report(adaptation_of(watcher.model.config.policy, watcher.model.config.adapt))
            drifted = report.warning()
            self.metrics.drift(report)
            state.drift = watcher.drift = watcher.model.drift_tracker()
        (self.on_stats or log.info)(
            f"stream: {stats.records_in:,} in ({rate:,.0f}/s), {stats.records_out:,} out, "
            f"{stats.alerts:,} alerts, {stats.dead_letters:,} dead letters"
            + (f", {stats.refused:,} refused outputs" if stats.refused else "")
            + (f", lag {lag:,}" if lag >= 0 else ", lag unknown (the cluster does not answer)")
            + f", model {watcher.model.version}"
            + (f"; drift: {drifted}" if drifted else "")
            + (f"; {adapted}" if (adapted := adapt_line(watcher.model.config, watcher.state.entities)) else "")
        )
        if self.metrics.enabled:
            self.metrics.lag.set(lag)
        self.last_stats, self.window_start, self.window_in = now, now, 0

    def close(self) -> None:
        if self.labels is not None:
            self.labels.close()
        if self.store is not None:
            self.store.close()


def _checkpoints(options: StreamOptions, watcher: ModelWatcher) -> EntityCheckpoints | None:
    if not watcher.model.has_entities:
        return None
    if options.state_dir is None:
        if options.exactly_once:
            raise SinkError(
                "--exactly-once with per-entity features needs --state-dir: the entity state must be committed with "
                "the offsets; give a folder shared by the group's processes"
            )
        log.warning(
            "the bundle has per-entity features but no --state-dir was given: a restart continues from the "
            "bundle's end-of-history state, not from where this process stopped"
        )
        return None
    # the folder is checked (and created) here, before anything connects; each partition's stamp on its restore
    return EntityCheckpoints(options.state_dir, Stamp.of(watcher.model, options.in_topic, options.group))


def run_stream(options: StreamOptions, *, on_stats: Callable[[str], None] | None = None) -> StreamStats:
    """Run until SIGTERM/SIGINT (or ``idle_exit`` seconds without messages once the whole group is done): the one
    loop (:func:`segscope.run.run`) over a Kafka source and sink, with the stream's hooks."""
    # one scoring thread: a micro-batch is too small for Numba's parallel kernels to pay off, and their OpenMP
    # threads spin between batches on the cores the Kafka clients' threads need (CPU per record 3x); a group's
    # processes are what scales a stream out
    numba.set_num_threads(1)
    watcher = ModelWatcher(options.bundle, options.trusted)  # a missing/unreadable bundle fails here, first
    if options.labels_topic is not None and options.store is None:
        raise SinkError("--labels-topic needs --store: labels are consumed into the label store")
    eos = options.exactly_once
    options.kafka.check(exactly_once=eos)
    checkpoints = _checkpoints(options, watcher)
    stats = StreamStats(model_versions=[watcher.model.version])
    decoder, encoder = codecs(options.wire, [t for t in (options.out_topic, options.alerts_topic) if t])
    source = KafkaSource(
        bootstrap=options.bootstrap,
        topic=options.in_topic,
        group=options.group,
        schema=watcher.model.input_schema(),
        batch_size=options.batch_size,
        max_message_bytes=options.max_message_bytes,
        poll_timeout_ms=options.poll_timeout_ms,
        read_committed=options.read_committed,
        client=options.client,
        wire=decoder,
        settings=options.kafka,
    )
    sink = KafkaSink(
        bootstrap=options.bootstrap,
        topic=options.out_topic,
        dead_letter_topic=options.dead_letter_topic,
        alerts_topic=options.alerts_topic,
        max_request_bytes=max(1_048_576, options.max_message_bytes * 2),
        compression=options.compression,
        client=options.client,
        transactional_id=(options.transactional_id or transactional_id(options.group, options.in_topic))
        if eos
        else None,
        encoder=encoder,
        settings=options.kafka,
    )
    hooks = _Kafka(options, watcher, source, sink, checkpoints, stats, on_stats)
    source.on_revoke = hooks.revoked
    stop_on_signals(hooks.flags)
    hooks.warming = watcher.warm_up()
    closed = False
    try:  # each client waits for the cluster (bounded); a signal meanwhile ends the stream at once
        sink.open()
        state = RunState(watcher.state, watcher.drift)
        run(
            source,
            watcher,
            sink,
            state,
            on_batch=hooks.written,
            on_end=hooks.ended,
            stopping=hooks.stopping,
            hooks=hooks,
        )
        closed = True  # the loop closed the sink, after the last commit
    except Interrupted:
        return stats
    finally:
        if not closed:
            sink.close()
        hooks.close()
    return stats
