"""`segscope stream`: the loop. A :class:`~segscope.sources.kafka.KafkaSource` hands out micro-batches, the model
scores them with exactly the code of `segscope score`, a :class:`~segscope.sinks.kafka.KafkaSink` writes the
scored records, alerts and dead letters, and only once the broker acknowledged all of them are the batch's
offsets committed: at-least-once delivery (a crash re-delivers at most the uncommitted batch, whose records come
out again with the same ``id``). Processes with the same ``--group`` share the topic's partitions. A registry
given as ``--bundle`` is watched between batches: a promoted version takes over without a restart.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segscope import registry
from segscope._deps import require
from segscope.exceptions import DataError, SinkError
from segscope.labels.parse import LabelIn, label_from_message
from segscope.labels.queue import candidate_rows
from segscope.labels.store import LabelStore
from segscope.model import Model
from segscope.sinks.kafka import KafkaSink
from segscope.sources.base import Batch, DeadLetter
from segscope.sources.kafka import KafkaSource, TopicReader

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
    poll_timeout_ms: int = 500
    max_message_bytes: int = 65_536
    stats_interval: float = 10.0
    metrics_port: int | None = None
    idle_exit: float | None = None
    trusted: bool = False
    #: label store URL: alerts and queue candidates of every batch are kept there (before the commit)
    store: str | None = None
    #: topic of analyst labels (JSON: id, label, analyst[, category, note]) consumed into the store
    labels_topic: str | None = None

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.in_topic}.dlq"


@dataclass
class StreamStats:
    records_in: int = 0
    records_out: int = 0
    alerts: int = 0
    dead_letters: int = 0
    stored: int = 0
    labels_in: int = 0
    batches: int = 0
    commit_retries: int = 0
    model_versions: list[str] = field(default_factory=list)


class _ModelWatcher:
    """Holds the scoring model and its scoring state; reloads both when a registry's CURRENT pointer moves."""

    def __init__(self, bundle: Path, trusted: bool) -> None:
        self.bundle, self.trusted = bundle, trusted
        self.model = Model.load(bundle, trusted=trusted)
        self.state = self.model.new_state()  # an alert budget counts across batches, for the life of the stream
        self.pointer = registry.current_version(bundle) if registry.is_registry(bundle) else None

    def refresh(self) -> bool:
        if self.pointer is None:
            return False
        try:
            pointer = registry.current_version(self.bundle)
        except Exception:  # a pointer being replaced or damaged: keep scoring with the current model
            return False
        if pointer == self.pointer:
            return False
        self.model = Model.load(self.bundle, trusted=self.trusted)
        self.state = self.model.new_state()
        self.pointer = pointer
        return True


class _Metrics:
    def __init__(self, port: int | None) -> None:
        self.enabled = port is not None
        if not self.enabled:
            return
        prom = require("prometheus_client", extra="kafka", feature="the metrics endpoint")
        registry_ = prom.CollectorRegistry()
        self.records_in = prom.Counter("segscope_records_in", "Messages consumed", registry=registry_)
        self.records_out = prom.Counter("segscope_records_out", "Scored records produced", registry=registry_)
        self.alerts = prom.Counter("segscope_alerts", "Alerts produced", registry=registry_)
        self.dead = prom.Counter("segscope_dead_letters", "Messages dead-lettered", registry=registry_)
        self.lag = prom.Gauge("segscope_consumer_lag", "Messages behind the end of the topic", registry=registry_)
        self.batch_seconds = prom.Histogram("segscope_batch_seconds", "Time per micro-batch", registry=registry_)
        self.version = prom.Info("segscope_model", "The model version scoring", registry=registry_)
        prom.start_http_server(port, addr="127.0.0.1", registry=registry_)


def _stop_on_signals(state: dict[str, bool]) -> None:
    def handler(signum: int, frame: Any) -> None:
        state["running"] = False
        log.info("signal %s: finishing the current batch, committing, exiting", signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _score_batch(
    batch: Batch, watcher: _ModelWatcher, sink: KafkaSink, store: LabelStore | None, source: str
) -> tuple[int, int]:
    """Score one batch and hand everything it produces to the sink (and the store); returns (scored, alerts)."""
    alerts = 0
    if batch.frame.height:
        scored = watcher.model.score(batch.frame, state=watcher.state)
        sink.write(scored, batch)
        alerts = int(scored["is_alert"].sum())
        if store is not None:  # before the commit: a crash re-delivers, and re-adding is an update
            review = watcher.model.for_review(scored, ids=batch.ids)
            store.add_records(review.subset(candidate_rows(scored, review.threshold, 2000)), source=source)
    sink.dead_letters(batch.dead)
    return batch.frame.height, alerts


def _consume_labels(reader: TopicReader, store: LabelStore, sink: KafkaSink, topic: str) -> tuple[int, int]:
    """Move what the labels topic holds into the store (source "kafka"); a message that is not a valid label for a
    stored record is dead-lettered to ``<labels-topic>.dlq`` with the reason. Committed after the store write
    (re-adding a label is a no-op). Returns (labels taken, dead letters)."""
    messages, offsets = reader.poll()
    if not messages:
        return 0, 0
    parsed: list[tuple[Any, LabelIn]] = []
    dead: list[tuple[Any, str]] = []
    for message in messages:
        try:
            parsed.append((message, label_from_message(message.value)))
        except DataError as exc:
            dead.append((message, str(exc)))
    known = store.records([item.id for _, item in parsed])
    for message, item in parsed:
        if item.id not in known:
            dead.append((message, f"unknown record id {item.id!r}: only records in the store can be labelled"))
    store.add_labels([item for _, item in parsed if item.id in known], source="kafka")
    letters = [DeadLetter(why, m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m, why in dead]
    sink.dead_letters(letters, topic=f"{topic}.dlq")
    sink.flush()
    reader.commit(offsets)
    return len(messages) - len(dead), len(dead)


def run_stream(options: StreamOptions, *, on_stats: Callable[[str], None] | None = None) -> StreamStats:
    """Run until SIGTERM/SIGINT (or ``idle_exit`` seconds without messages); returns the counts."""
    watcher = _ModelWatcher(options.bundle, options.trusted)  # a missing/unreadable bundle fails here, first
    if options.labels_topic is not None and options.store is None:
        raise SinkError("--labels-topic needs --store: labels are consumed into the label store")
    store = LabelStore.open(options.store) if options.store is not None else None
    metrics = _Metrics(options.metrics_port)
    stats = StreamStats(model_versions=[watcher.model.version])
    source = KafkaSource(
        bootstrap=options.bootstrap,
        topic=options.in_topic,
        group=options.group,
        schema=watcher.model.preparer_.schema_,
        batch_size=options.batch_size,
        max_message_bytes=options.max_message_bytes,
        poll_timeout_ms=options.poll_timeout_ms,
    )
    sink = KafkaSink(
        bootstrap=options.bootstrap,
        topic=options.out_topic,
        dead_letter_topic=options.dead_letter_topic,
        alerts_topic=options.alerts_topic,
        max_request_bytes=max(1_048_576, options.max_message_bytes * 2),
    )
    labels = None
    if options.labels_topic is not None:
        labels = TopicReader(bootstrap=options.bootstrap, topic=options.labels_topic, group=f"{options.group}.labels")
    state = {"running": True}
    try:
        source.open()
        sink.open()
        if labels is not None:
            labels.open()
        _stop_on_signals(state)
        if metrics.enabled:
            metrics.version.info({"version": watcher.model.version})
        last_stats = last_message = window_start = time.monotonic()
        window_in = 0
        while state["running"]:
            if watcher.refresh():
                stats.model_versions.append(watcher.model.version)
                log.info("switched to model version %s", watcher.model.version)
                if metrics.enabled:
                    metrics.version.info({"version": watcher.model.version})
            batch = source.poll()
            now = time.monotonic()
            if batch is not None:
                last_message = now
                started = time.perf_counter()
                scored, alerts = _score_batch(batch, watcher, sink, store, options.in_topic)
                sink.flush()
                source.commit(batch)
                stats.records_in += batch.size
                stats.records_out += scored
                stats.alerts += alerts
                stats.dead_letters += len(batch.dead)
                stats.batches += 1
                window_in += batch.size
                if metrics.enabled:
                    metrics.records_in.inc(batch.size)
                    metrics.records_out.inc(scored)
                    metrics.alerts.inc(alerts)
                    metrics.dead.inc(len(batch.dead))
                    metrics.batch_seconds.observe(time.perf_counter() - started)
            if labels is not None and store is not None and options.labels_topic is not None:
                taken, dead = _consume_labels(labels, store, sink, options.labels_topic)
                stats.labels_in += taken
                stats.dead_letters += dead
            idle = batch is None and options.idle_exit is not None and now - last_message > options.idle_exit
            if idle and source.assigned() and source.lag() == 0:
                break
            if now - last_stats >= options.stats_interval:
                lag = source.lag()
                rate = window_in / max(now - window_start, 1e-9)
                (on_stats or log.info)(
                    f"stream: {stats.records_in:,} in ({rate:,.0f}/s), {stats.records_out:,} out, "
                    f"{stats.alerts:,} alerts, {stats.dead_letters:,} dead letters, lag {lag:,}, "
                    f"model {watcher.model.version}"
                )
                if metrics.enabled:
                    metrics.lag.set(lag)
                last_stats, window_start, window_in = now, now, 0
    finally:
        stats.commit_retries = source.commit_retries
        source.close()
        if labels is not None:
            labels.close()
        sink.close()
        if store is not None:
            store.close()
    return stats
