"""The source contract: whatever produces records hands them out as :class:`Batch` es of a Polars frame.

A source is opened, yields batches in order, is told when a batch's results are safely written
(:meth:`Source.commit`: a Kafka source commits its consumer offsets then, a file source has nothing to do),
and is closed. Records a source cannot turn into rows (a message that is not JSON, a field of the wrong type)
become :class:`DeadLetter` s of the batch instead, so one bad record never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

__all__ = ["Batch", "DeadLetter", "Source"]


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be used: why, where it came from, and its original bytes (``value`` None is a
    tombstone: a message with no value at all, told apart from an empty one)."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None
    headers: Sequence[tuple[str, bytes | None]] = ()


@dataclass
class Batch:
    """Records in arrival order. ``frame`` holds the rows to score; the other fields are filled by sources that
    have them (Kafka: one id, key and header list per row, and the messages as sent)."""

    frame: pl.DataFrame
    #: Row number (in the whole source) of the batch's first row, for messages about a row.
    start: int = 0
    ids: list[str] | None = None
    #: The record field the ids come from (None: the ids are the records' places, such as topic/partition/offset).
    id_field: str | None = None
    keys: list[bytes | None] | None = None
    headers: list[Sequence[tuple[str, bytes | None]]] | None = None
    #: The records as they arrived (all fields, including those the model does not use), for the output, and
    #: their original bytes (a Kafka sink appends the scored fields to them instead of re-encoding).
    records: list[dict[str, Any]] | None = None
    raw: list[bytes | None] | None = None
    #: Where row ``i`` came from: (topic, partition, offset, timestamp), for dead letters written later.
    origin: Callable[[int], tuple[str, int, int, int | None]] | None = None
    dead: list[DeadLetter] = field(default_factory=list)
    #: What :meth:`Source.commit` needs to mark this batch done (source-specific).
    position: Any = None

    @property
    def size(self) -> int:
        """Records received: rows plus dead letters."""
        return self.frame.height + len(self.dead)


class Source(Protocol):
    """``open()``, ``iter_batches()``, ``commit(batch)`` once its results are written, ``close()``."""

    def open(self) -> None: ...

    def iter_batches(self) -> Iterator[Batch]: ...

    def commit(self, batch: Batch) -> None: ...

    def close(self) -> None: ...
