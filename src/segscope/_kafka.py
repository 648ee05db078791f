"""Two Kafka clients behind one small interface: confluent-kafka (librdkafka: every codec, transactions, fast; the
default; its wrappers here) and kafka-python (pure Python; ``_kafka_python``). The source (``sources/kafka.py``)
and the sink (``sinks/kafka.py``) use only this interface, so each works with either client.

A poll returns messages as columns (``Polled``: values, keys, ...), which is what decoding wants, plus the consumer's
positions right after the batch: positions, not "last offset + 1", are what is committed, because a
transactional producer's commit markers sit after the last record and a consumer reading ``read_committed``
moves past them (committing last + 1 would leave the group's lag at 1 forever).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from segscope._deps import require
from segscope._kafka_outcomes import (
    REFUSED,
    TP,
    TXN_WAIT,
    Acknowledges,
    Deliveries,
    Headers,
    Origin,
    Polled,
    Refused,
)
from segscope._kafka_python import _kafka_python, _PythonConsumer, _PythonProducer
from segscope._kafka_setup import (
    Connects,
    Contact,
    KafkaSettings,
    kafka_python_config,
    log_commit_failure,
    refused_by_client,
)
from segscope.exceptions import ConfigError, SourceError

__all__ = [
    "CLIENTS",
    "TP",
    "Deliveries",
    "Headers",
    "Origin",
    "Polled",
    "log_commit_failure",
    "make_consumer",
    "make_producer",
]

log = logging.getLogger("segscope.stream")

Client = Literal["confluent", "kafka-python"]
CLIENTS: tuple[Client, ...] = ("confluent", "kafka-python")


# ------------------------------------------------------------------------------------------ confluent-kafka
class _ConfluentConsumer(Connects, Acknowledges):
    def __init__(self, config: dict[str, Any], contact: Contact, connect_timeout: float) -> None:
        ck = require("confluent_kafka", extra="kafka", feature="Kafka streaming (confluent-kafka)")
        self.ck, self.contact, self.connect_timeout = ck, contact, connect_timeout
        try:
            self.consumer = ck.Consumer({**config, "error_cb": contact.error, "on_commit": self.on_commit})
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(refused_by_client(exc)) from None

    def _topics(self, timeout: float) -> set[str] | None:
        try:
            return set(self.consumer.list_topics(timeout=timeout).topics)
        except self.ck.KafkaException:
            return None
        finally:
            self.consumer.poll(0)  # serves the error callback (nothing is subscribed yet: no message is taken)

    def subscribe(self, topic: str, on_revoke: Callable[[list[TP]], None] | None = None) -> None:
        def revoked(_: Any, parts: list[Any]) -> None:
            if on_revoke is not None:
                on_revoke([(p.topic, p.partition) for p in parts])

        self.consumer.subscribe([topic], on_revoke=revoked)

    def assign_all(self, topic: str) -> None:
        self.consumer.assign([self.ck.TopicPartition(topic, p) for p in self.partitions(topic)])

    def poll(self, max_records: int, timeout: float) -> Polled | None:
        """What the client holds now, up to ``max_records``; when it holds nothing, the first message within
        ``timeout`` and what came with it (librdkafka's consume waits for ``max_records`` or the whole timeout)."""
        consume = self.consumer.consume
        messages = consume(max_records, 0) or consume(1, timeout)
        if not messages:
            return None
        if len(messages) == 1 and max_records > 1:
            messages += consume(max_records - 1, 0)
        good = []
        for m in messages:
            error = m.error()
            if error is None:
                good.append(m)
            elif error.fatal():
                raise SourceError(f"the Kafka consumer stopped: {error.str()}")
            else:
                log.warning("consumer: %s", error.str())
        if not good:
            return None

        def origin(i: int) -> Origin:
            m = good[i]
            kind, stamp = m.timestamp()
            return m.topic(), m.partition(), m.offset(), stamp if kind else None

        return Polled(
            [m.value() for m in good],
            [m.key() for m in good],
            [m.headers() or () for m in good],
            origin,
            self.positions(),
        )

    def positions(self) -> dict[TP, int]:
        assigned = self.consumer.assignment()
        if not assigned:
            return {}
        return {(p.topic, p.partition): p.offset for p in self.consumer.position(assigned) if p.offset >= 0}

    def commit(self, offsets: dict[TP, int]) -> None:
        """Asynchronous: librdkafka's synchronous commit has no time-out, and after a broker restart it blocked a
        stream for good (SIGTERM included). A commit that fails is logged (``on_commit``) and the next one
        covers its records; ``close`` waits for the commits in flight."""
        if offsets:
            parts = [self.ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            self.consumer.commit(offsets=parts, asynchronous=True)

    def committed(self, parts: list[TP]) -> dict[TP, int]:
        found = self.consumer.committed([self.ck.TopicPartition(t, p) for t, p in parts], timeout=10)
        return {(p.topic, p.partition): p.offset for p in found}

    def watermarks(self, parts: list[TP], cached: bool = False) -> dict[TP, tuple[int, int]]:
        """(first, end) offset of each partition; ``cached``: as the last fetch responses said (no request; -1
        where unknown). Asking the broker waits behind the consumer's fetch, up to ``fetch.wait.max.ms`` (25 ms)
        for each partition when the topic is quiet."""
        out = {}
        for t, p in parts:
            tp = self.ck.TopicPartition(t, p)
            marks = self.consumer.get_watermark_offsets(tp, cached=True) if cached else None
            low, high = marks or self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            out[(t, p)] = (max(int(low), -1), max(int(high), -1))
        return out

    def partitions(self, topic: str, timeout: float = 10.0) -> list[int]:
        meta = self.consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        return sorted(meta.partitions)

    def assignment(self) -> list[TP]:
        return [(p.topic, p.partition) for p in self.consumer.assignment()]

    def seek(self, offsets: dict[TP, int]) -> None:
        for (t, p), o in offsets.items():
            self.consumer.seek(self.ck.TopicPartition(t, p, o))

    def group_metadata(self) -> Any:
        return self.consumer.consumer_group_metadata()

    def close(self) -> None:
        self.consumer.close()


class _ConfluentProducer(Connects):
    def __init__(self, config: dict[str, Any], contact: Contact, connect_timeout: float) -> None:
        ck = require("confluent_kafka", extra="kafka", feature="Kafka streaming (confluent-kafka)")
        self.ck, self.contact, self.connect_timeout = ck, contact, connect_timeout
        try:
            self.producer = ck.Producer({**config, "error_cb": contact.error})
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(refused_by_client(exc)) from None

    def _topics(self, timeout: float) -> set[str] | None:
        try:
            return set(self.producer.list_topics(timeout=timeout).topics)
        except self.ck.KafkaException:
            return None
        finally:
            self.producer.poll(0)

    def callback(self, deliveries: Deliveries, kind: str) -> Any:
        """The native delivery callback of ``kind`` for ``deliveries`` (made once per batch, not per message)."""

        def report(err: Any, msg: Any) -> None:
            deliveries.pending -= 1
            if err is not None:
                deliveries.failure(kind, err.str(), err.code() in REFUSED, msg.value())

        return report

    def produce_all(
        self, topic: str, values: list[bytes], keys: list[bytes | None], headers: list[Headers], callback: Any
    ) -> None:
        """:meth:`produce` of each message in order, the client called straight while its queue has room (a
        message it will not take now goes through :meth:`produce`, then the rest as before)."""
        produce, rows = self.producer.produce, zip(values, keys, headers, strict=True)
        while True:
            try:
                for value, key, extra in rows:
                    produce(topic, value, key, headers=extra or None, on_delivery=callback)
                return
            except (BufferError, self.ck.KafkaException):  # a full queue, or this one refused: as produce does
                self.produce(topic, value, key, extra, callback)

    def produce(self, topic: str, value: bytes | None, key: bytes | None, headers: Headers, callback: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers or None, on_delivery=callback)
                return
            except BufferError:  # the local queue is full: serve deliveries until there is room
                self.producer.poll(0.05)
            except self.ck.KafkaException as exc:  # refused before sending (e.g. larger than message.max.bytes)
                callback(exc.args[0] if exc.args else exc, Refused(value))
                return

    def poll(self, timeout: float = 0.0) -> None:
        self.producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        return int(self.producer.flush(timeout))

    def init_transactions(self, timeout: float = 60.0) -> None:
        self.producer.init_transactions(timeout)

    def begin(self) -> None:
        self.producer.begin_transaction()

    def send_offsets(self, offsets: dict[TP, int], group_metadata: Any) -> None:
        parts = [self.ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self.producer.send_offsets_to_transaction(parts, group_metadata, TXN_WAIT)

    def commit(self) -> None:
        self.producer.commit_transaction(TXN_WAIT)

    def abort(self) -> None:
        self.producer.abort_transaction(TXN_WAIT)

    def close(self) -> None:
        self.producer.flush(30)

    def discard(self) -> None:
        """Drop what is queued or in flight and let the producer go, without waiting for a broker."""
        self.producer.purge(in_queue=True, in_flight=True, blocking=False)
        self.producer.flush(0)


_MAX_POLL_INTERVAL_MS = 60_000


#: a fetch waits at the broker for this many bytes (about 300 records of 200 bytes) or :data:`_FETCH_WAIT_MAX_MS`
_FETCH_MIN_BYTES = 64 * 1024
_FETCH_WAIT_MAX_MS = 25


def make_consumer(
    client: Client,
    *,
    bootstrap: str,
    group: str,
    batch_size: int,
    read_committed: bool = True,
    settings: KafkaSettings | None = None,
) -> _ConfluentConsumer | _PythonConsumer:
    """A consumer in ``group`` that never commits by itself and starts at the beginning of new partitions; the
    ``settings`` override the defaults here, except what that depends on (refused by :class:`KafkaSettings`)."""
    settings = settings or KafkaSettings()
    contact, given = Contact(bootstrap), settings.resolved("consumer")
    isolation = "read_committed" if read_committed else "read_uncommitted"
    if client == "confluent":
        defaults: dict[str, Any] = {
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 3_000,
            "max.poll.interval.ms": _MAX_POLL_INTERVAL_MS,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.max.messages.kbytes": 65_536,
            # the broker answers a fetch once 64 KiB are there or 25 ms passed, not at every produce request: at a
            # steady rate, fewer and larger batches, so the stream's (and the broker's) CPU goes to records rather
            # than to each batch's fixed costs, which otherwise took a core at 5,000 records/s on 2 cores
            "fetch.min.bytes": _FETCH_MIN_BYTES,
            "fetch.wait.max.ms": _FETCH_WAIT_MAX_MS,
            "log_level": 7 if "debug" in given else 2,  # librdkafka's own lines repeat every connection attempt
        }
        fixed = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        fixed |= {"enable.auto.offset.store": False, "isolation.level": isolation}
        return _ConfluentConsumer(defaults | given | fixed, contact, settings.connect_timeout)
    known = _kafka_python().KafkaConsumer.DEFAULT_CONFIG
    pdefaults: dict[str, Any] = {
        "auto_offset_reset": "earliest",
        "max_poll_records": batch_size,
        "max_poll_interval_ms": _MAX_POLL_INTERVAL_MS,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 3_000,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "fetch_min_bytes": _FETCH_MIN_BYTES,
        "fetch_max_wait_ms": _FETCH_WAIT_MAX_MS,
        "bootstrap_timeout_ms": int(settings.connect_timeout * 1000),
    }
    pfixed = {"bootstrap_servers": bootstrap, "group_id": group, "enable_auto_commit": False}
    pfixed["isolation_level"] = isolation
    pconfig = pdefaults | kafka_python_config(given, "consumer", known) | pfixed
    return _PythonConsumer(pconfig, contact, settings.connect_timeout)


def make_producer(
    client: Client,
    *,
    bootstrap: str,
    max_request_bytes: int = 1_048_576,
    compression: str = "lz4",
    transactional_id: str | None = None,
    settings: KafkaSettings | None = None,
) -> _ConfluentProducer | _PythonProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all); transactional with an id. The
    ``settings`` override the defaults here, except what the delivery guarantee depends on."""
    settings = settings or KafkaSettings()
    settings.check(exactly_once=transactional_id is not None)
    contact, given = Contact(bootstrap), settings.resolved("producer")
    if client == "confluent":
        config: dict[str, Any] = {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.max.bytes": max_request_bytes,
            "delivery.timeout.ms": 120_000,
            "queue.buffering.max.messages": 500_000,
            "log_level": 7 if "debug" in given else 2,
        }
        # one request in flight: librdkafka acks a batch "implicitly" when a later one of its partition succeeds,
        # also one the broker refused unwritten (NOT_LEADER while a new topic's leader starts): a silent loss
        # (confluent-kafka-go issue 921); with one in flight a batch is retried before the next is sent
        fixed: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "compression.type": compression,
            "max.in.flight.requests.per.connection": 1,
        }
        if transactional_id is not None:
            # a dead process's open transaction blocks read_committed readers until it times out: keep it short;
            # librdkafka: deliveries no longer than the transaction may stay open
            config |= {"transaction.timeout.ms": 20_000, "delivery.timeout.ms": 20_000}
            fixed |= {"transactional.id": transactional_id, "enable.idempotence": True}
        return _ConfluentProducer(config | given | fixed, contact, settings.connect_timeout)
    known = _kafka_python().KafkaProducer.DEFAULT_CONFIG
    pconfig: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 512 * 1024,
        "max_request_size": max_request_bytes,
        "delivery_timeout_ms": 120_000,
        "bootstrap_timeout_ms": int(settings.connect_timeout * 1000),
    }
    pfixed: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "compression_type": None if compression == "none" else compression,
    }
    if transactional_id is not None:
        pconfig["transaction_timeout_ms"] = 20_000
        pfixed |= {"transactional_id": transactional_id, "enable_idempotence": True}
    pconfig = pconfig | kafka_python_config(given, "producer", known) | pfixed
    return _PythonProducer(pconfig, contact, settings.connect_timeout)
