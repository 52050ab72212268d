"""When the sweep last logged each pairing it skips (tasks/skip_logs.py)

tep's own table, so it is created in both table modes (`managed` and `existing`): in tep's
schema on PostgreSQL (the placeholder schema `tep`, which the engine's schema_translate_map turns
into TEP_SCHEMA), in the same file on SQLite. Nothing of Canvas's is read or touched. It starts
empty: after the upgrade, each pairing still skipped is logged once more, as new.

Written out as the table is at this revision (not imported from the models, which will move
on); tests/test_migrations.py checks that a migrated database and one built from the models are
the same, catalog entry by catalog entry.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from models import TEP_SCHEMA, UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "temporary_enrollment_skip_logs"


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("temporary_enrollment_pairing_id", _id(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("root_account_id", _id(), nullable=False),
        sa.Column("last_logged_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("temporary_enrollment_pairing_id", "reason", name=f"pk_{TABLE}"),
        schema=TEP_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table(TABLE, schema=TEP_SCHEMA)
