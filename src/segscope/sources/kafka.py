"""A Kafka topic as a source: a consumer in a group, each poll a :class:`~segscope.sources.base.Batch`.

Every message becomes exactly one of: a valid record (a JSON object whose fields match the bundle's schema,
converted to the fit-time types, with its id: the configured id column or ``topic/partition/offset``), or a
:class:`~segscope.sources.base.DeadLetter` (the reason and the original bytes). Checks are per message, so one
bad message never stops a batch. :meth:`KafkaSource.commit` commits the batch's offsets once its outputs are
acknowledged: at-least-once delivery. (``extra: kafka``)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl

from segscope._deps import require
from segscope.exceptions import SourceError
from segscope.schema import ColumnSpec, FeatureSchema
from segscope.sources.base import Batch, DeadLetter

__all__ = ["KafkaSource", "TopicReader", "decode_messages", "records_frame"]

log = logging.getLogger("segscope.stream")


def _check(value: Any, spec: ColumnSpec) -> tuple[Any, str | None]:
    """(converted value, error) for one field against its column spec; None is a missing value."""
    if value is None:
        return None, None
    if spec.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"field '{spec.name}' must be a number, got {type(value).__name__} {str(value)[:40]!r}"
        if isinstance(value, float) and math.isinf(value):
            return None, f"field '{spec.name}' is infinite"
        return float(value), None
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            return None, f"field '{spec.name}' must be true or false, got {str(value)[:40]!r}"
        return value, None
    if spec.kind == "categorical":
        if isinstance(value, dict | list):
            return None, f"field '{spec.name}' must be a string, got {type(value).__name__}"
        return str(value), None
    if not isinstance(value, str):
        return None, f"field '{spec.name}' must be an ISO-8601 date/time string, got {str(value)[:40]!r}"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None, f"field '{spec.name}' is not an ISO-8601 date/time: {value[:40]!r}"
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed, None


def _headers(msg: Any) -> tuple[tuple[str, bytes | None], ...]:
    return tuple((str(k), v) for k, v in (getattr(msg, "headers", None) or ()))


def decode_messages(messages: list[Any], schema: FeatureSchema, *, max_bytes: int) -> Batch:
    """Check each ConsumerRecord-like message (topic, partition, offset, key, value, timestamp, headers)."""
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    ids: list[str] = []
    keys: list[bytes | None] = []
    headers: list[tuple[tuple[str, bytes | None], ...]] = []
    dead_letters: list[DeadLetter] = []
    id_column = schema.id_column
    for msg in messages:

        def dead(reason: str, msg: Any = msg) -> None:
            dead_letters.append(
                DeadLetter(
                    reason,
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    msg.key,
                    msg.value,
                    getattr(msg, "timestamp", None),
                    _headers(msg),
                )
            )

        raw = msg.value
        if raw is None:
            dead("tombstone: the message has no value (null), so there is no record to score")
            continue
        if len(raw) > max_bytes:
            dead(f"message of {len(raw)} bytes is larger than --max-message-bytes {max_bytes}")
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            dead(f"invalid JSON: {str(exc)[:120]}" if raw else "invalid JSON: the message value is empty (0 bytes)")
            continue
        if not isinstance(record, dict):
            dead(f"a message must be one JSON object, got a JSON {type(record).__name__}")
            continue
        row: dict[str, Any] = {}
        error = None
        for spec in schema.columns:
            if spec.name not in record:
                error = f"missing field '{spec.name}'"
                break
            row[spec.name], error = _check(record[spec.name], spec)
            if error:
                break
        if error is not None:
            dead(error)
            continue
        if id_column is not None:
            if record.get(id_column) is None:
                dead(f"missing id field '{id_column}'")
                continue
            record_id = str(record[id_column])
        else:
            record_id = f"{msg.topic}/{msg.partition}/{msg.offset}"
        records.append(record)
        rows.append(row)
        ids.append(record_id)
        keys.append(msg.key)
        headers.append(_headers(msg))
    frame = records_frame(rows, schema)
    return Batch(frame, ids=ids, keys=keys, headers=headers, records=records, dead=dead_letters)


def records_frame(rows: list[dict[str, Any]], schema: FeatureSchema) -> pl.DataFrame:
    """The bundle's input columns of checked rows as a frame with the fit-time types."""
    columns: dict[str, list[Any]] = {spec.name: [row[spec.name] for row in rows] for spec in schema.columns}
    dtypes = {"numeric": pl.Float64, "boolean": pl.Boolean, "categorical": pl.String}
    return pl.DataFrame(
        {
            spec.name: pl.Series(spec.name, columns[spec.name], dtype=dtypes.get(spec.kind, pl.Datetime("us")))
            for spec in schema.columns
        }
    )


def _next_offsets(batch: dict[Any, list[Any]]) -> dict[Any, int]:
    return {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}


class _Consumer:
    """What both Kafka readers share: the client, offset commits that survive rebalances and coordinator
    restarts, and lag."""

    consumer_: Any
    commit_retries: int = 0

    def _commit_offsets(self, offsets: dict[Any, int]) -> None:
        """Commit after the outputs are acknowledged. A failed commit is safe (the batch is re-delivered, with
        the same ids), so it is retried briefly and then left to the next batch's commit, never raised."""
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        request = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
        for attempt in range(5):
            try:
                self.consumer_.commit(request)
                return
            except CommitFailedError:
                # the group rebalanced while we scored: another member re-delivers this batch (same ids)
                self.commit_retries += 1
                log.warning("commit failed after a rebalance; the batch will be re-delivered")
                return
            except KafkaError as exc:  # e.g. the coordinator is restarting
                self.commit_retries += 1
                log.warning("commit failed (%s), attempt %d; retrying", exc, attempt + 1)
                time.sleep(1.0 + attempt)
        log.warning("commit still failing; the next batch's commit covers these offsets")

    def lag(self) -> int:
        """Messages between this member's positions and the ends of its partitions (-1 when unknown)."""
        assigned = self.consumer_.assignment()
        if not assigned:
            return 0
        try:
            ends = self.consumer_.end_offsets(list(assigned))
            return int(sum(max(0, ends[tp] - self.consumer_.position(tp)) for tp in assigned))
        except Exception:  # lag is informational: never let it stop the stream
            return -1

    def close(self) -> None:
        if hasattr(self, "consumer_"):
            self.consumer_.close(autocommit=False)


class KafkaSource(_Consumer):
    """A topic consumed in a consumer group; :meth:`poll` returns the next :class:`Batch` (or None)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        schema: FeatureSchema,
        batch_size: int = 5000,
        max_message_bytes: int = 65_536,
        poll_timeout_ms: int = 500,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.schema = schema
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.poll_timeout_ms = poll_timeout_ms

    def open(self) -> None:
        kafka = require("kafka", extra="kafka", feature="Kafka streaming")
        from kafka.errors import KafkaError

        try:
            self.consumer_ = kafka.KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.batch_size,
                max_poll_interval_ms=300_000,
                session_timeout_ms=10_000,
                heartbeat_interval_ms=3_000,
                fetch_max_bytes=64 * 1024 * 1024,
            )
        except KafkaError as exc:
            raise SourceError(f"cannot connect to Kafka at {self.bootstrap} ({exc}); check --bootstrap") from None
        self.consumer_.subscribe([self.topic])

    def poll(self, timeout_ms: int | None = None) -> Batch | None:
        polled = self.consumer_.poll(
            timeout_ms=self.poll_timeout_ms if timeout_ms is None else timeout_ms, max_records=self.batch_size
        )
        if not polled:
            return None
        messages = [m for msgs in polled.values() for m in msgs]
        batch = decode_messages(messages, self.schema, max_bytes=self.max_message_bytes)
        batch.position = _next_offsets(polled)
        return batch

    def iter_batches(self) -> Iterator[Batch]:
        while True:
            batch = self.poll()
            if batch is not None:
                yield batch

    def commit(self, batch: Batch) -> None:
        self._commit_offsets(batch.position or {})

    def assigned(self) -> bool:
        """Whether the group gave this member partitions (a joining member may wait for a dead one's session)."""
        return bool(self.consumer_.assignment())


class TopicReader(_Consumer):
    """Every partition of a topic, assigned (no group join to wait for), as raw messages: for small topics every
    process reads whole, such as analyst labels (re-adding a label is a no-op)."""

    def __init__(self, *, bootstrap: str, topic: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group

    def open(self, wait: float = 15.0) -> None:
        kafka = require("kafka", extra="kafka", feature="Kafka streaming")
        from kafka.structs import TopicPartition

        self.consumer_ = kafka.KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
        )
        deadline = time.monotonic() + wait
        while True:
            parts = self.consumer_.partitions_for_topic(self.topic)
            if parts:
                break
            if time.monotonic() > deadline:
                raise SourceError(f"topic {self.topic!r} does not exist on the broker; create it or fix its name")
            self.consumer_.topics()  # refresh metadata
            time.sleep(0.5)
        self.consumer_.assign([TopicPartition(self.topic, p) for p in sorted(parts)])

    def poll(self, max_records: int = 5000) -> tuple[list[Any], dict[Any, int]]:
        """(messages, the offsets to commit once they are handled)."""
        polled = self.consumer_.poll(timeout_ms=0, max_records=max_records)
        return [m for msgs in polled.values() for m in msgs], _next_offsets(polled)

    def commit(self, offsets: dict[Any, int]) -> None:
        self._commit_offsets(offsets)
