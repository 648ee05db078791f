"""The label store (SQLAlchemy + Alembic; SQLite by default, PostgreSQL by URL)."""

from segscope.store.labelstore import LabelIn, LabelStore, UnknownRecordError, candidate_rows, store_url

__all__ = ["LabelIn", "LabelStore", "UnknownRecordError", "candidate_rows", "store_url"]
