"""records and labels

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("anomaly_score", sa.Float(), nullable=False),
        sa.Column("supervised_score", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("is_alert", sa.Boolean(), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("vector", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_records_score", "records", ["score"])
    op.create_index("ix_records_segment", "records", ["segment"])
    op.create_table(
        "labels",
        sa.Column("label_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.String(255), sa.ForeignKey("records.id"), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("category", sa.String(255), nullable=True),
        sa.Column("analyst", sa.String(255), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("label IN ('anomaly', 'normal')", name="ck_labels_label"),
    )
    op.create_index("ix_labels_record", "labels", ["record_id", "label_id"])
    op.create_index("ix_labels_analyst_time", "labels", ["analyst", "created_at"])


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("records")
