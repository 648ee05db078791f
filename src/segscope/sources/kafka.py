"""A Kafka topic as a source: a consumer in a group, each poll a :class:`~segscope.sources.base.Batch`.

Every message becomes exactly one of: a valid record (a JSON object whose fields match the bundle's schema,
converted to the fit-time types, with its id: the configured id column or ``topic/partition/offset``), or a
:class:`~segscope.sources.base.DeadLetter` (the reason and the original bytes). Checks are per message, so one
bad message never stops a batch; they run a column at a time (a message is only looked at on its own when its
column holds something unexpected), which keeps decoding a small share of the stream's time.

The consumer reads ``read_committed`` by default (records of aborted or open transactions are never scored) and
:meth:`KafkaSource.commit` commits the consumer's positions after a batch, past transaction markers, so a
group's lag reaches 0 on transactional input. (``extra: kafka``)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import polars as pl

from segscope._kafka import TP, Client, Polled, log_commit_failure, make_consumer
from segscope._kafka_setup import KafkaSettings
from segscope.schema import SCORED_COLUMNS, ColumnSpec, FeatureSchema
from segscope.sources.base import Batch, DeadLetter
from segscope.sources.wire import WireDecoder

__all__ = ["KafkaSource", "TopicReader", "decode"]

log = logging.getLogger("segscope.stream")

_MISSING = object()
_NONE = type(None)
_ALLOWED: dict[str, set[type]] = {
    "numeric": {int, float, _NONE},
    "boolean": {bool, _NONE},
    "categorical": {str, _NONE},
    "datetime": {str, _NONE},
}
_DTYPES: dict[str, pl.DataType] = {"numeric": pl.Float64(), "boolean": pl.Boolean(), "categorical": pl.String()}
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
#: Output fields segscope adds; a record that already has one is merged as a dict instead of spliced as bytes.
RESERVED = frozenset({"id", *SCORED_COLUMNS})


def _check(value: Any, spec: ColumnSpec) -> tuple[Any, str | None]:
    """(converted value, error) for one field against its column spec; None is a missing value."""
    if value is _MISSING:
        return None, f"missing field '{spec.name}'"
    if value is None:
        return None, None
    if spec.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"field '{spec.name}' must be a number, got {type(value).__name__} {str(value)[:40]!r}"
        return float(value), None
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            return None, f"field '{spec.name}' must be true or false, got {str(value)[:40]!r}"
        return value, None
    if spec.kind == "categorical":
        if isinstance(value, dict | list):
            return None, f"field '{spec.name}' must be a string, got {type(value).__name__}"
        return str(value), None
    if isinstance(value, date):  # a timestamp or date of an Avro or Protobuf message (sources/wire.py)
        parsed = value if isinstance(value, datetime) else datetime.combine(value, datetime.min.time())
    elif not isinstance(value, str):
        return None, f"field '{spec.name}' must be an ISO-8601 date/time string, got {str(value)[:40]!r}"
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None, f"field '{spec.name}' is not an ISO-8601 date/time: {value[:40]!r}"
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return (parsed - _EPOCH) // _MICROSECOND, None


def _column(values: list[Any], spec: ColumnSpec, errors: list[str | None]) -> pl.Series:
    """One column as a typed Series; rows whose value does not fit get their first error in ``errors``."""
    if set(map(type, values)) <= _ALLOWED[spec.kind] and spec.kind != "datetime":
        return pl.Series(spec.name, values, dtype=_DTYPES[spec.kind], strict=False)
    converted = []
    for i, value in enumerate(values):
        out, error = _check(value, spec)
        if error is not None and errors[i] is None:
            errors[i] = error
        converted.append(out)
    if spec.kind == "datetime":
        return pl.Series(spec.name, converted, dtype=pl.Int64).cast(pl.Datetime("us"))
    return pl.Series(spec.name, converted, dtype=_DTYPES[spec.kind], strict=False)


def _why_not_json(raw: bytes, exc: Exception) -> str:
    if not raw:
        return "empty message: the value has 0 bytes (not a tombstone: it has a value, an empty one)"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"not UTF-8 text: byte 0x{raw[bad.start]:02x} at position {bad.start} cannot start or continue a "
            "UTF-8 character (JSON messages must be UTF-8; binary data is kept as it came in the dead letter)"
        )
    return f"invalid JSON: {str(exc)[:120]}"


def decode(polled: Polled, schema: FeatureSchema, *, max_bytes: int, wire: WireDecoder | None = None) -> Batch:
    """The batch of rows (the bundle's input columns, fit-time types) and dead letters of one poll; messages are
    JSON objects, or Avro / Protobuf records in the registry's wire format that ``wire`` decodes."""
    values = polled.values
    errors: list[str | None] = [None] * len(values)
    parsed: list[Any] = [None] * len(values)
    loads, why = (orjson.loads, _why_not_json) if wire is None else (wire.loads, wire.why)
    for i, raw in enumerate(values):
        if raw is None:
            errors[i] = "tombstone: the message has no value (null), so there is no record to score"
        elif len(raw) > max_bytes:
            errors[i] = f"message of {len(raw)} bytes is larger than --max-message-bytes {max_bytes}"
        else:
            try:
                record = loads(raw)
            except ValueError as exc:  # orjson.JSONDecodeError, or WireError: what is wrong with this message
                errors[i] = why(raw, exc)
                continue
            if type(record) is dict:
                parsed[i] = record
            else:
                errors[i] = f"a message must be one JSON object, got a JSON {type(record).__name__}"
    rows = [i for i, e in enumerate(errors) if e is None]
    records = [parsed[i] for i in rows]
    row_errors: list[str | None] = [None] * len(rows)
    columns = [_column([r.get(s.name, _MISSING) for r in records], s, row_errors) for s in schema.columns]
    if schema.id_column is not None:
        raw_ids = [r.get(schema.id_column) for r in records]
        for j, value in enumerate(raw_ids):
            if value is None and row_errors[j] is None:
                row_errors[j] = f"missing id field '{schema.id_column}'"
        ids = [str(v) for v in raw_ids]
    else:
        ids = ["{}/{}/{}".format(*polled.origin(i)[:3]) for i in rows]
    for j, error in enumerate(row_errors):
        if error is not None:
            errors[rows[j]] = error
    keep = [j for j, e in enumerate(row_errors) if e is None]
    frame = pl.DataFrame(columns)
    if len(keep) < len(rows):
        frame = frame[keep]
    kept = [rows[j] for j in keep]
    dead = [
        DeadLetter(error, *polled.origin(i)[:3], polled.keys[i], values[i], polled.origin(i)[3], polled.headers[i])
        for i, error in enumerate(errors)
        if error is not None
    ]
    return Batch(
        frame,
        ids=[ids[j] for j in keep],
        keys=[polled.keys[i] for i in kept],
        headers=[polled.headers[i] for i in kept],
        records=[records[j] for j in keep],
        raw=[values[i] for i in kept],
        origin=lambda j: polled.origin(kept[j]),
        dead=dead,
        position=polled.positions,
    )


class KafkaSource:
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
        poll_timeout_ms: int = 100,
        read_committed: bool = True,
        client: Client = "confluent",
        wire: WireDecoder | None = None,
        settings: KafkaSettings | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.schema = schema
        self.wire = wire
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.poll_timeout_ms = poll_timeout_ms
        self.read_committed = read_committed
        self.client = client
        self.settings = settings

    def open(self, on_revoke: Any = None) -> None:
        """Connect (a bounded wait: an unreachable cluster, refused credentials or a missing topic is one line),
        then join the group."""
        self.consumer_ = make_consumer(
            self.client,
            bootstrap=self.bootstrap,
            group=self.group,
            batch_size=self.batch_size,
            read_committed=self.read_committed,
            settings=self.settings,
        )
        self.consumer_.reach(self.topic, "--in-topic")
        self.consumer_.subscribe(self.topic, on_revoke)

    def poll(self, timeout_ms: int | None = None) -> Batch | None:
        timeout = (self.poll_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        polled = self.consumer_.poll(self.batch_size, timeout)
        if polled is None:
            return None
        return decode(polled, self.schema, max_bytes=self.max_message_bytes, wire=self.wire)

    def iter_batches(self) -> Iterator[Batch]:
        while True:
            batch = self.poll()
            if batch is not None:
                yield batch

    def commit(self, batch: Batch) -> None:
        self.commit_positions(batch.position or {})

    def commit_positions(self, positions: dict[TP, int]) -> None:
        """Commit positions; a failure (a rebalance, a restarting coordinator) is safe: the records come again
        with the same ids, and the next commit covers them, so it is logged, never raised."""
        try:
            self.consumer_.commit(positions)
        except Exception as exc:
            log_commit_failure(str(exc).splitlines()[0])

    def group_metadata(self) -> Any:
        """What a transactional producer needs to commit this consumer's positions (KIP-447 fencing)."""
        return self.consumer_.group_metadata()

    def rewind(self) -> None:
        """Go back to the group's committed positions (after an aborted transaction: the batch comes again)."""
        parts = self.consumer_.assignment()
        committed = self.consumer_.committed(parts)
        marks = self.consumer_.watermarks(parts)
        self.consumer_.seek({tp: committed[tp] if committed.get(tp, -1) >= 0 else marks[tp][0] for tp in parts})

    def assigned(self) -> bool:
        """Whether the group gave this member partitions (a joining member may wait for a dead one's session)."""
        return bool(self.consumer_.assignment())

    def lag(self) -> int:
        """Records between this member's positions and the ends of its partitions; for a partition with no
        position yet, and for the whole topic while the member has no partitions (a rebalance), from the group's
        committed offsets. -1 when unknown."""
        try:
            positions = self.consumer_.positions()
            parts = self.consumer_.assignment() or [(self.topic, p) for p in self.consumer_.partitions(self.topic)]
            unknown = [tp for tp in parts if tp not in positions]
            committed = self.consumer_.committed(unknown) if unknown else {}
            marks = self.consumer_.watermarks(parts)
            behind = 0
            for tp in parts:
                first, end = marks[tp]
                at = positions.get(tp, committed.get(tp, -1))
                behind += max(0, end - (at if at >= 0 else first))  # nothing committed: from the first offset
            return behind
        except Exception:  # lag is informational: never let it stop the stream
            return -1

    def group_done(self, recommit: bool = False) -> bool:
        """Whether the whole group has committed up to the end of every partition of the topic: another member
        dying with work left shows here as lag, even if this member's own partitions are done. With ``recommit``
        (only for an idle member whose outputs are all acknowledged: every record it consumed is written), this
        member's positions are committed again where the group's commits are behind them: a commit lost with the
        last batch would otherwise keep the group short of the end until another record arrives."""
        try:
            parts = [(self.topic, p) for p in self.consumer_.partitions(self.topic)]
            committed = self.consumer_.committed(parts)
            marks = self.consumer_.watermarks(parts)
            positions = self.consumer_.positions() if recommit else {}
        except Exception:  # asked again on the next idle poll
            return False
        if all(max(committed.get(tp, -1), marks[tp][0]) >= marks[tp][1] for tp in parts):
            return bool(parts)
        self.commit_positions({tp: at for tp, at in positions.items() if committed.get(tp, -1) < at})
        return False

    def close(self) -> None:
        if hasattr(self, "consumer_"):
            self.consumer_.close()
        if self.wire is not None:
            self.wire.registry.close()


class TopicReader:
    """Every partition of a topic, assigned (no group join to wait for), as raw messages: for small topics every
    process reads whole, such as analyst labels (re-adding a label is a no-op)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        client: Client = "confluent",
        settings: KafkaSettings | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.client = client
        self.settings = settings

    def open(self) -> None:
        self.consumer_ = make_consumer(
            self.client, bootstrap=self.bootstrap, group=self.group, batch_size=5000, settings=self.settings
        )
        self.consumer_.reach(self.topic, "--labels-topic")
        self.consumer_.assign_all(self.topic)

    def poll(self, max_records: int = 5000) -> Polled | None:
        return self.consumer_.poll(max_records, 0.0)

    def commit(self, positions: dict[TP, int]) -> None:
        try:
            self.consumer_.commit(positions)
        except Exception as exc:
            log.warning("labels commit failed (%s); they are read again, and stored once", exc)

    def close(self) -> None:
        if hasattr(self, "consumer_"):
            self.consumer_.close()
