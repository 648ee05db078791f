"""Tables of the label store (SQLAlchemy). Changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Label", "Record"]

LABEL_SOURCES = ("page", "api", "cli", "import", "kafka")


class Base(DeclarativeBase):
    pass


class Record(Base):
    """A record shown (or to be shown) to analysts, kept with everything needed to join labels to features."""

    __tablename__ = "records"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    anomaly_score: Mapped[float] = mapped_column(Float)
    supervised_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    is_alert: Mapped[bool] = mapped_column(Boolean)
    segment: Mapped[int] = mapped_column(Integer)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    #: the input record as it was scored (column -> value), and its prepared feature vector
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    vector: Mapped[list[float]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(255))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_records_score", "score"), Index("ix_records_segment", "segment"))


class Label(Base):
    """One analyst decision. Append-only: re-labelling adds a row, the latest row per record is current."""

    __tablename__ = "labels"

    label_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_id: Mapped[str] = mapped_column(String(255), ForeignKey("records.id"))
    label: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(255), nullable=True)
    analyst: Mapped[str] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("label IN ('anomaly', 'normal')", name="ck_labels_label"),
        Index("ix_labels_record", "record_id", "label_id"),
        Index("ix_labels_analyst_time", "analyst", "created_at"),
    )
