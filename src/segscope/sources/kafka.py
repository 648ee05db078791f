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

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import polars as pl

from segscope._kafka import TP, Client, Polled, log_commit_failure, make_consumer
from segscope._kafka_setup import KafkaSettings
from segscope.exceptions import SourceError
from segscope.schema import ColumnSpec, FeatureSchema
from segscope.sources.base import Batch, DeadLetter
from segscope.sources.stranding import STRANDED_CHECK, Strandable
from segscope.sources.wire import WireDecoder

if TYPE_CHECKING:
    from segscope._kafka import _ConfluentConsumer
    from segscope._kafka_python import _PythonConsumer

__all__ = ["STRANDED_CHECK", "KafkaSource", "TopicReader", "decode"]

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
_INF = float("inf")
#: a date and time without a zone, seconds with at most 6 decimals: the text NumPy and ``datetime.fromisoformat``
#: read alike from year 1 (each refuses a day or time that does not exist; NumPy also reads year 0, "now", zones ...)
_PLAIN_DATETIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?$"
_YEAR_1 = np.datetime64("0001-01-01", "us")


def _check(value: Any, spec: ColumnSpec) -> tuple[Any, str | None]:
    """(converted value, error) for one field against its column spec; None is a missing value."""
    if value is _MISSING:
        return None, f"missing field '{spec.name}'"
    if value is None:
        return None, None
    if spec.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"field '{spec.name}' must be a number, got {type(value).__name__} {str(value)[:40]!r}"
        if value in (_INF, -_INF):
            return None, f"field '{spec.name}' must be a finite number, got one past the float range"
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
        series = pl.Series(spec.name, values, dtype=_DTYPES[spec.kind], strict=False)
        if spec.kind == "numeric" and series.is_infinite().any():  # a number past the float range (1e400)
            for i in series.is_infinite().arg_true().to_list():
                if errors[i] is None:
                    errors[i] = f"field '{spec.name}' must be a finite number, got one past the float range"
        return series
    if spec.kind == "datetime" and set(map(type, values)) == {str}:  # the usual case: ISO-8601 strings, no zone
        text = pl.Series(spec.name, values, dtype=pl.String)
        if text.str.contains(_PLAIN_DATETIME).all():  # read by NumPy in C as fromisoformat reads them
            try:
                read = np.array(values, dtype="datetime64[us]")
            except ValueError:  # a day or an hour that does not exist: each value is looked at below
                read = None
            if read is not None and read.min() >= _YEAR_1:
                return pl.Series(spec.name, read)
        try:
            parsed = [datetime.fromisoformat(v) for v in values]
        except ValueError:
            parsed = []
        if parsed and all(p.tzinfo is None for p in parsed):
            return pl.Series(spec.name, parsed, dtype=pl.Datetime("us"))
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


def _past_the_float_range(raw: bytes, exc: Exception) -> Any:
    """A JSON object with a number past the float range (``1e400``), which orjson refuses: read by the standard
    library (the number becomes infinite; its bytes are kept in the output). None when it is not that, or when
    the text has what JSON does not allow (NaN, Infinity, an unpaired surrogate)."""
    if not str(exc).startswith("number is infinity"):
        return None

    def refuse(name: str) -> Any:
        raise ValueError(name)

    def integer(text: str) -> int | float:  # as orjson reads them: past 64 bits, a float
        value = int(text)
        return value if -(2**63) <= value < 2**64 else float(text)

    try:
        record = json.loads(raw, parse_constant=refuse, parse_int=integer)
        orjson.dumps(record)  # refuses strings that are not valid UTF-8 (unpaired surrogates)
    except (ValueError, TypeError, orjson.JSONEncodeError):
        return None
    return record


def _id_text(value: float, raw: bytes | None, field: str | None) -> str:
    """An id that JSON spells as an integer past 64 bits (decoded as a float): its digits as written."""
    if raw is not None and field is not None:
        text = json.loads(raw, parse_int=str, parse_float=str).get(field)
        if isinstance(text, str) and text.lstrip("-").isdigit():
            return text
    return str(value)


def _parsed(values: list[bytes | None], max_bytes: int, wire: WireDecoder | None) -> tuple[list[Any], list[str | None]]:
    """Each message as a record (a dict) or the reason it is a dead letter (None where it is a record)."""
    if wire is None and values:  # the usual poll: every message a JSON object within the size limit, at once
        try:
            if max(map(len, values)) <= max_bytes:  # type: ignore[arg-type]  # a tombstone (None): TypeError
                parsed = list(map(orjson.loads, values))  # type: ignore[arg-type]
                if set(map(type, parsed)) == {dict}:
                    return parsed, [None] * len(values)
        except (TypeError, ValueError):  # a tombstone, or a message orjson refuses: each is looked at below
            pass
    errors: list[str | None] = [None] * len(values)
    parsed = [None] * len(values)
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
                record = _past_the_float_range(raw, exc) if wire is None else None
                if record is None:
                    errors[i] = why(raw, exc)
                    continue
            if type(record) is dict:
                parsed[i] = record
            else:
                errors[i] = f"a message must be one JSON object, got a JSON {type(record).__name__}"
    return parsed, errors


def decode(polled: Polled, schema: FeatureSchema, *, max_bytes: int, wire: WireDecoder | None = None) -> Batch:
    """The batch of rows (the bundle's input columns, fit-time types) and dead letters of one poll; messages are
    JSON objects, or Avro / Protobuf records in the registry's wire format that ``wire`` decodes."""
    values = polled.values
    parsed, errors = _parsed(values, max_bytes, wire)
    whole = not any(errors)  # every message a record: the lists are the poll's own, no copies
    rows = range(len(values)) if whole else [i for i, e in enumerate(errors) if e is None]
    records = parsed if whole else [parsed[i] for i in rows]
    row_errors: list[str | None] = [None] * len(rows)
    columns = [_column([r.get(s.name, _MISSING) for r in records], s, row_errors) for s in schema.columns]
    if schema.id_column is not None:
        raw_ids = [r.get(schema.id_column) for r in records]
        if set(map(type, raw_ids)) <= {str}:  # the usual case: text ids, none missing
            ids = raw_ids
        else:
            for j, value in enumerate(raw_ids):
                if value is None and row_errors[j] is None:
                    row_errors[j] = f"missing id field '{schema.id_column}'"
            field = schema.id_column if wire is None else None  # JSON: an integer past 64 bits keeps its digits
            ids = [
                str(v) if type(v) is not float else _id_text(v, values[rows[j]], field) for j, v in enumerate(raw_ids)
            ]
    else:
        ids = ["{}/{}/{}".format(*polled.origin(i)[:3]) for i in rows]
    frame = pl.DataFrame(columns)
    if whole and not any(row_errors):
        return Batch(frame, ids=ids, id_field=schema.id_column, keys=polled.keys, headers=polled.headers,
                     records=records, raw=values, origin=polled.origin, position=polled.positions)  # fmt: skip
    for j, error in enumerate(row_errors):
        if error is not None:
            errors[rows[j]] = error
    keep = [j for j, e in enumerate(row_errors) if e is None]
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
        id_field=schema.id_column,
        keys=[polled.keys[i] for i in kept],
        headers=[polled.headers[i] for i in kept],
        records=[records[j] for j in keep],
        raw=[values[i] for i in kept],
        origin=lambda j: polled.origin(kept[j]),
        dead=dead,
        position=polled.positions,
    )


class KafkaSource(Strandable):
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
        on_revoke: Callable[[list[TP]], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.schema = schema
        self.on_revoke = on_revoke
        self.wire = wire
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.poll_timeout_ms = poll_timeout_ms
        self.read_committed = read_committed
        self.client = client
        self.settings = settings

    def open(self, on_revoke: Callable[[list[TP]], None] | None = None) -> None:
        """Connect (a bounded wait: an unreachable cluster, refused credentials or a missing topic is one line),
        then join the group; ``on_revoke`` (or the one given at construction) hears of partitions leaving."""
        self.on_revoke_ = on_revoke or self.on_revoke
        self.asked_: dict[TP, int] = {}  # the last position handed to a commit, per partition of this member
        self._watch()
        self.consumer_ = self._consumer()
        self.consumer_.reach(self.topic, "--in-topic")
        self._subscribe()

    def _consumer(self) -> _ConfluentConsumer | _PythonConsumer:
        return make_consumer(
            self.client,
            bootstrap=self.bootstrap,
            group=self.group,
            batch_size=self.batch_size,
            read_committed=self.read_committed,
            settings=self.settings,
        )

    def _subscribe(self) -> None:
        consumer = self.consumer_

        def revoked(parts: list[TP]) -> None:  # a replaced client's revocations are no longer this member's
            if consumer is self.consumer_ and self.on_revoke_ is not None:
                self.on_revoke_(parts)

        consumer.subscribe(self.topic, revoked)

    def renew(self) -> None:
        """A new client in place of a stranded one (:meth:`stranded`); it joins the group and starts at the
        committed positions."""
        self._replace(self._consumer())
        self.asked_ = {}  # the new client starts at the group's commits
        self._subscribe()

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
        self.asked_.update(positions)
        try:
            self.consumer_.commit(positions)
        except Exception as exc:
            log_commit_failure(str(exc).splitlines()[0])

    def recommit(self) -> int:
        """Commit again the positions of this member's partitions whose last commit the broker has not confirmed
        (lost in an outage or refused): an idle stream has no next commit to cover them, and the group would stay
        short of the end until another record came. Safe at-least-once: only positions whose outputs were
        acknowledged are ever handed to a commit, and only where this member still reads the partition at that
        position (one that left and came back, from another member's commit or to be read again, is not the
        position's to commit). Returns how many partitions were committed again."""
        confirmed, at_now = self.consumer_.highest_acknowledged(), self.consumer_.positions()
        lost = {tp: at for tp, at in self.asked_.items() if confirmed.get(tp, -1) < at and at_now.get(tp) == at}
        if lost:
            self.commit_positions(lost)
        return len(lost)

    def confirmed(self) -> dict[TP, int]:
        """Positions whose commit the broker confirmed since the last call (a commit is asynchronous: what is
        handed to :meth:`commit_positions` may still be lost, and the group resume before it)."""
        return self.consumer_.take_acknowledged()

    def group_metadata(self) -> Any:
        """What a transactional producer needs to commit this consumer's positions (KIP-447 fencing)."""
        return self.consumer_.group_metadata()

    def rewind(self, stopping: Callable[[], bool] = lambda: False) -> dict[TP, int]:
        """Go back to the group's committed positions (after an aborted transaction or outputs lost in an outage:
        the records after them come again); returns them. The broker may be away: each wait is bounded (10 s) and
        asked again, with a line every minute, until it answers or ``stopping()``."""
        started, said, renewed = time.monotonic(), 0.0, False
        while True:
            try:
                parts = self.consumer_.assignment()
                if renewed and not parts:  # a new client: the group assigns it the committed positions
                    return self.consumer_.committed([(self.topic, p) for p in self.consumer_.partitions(self.topic)])
                committed = self.consumer_.committed(parts) if parts else {}
                missing = [tp for tp in parts if committed.get(tp, -1) < 0]
                marks = self.consumer_.watermarks(missing) if missing else {}
                target = {tp: committed[tp] if tp not in marks else marks[tp][0] for tp in parts}
                self.consumer_.seek(target)
                if said:
                    log.warning("the committed positions were read after %.0f s", time.monotonic() - started)
                return target
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if stopping():
                raise SourceError(
                    f"stopped while the broker was away ({reason}); nothing past the last commit was committed, "
                    "and a restart resumes there"
                )
            if time.monotonic() - said >= 60:
                said = time.monotonic()
                log.warning("waiting for the broker to read the committed positions (%s)", reason)
            if self.stranded():
                log.warning("the consumer lost the cluster, which answers a new client: a new consumer takes over")
                self.renew()
                renewed = True
            time.sleep(1.0)

    def assigned(self) -> bool:
        """Whether the group gave this member partitions (a joining member may wait for a dead one's session)."""
        return bool(self.consumer_.assignment())

    def lag(self, ask: bool = False) -> int:
        """Records between this member's positions and the ends of its partitions (as the last fetch said: the
        loop is not held up asking; with ``ask``, for a member that consumed nothing lately, the broker is asked:
        a client that stopped fetching keeps the ends its last fetch saw); for a partition with no position yet,
        and for the whole topic while the member has no partitions (a rebalance), from the group's committed
        offsets. -1 when unknown (``ask``: the cluster does not answer this client)."""
        try:
            positions = self.consumer_.positions()
            every = self.consumer_.partitions(self.topic, timeout=2.0) if ask else None  # raises without an answer
            parts = self.consumer_.assignment() or [
                (self.topic, p) for p in every or self.consumer_.partitions(self.topic)
            ]
            unknown = [tp for tp in parts if tp not in positions]
            committed = self.consumer_.committed(unknown) if unknown else {}
            marks = self.consumer_.watermarks(parts, cached=not ask)
            asked = [tp for tp in parts if marks[tp][1] < 0 or (marks[tp][0] < 0 and tp not in positions)]
            marks |= self.consumer_.watermarks(asked) if asked else {}
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


class TopicReader(Strandable):
    """Every partition of a topic, assigned (no group join to wait for), as raw messages: for small topics every
    process reads whole, such as analyst labels (re-adding a label is a no-op). A client that lost every broker
    (:meth:`stranded`) is replaced by one that starts at the committed positions."""

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

    def _consumer(self) -> _ConfluentConsumer | _PythonConsumer:
        return make_consumer(
            self.client, bootstrap=self.bootstrap, group=self.group, batch_size=5000, settings=self.settings
        )

    def open(self) -> None:
        self.consumer_ = self._consumer()
        self.consumer_.reach(self.topic, "--labels-topic")
        self.consumer_.assign_all(self.topic)
        self._watch()

    def poll(self, max_records: int = 5000) -> Polled | None:
        """The messages there are now (no wait); nothing for :data:`STRANDED_CHECK` seconds and a client that lost
        the cluster while a new one reaches it: the new one takes over (the topic is quiet between labels, so
        that is checked, at most that often, whenever nothing comes)."""
        polled = self.consumer_.poll(max_records, 0.0)
        if polled is None and self.stranded():
            self.renew()
        return polled

    def renew(self) -> None:
        new = self._consumer()
        try:
            new.assign_all(self.topic)  # at the committed positions
        except Exception as exc:  # the cluster stopped answering meanwhile: looked at again later
            new.close()
            log.warning("the labels consumer could not be replaced (%s); tried again later", exc)
            return
        log.warning(
            "the labels consumer (%s) lost the cluster, which answers a new client: a new consumer takes over from "
            "the last commit", self.topic,
        )  # fmt: skip
        self._replace(new)

    def commit(self, positions: dict[TP, int]) -> None:
        try:
            self.consumer_.commit(positions)
        except Exception as exc:
            log.warning("labels commit failed (%s); they are read again, and stored once", exc)

    def close(self) -> None:
        if hasattr(self, "consumer_"):
            self.consumer_.close()
