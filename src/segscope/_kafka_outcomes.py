"""What the Kafka clients hand back and report, read the same way for both (``_kafka``, ``_kafka_python``): a
poll's messages as columns, which delivery errors refuse a record for good, how long a transactional call may
wait, and which commits the broker confirmed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from segscope._kafka_setup import log_commit_result

__all__ = ["REFUSED", "TP", "TXN_WAIT", "Acknowledges", "Deliveries", "Headers", "Origin", "Polled", "Refused"]

TP = tuple[str, int]
Headers = Sequence[tuple[str, bytes | None]]
Origin = tuple[str, int, int, int | None]


class Deliveries(Protocol):
    """Where one batch's delivery reports of one kind go: ``pending`` counts down on every report (a delivered
    message is only that: one Python frame per message), ``failure`` hears of a message that did not go (the error,
    whether retrying cannot help, the value sent)."""

    pending: int

    def failure(self, kind: str, error: str, permanent: bool, value: bytes | None) -> None: ...


@dataclass
class Polled:
    """One poll's messages as columns (what decoding reads for every message), where message ``i`` came from
    (``origin(i)``: topic, partition, offset, timestamp; asked only for the few that need it), and the consumer's
    positions after the poll (what to commit once its work is done)."""

    values: list[bytes | None]
    keys: list[bytes | None]
    headers: list[Headers]
    origin: Callable[[int], Origin]
    positions: dict[TP, int]

    def __len__(self) -> int:
        return len(self.values)


#: librdkafka's delivery errors that refuse the record itself (MSG_SIZE_TOO_LARGE, RECORD_LIST_TOO_LARGE,
#: INVALID_TIMESTAMP, INVALID_RECORD): retrying cannot help, so it becomes a dead letter. Any other error (a
#: time-out, a purge, a producer an outage left unusable) is a delivery that did not happen: the batch comes again.
REFUSED = frozenset({10, 18, 32, 87})


class Refused:
    """Stands in for the message a producer refused before sending, in its delivery callback."""

    def __init__(self, value: bytes | None) -> None:
        self._value = value

    def value(self) -> bytes | None:
        return self._value


#: Seconds a transactional call (send offsets, commit, abort) waits at most: by default librdkafka's wait without
#: end; a time-out is a retriable error, and the caller asks again.
TXN_WAIT = 10.0


class Acknowledges:
    """A consumer's commits the broker confirmed (commits are asynchronous), per partition, until taken."""

    _acknowledged: dict[tuple[str, int], int] | None = None
    _highest: dict[tuple[str, int], int] | None = None

    def acknowledge(self, offsets: dict[tuple[str, int], int]) -> None:
        if self._acknowledged is None:
            self._acknowledged = {}
        if self._highest is None:
            self._highest = {}
        self._acknowledged.update(offsets)
        for tp, at in offsets.items():
            self._highest[tp] = max(at, self._highest.get(tp, -1))

    def highest_acknowledged(self) -> dict[tuple[str, int], int]:
        """The highest offset ever confirmed, per partition (not taken: :meth:`take_acknowledged` is apart)."""
        return dict(self._highest or {})

    def take_acknowledged(self) -> dict[tuple[str, int], int]:
        """The offsets confirmed since the last call."""
        done, self._acknowledged = self._acknowledged or {}, None
        return done

    def on_commit(self, err: Any, parts: Any) -> None:
        """confluent-kafka's ``on_commit``: the outcome of an asynchronous commit."""
        log_commit_result(err, parts)
        if err is None:
            self.acknowledge({(p.topic, p.partition): p.offset for p in parts if p.error is None and p.offset >= 0})
