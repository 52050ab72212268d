"""The totals behind the Prometheus counters, kept as changes commit (tasks/metric_totals.py)

tep's own table, created in both table modes (`managed` and `existing`), in tep's schema on
PostgreSQL (the placeholder schema `tep`, which the engine's schema_translate_map turns into
TEP_SCHEMA), in the same file on SQLite. Canvas's `enrollments` is only read.

Filled once from what the metrics aggregated on every scrape before (the audit table, the
expired enrollments' `end_at`, the sweep runs), with the same arithmetic, so that every counter
reads the same just after the upgrade as just before it; from then on the writers keep it.

Written out as the table and the keys are at this revision (not imported from the models or
tasks/metric_totals.py, which will move on); tests/test_migrations.py checks that a migrated
database and one built from the models are the same, catalog entry by catalog entry, and that the
totals filled here are the ones the writers would have kept.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-15 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from models import TEP_SCHEMA, AnySelect, UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "temporary_enrollment_metric_totals"
ENROLLMENT = "Enrollment"  # audit rows' context_type for an enrollment
REASON_EXPIRED = "expired"
# The lateness histogram's upper bounds in seconds, as tasks/metric_totals.py has them here.
LATENESS_BUCKETS = (
    0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 86400,
)  # fmt: skip
MICROSECONDS = 1_000_000


def _table(name: str, *columns: str | sa.Column[Any], tep: bool = False) -> sa.Table:
    """A Table, not a lightweight `sa.table()`: only a Table's schema goes through the
    schema_translate_map."""
    return sa.Table(
        name,
        sa.MetaData(),
        *(sa.Column(col) if isinstance(col, str) else col for col in columns),
        schema=TEP_SCHEMA if tep else None,
    )


TOTALS = _table(TABLE, "name", "label", "value", tep=True)
CHANGES = _table(
    "temporary_enrollment_state_changes",
    "context_type",
    "context_id",
    "to_state",
    "reason",
    sa.Column("created_at", UTCDateTime()),
    tep=True,
)
RUNS = _table(
    "temporary_enrollment_sweep_runs",
    "pairings_skipped",
    sa.Column("started_at", UTCDateTime()),
    sa.Column("finished_at", UTCDateTime()),
    tep=True,
)
ENROLLMENTS = _table("enrollments", "id", sa.Column("end_at", UTCDateTime(timezone=False)))


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", "label", name=f"pk_{TABLE}"),
        schema=TEP_SCHEMA,
    )
    fill(op.get_bind())


def downgrade() -> None:
    op.drop_table(TABLE, schema=TEP_SCHEMA)


def _microseconds(bind: sa.Connection, start: Any, end: Any) -> Any:
    """`end - start` in whole microseconds, computed as the metrics computed it before: the
    interval's epoch on PostgreSQL, SQLite's Julian days (its date functions' precision)."""
    seconds: Any
    if bind.dialect.name == "postgresql":
        seconds = sa.func.extract("epoch", end - start)
    else:
        seconds = (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0
    return sa.cast(sa.func.round(seconds * MICROSECONDS), sa.BigInteger)


def _text(value: str) -> Any:
    return sa.literal_column(f"'{value}'")


def _insert(bind: sa.Connection, rows: AnySelect) -> None:
    bind.execute(TOTALS.insert().from_select(["name", "label", "value"], rows))


def fill(bind: sa.Connection) -> None:
    # Audit rows by what changed and the state it went to.
    _insert(
        bind,
        sa.select(
            sa.literal("state_changes:") + CHANGES.c.context_type,
            CHANGES.c.to_state,
            sa.func.count(),
        ).group_by(CHANGES.c.context_type, CHANGES.c.to_state),
    )

    # The lateness of every expiry, by its enrollment's end_at, never below zero (a restore with
    # --end-at may have moved end_at past the change).
    end_at: Any = ENROLLMENTS.c.end_at
    if bind.dialect.name == "postgresql":
        end_at = sa.func.timezone("UTC", end_at)  # Canvas's timestamps hold UTC
    raw = _microseconds(bind, end_at, CHANGES.c.created_at)
    late = (
        sa.select(sa.case((raw < 0, 0), else_=raw).label("us"))
        .join_from(CHANGES, ENROLLMENTS, ENROLLMENTS.c.id == CHANGES.c.context_id)
        .where(
            CHANGES.c.context_type == ENROLLMENT,
            CHANGES.c.reason == REASON_EXPIRED,
            ENROLLMENTS.c.end_at.is_not(None),
        )
        .subquery("late")
    )
    # Literal SQL, not parameters, so that PostgreSQL sees the grouped expression as selected.
    bucket = sa.case(
        *(
            (late.c.us <= sa.literal_column(str(round(b * MICROSECONDS))), _text(str(float(b))))
            for b in LATENESS_BUCKETS
        ),
        else_=_text("+Inf"),
    )
    _insert(
        bind,
        sa.select(sa.literal("expiry_lateness"), bucket, sa.func.count()).group_by(bucket),
    )
    # Summed in milliseconds, each rounded half up (as the writers round each expiry).
    total = sa.func.sum((late.c.us + 500) // 1000)
    _insert(
        bind,
        sa.select(sa.literal("expiry_lateness_milliseconds"), sa.literal(""), total).having(
            total > 0
        ),
    )

    # Committed sweep runs: how many, how long in all, how many pairings they skipped. As the
    # writers keep them, a total is there once something was counted (a zero is no row).
    duration = _microseconds(bind, RUNS.c.started_at, RUNS.c.finished_at)
    for name, value in (
        ("sweep_runs", sa.func.count()),
        ("sweep_run_microseconds", sa.func.sum(duration)),
        ("sweep_pairings_skipped", sa.func.sum(RUNS.c.pairings_skipped)),
    ):
        _insert(
            bind,
            sa.select(sa.literal(name), sa.literal(""), value).select_from(RUNS).having(value > 0),
        )
