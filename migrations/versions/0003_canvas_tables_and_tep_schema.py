"""Canvas's tables as Canvas has them; tep's own tables apart, in their own schema

Moves a database made by revisions 0001-0002 (always `managed` mode) over to the schema of
models/canvas.py and models/tep.py, keeping every row. A new database never runs this: it is
built from the models and stamped (migrations/__init__.py).

The target tables are written out here as they are at this revision (not imported from the
models, which will move on); tests/test_migrations.py checks that a converted database and one
built from the models are the same, catalog entry by catalog entry.

* tep's tables go to tep's schema (PostgreSQL `ALTER TABLE .. SET SCHEMA`; SQLite: the same
  file) without their foreign keys into Canvas's tables; `access_tokens` (Canvas's table name)
  becomes `api_tokens`; the pairing ends, the deadline index and its discovery cursor are new.
* A pairing tep had ended (`workflow_state 'ended'`, Canvas knows no such state) gets its end in
  tep's table and Canvas's `active` back; `ended_at` goes.
* Canvas's defaults: dummy account 0 and `root_account_id = 0` for root accounts, a "Default
  Term" and the built-in roles per root account, `enrollments.role_id`, uuids, one
  `enrollment_states` row per enrollment, Canvas's indexes.
* PostgreSQL: Canvas's timestamps become `timestamp without time zone` holding UTC (tep's keep
  `timestamptz`). SQLite stores both as the same text: nothing to convert.

PostgreSQL alters the tables in place, one rewrite per table. SQLite cannot change a column's
NOT NULL or default in place, so each changed table is rebuilt (SQLite's "generalized ALTER
TABLE procedure"), which needs foreign keys off: see `_sqlite_foreign_keys_off`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:40:00
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from migrations import DUMMY_ROOT_ACCOUNT_NAME
from models import (
    BUILT_IN_ROLES,
    CANVAS_TABLES_EXISTING,
    DEFAULT_TERM_NAME,
    DUMMY_ROOT_ACCOUNT_ID,
    ENROLLMENT_TYPES,
    LIVE_ENROLLMENT_STATES,
    TEP_SCHEMA,
    Schemas,
    UTCDateTime,
    utcnow,
)
from tasks.canvas_callbacks import cached_state_columns

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The run id of a pairing end whose run the audit log does not name.
LEGACY_RUN_ID = "legacy-0003"
PAIRING_CONTEXT = "TemporaryEnrollmentPairing"  # audit rows' context_type for a pairing
CURSOR_ID = 1  # tasks/deadlines.py: the discovery cursor's one row
# Names of the tables SQLite rebuilds while they are being filled; never left behind (one
# transaction).
SQLITE_TMP_PREFIX = "_tep0003_"

# tep's tables of revisions 0001-0002 that move to tep's schema as they are.
MOVED_TEP_TABLES = (
    "temporary_enrollment_state_changes",
    "temporary_enrollment_sweep_runs",
    "temporary_enrollment_webhook_receivers",
    "temporary_enrollment_webhook_deliveries",
    "temporary_enrollment_notices",
)
NEW_TEP_TABLES = (
    "temporary_enrollment_pairing_ends",
    "temporary_enrollment_deadlines",
    "temporary_enrollment_discovery",
)
NEW_CANVAS_TABLES = ("enrollment_terms", "roles", "role_overrides", "account_users")

# The indexes of revisions 0001-0002 on Canvas's tables that Canvas does not have.
DROPPED_INDEXES = {
    "pseudonyms": ("index_pseudonyms_on_account_id_and_unique_id",),
    "courses": ("index_courses_on_root_account_id",),
    "temporary_enrollment_pairings": (
        "index_temp_enrollment_pairings_on_root_account_and_created_at",
    ),
    "enrollments": (
        "index_enrollments_on_temporary_end_at",
        "index_enrollments_on_temporary_without_end_at",
        "index_enrollments_on_course_id_and_id",
    ),
}

# Timestamp columns of Canvas's tables, by table: `timestamptz` until now.
CANVAS_TIMESTAMPS = {
    "accounts": ("created_at", "updated_at"),
    "users": ("created_at", "updated_at"),
    "pseudonyms": ("created_at", "updated_at"),
    "communication_channels": ("created_at", "updated_at"),
    "courses": ("start_at", "conclude_at", "created_at", "updated_at"),
    "course_sections": ("created_at", "updated_at"),
    "temporary_enrollment_pairings": ("created_at", "updated_at"),
    "enrollments": ("start_at", "end_at", "completed_at", "created_at", "updated_at"),
}
# Canvas's Migration[7.0] tables have `timestamp(6)` (models/canvas.py).
TIMESTAMP6_TABLES = ("temporary_enrollment_pairings",)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class LegacyConversionError(Exception):
    """The legacy database holds something 0003 cannot convert without guessing; the message
    says what and how to fix it. Nothing has been changed."""


# --------------------------------------------------------------------------------------------
# The tables as they are at this revision


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _canvas_time(precision: int | None = None) -> sa.types.TypeEngine[Any]:
    """`timestamp without time zone` (Canvas's), `timestamp(6)` for Migration[7.0] tables."""
    if precision is None:
        return sa.DateTime(timezone=False)
    return sa.DateTime(timezone=False).with_variant(
        postgresql.TIMESTAMP(timezone=False, precision=precision), "postgresql"
    )


def _tep_time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _partial(sql: str) -> dict[str, Any]:
    clause = sa.text(sql)
    return {"postgresql_where": clause, "sqlite_where": clause}


def _target(tep_schema: str | None) -> sa.MetaData:
    """The tables this revision creates or rebuilds, as models/canvas.py and models/tep.py have
    them at this revision. `tep_schema` is the placeholder "tep" (PostgreSQL: translated by the
    engine) or None (SQLite, where the rebuild compiles the DDL itself)."""
    m = sa.MetaData(naming_convention=NAMING_CONVENTION)
    c = sa.Column

    def timestamps(precision: int | None = None) -> list[sa.Column[Any]]:
        return [
            c("created_at", _canvas_time(precision), nullable=False),
            c("updated_at", _canvas_time(precision), nullable=False),
        ]

    sa.Table(
        "accounts",
        m,
        c("id", _id(), primary_key=True),
        c("name", sa.String(255)),
        c("workflow_state", sa.String(255), nullable=False, server_default="active"),
        c("parent_account_id", _id(), sa.ForeignKey("accounts.id")),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("uuid", sa.String(255)),
        *timestamps(),
    )
    sa.Table(
        "users",
        m,
        c("id", _id(), primary_key=True),
        c("name", sa.String(255)),
        c("sortable_name", sa.String(255)),
        c("workflow_state", sa.String(255), nullable=False),
        c("uuid", sa.String(255)),
        *timestamps(),
    )
    sa.Table(
        "pseudonyms",
        m,
        c("id", _id(), primary_key=True),
        c("user_id", _id(), sa.ForeignKey("users.id"), nullable=False),
        c("account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("workflow_state", sa.String(255), nullable=False),
        c("unique_id", sa.String(255), nullable=False),
        c("sis_user_id", sa.String(255)),
        *timestamps(),
        sa.Index("index_pseudonyms_on_user_id", "user_id"),
    )
    sa.Table(
        "communication_channels",
        m,
        c("id", _id(), primary_key=True),
        c("path", sa.String(255), nullable=False),
        c("path_type", sa.String(255), nullable=False, server_default="email"),
        c("workflow_state", sa.String(255), nullable=False),
        c("user_id", _id(), sa.ForeignKey("users.id"), nullable=False),
        *timestamps(),
        sa.Index("index_communication_channels_on_user_id", "user_id"),
    )
    sa.Table(
        "enrollment_terms",
        m,
        c("id", _id(), primary_key=True),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("name", sa.String(255)),
        c("start_at", _canvas_time()),
        c("end_at", _canvas_time()),
        c("workflow_state", sa.String(255), nullable=False, server_default="active"),
        *timestamps(),
        sa.Index("index_enrollment_terms_on_root_account_id", "root_account_id"),
    )
    sa.Table(
        "courses",
        m,
        c("id", _id(), primary_key=True),
        c("name", sa.String(255)),
        c("account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("workflow_state", sa.String(255), nullable=False),
        c("uuid", sa.String(255)),
        c("start_at", _canvas_time()),
        c("conclude_at", _canvas_time()),
        *timestamps(),
        c("course_code", sa.String(255)),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("enrollment_term_id", _id(), sa.ForeignKey("enrollment_terms.id"), nullable=False),
        sa.Index("index_courses_on_account_id", "account_id"),
        sa.Index("index_courses_on_enrollment_term_id", "enrollment_term_id"),
    )
    sa.Table(
        "course_sections",
        m,
        c("id", _id(), primary_key=True),
        c("course_id", _id(), sa.ForeignKey("courses.id"), nullable=False),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("name", sa.String(255), nullable=False),
        c("default_section", sa.Boolean()),
        c("workflow_state", sa.String(255), nullable=False, server_default="active"),
        *timestamps(),
        sa.Index("index_course_sections_on_course_id", "course_id"),
    )
    sa.Table(
        "roles",
        m,
        c("id", _id(), primary_key=True),
        c("name", sa.String(255), nullable=False),
        c("base_role_type", sa.String(255), nullable=False),
        c("account_id", _id(), sa.ForeignKey("accounts.id")),
        c("workflow_state", sa.String(255), nullable=False),
        *timestamps(),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Index("index_roles_on_account_id", "account_id"),
        sa.Index("index_roles_on_root_account_id", "root_account_id"),
    )
    sa.Table(
        "role_overrides",
        m,
        c("id", _id(), primary_key=True),
        c("permission", sa.String(255)),
        c("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        c("context_id", _id(), nullable=False),
        c("context_type", sa.String(255), nullable=False),
        c("role_id", _id(), sa.ForeignKey("roles.id"), nullable=False),
        c("applies_to_self", sa.Boolean(), nullable=False, server_default=sa.true()),
        c("applies_to_descendants", sa.Boolean(), nullable=False, server_default=sa.true()),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("created_at", _canvas_time()),
        c("updated_at", _canvas_time()),
        sa.Index("index_role_overrides_on_role_id", "role_id"),
    )
    sa.Table(
        "account_users",
        m,
        c("id", _id(), primary_key=True),
        c("account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("user_id", _id(), sa.ForeignKey("users.id"), nullable=False),
        *timestamps(),
        c("role_id", _id(), sa.ForeignKey("roles.id"), nullable=False),
        c("workflow_state", sa.String(), nullable=False, server_default="active"),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Index("index_account_users_on_account_id", "account_id"),
        sa.Index("index_account_users_on_user_id", "user_id"),
    )
    sa.Table(
        "temporary_enrollment_pairings",
        m,
        c("id", _id(), primary_key=True),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("workflow_state", sa.String(255), nullable=False, server_default="active"),
        *timestamps(precision=6),
        c("ending_enrollment_state", sa.Text()),
        c("created_by_id", _id(), sa.ForeignKey("users.id")),
        c("deleted_by_id", _id(), sa.ForeignKey("users.id")),
    )
    sa.Table(
        "enrollments",
        m,
        c("id", _id(), primary_key=True),
        c("user_id", _id(), sa.ForeignKey("users.id"), nullable=False),
        c("course_id", _id(), sa.ForeignKey("courses.id"), nullable=False),
        c("type", sa.String(255), nullable=False),
        c("uuid", sa.String(255)),
        c("workflow_state", sa.String(255), nullable=False),
        *timestamps(),
        c("associated_user_id", _id(), sa.ForeignKey("users.id")),
        c("course_section_id", _id(), sa.ForeignKey("course_sections.id"), nullable=False),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        c("completed_at", _canvas_time()),
        c("start_at", _canvas_time()),
        c("end_at", _canvas_time()),
        c(
            "limit_privileges_to_course_section",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
        ),
        c("role_id", _id(), sa.ForeignKey("roles.id"), nullable=False),
        c("temporary_enrollment_source_user_id", _id(), sa.ForeignKey("users.id")),
        c(
            "temporary_enrollment_pairing_id",
            _id(),
            sa.ForeignKey("temporary_enrollment_pairings.id"),
        ),
        sa.Index(
            "index_enrollments_on_user_type_role_section",
            "user_id",
            "type",
            "role_id",
            "course_section_id",
            unique=True,
            **_partial("associated_user_id IS NULL"),
        ),
        sa.Index(
            "index_enrollments_on_temp_enrollment_user_type_role_section",
            "temporary_enrollment_source_user_id",
            "user_id",
            "type",
            "role_id",
            "course_section_id",
            unique=True,
            **_partial("temporary_enrollment_source_user_id IS NOT NULL"),
        ),
        sa.Index(
            "index_enrollments_on_temporary_enrollment_pairing_id",
            "temporary_enrollment_pairing_id",
            **_partial("temporary_enrollment_pairing_id IS NOT NULL"),
        ),
        sa.Index("index_enrollments_on_course_id", "course_id"),
        sa.Index("index_enrollments_on_user_id", "user_id"),
        sa.Index("index_enrollments_on_course_section_id", "course_section_id"),
        sa.Index("index_enrollments_on_role_id", "role_id"),
        sa.Index(
            "index_enrollments_on_temporary_enrollment_source_user_id",
            "temporary_enrollment_source_user_id",
            **_partial("temporary_enrollment_source_user_id IS NOT NULL"),
        ),
    )
    sa.Table(
        "enrollment_states",
        m,
        c("enrollment_id", _id(), sa.ForeignKey("enrollments.id"), primary_key=True),
        c("state", sa.String(255)),
        c("state_is_current", sa.Boolean(), nullable=False, server_default=sa.false()),
        c("state_started_at", _canvas_time()),
        c("state_valid_until", _canvas_time()),
        c("restricted_access", sa.Boolean(), nullable=False, server_default=sa.false()),
        c("access_is_current", sa.Boolean(), nullable=False, server_default=sa.false()),
        c("lock_version", sa.Integer(), nullable=False, server_default=sa.text("0")),
        c("updated_at", _canvas_time()),
        c("root_account_id", _id(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Index("index_enrollment_states_on_state", "state"),
        sa.Index("index_enrollment_states_on_currents", "state_is_current", "access_is_current"),
        sa.Index("index_enrollment_states_on_state_valid_until", "state_valid_until"),
    )

    # tep's tables that are new or rebuilt (the others move unchanged).
    sa.Table(
        "temporary_enrollment_pairing_ends",
        m,
        c("temporary_enrollment_pairing_id", _id(), primary_key=True, autoincrement=False),
        c("root_account_id", _id(), nullable=False),
        c("ended_at", _tep_time(), nullable=False),
        c("run_id", sa.String(36), nullable=False),
        c("created_at", _tep_time(), nullable=False),
        schema=tep_schema,
    )
    sa.Table(
        "temporary_enrollment_deadlines",
        m,
        c("enrollment_id", _id(), primary_key=True, autoincrement=False),
        c("temporary_enrollment_pairing_id", _id(), nullable=False),
        c("root_account_id", _id(), nullable=False),
        c("end_at", _tep_time()),
        sa.Index(
            "index_temporary_enrollment_deadlines_on_end_at",
            "end_at",
            "enrollment_id",
            postgresql_include=["temporary_enrollment_pairing_id"],
        ),
        sa.Index(
            "index_temporary_enrollment_deadlines_on_pairing_id", "temporary_enrollment_pairing_id"
        ),
        sa.Index(
            "index_temporary_enrollment_deadlines_without_end_at",
            "temporary_enrollment_pairing_id",
            **_partial("end_at IS NULL"),
        ),
        schema=tep_schema,
    )
    sa.Table(
        "temporary_enrollment_discovery",
        m,
        c("id", sa.Integer(), primary_key=True, autoincrement=False),
        c("last_enrollment_id", _id(), nullable=False),
        c("last_probed_at", _tep_time(), nullable=True),
        c("updated_at", _tep_time(), nullable=False),
        schema=tep_schema,
    )
    sa.Table(
        "api_tokens",
        m,
        c("id", _id(), primary_key=True),
        c("user_id", _id(), nullable=False),
        c("root_account_id", _id(), nullable=False),
        c("crypted_token", sa.String(255), nullable=False),
        c("token_hint", sa.String(16), nullable=False),
        c("scopes", sa.Text()),
        c("workflow_state", sa.String(255), nullable=False),
        c("expires_at", _tep_time()),
        c("last_used_at", _tep_time()),
        c("created_at", _tep_time(), nullable=False),
        c("updated_at", _tep_time(), nullable=False),
        sa.Index("index_api_tokens_on_crypted_token", "crypted_token", unique=True),
        schema=tep_schema,
    )
    sa.Table(
        "temporary_enrollment_notices",
        m,
        c("id", _id(), primary_key=True),
        c("temporary_enrollment_pairing_id", _id(), nullable=False),
        c("root_account_id", _id(), nullable=False),
        c("kind", sa.String(32), nullable=False),
        c("threshold_seconds", sa.Integer(), nullable=False),
        c("ends_at", _tep_time(), nullable=False),
        c("workflow_state", sa.String(32), nullable=False),
        c("attempts", sa.Integer(), nullable=False),
        c("next_attempt_at", _tep_time()),
        c("leased_until", _tep_time()),
        c("lease_owner", sa.String(36)),
        c("recipients", sa.Text()),
        c("subject", sa.Text()),
        c("last_error", sa.Text()),
        c("sent_at", _tep_time()),
        c("created_at", _tep_time(), nullable=False),
        c("updated_at", _tep_time(), nullable=False),
        sa.UniqueConstraint(
            "temporary_enrollment_pairing_id",
            "kind",
            "threshold_seconds",
            name="uq_temporary_enrollment_notices_pairing_kind_threshold",
        ),
        sa.Index("index_temporary_enrollment_notices_on_workflow_state", "workflow_state"),
        schema=tep_schema,
    )
    return m


# --------------------------------------------------------------------------------------------
# The data steps, the same SQL on both databases (tables named through the engine's
# schema_translate_map: Canvas's without a schema, tep's with the placeholder "tep")


def _table(name: str, *columns: str | sa.Column[Any], tep: bool = False) -> sa.Table:
    """The columns a data step reads or writes. A Table, not a lightweight `sa.table()`: only
    a Table's schema goes through the schema_translate_map."""
    return sa.Table(
        name,
        sa.MetaData(),
        *(sa.Column(col) if isinstance(col, str) else col for col in columns),
        schema=TEP_SCHEMA if tep else None,
    )


def _canvas_moment(name: str) -> sa.Column[Any]:
    return sa.Column(name, UTCDateTime(timezone=False))


def _tep_moment(name: str) -> sa.Column[Any]:
    return sa.Column(name, UTCDateTime())


ACCOUNTS = _table("accounts", "id", "root_account_id")
PAIRINGS = _table(
    "temporary_enrollment_pairings",
    "id",
    "root_account_id",
    "workflow_state",
    "ended_at",
    "updated_at",
)
ENROLLMENTS = _table(
    "enrollments",
    "id",
    "type",
    "workflow_state",
    "root_account_id",
    "course_section_id",
    "user_id",
    "temporary_enrollment_pairing_id",
    _canvas_moment("start_at"),
    _canvas_moment("end_at"),
)
COURSES = _table("courses", "id", "root_account_id")
STATE_CHANGES = _table(
    "temporary_enrollment_state_changes",
    "id",
    "context_type",
    "temporary_enrollment_pairing_id",
    "to_state",
    "run_id",
    tep=True,
)
PAIRING_ENDS = _table(
    "temporary_enrollment_pairing_ends",
    "temporary_enrollment_pairing_id",
    "root_account_id",
    "ended_at",
    "run_id",
    _tep_moment("created_at"),
    tep=True,
)
DEADLINES = _table(
    "temporary_enrollment_deadlines",
    "enrollment_id",
    "temporary_enrollment_pairing_id",
    "root_account_id",
    "end_at",
    tep=True,
)
DISCOVERY = _table(
    "temporary_enrollment_discovery",
    "id",
    "last_enrollment_id",
    _tep_moment("last_probed_at"),
    _tep_moment("updated_at"),
    tep=True,
)


def _root_account(account_id: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """`account_id` names a root account (the legacy schema's NULL, or Canvas's 0)."""
    root = ACCOUNTS.alias("root_account")
    return sa.exists().where(
        root.c.id == account_id,
        root.c.id != DUMMY_ROOT_ACCOUNT_ID,
        sa.or_(root.c.root_account_id.is_(None), root.c.root_account_id == DUMMY_ROOT_ACCOUNT_ID),
    )


def _preflight(bind: sa.Connection) -> None:
    """Refuse, before changing anything, what cannot be converted without guessing."""
    problems: list[str] = []
    unknown = bind.execute(
        sa.select(ENROLLMENTS.c.type, sa.func.count())
        .where(ENROLLMENTS.c.type.not_in(ENROLLMENT_TYPES))
        .group_by(ENROLLMENTS.c.type)
    ).all()
    if unknown:
        found = ", ".join(f"{kind!r} ({count})" for kind, count in unknown)
        problems.append(
            f"enrollments of types with no built-in role: {found}; Canvas's types are "
            f"{', '.join(ENROLLMENT_TYPES)}"
        )
    for name, table in (("courses", COURSES), ("enrollments", ENROLLMENTS)):
        orphans = bind.execute(
            sa.select(sa.func.count(), sa.func.min(table.c.id)).where(
                ~_root_account(table.c.root_account_id)
            )
        ).one()
        if orphans[0]:
            problems.append(
                f"{orphans[0]} {name} whose root_account_id is not a root account "
                f"(first: id {orphans[1]}); a {name[:-1]} needs its root account's default "
                "term and roles"
            )
    # Canvas's unique index: one enrollment per user, type, role (a type's built-in role in its
    # root account) and section. Revisions 0001-0002 allowed more; merging them would lose
    # rows the audit log points at, so they are left to the operator.
    key = (
        ENROLLMENTS.c.user_id,
        ENROLLMENTS.c.type,
        ENROLLMENTS.c.root_account_id,
        ENROLLMENTS.c.course_section_id,
    )
    duplicates = bind.execute(
        sa.select(
            *key, sa.func.count(), sa.func.min(ENROLLMENTS.c.id), sa.func.max(ENROLLMENTS.c.id)
        )
        .group_by(*key)
        .having(sa.func.count() > 1)
        .order_by(sa.func.min(ENROLLMENTS.c.id))
        .limit(5)
    ).all()
    if duplicates:
        shown = "; ".join(
            f"user {user} {kind} in section {section}: {count} enrollments, ids {low}..{high}"
            for user, kind, _root, section, count, low, high in duplicates
        )
        problems.append(
            "enrollments that Canvas's unique index index_enrollments_on_user_type_role_section "
            f"allows once: {shown}{' (and more)' if len(duplicates) == 5 else ''}; keep one of "
            "each (Canvas re-uses the row when it enrolls a user again)"
        )
    if problems:
        raise LegacyConversionError(
            "cannot convert this database to Canvas's tables (revision 0003), nothing changed: "
            + "; ".join(problems)
        )


def _seed_accounts(bind: sa.Connection, now: dt.datetime) -> list[int]:
    """Canvas's dummy account 0 and root accounts pointing at it; returns the root accounts."""
    roots = list(
        bind.scalars(
            sa.select(ACCOUNTS.c.id)
            .where(
                ACCOUNTS.c.id != DUMMY_ROOT_ACCOUNT_ID,
                sa.or_(
                    ACCOUNTS.c.root_account_id.is_(None),
                    ACCOUNTS.c.root_account_id == DUMMY_ROOT_ACCOUNT_ID,
                ),
            )
            .order_by(ACCOUNTS.c.id)
        )
    )
    if bind.scalar(sa.select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == DUMMY_ROOT_ACCOUNT_ID)) is None:
        # As migrations.seed_dummy_root_account writes it, in the columns the legacy table has
        # (timestamptz still, on PostgreSQL).
        dummy = _table(
            "accounts",
            "id",
            "name",
            "workflow_state",
            "root_account_id",
            _tep_moment("created_at"),
            _tep_moment("updated_at"),
        )
        bind.execute(
            dummy.insert().values(
                id=DUMMY_ROOT_ACCOUNT_ID,
                name=DUMMY_ROOT_ACCOUNT_NAME,
                workflow_state="deleted",
                root_account_id=DUMMY_ROOT_ACCOUNT_ID,
                created_at=now,
                updated_at=now,
            )
        )
    bind.execute(
        ACCOUNTS.update()
        .where(ACCOUNTS.c.root_account_id.is_(None))
        .values(root_account_id=DUMMY_ROOT_ACCOUNT_ID)
    )
    return roots


def _seed_root_defaults(bind: sa.Connection, roots: Sequence[int], now: dt.datetime) -> None:
    """What Canvas gives every root account: a "Default Term" and the built-in roles
    (tasks/canvas_objects.py ensure_root_account_defaults)."""
    if not roots:
        return
    terms = _table(
        "enrollment_terms",
        "root_account_id",
        "name",
        "workflow_state",
        _canvas_moment("created_at"),
        _canvas_moment("updated_at"),
    )
    bind.execute(
        terms.insert(),
        [
            {
                "root_account_id": root,
                "name": DEFAULT_TERM_NAME,
                "workflow_state": "active",
                "created_at": now,
                "updated_at": now,
            }
            for root in roots
        ],
    )
    roles = _table(
        "roles",
        "name",
        "base_role_type",
        "account_id",
        "root_account_id",
        "workflow_state",
        _canvas_moment("created_at"),
        _canvas_moment("updated_at"),
    )
    bind.execute(
        roles.insert(),
        [
            {
                "name": name,
                "base_role_type": base_role_type,
                "account_id": root,
                "root_account_id": root,
                "workflow_state": "built_in",
                "created_at": now,
                "updated_at": now,
            }
            for root in roots
            for name, base_role_type in BUILT_IN_ROLES
        ],
    )


def _record_pairing_ends(bind: sa.Connection, now: dt.datetime) -> None:
    """A row in tep's pairing ends for each pairing that had ended (the legacy `ended`, and a
    `deleted` one that had ended first, which keeps its `ended_at` shown); Canvas's row goes
    back to `active`, the only live state Canvas knows."""
    p = PAIRINGS
    audit = STATE_CHANGES
    # The run that ended it: its newest `ended` audit row, else the `deleted` one (a pairing
    # deleted while active ended then too).
    run = (
        sa.select(audit.c.run_id)
        .where(
            audit.c.temporary_enrollment_pairing_id == p.c.id,
            audit.c.context_type == PAIRING_CONTEXT,
            audit.c.to_state.in_(("ended", "deleted")),
        )
        .order_by(sa.case((audit.c.to_state == "ended", 0), else_=1), audit.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    bind.execute(
        PAIRING_ENDS.insert().from_select(
            [
                "temporary_enrollment_pairing_id",
                "root_account_id",
                "ended_at",
                "run_id",
                "created_at",
            ],
            sa.select(
                p.c.id,
                p.c.root_account_id,
                # An `ended` pairing always had ended_at; if not, when its row last changed.
                sa.func.coalesce(p.c.ended_at, p.c.updated_at),
                sa.func.coalesce(run, LEGACY_RUN_ID),
                sa.literal(now, UTCDateTime()),
            ).where(sa.or_(p.c.ended_at.is_not(None), p.c.workflow_state == "ended")),
        )
    )
    bind.execute(p.update().where(p.c.workflow_state == "ended").values(workflow_state="active"))


def _index_deadlines(bind: sa.Connection) -> None:
    """tep's deadline index: the live temporary enrollments of pairings neither deleted nor
    ended (tasks/deadlines.py rebuild), from the rows as they are now."""
    e, p = ENROLLMENTS, PAIRINGS
    bind.execute(
        DEADLINES.insert().from_select(
            ["enrollment_id", "temporary_enrollment_pairing_id", "root_account_id", "end_at"],
            sa.select(e.c.id, e.c.temporary_enrollment_pairing_id, e.c.root_account_id, e.c.end_at)
            .select_from(e.join(p, p.c.id == e.c.temporary_enrollment_pairing_id))
            .where(
                e.c.workflow_state.in_(LIVE_ENROLLMENT_STATES),
                p.c.workflow_state != "deleted",
                ~sa.exists().where(PAIRING_ENDS.c.temporary_enrollment_pairing_id == p.c.id),
            ),
        )
    )


def _cache_enrollment_states(bind: sa.Connection, now: dt.datetime) -> None:
    """One `enrollment_states` row per enrollment, as Canvas's callbacks would have written it
    (the state computation of tasks/canvas_callbacks.py)."""
    e = ENROLLMENTS
    computed = cached_state_columns(e.c.workflow_state, e.c.start_at, e.c.end_at, e.c.type, now)
    states = _table(
        "enrollment_states",
        "enrollment_id",
        "state",
        "state_is_current",
        "state_started_at",
        "state_valid_until",
        "restricted_access",
        "access_is_current",
        "lock_version",
        "updated_at",
        "root_account_id",
    )
    bind.execute(
        states.insert().from_select(
            [c.name for c in states.columns],
            sa.select(
                e.c.id,
                computed["state"],
                sa.true(),
                computed["state_started_at"],
                computed["state_valid_until"],
                sa.false(),
                sa.false(),
                sa.literal(0),
                sa.literal(now, UTCDateTime(timezone=False)),
                e.c.root_account_id,
            ),
        )
    )


def _start_discovery(bind: sa.Connection, now: dt.datetime) -> None:
    """Every enrollment is indexed already: discovery starts after the newest one."""
    newest = bind.scalar(sa.select(sa.func.max(ENROLLMENTS.c.id)))
    if newest:
        bind.execute(
            DISCOVERY.insert().values(
                id=CURSOR_ID, last_enrollment_id=newest, last_probed_at=now, updated_at=now
            )
        )


def _uuid_sql(backend: str) -> str:
    """A new uuid per row, as Canvas fills them (40 url-safe characters, securely random)."""
    if backend == "postgresql":
        return (
            "substr(translate(encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),"
            " 'base64'), '+/=', '-_'), 1, 40)"
        )
    return "lower(hex(randomblob(20)))"


# Fill-ins of the new columns, as SQL over the row being converted (`src`): the root account's
# default term for a course, the built-in role of its type in its root account for an
# enrollment. `{q}` is replaced by the schema prefix of Canvas's tables.
TERM_SQL = (
    "(SELECT min(t.id) FROM {q}enrollment_terms t WHERE t.root_account_id = src.root_account_id)"
)
ROLE_SQL = (
    "(SELECT min(r.id) FROM {q}roles r WHERE r.root_account_id = src.root_account_id"
    " AND r.workflow_state = 'built_in' AND r.name = src.type)"
)


# --------------------------------------------------------------------------------------------
# PostgreSQL: alter in place


def _pg_alter(bind: sa.Connection, table: str, *clauses: str, schema: str) -> None:
    bind.exec_driver_sql(f'ALTER TABLE "{schema}".{table} ' + ", ".join(clauses))


def _pg_utc_timestamps(table: str) -> list[str]:
    kind = "timestamp(6)" if table in TIMESTAMP6_TABLES else "timestamp"
    return [
        f"ALTER COLUMN {col} TYPE {kind} without time zone USING {col} AT TIME ZONE 'UTC'"
        for col in CANVAS_TIMESTAMPS[table]
    ]


def _pg_move_tep_tables(bind: sa.Connection, schemas: Schemas) -> None:
    canvas, tep = schemas.canvas, schemas.tep
    bind.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{tep}"')
    _pg_alter(
        bind,
        "temporary_enrollment_notices",
        "DROP CONSTRAINT fk_temporary_enrollment_notices_pairing_id",
        schema=canvas,
    )
    for name in MOVED_TEP_TABLES:
        _pg_alter(bind, name, f'SET SCHEMA "{tep}"', schema=canvas)
    # access_tokens -> api_tokens, with the names a new table of that name has.
    sequence = bind.exec_driver_sql(
        f"SELECT pg_get_serial_sequence('\"{canvas}\".access_tokens', 'id')"
    ).scalar()
    _pg_alter(
        bind,
        "access_tokens",
        "DROP CONSTRAINT fk_access_tokens_root_account_id_accounts",
        "DROP CONSTRAINT fk_access_tokens_user_id_users",
        schema=canvas,
    )
    _pg_alter(bind, "access_tokens", "RENAME TO api_tokens", schema=canvas)
    _pg_alter(
        bind, "api_tokens", "RENAME CONSTRAINT pk_access_tokens TO pk_api_tokens", schema=canvas
    )
    bind.exec_driver_sql(
        f'ALTER INDEX "{canvas}".index_access_tokens_on_crypted_token '
        "RENAME TO index_api_tokens_on_crypted_token"
    )
    if sequence:
        bind.exec_driver_sql(f"ALTER SEQUENCE {sequence} RENAME TO api_tokens_id_seq")
    _pg_alter(bind, "api_tokens", f'SET SCHEMA "{tep}"', schema=canvas)


def _pg_convert_canvas_tables(bind: sa.Connection, target: sa.MetaData, schemas: Schemas) -> None:
    s = schemas.canvas
    q = f'"{s}".'
    uuid = _uuid_sql("postgresql")
    for names in DROPPED_INDEXES.values():
        for name in names:
            bind.exec_driver_sql(f'DROP INDEX IF EXISTS "{s}".{name}')

    _pg_alter(
        bind,
        "accounts",
        "ALTER COLUMN name DROP NOT NULL",
        "ALTER COLUMN workflow_state SET DEFAULT 'active'",
        "ALTER COLUMN root_account_id SET NOT NULL",
        "ADD COLUMN uuid varchar(255)",
        *_pg_utc_timestamps("accounts"),
        schema=s,
    )
    bind.exec_driver_sql(
        f"UPDATE {q}accounts SET uuid = {uuid} WHERE id <> {DUMMY_ROOT_ACCOUNT_ID}"
    )
    _pg_alter(
        bind,
        "users",
        "ALTER COLUMN name DROP NOT NULL",
        "ADD COLUMN uuid varchar(255)",
        *_pg_utc_timestamps("users"),
        schema=s,
    )
    bind.exec_driver_sql(f"UPDATE {q}users SET uuid = {uuid}")
    _pg_alter(bind, "pseudonyms", *_pg_utc_timestamps("pseudonyms"), schema=s)
    _pg_alter(
        bind,
        "communication_channels",
        "ALTER COLUMN path_type SET DEFAULT 'email'",
        *_pg_utc_timestamps("communication_channels"),
        schema=s,
    )

    _pg_alter(
        bind,
        "courses",
        "ALTER COLUMN name DROP NOT NULL",
        "ADD COLUMN uuid varchar(255)",
        "ADD COLUMN enrollment_term_id bigint",
        *_pg_utc_timestamps("courses"),
        schema=s,
    )
    bind.exec_driver_sql(
        f"UPDATE {q}courses AS src SET uuid = {uuid}, enrollment_term_id = {TERM_SQL.format(q=q)}"
    )
    _pg_alter(bind, "courses", "ALTER COLUMN enrollment_term_id SET NOT NULL", schema=s)
    _pg_add_foreign_keys(bind, target.tables["courses"], ("enrollment_term_id",))

    _pg_alter(
        bind,
        "course_sections",
        "ALTER COLUMN default_section DROP NOT NULL",
        "ALTER COLUMN workflow_state SET DEFAULT 'active'",
        *_pg_utc_timestamps("course_sections"),
        schema=s,
    )
    _pg_alter(
        bind,
        "temporary_enrollment_pairings",
        "DROP COLUMN ended_at",
        "ALTER COLUMN ending_enrollment_state TYPE text",
        "ALTER COLUMN workflow_state SET DEFAULT 'active'",
        *_pg_utc_timestamps("temporary_enrollment_pairings"),
        schema=s,
    )

    _pg_alter(
        bind,
        "enrollments",
        "ADD COLUMN uuid varchar(255)",
        "ADD COLUMN associated_user_id bigint",
        "ADD COLUMN limit_privileges_to_course_section boolean NOT NULL DEFAULT false",
        "ADD COLUMN role_id bigint",
        *_pg_utc_timestamps("enrollments"),
        schema=s,
    )
    bind.exec_driver_sql(
        f"UPDATE {q}enrollments AS src SET uuid = {uuid}, role_id = {ROLE_SQL.format(q=q)}"
    )
    _pg_alter(bind, "enrollments", "ALTER COLUMN role_id SET NOT NULL", schema=s)
    _pg_add_foreign_keys(bind, target.tables["enrollments"], ("associated_user_id", "role_id"))

    # The indexes Canvas has and the legacy tables lacked (after the rewrites above, so that
    # each is built once).
    for table in ("courses", "enrollments"):
        existing = {ix["name"] for ix in sa.inspect(bind).get_indexes(table, schema=s)}
        for index in target.tables[table].indexes:
            if index.name not in existing:
                index.create(bind)


def _pg_add_foreign_keys(bind: sa.Connection, table: sa.Table, columns: Sequence[str]) -> None:
    for constraint in table.foreign_key_constraints:
        if constraint.column_keys[0] in columns:
            bind.execute(sa.schema.AddConstraint(constraint))


# --------------------------------------------------------------------------------------------
# SQLite: rebuild the changed tables


def _sqlite_foreign_keys_off(bind: sa.Connection) -> None:
    """SQLite's table rebuild drops the old table, which with foreign keys enforced deletes (or
    refuses to delete) the rows of every table pointing at it; its procedure therefore starts
    with `PRAGMA foreign_keys=OFF`. That pragma is ignored inside a transaction, and the engine
    begins one (BEGIN IMMEDIATE) before Alembic runs a revision, so: end that transaction (it
    holds nothing of this revision: Alembic runs each revision in its own transaction on
    SQLite), switch foreign keys off, and begin again. Alembic's own commit then ends the new
    transaction, with the version bump in it; the connection is the migration's own (env.py
    disposes of its engine afterwards). `_sqlite_check_foreign_keys` checks every reference
    before that commit."""
    raw: Any = bind.connection.dbapi_connection
    if raw.in_transaction:
        raw.execute("COMMIT")
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute("BEGIN IMMEDIATE")
    if raw.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise RuntimeError("SQLite kept foreign keys on; the tables cannot be rebuilt safely")


def _sqlite_check_foreign_keys(bind: sa.Connection) -> None:
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        shown = "; ".join(f"{row[0]} rowid {row[1]} -> {row[2]}" for row in broken[:10])
        raise LegacyConversionError(f"rows pointing at missing rows after 0003: {shown}")


def _sqlite_rebuild(
    bind: sa.Connection,
    table: sa.Table,
    *,
    source: str | None = None,
    fill: Mapping[str, str] | None = None,
) -> None:
    """Rebuild `source` (default: the table's own name) as `table`: create it under a
    temporary name, copy the rows (`fill` gives SQL over the old row `src` for the columns the
    old table lacks or that change), drop the old one, rename, create the indexes."""
    source = source or table.name
    tmp = f"{SQLITE_TMP_PREFIX}{table.name}"
    ddl = str(CreateTable(table).compile(dialect=bind.dialect))
    header = f"CREATE TABLE {table.name} ("
    if header not in ddl:
        raise RuntimeError(f"unexpected DDL for {table.name}: {ddl[:80]!r}")
    bind.exec_driver_sql(ddl.replace(header, f"CREATE TABLE {tmp} (", 1))
    columns = [column.name for column in table.columns]
    fill = fill or {}
    values = [fill.get(name, f"src.{name}") for name in columns]
    bind.exec_driver_sql(
        f"INSERT INTO {tmp} ({', '.join(columns)}) SELECT {', '.join(values)} FROM {source} AS src"
    )
    bind.exec_driver_sql(f"DROP TABLE {source}")
    bind.exec_driver_sql(f"ALTER TABLE {tmp} RENAME TO {table.name}")
    for index in table.indexes:
        index.create(bind)


def _sqlite_rebuild_tep_tables(bind: sa.Connection, target: sa.MetaData) -> None:
    # The notices lose their foreign key into Canvas's pairings; access_tokens becomes
    # api_tokens without its foreign keys into Canvas's users and accounts.
    _sqlite_rebuild(bind, target.tables["temporary_enrollment_notices"])
    _sqlite_rebuild(bind, target.tables["api_tokens"], source="access_tokens")


def _sqlite_convert_canvas_tables(bind: sa.Connection, target: sa.MetaData) -> None:
    uuid = _uuid_sql("sqlite")
    for names in DROPPED_INDEXES.values():
        for name in names:
            bind.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    tables = target.tables
    _sqlite_rebuild(
        bind,
        tables["accounts"],
        fill={"uuid": f"CASE WHEN src.id = {DUMMY_ROOT_ACCOUNT_ID} THEN NULL ELSE {uuid} END"},
    )
    _sqlite_rebuild(bind, tables["users"], fill={"uuid": uuid})
    # Only an index less, but rebuilt all the same: its columns in the models' order, as a new
    # database has them.
    _sqlite_rebuild(bind, tables["pseudonyms"])
    _sqlite_rebuild(bind, tables["communication_channels"])
    _sqlite_rebuild(
        bind, tables["courses"], fill={"uuid": uuid, "enrollment_term_id": TERM_SQL.format(q="")}
    )
    _sqlite_rebuild(bind, tables["course_sections"])
    _sqlite_rebuild(bind, tables["temporary_enrollment_pairings"])
    _sqlite_rebuild(
        bind,
        tables["enrollments"],
        fill={
            "uuid": uuid,
            "associated_user_id": "NULL",
            "limit_privileges_to_course_section": "0",
            "role_id": ROLE_SQL.format(q=""),
        },
    )


# --------------------------------------------------------------------------------------------


def _schemas() -> Schemas:
    """The Schemas `migrations.upgrade` put in the config; the settings' for a bare `alembic`."""
    config = op.get_context().config
    schemas = config.attributes.get("schemas") if config is not None else None
    if isinstance(schemas, Schemas):
        return schemas
    from worker.settings import get_settings

    return get_settings().schemas()


def upgrade() -> None:
    schemas = _schemas()
    if schemas.canvas_tables == CANVAS_TABLES_EXISTING:
        raise LegacyConversionError(
            "revision 0003 converts a database made by tep's revisions 0001-0002, whose Canvas "
            "tables are tep's own (TEP_CANVAS_TABLES=managed); it never runs on Canvas's "
            "database (TEP_CANVAS_TABLES=existing). Run `tep db upgrade` with "
            "TEP_CANVAS_TABLES=managed on this database."
        )
    if op.get_context().as_sql:
        raise LegacyConversionError("revision 0003 reads the data it converts: no --sql mode")
    bind = op.get_bind()
    backend = bind.dialect.name
    _preflight(bind)
    now = utcnow()
    target = _target(TEP_SCHEMA if backend == "postgresql" else None)

    if backend == "sqlite":
        _sqlite_foreign_keys_off(bind)
        _sqlite_rebuild_tep_tables(bind, target)
    else:
        _pg_move_tep_tables(bind, schemas)
    for name in NEW_TEP_TABLES:
        key = f"{TEP_SCHEMA}.{name}" if backend == "postgresql" else name
        target.tables[key].create(bind)

    roots = _seed_accounts(bind, now)
    for name in NEW_CANVAS_TABLES:
        target.tables[name].create(bind)
    _seed_root_defaults(bind, roots, now)
    # Before the pairings lose ended_at, and while every timestamp is still timestamptz on
    # PostgreSQL (tep's tables keep that type, so these copy as they are).
    _record_pairing_ends(bind, now)
    _index_deadlines(bind)

    if backend == "sqlite":
        _sqlite_convert_canvas_tables(bind, target)
    else:
        _pg_convert_canvas_tables(bind, target, schemas)
    target.tables["enrollment_states"].create(bind)
    _cache_enrollment_states(bind, now)
    _start_discovery(bind, now)
    if backend == "sqlite":
        _sqlite_check_foreign_keys(bind)


def downgrade() -> None:
    raise NotImplementedError("0003 moves data between schemas; restore a backup instead")
