"""dossier status timeline (the stream counters derive in-progress and paused stocks from it)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No store in service predates this revision; a development store's older rows get an
    # empty timeline (only the stream counters read it, and they fold from the log).
    with op.batch_alter_table("dossiers") as batch:
        batch.add_column(sa.Column("timeline", sa.Text(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("dossiers") as batch:
        batch.drop_column("timeline")
