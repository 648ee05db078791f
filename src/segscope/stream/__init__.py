"""`segscope stream`: the loop. A :class:`~segscope.sources.kafka.KafkaSource` hands out micro-batches, the model
scores them and a :class:`~segscope.sinks.kafka.KafkaSink` writes the scored records, alerts and dead letters with
the one loop's steps (:func:`segscope.run.score_batch`, :func:`segscope.run.write_batch`, as `segscope score`),
and the source commits.

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

from segscope._kafka import TP, Client
from segscope._kafka_setup import KafkaSettings
from segscope._wire import WireSettings
from segscope.exceptions import SinkError
from segscope.labels.queue import candidate_rows
from segscope.labels.store import LabelStore
from segscope.run import RunState, score_batch, write_batch
from segscope.sinks.kafka import DeliveryFailed, KafkaSink
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
from segscope.unsupervised.drift import adaptation_of

__all__ = ["StreamOptions", "StreamStats", "run_stream"]

log = logging.getLogger("segscope.stream")


@dataclass(frozen=True)
class StreamOptions:
    bundle: Path
    bootstrap: str
    in_topic: str
    out_topic: str
    alerts_topic: str | None = None
    dlq_topic: str | None = None
    group: str = "segscope"
    batch_size: int = 5000
    #: how long a poll waits to fill a batch: bounds the latency at low rates
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


def _write_batch(batch: Batch, watcher: ModelWatcher, sink: KafkaSink, store: LabelStore | None, topic: str) -> None:
    """Score one batch and hand everything it produces to the sink (the scored records, the dead letters) and the
    store, as the one loop does (:mod:`segscope.run`), with the watcher's model, scoring state and drift tracker."""
    scored = score_batch(batch, watcher.model, RunState(watcher.state, watcher.drift))
    write_batch(batch, scored, sink)
    if store is not None and scored is not None:  # before the commit: a crash re-delivers, re-adding is an update
        review = watcher.model.for_review(scored, ids=batch.ids)
        store.add_records(review.subset(candidate_rows(scored, review.threshold, 2000)), source=topic)


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
    """Run until SIGTERM/SIGINT (or ``idle_exit`` seconds without messages once the whole group is done)."""
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
    store = LabelStore.open(options.store) if options.store is not None else None
    metrics = Metrics(options.metrics_port)
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
    labels = None
    if options.labels_topic is not None:
        labels = TopicReader(
            bootstrap=options.bootstrap,
            topic=options.labels_topic,
            group=f"{options.group}.labels",
            client=options.client,
            settings=options.kafka,
        )

    state = {"running": True, "connecting": True}

    def stopping() -> bool:
        return not state["running"]

    def settle(wait: bool = False) -> None:
        """At-least-once: commit the positions of the batches the broker acknowledged (all of them, with wait)."""
        if not eos:
            if wait:
                sink.flush()
            done: dict[TP, int] = sink.done_positions()
            if done:
                source.commit_positions(done)
            if checkpoints is not None:  # only past commits the broker confirmed: the group may resume at them
                confirmed = source.confirmed()
                if confirmed:
                    checkpoints.prune(confirmed)

    def revoked(partitions: list[TP]) -> None:
        settle(wait=True)  # partitions leave only after their work is committed
        if checkpoints is not None and watcher.state.entities is not None:
            reset_entities()  # those kept too: a kicked-out member resumes them at the commit, behind its state

    def reset_entities() -> None:
        """Every partition's entities start again from the bundle's end-of-history state and are restored from
        their checkpoint at the offset they resume at (only dropping a partition's changed entities would lose
        the end-of-history state of those first changed after the commit)."""
        assert checkpoints is not None
        watcher.state.entities = watcher.model.new_state().entities
        checkpoints.restored.clear()

    def recover(renew: bool = False) -> None:
        """Back to the last commit: the outputs in flight are dropped (exactly-once: the transaction was aborted),
        the consumer goes back to the committed positions (``renew``: a new consumer starts there) and the
        entities to their checkpoint there."""
        stats.recovered += 1
        if not eos:
            sink.reset()
        if renew:
            source.renew()
        committed = {} if renew else source.rewind(stopping)
        sink.settle_uncertain(committed)
        if checkpoints is not None:
            reset_entities()

    def count() -> int:
        """Take the sink's counts of what is done into the stats and the metrics; returns the records new."""
        done = sink.delivered
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

    stop_on_signals(state)
    warming: threading.Thread | None = watcher.warm_up()
    try:
        try:  # each client waits for the cluster (bounded); a signal meanwhile ends the stream at once
            sink.open()
            source.open(on_revoke=revoked)
            if labels is not None:
                labels.open()
            state["connecting"] = False
        except Interrupted:
            return stats
        if metrics.enabled:
            metrics.version.info({"version": watcher.model.version})
        last_stats = last_message = window_start = time.monotonic()
        window_in = failed_in_a_row = 0
        while state["running"]:
            kept = watcher.state.entities
            if watcher.refresh():
                stats.model_versions.append(watcher.model.version)
                log.info("switched to model version %s", watcher.model.version)
                swapped = watcher.state.entities
                if checkpoints is not None and swapped is not None and swapped is not kept:  # entities restarted
                    checkpoints.rebase(Stamp.of(watcher.model, options.in_topic, options.group))
                if metrics.enabled:
                    metrics.version.info({"version": watcher.model.version})
            try:
                batch = source.poll()
                now = time.monotonic()
                if batch is not None:
                    last_message = now
                    if warming is not None:
                        warming.join()
                        warming = None
                    started = time.perf_counter()
                    if eos:
                        sink.begin(stopping)
                    entities = watcher.state.entities
                    if checkpoints is not None and entities is not None:
                        checkpoints.prepare(batch, entities)
                    _write_batch(batch, watcher, sink, store, options.in_topic)
                    if checkpoints is not None and entities is not None:
                        checkpoints.save(entities, batch.position or {})  # before the offsets are committed
                    if eos:
                        if not sink.commit_transaction(batch.position or {}, source.group_metadata(), stopping):
                            stats.aborted += 1
                            raise DeliveryFailed("the transaction was aborted")
                        if checkpoints is not None:
                            checkpoints.prune(batch.position or {})
                    if metrics.enabled:
                        metrics.batch_seconds.observe(time.perf_counter() - started)
                settle()
                if labels is not None and store is not None and options.labels_topic is not None:
                    stats.labels_in += consume_labels(labels, store, sink, options.labels_topic, eos, stopping)
                failed_in_a_row = 0
            except DeliveryFailed as failure:  # the broker away (or a refusal, exactly-once): from the last commit
                failed_in_a_row += 1
                if not eos:
                    log.warning("%s; the batches in flight are processed again from the last commit", failure)
                recover()
                if failed_in_a_row > 1:  # the same failure again: wait a little longer each time (at most 30 s)
                    pause = time.monotonic() + min(2.0 ** (failed_in_a_row - 2), 30.0)
                    while state["running"] and time.monotonic() < pause:
                        time.sleep(0.2)
                continue
            finally:
                window_in += count()
            if batch is None and now - last_message >= STRANDED_CHECK and source.stranded():
                log.warning(
                    "the consumer has fetched nothing for %.0f s and lost the cluster, which answers a new client: a "
                    "new consumer takes over from the last commit", now - last_message,
                )  # fmt: skip
                recover(renew=True)
                continue
            if batch is None and options.idle_exit is not None and now - last_message > options.idle_exit:
                settle(wait=True)
                count()
                # every partition of the topic, not only this member's; everything consumed is written now, so
                # (at-least-once) a lost last commit is made again rather than keeping the group short for good
                if source.group_done(recommit=not eos):
                    break
            if now - last_stats >= options.stats_interval:
                lag = source.lag(ask=window_in == 0)  # nothing consumed lately: the ends as the broker says
                rate = window_in / max(now - window_start, 1e-9)
                drifted = None
                if watcher.drift is not None and watcher.drift.rows:  # this window's records vs the fit data
                    report = watcher.drift.report(adaptation_of(watcher.model.config.policy))
                    drifted = report.warning()
                    metrics.drift(report)
                    watcher.drift = watcher.model.drift_tracker()
                (on_stats or log.info)(
                    f"stream: {stats.records_in:,} in ({rate:,.0f}/s), {stats.records_out:,} out, "
                    f"{stats.alerts:,} alerts, {stats.dead_letters:,} dead letters"
                    + (f", {stats.refused:,} refused outputs" if stats.refused else "")
                    + (f", lag {lag:,}" if lag >= 0 else ", lag unknown (the cluster does not answer)")
                    + f", model {watcher.model.version}"
                    + (f"; drift: {drifted}" if drifted else "")
                )
                if metrics.enabled:
                    metrics.lag.set(lag)
                last_stats, window_start, window_in = now, now, 0
        settle(wait=True)  # SIGTERM: drain what is in flight and commit it
        count()
    finally:
        source.close()
        if labels is not None:
            labels.close()
        sink.close()
        if store is not None:
            store.close()
    return stats
