"""Kafka topics as a sink: every scored record to the scored topic (and alerts to the alerts topic), with the
input message's key and headers; dead letters to the dead-letter topic.

**Delivery.** At-least-once (the default): batches are produced without waiting, several in flight; a batch is
*done* when the broker acknowledged every one of its outputs (acks=all), and :meth:`KafkaSink.done_positions`
hands the source the consumer positions of the batches done, in order, to commit. An output the broker refuses
for good (too large, invalid) is replaced by a dead letter of its input message; an output that cannot be
delivered within the delivery timeout (the broker is gone) stops the stream with an error, and nothing past it
is committed. Exactly-once (``transactional_id``): each batch's outputs and its consumer positions are one
transaction (:meth:`KafkaSink.commit_transaction`), readable with ``read_committed``.

**Output.** The scored fields are appended to the message's own JSON bytes (``{...original..., "id": ...,
"score": ..., ...}``): the input is never re-encoded, so numbers keep their spelling. A message that already has
a field of the same name as one segscope adds is merged as a JSON object instead (segscope's value wins).

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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from segscope._kafka import TP, Client, make_producer
from segscope._kafka_setup import KafkaSettings
from segscope.exceptions import SinkError
from segscope.schema import SCORED_COLUMNS
from segscope.sources.base import Batch, DeadLetter

__all__ = ["DLQ_HEADER", "KafkaSink", "dead_letter_headers"]

log = logging.getLogger("segscope.stream")

#: Prefix of the headers that describe a dead letter.
DLQ_HEADER = "segscope.dlq."
_RESERVED = frozenset({"id", *SCORED_COLUMNS})


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


def encode(scored: pl.DataFrame, batch: Batch | None) -> list[bytes]:
    """One output value per scored row: the input message with ``id``, the columns the model derived (per-entity
    features) and the scored columns appended."""
    ids = batch.ids if batch is not None and batch.ids is not None else None
    given = set(batch.frame.columns) if batch is not None else set(scored.columns)
    derived = [c for c in scored.columns if c not in given and c not in SCORED_COLUMNS]
    tail = scored.select(*derived, *SCORED_COLUMNS)
    if ids is not None:
        tail = tail.select(pl.Series("id", ids, dtype=pl.String), *derived, *SCORED_COLUMNS)
    if batch is None or batch.raw is None or batch.records is None:  # not from Kafka: the whole scored rows
        return scored.write_ndjson().encode().splitlines()
    lines = tail.write_ndjson().encode().splitlines()
    out = []
    for raw, record, line in zip(batch.raw, batch.records, lines, strict=False):
        body = raw.rstrip() if raw is not None else b""
        if _RESERVED.isdisjoint(record) and body.endswith(b"}") and not any(c in record for c in derived):
            out.append(body[:-1] + b"," + line[1:])
        else:  # a field of the same name: merge as objects, segscope's values win
            out.append(orjson.dumps({**record, **orjson.loads(line)}))
    return out


@dataclass
class _Ticket:
    """The outputs of one batch in flight."""

    positions: dict[TP, int]
    batch: Batch | None
    values: list[bytes] = field(default_factory=list)  # the scored outputs, to find a refused one's row
    pending: int = 0
    refused: list[tuple[bytes | None, str]] = field(default_factory=list)  # (value, error) refused for good
    failed: str | None = None  # an error retrying cannot fix in time
    callback: Any = None

    def delivered(self, error: str | None, permanent: bool, value: bytes | None) -> None:
        self.pending -= 1
        if error is None:
            return
        if permanent:
            self.refused.append((value, error))
        else:
            self.failed = self.failed or error


class KafkaSink:
    """Scored records, alerts and dead letters to their topics (see the module docstring for delivery)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        dead_letter_topic: str,
        alerts_topic: str | None = None,
        max_request_bytes: int = 1_048_576,
        max_value_bytes: int = 65_536,
        compression: str = "lz4",
        client: Client = "confluent",
        transactional_id: str | None = None,
        max_in_flight: int = 4,
        encoder: Callable[[pl.DataFrame, Batch | None], list[bytes]] | None = None,
        settings: KafkaSettings | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.alerts_topic = alerts_topic
        self.max_request_bytes = max_request_bytes
        self.max_value_bytes = max_value_bytes
        self.compression = compression
        self.client = client
        self.transactional_id = transactional_id
        self.max_in_flight = max_in_flight
        #: one output value per scored row (default :func:`encode`; Avro/Protobuf input: sinks/wire.py)
        self.encoder = encoder or encode
        self.settings = settings

    def open(self) -> None:
        """Connect (a bounded wait: an unreachable cluster or refused credentials is one line)."""
        self.producer_ = make_producer(
            self.client,
            bootstrap=self.bootstrap,
            max_request_bytes=self.max_request_bytes,
            compression=self.compression,
            transactional_id=self.transactional_id,
            settings=self.settings,
        )
        self.tickets_: deque[_Ticket] = deque()
        self.done_: dict[TP, int] = {}
        self.producer_.reach()
        if self.transactional_id is not None:
            self.producer_.init_transactions()

    # ------------------------------------------------------------------ producing
    def _ticket(self, batch: Batch | None) -> _Ticket:
        while len(self.tickets_) >= self.max_in_flight:  # backpressure: wait for the oldest batch
            self.producer_.poll(0.05)
            self._reap()
        ticket = _Ticket(dict(batch.position or {}) if batch is not None else {}, batch)
        ticket.callback = self.producer_.callback(ticket.delivered)
        self.tickets_.append(ticket)
        return ticket

    def write(self, scored: pl.DataFrame, batch: Batch | None = None) -> None:
        """Produce one output per scored row (and the alerts), without waiting for the broker."""
        ticket = self._ticket(batch)
        values = ticket.values = self.encoder(scored, batch)
        keys = batch.keys if batch is not None and batch.keys is not None else [None] * len(values)
        headers = batch.headers if batch is not None and batch.headers is not None else [()] * len(values)
        produce, callback, topic = self.producer_.produce, ticket.callback, self.topic
        ticket.pending += len(values)
        for value, key, extra in zip(values, keys, headers, strict=True):
            produce(topic, value, key, extra, callback)
        if self.alerts_topic:
            rows = scored.get_column("is_alert").arg_true().to_list()
            ticket.pending += len(rows)
            for row in rows:
                produce(self.alerts_topic, values[row], keys[row], headers[row], callback)
        self.producer_.poll(0)

    def dead_letters(self, letters: list[DeadLetter], topic: str | None = None) -> None:
        """Dead letters, in the format above, as part of the latest batch (or on their own)."""
        if not letters:
            return
        ticket = self.tickets_[-1] if self.tickets_ else self._ticket(None)
        for letter in letters:
            value = letter.value[: self.max_value_bytes] if letter.value is not None else None
            headers = dead_letter_headers(letter, kept=self.max_value_bytes)
            ticket.pending += 1
            self.producer_.produce(topic or self.dead_letter_topic, value, letter.key, headers, ticket.callback)

    # ------------------------------------------------------------------ at-least-once
    def _settle(self) -> None:
        """Replace outputs the broker refused for good by dead letters of their inputs; stop on lost outputs."""
        for ticket in self.tickets_:
            if ticket.failed is not None:
                raise SinkError(
                    f"an output could not be delivered ({ticket.failed}); nothing was committed past it: restart "
                    "the stream once the broker is reachable"
                )
            if ticket.refused:
                refused, ticket.refused = ticket.refused, []
                self._replace_refused(ticket, refused)

    def _replace_refused(self, ticket: _Ticket, refused: list[tuple[bytes | None, str]]) -> None:
        batch = ticket.batch
        rows = {value: row for row, value in enumerate(ticket.values)}
        letters = []
        for value, error in refused:
            row = rows.get(value) if value is not None else None
            if row is None or batch is None or batch.raw is None or batch.origin is None:
                # a dead letter or an alert copy itself was refused: nothing safe to replace it with
                ticket.failed = ticket.failed or f"a dead letter was refused ({error})"
                continue
            topic, partition, offset, timestamp = batch.origin(row)
            letters.append(
                DeadLetter(
                    f"the scored record could not be produced: {error}",
                    topic,
                    partition,
                    offset,
                    batch.keys[row] if batch.keys is not None else None,
                    batch.raw[row],
                    timestamp,
                    batch.headers[row] if batch.headers is not None else (),
                )
            )
        for letter in letters:
            value = letter.value[: self.max_value_bytes] if letter.value is not None else None
            ticket.pending += 1
            headers = dead_letter_headers(letter, kept=self.max_value_bytes)
            self.producer_.produce(self.dead_letter_topic, value, letter.key, headers, ticket.callback)
        if ticket.failed is not None:
            self._settle()

    def _reap(self) -> None:
        """Move the batches at the front of the flight whose outputs are all acknowledged to ``done_``."""
        self._settle()
        while self.tickets_ and self.tickets_[0].pending == 0 and not self.tickets_[0].refused:
            self.done_.update(self.tickets_.popleft().positions)

    def done_positions(self) -> dict[TP, int]:
        """Consumer positions of the batches whose outputs are all acknowledged (merged, in order) since the last
        call: what the source may commit."""
        self.producer_.poll(0)
        self._reap()
        done, self.done_ = self.done_, {}
        return done

    def in_flight(self) -> int:
        return len(self.tickets_)

    def flush(self, timeout: float = 180.0) -> None:
        """Wait until every batch in flight is acknowledged (or raise: nothing past a lost output is committed)."""
        deadline = time.monotonic() + timeout
        while any(t.pending or t.refused for t in self.tickets_):
            self.producer_.flush(1.0)
            self._settle()
            if time.monotonic() > deadline:
                raise SinkError(
                    f"outputs not acknowledged within {timeout:.0f} s; nothing was committed past them: restart "
                    "the stream once the broker is reachable"
                )

    # ------------------------------------------------------------------ exactly-once
    def begin(self) -> None:
        self.producer_.begin()

    def commit_transaction(self, positions: dict[TP, int], group_metadata: Any) -> bool:
        """Commit the open transaction with the consumer positions; False when it had to be aborted (the caller
        rewinds to the committed positions and processes the batch again)."""
        for attempt in range(5):
            try:
                if attempt == 0 and positions:
                    self.producer_.send_offsets(positions, group_metadata)
                self.producer_.commit()
                self.tickets_.clear()
                return True
            except Exception as exc:
                verdict = _transaction_error(exc)
                if verdict == "retry" and attempt < 4:
                    continue
                if verdict != "abort":
                    raise SinkError(f"the transactional producer stopped ({exc}); restart the stream") from None
                log.warning("transaction aborted (%s); the batch is processed again", str(exc).splitlines()[0])
                try:
                    self.producer_.abort()
                except Exception as abort_exc:
                    raise SinkError(f"the transaction could not be aborted ({abort_exc}); restart the stream") from None
                self.tickets_.clear()
                return False
        return False  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        if hasattr(self, "producer_"):
            self.producer_.close()

    def abort(self) -> None:
        """Give up: with transactions the open one is aborted (its outputs never become visible to read_committed
        readers); at-least-once, what was produced may already be written (nothing was committed past it)."""
        self.tickets_ = deque()
        if hasattr(self, "producer_") and self.transactional_id is not None:
            try:
                self.producer_.abort()
            except Exception as exc:  # no transaction open
                log.debug("abort: %s", exc)


def _transaction_error(exc: Exception) -> str:
    """ "retry" (commit again), "abort" (abort, rewind, process again) or "fatal" (another instance took over)."""
    error: Any = exc.args[0] if exc.args else None
    if hasattr(error, "txn_requires_abort"):  # confluent-kafka's KafkaError
        if error.fatal():
            return "fatal"
        if error.txn_requires_abort():
            return "abort"
        return "retry" if error.retriable() else "fatal"
    fatal = ("ProducerFencedError", "InvalidProducerEpochError", "TransactionalIdAuthorizationFailedError")
    return "fatal" if type(exc).__name__ in fatal else "abort"
