"""Kafka topics as a sink: every scored record to the scored topic (and alerts to the alerts topic), with the
input message's key and headers; dead letters to the dead-letter topic.

**Delivery.** At-least-once (the default): batches are produced without waiting, several in flight; a batch is
*done* when the broker acknowledged every one of its outputs (acks=all), and :meth:`KafkaSink.done_positions`
hands the source the consumer positions of the batches done, in order, to commit. Exactly-once
(``transactional_id``): each batch's outputs and its consumer positions are one transaction
(:meth:`KafkaSink.commit_transaction`), readable with ``read_committed``.

**Outcomes.** An output the output topic refuses for good (larger than its ``max.message.bytes``, invalid) is
replaced by a dead letter of its input message (exactly-once: the transaction is aborted and the batch comes
again with that record dead-lettered in place of its output). Outputs that cannot be delivered in time (the
broker is away) raise :class:`DeliveryFailed` (at-least-once) or abort the transaction (exactly-once): the stream
goes back to its last commit and processes the records after it again, once the broker answers (a producer the
outage left unusable is replaced by a new one, under the same transactional id). :attr:`KafkaSink.delivered`
counts what the acknowledged (or committed) batches hold: records in, scored records written, alerts, dead
letters (messages that could not be scored) and refused outputs, each record in exactly one of the last three.

**Output.** The scored fields are appended to the message's own JSON bytes (:mod:`segscope.sinks.splice`): the
input is never re-encoded, so every field keeps its bytes.

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

import polars as pl

from segscope._kafka import TP, Client, make_producer
from segscope._kafka_setup import KafkaSettings
from segscope.exceptions import BackToLastCommit, SinkError
from segscope.sinks import transactions
from segscope.sinks.splice import encode
from segscope.sinks.transactions import TxnFailed, first_line
from segscope.sources.base import Batch, DeadLetter

__all__ = ["DLQ_HEADER", "Delivered", "DeliveryFailed", "KafkaSink", "dead_letter_headers", "encode"]

log = logging.getLogger("segscope.stream")

#: Prefix of the headers that describe a dead letter.
DLQ_HEADER = "segscope.dlq."


class DeliveryFailed(SinkError, BackToLastCommit):
    """Outputs were not delivered in time (the broker away past the delivery time-out): nothing past them was
    committed; the stream goes back to its last commit (:meth:`KafkaSink.reset`)."""

    def __init__(self, reason: str) -> None:
        BackToLastCommit.__init__(self, reason)


@dataclass
class Delivered:
    """What the batches whose outputs were acknowledged (at-least-once) or committed (exactly-once) hold. Every
    record in is exactly one of: scored (its output written), a dead letter (it could not be scored), or a refused
    output (scored, refused by the output topic, dead-lettered in its place)."""

    records_in: int = 0
    scored: int = 0
    alerts: int = 0
    dead_letters: int = 0
    refused: int = 0
    batches: int = 0


def _never() -> bool:
    return False


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


@dataclass
class _Ticket:
    """The outputs of one batch in flight, and what they hold."""

    positions: dict[TP, int]
    batch: Batch | None
    values: list[bytes] = field(default_factory=list)  # the scored outputs, to find a refused one's row
    pending: int = 0
    refused: list[tuple[bytes | None, str]] = field(default_factory=list)  # scored outputs refused for good
    failed: str | None = None  # not delivered in time: retrying the batch can fix it
    fatal: str | None = None  # a dead letter refused for good: nothing can stand in for it
    copies_refused: list[tuple[bytes | None, str]] = field(default_factory=list)  # alert copies refused for good
    callbacks: dict[str, Any] = field(default_factory=dict)
    # what the batch holds, counted once it is done
    size: int = 0
    scored: int = 0
    alert_rows: set[int] = field(default_factory=set)
    dead: int = 0
    refused_outputs: int = 0

    def failure(self, kind: str, error: str, permanent: bool, value: bytes | None) -> None:
        """A message of the batch that did not go (``pending`` is counted down by the client's callback)."""
        if not permanent:
            self.failed = self.failed or error
        elif kind == "out":
            self.refused.append((value, error))
        elif kind == "copy":
            self.copies_refused.append((value, error))
        else:
            self.fatal = self.fatal or error


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
        self.delivered = Delivered()
        #: exactly-once: the (topic, partition, offset) of inputs whose outputs the output topic refused in an
        #: aborted transaction, and why: dead-lettered when the batch comes again
        self.refuse_: dict[tuple[str, int, int], str] = {}
        self.skip_copies_: set[tuple[str, int, int]] = set()  # and of inputs whose alert copy was refused
        self.uncertain_: list[_Ticket] = []  # an aborted attempt's batches (their commit may have gone through)
        self.fenced_ = 0
        self._connect()
        self.producer_.reach()
        if self.transactional_id is not None:
            self.producer_.init_transactions()

    def _make(self) -> Any:
        return make_producer(
            self.client,
            bootstrap=self.bootstrap,
            max_request_bytes=self.max_request_bytes,
            compression=self.compression,
            transactional_id=self.transactional_id,
            settings=self.settings,
        )

    def _connect(self) -> None:
        self.producer_ = self._make()
        self.tickets_: deque[_Ticket] = deque()
        self.done_: dict[TP, int] = {}

    def _discard(self) -> None:
        """Drop the producer and what it still holds, without waiting for the broker."""
        try:
            self.producer_.discard()
        except Exception as exc:  # a producer in a fatal state
            log.debug("discarding the producer: %s", exc)
        self.tickets_ = deque()
        self.done_ = {}

    # ------------------------------------------------------------------ producing
    def _ticket(self, batch: Batch | None) -> _Ticket:
        while len(self.tickets_) >= self.max_in_flight:  # backpressure: wait for the oldest batch
            self.producer_.poll(0.05)
            self._reap()
        ticket = _Ticket(dict(batch.position or {}) if batch is not None else {}, batch)
        ticket.size = batch.size if batch is not None else 0
        for kind in ("out", "copy", "letter"):
            ticket.callbacks[kind] = self.producer_.callback(ticket, kind)
        self.tickets_.append(ticket)
        return ticket

    def write(self, scored: pl.DataFrame, batch: Batch | None = None) -> None:
        """Produce one output per scored row (and the alerts), without waiting for the broker."""
        ticket = self._ticket(batch)
        values = ticket.values = self.encoder(scored, batch)
        n = len(values)
        keys = batch.keys if batch is not None and batch.keys is not None else [None] * n
        headers = batch.headers if batch is not None and batch.headers is not None else [()] * n
        alert_rows = scored.get_column("is_alert").arg_true().to_list()
        skip: dict[int, str] = {}
        copies = alert_rows if self.alerts_topic else []
        if (self.refuse_ or self.skip_copies_) and batch is not None and batch.origin is not None:
            # exactly-once, after an aborted transaction: what the topics refused is not sent again
            where = [batch.origin(row)[:3] for row in range(n)]
            skip = {row: self.refuse_[o] for row, o in enumerate(where) if o in self.refuse_}
            copies = [row for row in copies if row not in skip and where[row] not in self.skip_copies_]
        produce_all = self.producer_.produce_all
        ticket.pending += n - len(skip)
        ticket.scored += n  # less the refused ones, as their dead letters are made
        ticket.alert_rows = set(alert_rows) - set(skip)
        if not skip:
            produce_all(self.topic, values, keys, headers, ticket.callbacks["out"])
        else:
            rows = [row for row in range(n) if row not in skip]
            produce_all(
                self.topic, [values[r] for r in rows], [keys[r] for r in rows], [headers[r] for r in rows],
                ticket.callbacks["out"],
            )  # fmt: skip
            self._letters(ticket, [self._refused_letter(ticket, row, skip[row]) for row in sorted(skip)], None)
        if copies and self.alerts_topic is not None:
            ticket.pending += len(copies)
            produce_all(
                self.alerts_topic, [values[r] for r in copies], [keys[r] for r in copies],
                [headers[r] for r in copies], ticket.callbacks["copy"],
            )  # fmt: skip
        self.producer_.poll(0)

    def dead_letters(self, letters: list[DeadLetter], topic: str | None = None, batch: Batch | None = None) -> None:
        """Dead letters, in the format above: of ``batch`` (the batch's own, after its :meth:`write` if it had
        rows), of the latest batch, or on their own."""
        if batch is not None and (not self.tickets_ or self.tickets_[-1].batch is not batch):
            self._ticket(batch)
        if not letters:
            return
        ticket = self.tickets_[-1] if self.tickets_ else self._ticket(None)
        ticket.dead += len(letters)
        self._letters(ticket, letters, topic)

    def _letters(self, ticket: _Ticket, letters: list[DeadLetter], topic: str | None) -> None:
        callback = ticket.callbacks["letter"]
        for letter in letters:
            value = letter.value[: self.max_value_bytes] if letter.value is not None else None
            headers = dead_letter_headers(letter, kept=self.max_value_bytes)
            ticket.pending += 1
            self.producer_.produce(topic or self.dead_letter_topic, value, letter.key, headers, callback)

    def _refused_letter(self, ticket: _Ticket, row: int, error: str) -> DeadLetter:
        """The dead letter that stands in for the refused output of ``row``: its input message, counted."""
        batch = ticket.batch
        assert batch is not None
        assert batch.raw is not None
        assert batch.origin is not None
        topic, partition, offset, timestamp = batch.origin(row)
        ticket.refused_outputs += 1
        ticket.scored -= 1
        return DeadLetter(
            f"the scored record could not be produced: {error}",
            topic,
            partition,
            offset,
            batch.keys[row] if batch.keys is not None else None,
            batch.raw[row],
            timestamp,
            batch.headers[row] if batch.headers is not None else (),
        )

    def _refused_rows(self, ticket: _Ticket) -> dict[int, str]:
        """The rows whose scored output was refused for good (taken off the ticket)."""
        rows = {value: row for row, value in enumerate(ticket.values)}
        found = {}
        for value, error in ticket.refused:
            row = rows.get(value) if value is not None else None
            if row is None or ticket.batch is None or ticket.batch.raw is None or ticket.batch.origin is None:
                ticket.fatal = ticket.fatal or error  # not an output of this batch's rows: nothing stands in
                continue
            found[row] = error
        ticket.refused = []
        return found

    # ------------------------------------------------------------------ at-least-once
    def _settle(self) -> None:
        """Replace outputs refused for good by dead letters of their inputs; raise on lost outputs."""
        for ticket in self.tickets_:
            self._check(ticket)
            if ticket.failed is not None:
                raise DeliveryFailed(f"an output could not be delivered ({ticket.failed})")
            if ticket.refused:
                refused = self._refused_rows(ticket)
                self._check(ticket)
                ticket.alert_rows -= set(refused)
                self._letters(ticket, [self._refused_letter(ticket, row, why) for row, why in refused.items()], None)

    def _check(self, ticket: _Ticket) -> None:
        if ticket.fatal is not None:
            raise SinkError(
                f"a dead letter was refused for good ({ticket.fatal}); nothing can stand in for it, so the stream "
                f"stops before committing past it: check the dead-letter topic {self.dead_letter_topic!r} (its "
                "max.message.bytes, its permissions)"
            )
        if ticket.copies_refused:
            log.warning(
                "%d alert copies were refused by the alerts topic %r (%s); their scored records are in %r",
                len(ticket.copies_refused), self.alerts_topic, ticket.copies_refused[0][1], self.topic,
            )  # fmt: skip
            batch = ticket.batch
            if self.transactional_id is not None and batch is not None and batch.origin is not None:
                rows = {value: row for row, value in enumerate(ticket.values)}  # left out when the batch comes again
                self.skip_copies_.update(batch.origin(rows[v])[:3] for v, _ in ticket.copies_refused if v in rows)
                ticket.copies_refused = []
                raise TxnFailed(f"alert copies refused by {self.alerts_topic!r}, left out next time", False)
            ticket.copies_refused = []

    def _count(self, ticket: _Ticket) -> None:
        done = self.delivered
        done.records_in += ticket.size
        done.scored += ticket.scored
        done.alerts += len(ticket.alert_rows)
        done.dead_letters += ticket.dead
        done.refused += ticket.refused_outputs
        done.batches += ticket.batch is not None

    def _reap(self) -> None:
        """Move the batches at the front of the flight whose outputs are all acknowledged to ``done_``."""
        self._settle()
        while self.tickets_ and self.tickets_[0].pending == 0 and not self.tickets_[0].refused:
            ticket = self.tickets_.popleft()
            self._count(ticket)
            self.done_.update(ticket.positions)

    def done_positions(self) -> dict[TP, int]:
        """Consumer positions of the batches whose outputs are all acknowledged (merged, in order) since the last
        call: what the source may commit."""
        self.producer_.poll(0)
        self._reap()
        done, self.done_ = self.done_, {}
        return done

    def flush(self, timeout: float = 180.0) -> None:
        """Wait until every batch in flight is acknowledged (or raise: nothing past a lost output is committed)."""
        deadline = time.monotonic() + timeout
        while any(t.pending or t.refused for t in self.tickets_):
            self.producer_.flush(1.0)
            self._settle()
            if time.monotonic() > deadline:
                raise DeliveryFailed(f"outputs not acknowledged within {timeout:.0f} s")
        if self.transactional_id is None:
            self._reap()

    def reset(self) -> int:
        """At-least-once, after :class:`DeliveryFailed`: drop the batches in flight (their records come again from
        the last commit) and start a new producer; returns how many batches were dropped."""
        dropped = len(self.tickets_)
        self._discard()
        self._connect()
        return dropped

    # ------------------------------------------------------------------ exactly-once
    def begin(self, stopping: Callable[[], bool] = _never) -> None:
        try:
            self.producer_.begin()
        except Exception as exc:  # left unusable by an error reported meanwhile: a new producer
            self._replace(f"a transaction could not begin ({first_line(exc)})", stopping)
            self.producer_.begin()

    def commit_transaction(
        self, positions: dict[TP, int], group_metadata: Any, stopping: Callable[[], bool] = _never
    ) -> bool:
        """Commit the open transaction with the consumer positions; False when it was aborted instead (an output
        refused, the broker away past the transaction's time-out, a rebalance): the caller goes back to the
        committed positions (:meth:`settle_uncertain`) and processes the batch again. Waits for the broker in
        bounded steps until it answers or ``stopping()``."""
        try:
            self._deliver_transaction()
            if positions:
                transactions.call(lambda: self.producer_.send_offsets(positions, group_metadata))
            transactions.call(self.producer_.commit)
        except TxnFailed as failure:
            self._abort(failure, stopping)
            return False
        for ticket in self.tickets_:
            self._count(ticket)
        self.tickets_.clear()
        self.fenced_ = 0
        return True

    def _deliver_transaction(self) -> None:
        """Wait for the transaction's outputs; an output refused for good aborts it (noted, for the next try)."""
        deadline = time.monotonic() + transactions.RETRY_FOR
        while any(t.pending for t in self.tickets_) and time.monotonic() < deadline:
            self.producer_.flush(1.0)
        for ticket in self.tickets_:
            self._check(ticket)
            if ticket.refused:
                refused = self._refused_rows(ticket)
                self._check(ticket)
                batch = ticket.batch
                assert batch is not None  # _refused_rows checked
                assert batch.origin is not None
                for row, why in refused.items():
                    self.refuse_[batch.origin(row)[:3]] = why
                raise TxnFailed(f"{len(refused)} output(s) refused by {self.topic!r}, dead-lettered next time", False)
            if ticket.failed is not None:
                raise TxnFailed(f"an output could not be delivered ({ticket.failed})", False)
        if any(t.pending for t in self.tickets_):
            raise TxnFailed(f"outputs not acknowledged within {transactions.RETRY_FOR:.0f} s", False)

    def _abort(self, failure: TxnFailed, stopping: Callable[[], bool]) -> None:
        """Give the transaction up: a new producer under the same id takes over, and its init_transactions aborts
        the open transaction. (Not abort_transaction: after outputs timed out in an outage, librdkafka's producer
        could abort, and then hang for good in the next transaction's send_offsets_to_transaction.)"""
        log.warning("transaction aborted (%s); the batch is processed again", failure.reason)
        self.uncertain_ = [t for t in self.tickets_ if t.batch is not None]
        self.tickets_.clear()
        self._replace(failure.reason, stopping)

    def _replace(self, reason: str, stopping: Callable[[], bool]) -> None:
        """A new transactional producer under the same id (:func:`segscope.sinks.transactions.start`)."""
        if "fenced" in reason.lower():
            self.fenced_ += 1
            if self.fenced_ >= 3:
                raise SinkError(
                    f"the transactional producer was fenced {self.fenced_} times in a row ({reason}): another "
                    f"process uses the transactional id {self.transactional_id!r}; give each process its own "
                    "--transactional-id"
                )
        self._discard()
        self.producer_ = transactions.start(self._make, stopping)

    def settle_uncertain(self, committed: dict[TP, int]) -> None:
        """After an aborted attempt and the rewind to ``committed``: a batch whose positions the group did commit
        (the commit went through, its answer was lost) is counted."""
        for ticket in self.uncertain_:
            if ticket.positions and all(committed.get(tp, -1) >= at for tp, at in ticket.positions.items()):
                self._count(ticket)
        self.uncertain_ = []

    def close(self) -> None:
        if hasattr(self, "producer_"):
            try:
                self.producer_.close()
            except Exception as exc:  # a producer an outage left unusable: what it held was not committed
                log.warning("closing the producer: %s", first_line(exc))

    def abort(self) -> None:
        """Give up: with transactions the open one is aborted (its outputs never become visible to read_committed
        readers); at-least-once, what was produced may already be written (nothing was committed past it)."""
        self.tickets_ = deque()
        if hasattr(self, "producer_") and self.transactional_id is not None:
            try:
                self.producer_.abort()
            except Exception as exc:  # no transaction open
                log.debug("abort: %s", exc)
