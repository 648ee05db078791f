"""The label store: records shown to analysts (with features, scores, reasons, segment, model version) and every
label they gave, in SQLite (a file, the default) or PostgreSQL (by URL). Schema changes are Alembic migrations,
applied when a store is opened. The store knows nothing of models: it takes plain data (:class:`ReviewRecords`:
scored rows, their ids, feature vectors and the alert threshold) and hands plain data back.

Concurrency: label writes lock the labelled records (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite), so concurrent analysts lose nothing and the same label posted twice is stored once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from segscope._deps import require
from segscope.exceptions import ConfigError, DataError, SegscopeError
from segscope.labels._open import hide_password, mask_password, refuse_foreign_sqlite, sqlite_locking, store_url
from segscope.labels.parse import LabelIn
from segscope.labels.queue import QueueMix, select_queue
from segscope.schema import SCORED_COLUMNS

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["LabelIn", "LabelStore", "ReviewRecords", "UnknownRecordError", "store_url"]

_CHUNK = 500
#: The segment ids a store can hold (int32 in scored records; -1 is noise).
SEGMENT_IDS = (-1, 2**31 - 1)


class UnknownRecordError(DataError):
    """A label names a record the store does not hold."""


@dataclass(frozen=True)
class ReviewRecords:
    """Scored rows to keep for review: ``scored`` (input columns + the scored columns), one id and one prepared
    feature vector per row, and the alert threshold they were decided with (None for an alert budget)."""

    scored: pl.DataFrame
    ids: list[str]
    vectors: np.ndarray
    threshold: float | None

    def subset(self, rows: np.ndarray) -> ReviewRecords:
        return ReviewRecords(self.scored[rows], [self.ids[i] for i in rows], self.vectors[rows], self.threshold)


@dataclass(frozen=True)
class AddedLabels:
    added: int
    unchanged: int


class LabelStore:
    """Open with :meth:`open`; one instance may be shared by threads (it holds a connection pool)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """A connection to read with: a value or column the store cannot decode (a damaged or hand-edited store)
        is one :class:`DataError` naming it, not a traceback."""
        from sqlalchemy.exc import DBAPIError, StatementError

        with self.engine.connect() as conn:  # a server that cannot be reached raises as it is
            try:
                yield conn
            except SegscopeError:
                raise
            except (ValueError, TypeError, RecursionError, StatementError) as exc:
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:  # the server went away mid-read
                    raise
                raise _unreadable(self, exc) from None

    # ------------------------------------------------------------- opening
    @classmethod
    def open(cls, url: str | Path, *, create: bool = True) -> LabelStore:
        """Open (and migrate) a store. ``create=False`` refuses a SQLite file that does not exist yet, so a
        mistyped path is an error instead of a new, empty store; a SQLite file of another application is refused
        (segscope adds no tables to it). No message shows the URL's password."""
        sqlalchemy = require("sqlalchemy", extra="store", feature="the label store")
        from sqlalchemy import event
        from sqlalchemy.exc import ArgumentError, DBAPIError

        full, shown = store_url(url), hide_password(url)
        try:
            if full.startswith("sqlite"):
                path = full.split(":///", 1)[-1]
                if path and path != ":memory:" and not Path(path).parent.is_dir():
                    raise ConfigError(f"--store {shown}: folder {Path(path).parent} does not exist; create it first")
                if path and path != ":memory:" and not create and not Path(path).is_file():
                    raise ConfigError(
                        f"--store {shown}: no label store there (the file does not exist); check the path, or create "
                        "one with `segscope score DATA --bundle B --out OUT --store FILE`"
                    )
                if path and path != ":memory:":
                    refuse_foreign_sqlite(Path(path), shown)
                engine = sqlalchemy.create_engine(full, connect_args={"timeout": 60, "check_same_thread": False})
                sqlite_locking(engine, event)
            else:
                engine = sqlalchemy.create_engine(full, pool_size=10, max_overflow=10, pool_pre_ping=True)
            store = cls(engine)
            try:
                store._migrate()
            except BaseException:
                engine.dispose()
                raise
        except DBAPIError as exc:  # not a database, a truncated file, a server that refuses, ...
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
            raise ConfigError(
                f"--store {shown}: cannot open the label store ({mask_password(reason, url)}); pass a segscope label "
                "store (a SQLite file or a postgresql:// URL)"
            ) from None
        except ConfigError:
            raise
        except (ArgumentError, ValueError) as exc:  # a URL SQLAlchemy cannot read, a port that is not a number
            raise ConfigError(
                f"--store {shown}: not a database URL ({mask_password(str(exc), url)}); use a file path (SQLite) or "
                "postgresql://user:password@host:port/db"
            ) from None
        return store

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self._write() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def _write(self) -> Any:
        """A write transaction (on SQLite it takes the write lock at BEGIN)."""
        return self.engine.execution_options(segscope_write=True).begin()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- records
    def add_records(self, records: ReviewRecords, *, source: str) -> int:
        """Keep scored rows as records; a known id is updated to its latest scores. Returns the rows written."""
        scored = records.scored
        if not scored.height:
            return 0
        inputs = [c for c in scored.columns if c not in SCORED_COLUMNS]
        now = datetime.now(UTC)
        rows = []
        for i, row in enumerate(scored.iter_rows(named=True)):
            rows.append(
                {
                    "id": str(records.ids[i]),
                    "model_version": row["model_version"],
                    "score": float(row["score"]),
                    "anomaly_score": float(row["anomaly_score"]),
                    "supervised_score": row["supervised_score"],
                    "threshold": records.threshold,
                    "is_alert": bool(row["is_alert"]),
                    "segment": int(row["segment"]),
                    "reasons": row["reasons"] or [],
                    "values": {c: _jsonable(row[c]) for c in inputs},
                    "vector": [round(float(v), 6) for v in records.vectors[i]],
                    "source": source,
                    "first_seen": now,
                    "last_seen": now,
                }
            )
        from segscope.labels.schema import Record

        updated = [k for k in rows[0] if k not in ("id", "first_seen", "source")]
        with self._write() as conn:
            insert = _dialect_insert(self.engine)
            for chunk in _chunks(rows, _CHUNK):
                stmt = insert(Record).values(chunk)
                conn.execute(
                    stmt.on_conflict_do_update(index_elements=["id"], set_={k: stmt.excluded[k] for k in updated})
                )
        return len(rows)

    def stale_records(self, version: str, *, batch_size: int = 5000) -> Iterator[tuple[list[str], pl.DataFrame]]:
        """(ids, input values as a frame) of stored records scored by another model version than ``version``, in
        batches: what a new version re-scores so that the queue ranks by the model that serves. Each batch is read
        when asked for (the next ids after the last one), so a store of millions is never held in memory and a
        record another process re-scored meanwhile is not read again."""
        from sqlalchemy import select

        from segscope.labels.schema import Record

        query = select(Record.id, Record.values).where(Record.model_version != version).order_by(Record.id)
        after: str | None = None
        while True:
            with self.reading() as conn:  # a short read each time: no transaction held between batches
                page = query if after is None else query.where(Record.id > after)
                rows = conn.execute(page.limit(batch_size)).all()
            if not rows:
                return
            after = rows[-1].id
            yield [r.id for r in rows], pl.DataFrame([r.values for r in rows], infer_schema_length=None)

    def record_count(self) -> int:
        from sqlalchemy import func, select

        from segscope.labels.schema import Record

        with self.reading() as conn:
            return int(conn.execute(select(func.count()).select_from(Record)).scalar_one())

    def records(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        from sqlalchemy import select

        from segscope.labels.schema import Record

        out: dict[str, dict[str, Any]] = {}
        with self.reading() as conn:
            for chunk in _chunks(list(ids), _CHUNK):
                for row in conn.execute(select(Record.__table__).where(Record.id.in_(chunk))).mappings():
                    out[row["id"]] = dict(row)
        return out

    # ------------------------------------------------------------- labels
    def add_labels(self, labels: Iterable[LabelIn], *, source: str) -> AddedLabels:
        """Add labels in one transaction: all or none. An unknown record id refuses the whole batch; a label equal
        to the record's current one (same label, category, analyst and note) is not stored again."""
        from sqlalchemy import insert, select

        from segscope.labels.schema import LABEL_SOURCES, Label, Record

        if source not in LABEL_SOURCES:
            raise ConfigError(f"label source {source!r}: use one of {list(LABEL_SOURCES)}")
        items = [item.checked() for item in labels]
        if not items:
            return AddedLabels(0, 0)
        ids = sorted({item.id for item in items})
        added = unchanged = 0
        now = datetime.now(UTC)
        with self._write() as conn:
            known: set[str] = set()
            for chunk in _chunks(ids, _CHUNK):
                query = select(Record.id).where(Record.id.in_(chunk)).order_by(Record.id)
                if self.engine.dialect.name == "postgresql":
                    query = query.with_for_update()  # serialises writers of the same records
                known.update(conn.execute(query).scalars())
            unknown = [i for i in ids if i not in known]
            if unknown:
                more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
                raise UnknownRecordError(
                    f"unknown record id(s) {', '.join(map(repr, unknown[:3]))}{more}: only records in the store can be "
                    "labelled (score or stream with --store adds them); nothing was stored"
                )
            current = _current_labels(conn, ids)
            for item in items:
                key = (item.label, item.category, item.analyst, item.note)
                if current.get(item.id) == key:
                    unchanged += 1
                    continue
                conn.execute(
                    insert(Label).values(
                        record_id=item.id,
                        label=item.label,
                        category=item.category,
                        analyst=item.analyst,
                        note=item.note,
                        source=source,
                        created_at=now,
                    )
                )
                current[item.id] = key
                added += 1
        return AddedLabels(added, unchanged)

    def labels(self, *, history: bool = False, analyst: str | None = None) -> pl.DataFrame:
        """Labels as a frame (id, label, category, analyst, note, source, created_at); the current label per record
        unless ``history``, newest first."""
        from sqlalchemy import func, select

        from segscope.labels.schema import Label

        query = select(
            Label.record_id.label("id"),
            Label.label,
            Label.category,
            Label.analyst,
            Label.note,
            Label.source,
            Label.created_at,
            Label.label_id,
        )
        if not history:
            latest = select(func.max(Label.label_id)).group_by(Label.record_id).scalar_subquery()
            query = query.where(Label.label_id.in_(latest))
        if analyst is not None:
            query = query.where(Label.analyst == analyst)
        query = query.order_by(Label.label_id.desc())
        with self.reading() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        schema: dict[str, Any] = {
            "id": pl.String,
            "label": pl.String,
            "category": pl.String,
            "analyst": pl.String,
            "note": pl.String,
            "source": pl.String,
            "created_at": pl.Datetime("us", "UTC"),
            "label_id": pl.Int64,
        }
        for row in rows:  # SQLite returns naive datetimes (stored as UTC)
            if row["created_at"].tzinfo is None:
                row["created_at"] = row["created_at"].replace(tzinfo=UTC)
        return pl.DataFrame(rows, schema=schema, orient="row")

    def labels_after(self, label_id: int) -> tuple[int, int]:
        """(how many labels were stored after label ``label_id``, the newest label's id; 0 in an empty store).
        Every analyst decision counts, a changed label too (an unchanged repeat is not stored)."""
        from sqlalchemy import case, func, select

        from segscope.labels.schema import Label

        query = select(func.sum(case((Label.label_id > label_id, 1), else_=0)), func.max(Label.label_id))
        with self.reading() as conn:
            after, newest = conn.execute(query).one()
        return int(after or 0), int(newest or 0)

    def training_labels(self) -> pl.DataFrame:
        """Current labels in the form fine-tuning takes (``id, label (1/0), category``)."""
        current = self.labels()
        return current.select("id", (pl.col("label") == "anomaly").cast(pl.Int8).alias("label"), "category").sort("id")

    def labelled_today(self, analyst: str) -> int:
        from sqlalchemy import func, select

        from segscope.labels.schema import Label

        start = datetime.combine(date.today(), time(0), tzinfo=UTC)
        query = select(func.count()).where(Label.analyst == analyst, Label.created_at >= start)
        with self.reading() as conn:
            return int(conn.execute(query).scalar_one())

    # ------------------------------------------------------------- queue
    def queue(
        self,
        limit: int,
        mix: QueueMix | None = None,
        *,
        analyst: str | None = None,
        segment: int | None = None,
        min_score: float | None = None,
        pool: int = 20_000,
    ) -> list[dict[str, Any]]:
        """The next unlabelled records to review, in order, each with ``why`` it was picked and its ``nearest``
        labelled records. With ``analyst``, at most what is left of their daily budget."""
        from sqlalchemy import select

        from segscope.labels.schema import Label, Record

        mix = mix or QueueMix()
        if segment is not None and not SEGMENT_IDS[0] <= segment <= SEGMENT_IDS[1]:
            raise ConfigError(
                f"segment {segment}: no such segment; segment ids run from {SEGMENT_IDS[0]} (noise) to "
                f"{SEGMENT_IDS[1]:,} (`segscope inspect BUNDLE` lists a model's segments)"
            )
        if analyst is not None:
            limit = min(limit, max(0, mix.daily_budget - self.labelled_today(analyst)))
        if limit <= 0:
            return []
        labelled_ids = select(Label.record_id).distinct()
        candidates = select(Record.__table__).where(Record.id.not_in(labelled_ids))
        if segment is not None:
            candidates = candidates.where(Record.segment == segment)
        if min_score is not None:
            candidates = candidates.where(Record.score >= min_score)
        candidates = candidates.order_by(Record.score.desc(), Record.id).limit(pool)
        with self.reading() as conn:
            rows = [dict(r) for r in conn.execute(candidates).mappings()]
            labelled = [
                dict(r)
                for r in conn.execute(
                    select(Record.id, Record.vector, Record.segment).where(Record.id.in_(labelled_ids))
                ).mappings()
            ]
        if not rows:
            return []
        current = self.labels()
        label_of = dict(zip(current["id"].to_list(), current["label"].to_list(), strict=True))
        score = np.array([r["score"] for r in rows])
        vectors = _matrix([r["vector"] for r in rows])
        labelled_vectors = _matrix([r["vector"] for r in labelled]) if labelled else None
        thresholds = [r["threshold"] for r in rows if r["threshold"] is not None]
        supervised = all(r["supervised_score"] is not None for r in rows)
        boundary = 0.5 if supervised else float(np.median(thresholds)) if thresholds else None
        pick = select_queue(
            score,
            limit,
            mix,
            threshold=boundary,  # a fine-tuned model's probability: its decision boundary
            segment=np.array([r["segment"] for r in rows]),
            vectors=vectors,
            labelled_vectors=labelled_vectors,
            labelled_segment=np.array([r["segment"] for r in labelled]) if labelled else None,
        )
        out = []
        for i, why in zip(pick.index.tolist(), pick.why, strict=True):
            item = rows[i]
            item["why"] = why
            item["nearest"] = _nearest(vectors[i], labelled_vectors, labelled, label_of)
            out.append(item)
        return out


def _current_labels(conn: Any, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    from sqlalchemy import func, select

    from segscope.labels.schema import Label

    out: dict[str, tuple[Any, ...]] = {}
    for chunk in _chunks(ids, _CHUNK):
        latest = select(func.max(Label.label_id)).where(Label.record_id.in_(chunk)).group_by(Label.record_id)
        query = select(Label.record_id, Label.label, Label.category, Label.analyst, Label.note).where(
            Label.label_id.in_(latest.scalar_subquery())
        )
        for rid, label, category, analyst, note in conn.execute(query):
            out[rid] = (label, category, analyst, note)
    return out


def _nearest(
    vector: np.ndarray,
    labelled_vectors: np.ndarray | None,
    labelled: list[dict[str, Any]],
    label_of: dict[str, str],
    k: int = 3,
) -> list[dict[str, Any]]:
    if labelled_vectors is None or labelled_vectors.shape[1] != vector.size:
        return []
    dist = np.sqrt(((labelled_vectors - vector) ** 2).sum(axis=1))
    return [
        {"id": labelled[j]["id"], "label": label_of.get(labelled[j]["id"]), "distance": round(float(dist[j]), 3)}
        for j in np.argsort(dist)[:k]
    ]


def _matrix(vectors: list[list[float]]) -> np.ndarray:
    """Stored feature vectors as rows (shorter ones padded with 0); anything but lists of numbers is a damaged store."""
    if not all(isinstance(v, list) and all(type(x) in (int, float) for x in v) for v in vectors):
        raise DataError(
            "the label store holds a record whose feature vector is not a list of numbers; the store is damaged or "
            "was edited: restore it from a backup"
        )
    width = max((len(v) for v in vectors), default=0)
    out = np.zeros((len(vectors), width))
    for i, v in enumerate(vectors):
        out[i, : len(v)] = v
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list | dict | str | int | float | bool) or value is None:
        return value
    return str(value)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _dialect_insert(engine: Engine) -> Any:
    """``INSERT ... ON CONFLICT`` for the engine's dialect (both SQLite and PostgreSQL have it)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def _unreadable(store: LabelStore, exc: BaseException) -> DataError:
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:160] or type(exc).__name__
    return DataError(
        f"label store {store.engine.url.render_as_string(hide_password=True)}: a stored value cannot be read "
        f"({type(exc).__name__}: {reason}); the store is damaged or was edited: restore it from a backup"
    )
