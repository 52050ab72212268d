"""Beside a hosted Canvas: the outbox of commands to Canvas's REST API, each root account's last
sync, and when Canvas confirmed an audited change (tasks/canvas_rest/)

tep's own tables, so they are created in both table modes, in tep's schema on PostgreSQL and in
the same file on SQLite. The new audit column is NULL for every existing row: tep wrote those
changes itself, and nothing waits for Canvas to confirm them.

Written out as the tables are at this revision (not imported from the models, which will move
on); tests/test_migrations.py checks that a migrated database and one built from the models are
the same, catalog entry by catalog entry.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from models import TEP_SCHEMA, Schemas, UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMANDS = "temporary_enrollment_canvas_commands"
SYNCS = "temporary_enrollment_canvas_syncs"
AUDIT = "temporary_enrollment_state_changes"


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _audit_schema() -> str | None:
    """Where the audit table really is: ALTER TABLE does not pass through the engine's
    schema_translate_map as CREATE TABLE does, so it is given the real schema (none on SQLite)."""
    config = op.get_context().config
    schemas = config.attributes.get("schemas") if config is not None else None
    if not isinstance(schemas, Schemas):
        from worker.settings import get_settings

        schemas = get_settings().schemas()
    return schemas.of_table(TEP_SCHEMA, op.get_bind().dialect.name)


def upgrade() -> None:
    op.add_column(
        AUDIT,
        sa.Column("canvas_confirmed_at", UTCDateTime(), nullable=True),
        schema=_audit_schema(),
    )
    op.create_table(
        COMMANDS,
        sa.Column("id", _id(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("enrollment_id", _id(), nullable=False),
        sa.Column("course_id", _id(), nullable=False),
        sa.Column("temporary_enrollment_pairing_id", _id(), nullable=True),
        sa.Column("root_account_id", _id(), nullable=False),
        sa.Column("state_change_id", _id(), nullable=True),
        sa.Column("from_state", sa.String(255), nullable=False),
        sa.Column("to_state", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("canvas_state", sa.String(255), nullable=True),
        sa.Column("new_enrollment_id", _id(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"pk_{COMMANDS}"),
        schema=TEP_SCHEMA,
    )
    op.create_index(
        f"index_{COMMANDS}_open",
        COMMANDS,
        ["id"],
        schema=TEP_SCHEMA,
        postgresql_where=sa.text("finished_at IS NULL"),
        sqlite_where=sa.text("finished_at IS NULL"),
    )
    op.create_index(
        f"index_{COMMANDS}_on_pairing_id",
        COMMANDS,
        ["temporary_enrollment_pairing_id"],
        schema=TEP_SCHEMA,
    )
    op.create_table(
        SYNCS,
        sa.Column("root_account_id", _id(), nullable=False, autoincrement=False),
        sa.Column("synced_at", UTCDateTime(), nullable=False),
        sa.Column("full_synced_at", UTCDateTime(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("root_account_id", name=f"pk_{SYNCS}"),
        schema=TEP_SCHEMA,
    )


def downgrade() -> None:
    op.drop_table(SYNCS, schema=TEP_SCHEMA)
    op.drop_index(f"index_{COMMANDS}_on_pairing_id", table_name=COMMANDS, schema=TEP_SCHEMA)
    op.drop_index(f"index_{COMMANDS}_open", table_name=COMMANDS, schema=TEP_SCHEMA)
    op.drop_table(COMMANDS, schema=TEP_SCHEMA)
    op.drop_column(AUDIT, "canvas_confirmed_at", schema=_audit_schema())
