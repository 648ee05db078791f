"""The label store: records shown to analysts (with features, scores, reasons, segment, model version) and every
label they gave, in SQLite (a file, the default) or PostgreSQL (by URL). Schema changes are Alembic migrations,
applied when a store is opened.

Concurrency: label writes lock the labelled records (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite), so concurrent analysts lose nothing and the same label posted twice is stored once.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from segscope._deps import require
from segscope.exceptions import ConfigError, DataError
from segscope.queue import QueueMix, select_queue
from segscope.supervised.labels import label_name

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from segscope.pipeline import Model

__all__ = ["LabelIn", "LabelStore", "UnknownRecordError", "store_url"]

_CHUNK = 500


class UnknownRecordError(DataError):
    """A label names a record the store does not hold."""


@dataclass(frozen=True)
class LabelIn:
    """One label to add. ``label``: "anomaly" or "normal"."""

    id: str
    label: str
    analyst: str
    category: str | None = None
    note: str | None = None

    def checked(self) -> LabelIn:
        label = label_name(self.label)
        if label is None:
            raise DataError(f"label for {str(self.id)[:80]!r} is {str(self.label)[:40]!r}; use 'anomaly' or 'normal'")
        if not str(self.id):
            raise DataError("a label needs the record's id")
        record_id = _clean_text(str(self.id), "the record id", 255)
        analyst = _clean_text(str(self.analyst), f"the analyst of the label for {record_id!r}", 255).strip()
        if not analyst:
            raise DataError(f"label for {record_id!r} has no analyst; say who labelled it")
        category = _clean_text(self.category, f"the category of {record_id!r}", 255).strip() if self.category else ""
        note = _clean_text(self.note, f"the note on {record_id!r}", 10_000, newlines=True) if self.note else ""
        return LabelIn(record_id, label, analyst, category or None, note or None)


def _clean_text(text: str, what: str, limit: int, *, newlines: bool = False) -> str:
    """NFC-normalised text without control or bidirectional-override characters (which can hide or reorder
    what an analyst's name or note shows elsewhere), at most ``limit`` characters."""
    text = unicodedata.normalize("NFC", str(text))
    allowed = "\u200c\u200d" + ("\n\t" if newlines else "")  # joiners are part of many scripts' spelling
    bad = next(
        (c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in allowed), None
    )
    if bad is not None:
        raise DataError(
            f"{what} holds the control character U+{ord(bad):04X}; use plain text (no control or "
            "direction-override characters)"
        )
    if len(text) > limit:
        raise DataError(f"{what} is {len(text):,} characters long; at most {limit:,} are kept")
    return text


@dataclass(frozen=True)
class AddedLabels:
    added: int
    unchanged: int


def store_url(text: str | Path) -> str:
    """``labels.db`` / ``sqlite:///labels.db`` / ``postgresql://user@host:port/db`` -> a SQLAlchemy URL."""
    text = str(text)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser()}"
    scheme = text.split("://", 1)[0]
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    if scheme.startswith(("sqlite", "postgresql+")):
        return text
    raise ConfigError(f"--store {text!r}: use a file path (SQLite) or a postgresql://user@host:port/db URL")


class LabelStore:
    """Open with :meth:`open`; one instance may be shared by threads (it holds a connection pool)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------- opening
    @classmethod
    def open(cls, url: str | Path, *, create: bool = True) -> LabelStore:
        """Open (and migrate) a store. ``create=False`` refuses a SQLite file that does not exist yet, so a
        mistyped path is an error instead of a new, empty store."""
        sqlalchemy = require("sqlalchemy", extra="store", feature="the label store")
        from sqlalchemy import event
        from sqlalchemy.exc import ArgumentError, DBAPIError

        full = store_url(url)
        try:
            if full.startswith("sqlite"):
                path = full.split(":///", 1)[-1]
                if path and path != ":memory:" and not Path(path).parent.is_dir():
                    raise ConfigError(f"--store {url}: folder {Path(path).parent} does not exist; create it first")
                if path and path != ":memory:" and not create and not Path(path).is_file():
                    raise ConfigError(
                        f"--store {url}: no label store there (the file does not exist); check the path, or create "
                        "one with `segscope score DATA --bundle B --out OUT --store FILE`"
                    )
                engine = sqlalchemy.create_engine(full, connect_args={"timeout": 60, "check_same_thread": False})
                _sqlite_locking(engine, event)
            else:
                engine = sqlalchemy.create_engine(full, pool_size=10, max_overflow=10, pool_pre_ping=True)
            store = cls(engine)
            store._migrate()
        except DBAPIError as exc:  # not a database, a truncated file, a server that refuses, ...
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
            raise ConfigError(
                f"--store {url}: cannot open the label store ({reason}); pass a segscope label store (a SQLite file "
                "or a postgresql:// URL)"
            ) from None
        except ArgumentError as exc:
            raise ConfigError(f"--store {url}: not a database URL ({exc})") from None
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
    def add_records(
        self, model: Model, scored: pl.DataFrame, *, source: str, ids: Sequence[str] | None = None
    ) -> int:
        """Keep scored rows (``Model.score`` output) as records; a known id is updated to its latest scores.
        ``ids`` default to the model's id column. Returns the number of rows written."""
        if not scored.height:
            return 0
        id_column = model.preparer_.schema_.id_column
        if ids is None:
            if id_column is None or id_column not in scored.columns:
                raise ConfigError("the label store needs record ids: fit the bundle with --id-column")
            ids = [str(v) for v in scored.get_column(id_column).to_list()]
        prep = model.preparer_
        vectors = prep.transform(prep.validate(scored))
        threshold = model.policy_.describe().get("threshold")
        inputs = [c for c in scored.columns if c not in _SCORED]
        now = datetime.now(UTC)
        rows = []
        for i, row in enumerate(scored.iter_rows(named=True)):
            rows.append(
                {
                    "id": str(ids[i]),
                    "model_version": row["model_version"],
                    "score": float(row["score"]),
                    "anomaly_score": float(row["anomaly_score"]),
                    "supervised_score": row["supervised_score"],
                    "threshold": threshold,
                    "is_alert": bool(row["is_alert"]),
                    "segment": int(row["segment"]),
                    "reasons": row["reasons"] or [],
                    "values": {c: _jsonable(row[c]) for c in inputs},
                    "vector": [round(float(v), 6) for v in vectors[i]],
                    "source": source,
                    "first_seen": now,
                    "last_seen": now,
                }
            )
        from segscope.store.schema import Record

        updated = [k for k in rows[0] if k not in ("id", "first_seen", "source")]
        with self._write() as conn:
            insert = _dialect_insert(self.engine)
            for chunk in _chunks(rows, _CHUNK):
                stmt = insert(Record).values(chunk)
                conn.execute(
                    stmt.on_conflict_do_update(index_elements=["id"], set_={k: stmt.excluded[k] for k in updated})
                )
        return len(rows)

    def add_candidates(
        self,
        model: Model,
        scored: pl.DataFrame,
        *,
        source: str,
        ids: Sequence[str] | None = None,
        per_batch: int = 2000,
    ) -> int:
        """Keep a batch's alerts and queue candidates: the alerts, the rows nearest the threshold, and the top rows
        of each segment, at most ``per_batch`` rows in all (highest scores first)."""
        rows = candidate_rows(model, scored, per_batch)
        chosen_ids = [ids[i] for i in rows] if ids is not None else None
        return self.add_records(model, scored[rows], source=source, ids=chosen_ids)

    def rescore(self, model: Model, *, batch_size: int = 5000) -> int:
        """Re-score stored records that another model version scored (e.g. after a promotion), from their stored
        values, so the queue ranks by the current model. Returns how many were updated."""
        from sqlalchemy import select

        from segscope.store.schema import Record

        query = select(Record.id, Record.values).where(Record.model_version != model.version).order_by(Record.id)
        with self.engine.connect() as conn:
            stale = [(r.id, r.values) for r in conn.execute(query)]
        done = 0
        for chunk in _chunks(stale, batch_size):
            frame = pl.DataFrame([values for _, values in chunk], infer_schema_length=None)
            scored = model.score(frame)
            done += self.add_records(model, scored, source="rescore", ids=[i for i, _ in chunk])
        return done

    def record_count(self) -> int:
        from sqlalchemy import func, select

        from segscope.store.schema import Record

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Record)).scalar_one())

    def records(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        from sqlalchemy import select

        from segscope.store.schema import Record

        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), _CHUNK):
                for row in conn.execute(select(Record.__table__).where(Record.id.in_(chunk))).mappings():
                    out[row["id"]] = dict(row)
        return out

    # ------------------------------------------------------------- labels
    def add_labels(self, labels: Iterable[LabelIn], *, source: str) -> AddedLabels:
        """Add labels in one transaction: all or none. An unknown record id refuses the whole batch; a label equal
        to the record's current one (same label, category, analyst and note) is not stored again."""
        from sqlalchemy import insert, select

        from segscope.store.schema import LABEL_SOURCES, Label, Record

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

        from segscope.store.schema import Label

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
        with self.engine.connect() as conn:
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

    def training_labels(self) -> pl.DataFrame:
        """Current labels in the form fine-tuning takes (``id, label (1/0), category``)."""
        current = self.labels()
        return current.select("id", (pl.col("label") == "anomaly").cast(pl.Int8).alias("label"), "category").sort("id")

    def labelled_today(self, analyst: str) -> int:
        from sqlalchemy import func, select

        from segscope.store.schema import Label

        start = datetime.combine(date.today(), time(0), tzinfo=UTC)
        query = select(func.count()).where(Label.analyst == analyst, Label.created_at >= start)
        with self.engine.connect() as conn:
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

        from segscope.store.schema import Label, Record

        mix = mix or QueueMix()
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
        with self.engine.connect() as conn:
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


_SCORED = ("score", "anomaly_score", "supervised_score", "is_alert", "segment", "reasons", "model_version")


def candidate_rows(model: Model, scored: pl.DataFrame, limit: int) -> np.ndarray:
    """Positions of the rows of a scored batch worth keeping for the queue: alerts, rows nearest the alert
    threshold, and the top rows of each segment (at most ``limit``, highest scores first)."""
    if scored.height <= limit:
        return np.arange(scored.height)
    score = scored["score"].to_numpy()
    keep = np.zeros(scored.height, dtype=bool)
    threshold = model.policy_.describe().get("threshold")
    alerts = np.flatnonzero(scored["is_alert"].to_numpy())
    keep[alerts[np.argsort(-score[alerts])][: limit // 2]] = True
    thr = float(threshold) if threshold is not None else float(np.quantile(score, 0.99))
    keep[np.argsort(np.abs(score - thr))[: limit // 4]] = True
    segment = scored["segment"].to_numpy()
    for s in np.unique(segment):
        members = np.flatnonzero(segment == s)
        keep[members[np.argsort(-score[members])][:5]] = True
    chosen = np.flatnonzero(keep)
    chosen = chosen[np.argsort(-score[chosen])][:limit]
    return np.sort(chosen)


def _current_labels(conn: Any, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    from sqlalchemy import func, select

    from segscope.store.schema import Label

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


def _sqlite_locking(engine: Engine, event: Any) -> None:
    """SQLite: WAL (readers never wait for the writer) and BEGIN IMMEDIATE (writers queue up at the start of a
    transaction instead of failing on upgrade); pysqlite's own transaction handling is switched off for it."""

    @event.listens_for(engine, "connect")  # type: ignore[untyped-decorator]
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")  # type: ignore[untyped-decorator]
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("segscope_write") else "BEGIN")
