"""`segscope stream`: consume a Kafka topic in a consumer group, score micro-batches with exactly the code of
`segscope score`, produce scored records (and alerts, and dead letters), then commit.

Delivery is at-least-once: offsets are committed only after every output of the batch was acknowledged by
the broker (acks=all), so a crash or a kill re-delivers at most the uncommitted batch, and its records come
out again with the same ``id`` (topic/partition/offset, or the configured id column) for downstream to drop.
Several processes with the same ``--group`` share the topic's partitions (Kafka's consumer groups); nothing
else coordinates them. A registry given as ``--bundle`` is watched between batches: a promoted version takes
over without a restart, and ``model_version`` shows the switch.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from segscope._deps import require
from segscope.exceptions import DataError, SegscopeError, SinkError
from segscope.pipeline import SCORED_COLUMNS, Model
from segscope.sources.kafka import decode_messages, records_frame
from segscope.store.labelstore import LabelIn, LabelStore
from segscope.unsupervised.threshold import PolicyState

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
    """Holds the scoring model; reloads it when a registry's CURRENT pointer moves."""

    def __init__(self, bundle: Path, trusted: bool) -> None:
        from segscope import registry

        self.bundle, self.trusted, self.registry = bundle, trusted, registry
        self.model = Model.load(bundle, trusted=trusted)
        self.pointer = registry.current_version(bundle) if registry.is_registry(bundle) else None

    def refresh(self) -> bool:
        if self.pointer is None:
            return False
        try:
            pointer = self.registry.current_version(self.bundle)
        except OSError:
            return False
        if pointer == self.pointer:
            return False
        self.model = Model.load(self.bundle, trusted=self.trusted)
        self.pointer = pointer
        return True


class _Metrics:
    def __init__(self, port: int | None) -> None:
        self.enabled = port is not None
        if not self.enabled:
            return
        prom = require("prometheus_client", extra="kafka", feature="the metrics endpoint")
        registry = prom.CollectorRegistry()
        self.records_in = prom.Counter("segscope_records_in", "Messages consumed", registry=registry)
        self.records_out = prom.Counter("segscope_records_out", "Scored records produced", registry=registry)
        self.alerts = prom.Counter("segscope_alerts", "Alerts produced", registry=registry)
        self.dead = prom.Counter("segscope_dead_letters", "Messages dead-lettered", registry=registry)
        self.lag = prom.Gauge("segscope_consumer_lag", "Messages behind the end of the topic", registry=registry)
        self.batch_seconds = prom.Histogram("segscope_batch_seconds", "Time per micro-batch", registry=registry)
        self.version = prom.Info("segscope_model", "The model version scoring", registry=registry)
        prom.start_http_server(port, addr="127.0.0.1", registry=registry)


def _stop_on_signals(state: dict[str, bool]) -> None:
    def handler(signum: int, frame: Any) -> None:
        state["running"] = False
        log.info("signal %s: finishing the current batch, committing, exiting", signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_stream(options: StreamOptions, *, on_stats: Any = None) -> StreamStats:
    """Run until SIGTERM/SIGINT (or ``idle_exit`` seconds without messages); returns the counts."""
    kafka = require("kafka", extra="kafka", feature="Kafka streaming")
    from kafka.errors import CommitFailedError, KafkaError
    from kafka.structs import OffsetAndMetadata, TopicPartition

    watcher = _ModelWatcher(options.bundle, options.trusted)  # a missing/unreadable bundle fails here, first
    if options.labels_topic is not None and options.store is None:
        raise SinkError("--labels-topic needs --store: labels are consumed into the label store")
    store = LabelStore.open(options.store) if options.store is not None else None
    metrics = _Metrics(options.metrics_port)
    stats = StreamStats(model_versions=[watcher.model.version])
    scoring = watcher.model.new_state()  # the alert budget counts across batches, for the life of the stream
    try:
        consumer = kafka.KafkaConsumer(
            bootstrap_servers=options.bootstrap,
            group_id=options.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=options.batch_size,
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        producer = kafka.KafkaProducer(
            bootstrap_servers=options.bootstrap,
            acks="all",
            linger_ms=5,
            batch_size=512 * 1024,
            max_request_size=max(1_048_576, options.max_message_bytes * 2),
            delivery_timeout_ms=120_000,
        )
    except KafkaError as exc:
        raise SinkError(f"cannot connect to Kafka at {options.bootstrap} ({exc}); check --bootstrap") from None
    consumer.subscribe([options.in_topic])
    labels_consumer = None
    if options.labels_topic is not None:
        labels_consumer = kafka.KafkaConsumer(
            bootstrap_servers=options.bootstrap,
            group_id=f"{options.group}.labels",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
        )
        # every stream process reads every label partition (assigned, no group join to wait for): labels are few,
        # and a label added twice is stored once
        labels_consumer.assign(_partitions(labels_consumer, options.labels_topic, TopicPartition))
    state = {"running": True}
    _stop_on_signals(state)
    if metrics.enabled:
        metrics.version.info({"version": watcher.model.version})
    last_stats = time.monotonic()
    last_message = time.monotonic()
    window_start, window_in = time.monotonic(), 0
    try:
        while state["running"]:
            if watcher.refresh():
                stats.model_versions.append(watcher.model.version)
                scoring = watcher.model.new_state()
                log.info("switched to model version %s", watcher.model.version)
                if metrics.enabled:
                    metrics.version.info({"version": watcher.model.version})
            batch = consumer.poll(timeout_ms=options.poll_timeout_ms, max_records=options.batch_size)
            now = time.monotonic()
            if batch:
                last_message = now
                started = time.perf_counter()
                sent = _process(batch, watcher.model, scoring, producer, options, stats, store)
                if metrics.enabled:
                    metrics.records_in.inc(sent["in"])
                    metrics.records_out.inc(sent["out"])
                    metrics.alerts.inc(sent["alerts"])
                    metrics.dead.inc(sent["dead"])
                    metrics.batch_seconds.observe(time.perf_counter() - started)
                window_in += sent["in"]
                offsets = {tp: OffsetAndMetadata(msgs[-1].offset + 1, "", -1) for tp, msgs in batch.items()}
                _commit(consumer, offsets, stats, CommitFailedError, KafkaError)
            if labels_consumer is not None and store is not None:
                _consume_labels(labels_consumer, store, producer, options, stats, (CommitFailedError, KafkaError))
            if not batch and (
                options.idle_exit is not None
                and now - last_message > options.idle_exit
                and consumer.assignment()  # a joining member may wait for a dead one's session to expire
                and _lag(consumer) == 0
            ):
                break
            if now - last_stats >= options.stats_interval:
                lag = _lag(consumer)
                rate = window_in / max(now - window_start, 1e-9)
                line = (
                    f"stream: {stats.records_in:,} in ({rate:,.0f}/s), {stats.records_out:,} out, "
                    f"{stats.alerts:,} alerts, {stats.dead_letters:,} dead letters, lag {lag:,}, "
                    f"model {watcher.model.version}"
                )
                (on_stats or log.info)(line)
                if metrics.enabled:
                    metrics.lag.set(lag)
                last_stats, window_start, window_in = now, now, 0
    finally:
        consumer.close(autocommit=False)
        if labels_consumer is not None:
            labels_consumer.close(autocommit=False)
        producer.close(timeout=30)
        if store is not None:
            store.close()
    return stats


def _partitions(consumer: Any, topic: str, topic_partition: Any, wait: float = 15.0) -> list[Any]:
    deadline = time.monotonic() + wait
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [topic_partition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise SinkError(f"labels topic {topic!r} does not exist on the broker; create it or fix --labels-topic")
        consumer.topics()  # refresh metadata
        time.sleep(0.5)


def _consume_labels(
    consumer: Any,
    store: LabelStore,
    producer: Any,
    options: StreamOptions,
    stats: StreamStats,
    errors: tuple[type[BaseException], type[BaseException]],
) -> None:
    """Move whatever the labels topic holds into the store (source "kafka"); a message that is not a valid label
    for a stored record goes to ``<labels-topic>.dlq`` with the reason. Committed after the store write: a crash
    re-delivers, and re-adding a label is a no-op (idempotent)."""
    from kafka.structs import OffsetAndMetadata

    batch = consumer.poll(timeout_ms=0, max_records=5000)
    if not batch:
        return
    assert options.labels_topic is not None
    messages = [m for msgs in batch.values() for m in msgs]
    parsed: list[tuple[Any, LabelIn]] = []
    dead: list[tuple[Any, str]] = []
    for message in messages:
        try:
            body = orjson.loads(message.value)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            item = LabelIn(
                str(body.get("id") or ""),
                str(body.get("label")),
                str(body.get("analyst") or ""),
                body.get("category"),
                body.get("note"),
            ).checked()
            parsed.append((message, item))
        except (orjson.JSONDecodeError, ValueError, DataError) as exc:
            dead.append((message, f"not a label: {exc}; send JSON with id, label (anomaly/normal), analyst"))
    known = store.records([item.id for _, item in parsed])
    for message, item in parsed:
        if item.id not in known:
            dead.append((message, f"unknown record id {item.id!r}: only records in the store can be labelled"))
    store.add_labels([item for _, item in parsed if item.id in known], source="kafka")
    letters = [
        (
            f"{options.labels_topic}.dlq",
            message.key,
            orjson.dumps(
                {
                    "reason": reason,
                    "topic": message.topic,
                    "partition": message.partition,
                    "offset": message.offset,
                    "value": message.value.decode("utf-8", "replace") if message.value else None,
                }
            ),
        )
        for message, reason in dead
    ]
    _send_all(producer, letters)
    stats.labels_in += len(messages) - len(dead)
    stats.dead_letters += len(dead)
    offsets = {tp: OffsetAndMetadata(msgs[-1].offset + 1, "", -1) for tp, msgs in batch.items()}
    _commit(consumer, offsets, stats, *errors)


def _commit(
    consumer: Any,
    offsets: dict[Any, Any],
    stats: StreamStats,
    rebalanced: type[BaseException],
    kafka_error: type[BaseException],
) -> None:
    """Commit after the outputs are acknowledged. A failed commit is safe (the batch is re-delivered, with the
    same ids), so it is retried briefly and then left to the next batch's commit, never raised."""
    for attempt in range(5):
        try:
            consumer.commit(offsets)
            return
        except rebalanced:
            # the group rebalanced while we scored: another member re-delivers this batch (same ids)
            stats.commit_retries += 1
            log.warning("commit failed after a rebalance; the batch will be re-delivered")
            return
        except kafka_error as exc:  # e.g. the coordinator is restarting
            stats.commit_retries += 1
            log.warning("commit failed (%s), attempt %d; retrying", exc, attempt + 1)
            time.sleep(1.0 + attempt)
    log.warning("commit still failing; the next batch's commit covers these offsets")


def _lag(consumer: Any) -> int:
    assigned = consumer.assignment()
    if not assigned:
        return 0
    try:
        ends = consumer.end_offsets(list(assigned))
        return int(sum(max(0, ends[tp] - consumer.position(tp)) for tp in assigned))
    except Exception:  # lag is informational: never let it stop the stream
        return -1


def _process(
    batch: dict[Any, list[Any]],
    model: Model,
    scoring: PolicyState,
    producer: Any,
    options: StreamOptions,
    stats: StreamStats,
    store: LabelStore | None = None,
) -> dict[str, int]:
    """Score one micro-batch and send everything it produces; returns counts once all sends succeeded."""
    messages = [m for msgs in batch.values() for m in msgs]
    schema = model.preparer_.schema_
    decoded = decode_messages(messages, schema, max_bytes=options.max_message_bytes)
    sends: list[tuple[str, bytes | None, bytes]] = []
    alerts = 0
    if decoded.rows:
        full = model.score(records_frame(decoded.rows, schema), state=scoring)
        scored = full.select(SCORED_COLUMNS)
        for record, record_id, key, out in zip(
            decoded.records, decoded.ids, decoded.keys, scored.iter_rows(named=True), strict=True
        ):
            value = orjson.dumps({**record, "id": record_id, **out}, default=str)
            sends.append((options.out_topic, key, value))
            if out["is_alert"]:
                alerts += 1
                if options.alerts_topic:
                    sends.append((options.alerts_topic, key, value))
    for letter in decoded.dead:
        sends.append((options.dead_letter_topic, letter.key, letter.payload()))
    _send_all(producer, sends)
    if store is not None and decoded.rows:  # before the commit: a crash re-delivers, and re-adding is an update
        stats.stored += store.add_candidates(model, full, source=options.in_topic, ids=decoded.ids)
    stats.records_in += len(messages)
    stats.records_out += len(decoded.rows)
    stats.alerts += alerts
    stats.dead_letters += len(decoded.dead)
    stats.batches += 1
    return {"in": len(messages), "out": len(decoded.rows), "alerts": alerts, "dead": len(decoded.dead)}


def _send_all(producer: Any, sends: list[tuple[str, bytes | None, bytes]], attempts: int = 10) -> None:
    """Send and flush; re-send what failed (a broker restart), never commit past a failed send."""
    pending = sends
    for attempt in range(attempts):
        futures = [(item, producer.send(item[0], key=item[1], value=item[2])) for item in pending]
        producer.flush(timeout=120)
        pending = [item for item, future in futures if not future.succeeded()]
        if not pending:
            return
        log.warning("%d sends failed (attempt %d); retrying", len(pending), attempt + 1)
        time.sleep(min(2.0 * (attempt + 1), 10.0))
    raise SegscopeError(
        f"{len(pending)} records could not be produced after {attempts} attempts; nothing committed, "
        "restart the stream once the broker is reachable"
    )
