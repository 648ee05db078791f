"""Kafka topics as a sink: every scored record to the scored topic (and alerts to the alerts topic), with the
input message's key and headers; dead letters to the dead-letter topic. ``flush`` returns only when the broker
acknowledged everything (acks=all), re-sending what failed, so offsets are committed only past written output.

**The dead-letter format** (one, for every dead letter segscope writes; the convention of Kafka Connect's
dead-letter queues): the record's key is the original key, its value the original bytes unchanged (at most
``max_value_bytes`` of them: never re-escaped, so a dead letter is never larger than its message and always
fits the producer's request limit), its headers the original headers plus ``segscope.dlq.*``:
``reason``, ``topic``, ``partition``, ``offset``, ``timestamp``, ``length`` (of the original value), ``sha256``,
``truncated`` and ``tombstone`` (``true`` when the original had no value at all, told apart from an empty one).
(``extra: kafka``)
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import orjson
import polars as pl

from segscope._deps import require
from segscope.exceptions import SegscopeError, SinkError
from segscope.schema import SCORED_COLUMNS
from segscope.sources.base import Batch, DeadLetter

__all__ = ["DLQ_HEADER", "KafkaSink", "dead_letter_headers"]

log = logging.getLogger("segscope.stream")

#: Prefix of the headers that describe a dead letter.
DLQ_HEADER = "segscope.dlq."

Send = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]


def dead_letter_headers(letter: DeadLetter, *, kept: int) -> list[tuple[str, bytes]]:
    """The original headers plus the ``segscope.dlq.*`` description of ``letter``."""
    value = letter.value
    described = {
        "reason": letter.reason,
        "topic": letter.topic,
        "partition": str(letter.partition),
        "offset": str(letter.offset),
        "timestamp": "" if letter.timestamp is None else str(letter.timestamp),
        "length": "-1" if value is None else str(len(value)),
        "sha256": "" if value is None else hashlib.sha256(value).hexdigest(),
        "truncated": "true" if value is not None and len(value) > kept else "false",
        "tombstone": "true" if value is None else "false",
    }
    original = [(k, v if v is not None else b"") for k, v in letter.headers]
    return original + [(DLQ_HEADER + k, v.encode("utf-8", "replace")) for k, v in described.items()]


class KafkaSink:
    """Scored records, alerts and dead letters to their topics; ``flush`` waits for the acknowledgements."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        dead_letter_topic: str,
        alerts_topic: str | None = None,
        max_request_bytes: int = 1_048_576,
        max_value_bytes: int = 65_536,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.alerts_topic = alerts_topic
        self.max_request_bytes = max_request_bytes
        self.max_value_bytes = max_value_bytes

    def open(self) -> None:
        kafka = require("kafka", extra="kafka", feature="Kafka streaming")
        from kafka.errors import KafkaError

        try:
            self.producer_ = kafka.KafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=5,
                batch_size=512 * 1024,
                max_request_size=self.max_request_bytes,
                delivery_timeout_ms=120_000,
            )
        except KafkaError as exc:
            raise SinkError(f"cannot connect to Kafka at {self.bootstrap} ({exc}); check --bootstrap") from None
        self.pending_: list[Send] = []

    def write(self, scored: pl.DataFrame, batch: Batch | None = None) -> None:
        """Queue one output record per scored row: the message as it arrived (all its fields), its ``id`` and
        the scored columns, with the message's key and headers."""
        n = scored.height
        records = batch.records if batch is not None and batch.records is not None else [{}] * n
        ids = batch.ids if batch is not None and batch.ids is not None else [None] * n
        keys = batch.keys if batch is not None and batch.keys is not None else [None] * n
        headers = batch.headers if batch is not None and batch.headers is not None else [()] * n
        out = scored.select(SCORED_COLUMNS) if records and records[0] else scored
        rows = out.iter_rows(named=True)
        for record, record_id, key, extra, row in zip(records, ids, keys, headers, rows, strict=True):
            body = {**record, "id": record_id, **row} if record_id is not None else {**record, **row}
            value = orjson.dumps(body, default=str)
            kept = [(k, v if v is not None else b"") for k, v in extra]
            self.pending_.append((self.topic, key, value, kept))
            if row["is_alert"] and self.alerts_topic:
                self.pending_.append((self.alerts_topic, key, value, kept))

    def dead_letters(self, letters: list[DeadLetter], topic: str | None = None) -> None:
        """Queue dead letters (to ``topic``, default the sink's dead-letter topic), in the format above."""
        for letter in letters:
            value = letter.value[: self.max_value_bytes] if letter.value is not None else None
            headers = dead_letter_headers(letter, kept=self.max_value_bytes)
            self.pending_.append((topic or self.dead_letter_topic, letter.key, value, headers))

    def flush(self, attempts: int = 10) -> None:
        """Send what is queued and wait for the broker; re-send what failed (a broker restart). Raises after
        ``attempts`` so that nothing is committed past a lost output."""
        pending, self.pending_ = self.pending_, []
        for attempt in range(attempts):
            futures = [
                (item, self.producer_.send(item[0], key=item[1], value=item[2], headers=item[3])) for item in pending
            ]
            self.producer_.flush(timeout=120)
            pending = [item for item, future in futures if not future.succeeded()]
            if not pending:
                return
            log.warning("%d sends failed (attempt %d); retrying", len(pending), attempt + 1)
            time.sleep(min(2.0 * (attempt + 1), 10.0))
        raise SegscopeError(
            f"{len(pending)} records could not be produced after {attempts} attempts; nothing committed, "
            "restart the stream once the broker is reachable"
        )

    def close(self) -> None:
        if hasattr(self, "producer_"):
            self.producer_.close(timeout=30)

    def abort(self) -> None:
        self.pending_ = []
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"topic": self.topic, "alerts_topic": self.alerts_topic, "dead_letter_topic": self.dead_letter_topic}
