"""tep's expiry timers: one claim row per second a sweep is scheduled for (tasks/timers.py)

tep's own table, so it is created in both table modes (`managed` and `existing`): in tep's
schema on PostgreSQL (the placeholder schema `tep`, which the engine's schema_translate_map turns
into TEP_SCHEMA), in the same file on SQLite. Nothing of Canvas's is read or touched.

Written out as the table is at this revision (not imported from the models, which will move
on); tests/test_migrations.py checks that a migrated database and one built from the models are
the same, catalog entry by catalog entry.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from models import TEP_SCHEMA, UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "temporary_enrollment_timers"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("fire_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_until", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("due_at", name=f"pk_{TABLE}"),
        schema=TEP_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table(TABLE, schema=TEP_SCHEMA)
