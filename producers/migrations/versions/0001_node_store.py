"""node store

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from infra.node_tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "dossiers",
        sa.Column("dossier_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("full_online", sa.Boolean(), nullable=False),
        sa.Column("procedure_code", sa.String(length=32), nullable=True),
        sa.Column("field", sa.String(length=80), nullable=True),
        sa.Column("receiving_node", sa.String(length=40), nullable=True),
        sa.Column("received_at", UtcDateTime(), nullable=True),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("original_due_date", sa.Date(), nullable=True),
        sa.Column("extensions", sa.SmallInteger(), nullable=False),
        sa.Column("components_digitised", sa.Boolean(), nullable=False),
        sa.Column("result_digitised", sa.Boolean(), nullable=False),
        sa.Column("supplements", sa.SmallInteger(), nullable=False),
        sa.Column("resolved_at", UtcDateTime(), nullable=True),
        sa.Column("returned_at", UtcDateTime(), nullable=True),
        sa.Column("withdrawn_at", UtcDateTime(), nullable=True),
        sa.Column("refused_at", UtcDateTime(), nullable=True),
        sa.Column("nodes", sa.Text(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("last_occurred_at", UtcDateTime(), nullable=True),
        sa.Column("last_origin", sa.String(length=40), nullable=True),
        sa.Column("last_origin_seq", sa.BigInteger(), nullable=True),
        sa.Column("anomalies", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("dossier_id"),
    )
    with op.batch_alter_table("dossiers", schema=None) as batch_op:
        batch_op.create_index("ix_dossiers_receiving_node", ["receiving_node"], unique=False)

    op.create_table(
        "hotline_calls",
        sa.Column("call_id", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=40), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("closed_at", UtcDateTime(), nullable=True),
        sa.Column("resolved", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("call_id"),
    )
    op.create_table(
        "node_heads",
        sa.Column("node_id", sa.String(length=40), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
    )
    op.create_table(
        "outbox",
        sa.Column("origin", sa.String(length=40), nullable=False),
        sa.Column("origin_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("dossier_id", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=40), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=True),
        sa.Column("kafka_partition", sa.Integer(), nullable=True),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("origin", "origin_seq"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_dossier", ["dossier_id"], unique=False)
        batch_op.create_index(
            "ix_outbox_unpublished",
            ["origin", "origin_seq"],
            unique=False,
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        )

    op.create_table(
        "relay_leases",
        sa.Column("node_id", sa.String(length=40), nullable=False),
        sa.Column("holder", sa.String(length=120), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
    )


def downgrade() -> None:

    op.drop_table("relay_leases")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_unpublished",
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        )
        batch_op.drop_index("ix_outbox_dossier")

    op.drop_table("outbox")
    op.drop_table("node_heads")
    op.drop_table("hotline_calls")
    with op.batch_alter_table("dossiers", schema=None) as batch_op:
        batch_op.drop_index("ix_dossiers_receiving_node")

    op.drop_table("dossiers")
