"""Analyst labels: parsing label files and messages, the label store (SQLAlchemy + Alembic; SQLite by default,
PostgreSQL by URL) and the review queue."""

from segscope.labels._open import hide_password
from segscope.labels.queue import QueueMix, candidate_rows, parse_mix, select_queue
from segscope.labels.store import LabelIn, LabelStore, ReviewRecords, UnknownRecordError, store_url

__all__ = [
    "LabelIn",
    "LabelStore",
    "QueueMix",
    "ReviewRecords",
    "UnknownRecordError",
    "candidate_rows",
    "hide_password",
    "parse_mix",
    "select_queue",
    "store_url",
]
