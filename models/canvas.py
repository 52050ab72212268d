"""Canvas's own tables, as Canvas has them (DESIGN.md section 3).

Only the columns tep reads or writes are mapped, each with Canvas's name, type, NOT NULL and
default, read from Canvas's squashed init migration (`db/migrate/20101210192618_init_canvas_db.rb`,
`InitCanvasDb < ActiveRecord::Migration[7.0]`) and the later migrations that added the temporary
enrollment columns (`create_temporary_enrollment_pairings`, ...); `tests/canvas_schema/` builds the
full tables from the same source and the tests compare the two column by column.

* With `TEP_CANVAS_TABLES=managed` tep's migrations create these tables (a faithful small Canvas);
  with `existing` they are Canvas's, in `TEP_CANVAS_SCHEMA`, and tep never creates, alters or
  drops anything of theirs.
* Timestamps are `timestamp without time zone` holding UTC, as Canvas's (`t.timestamps
  precision: nil`).
* A root account stores `root_account_id = 0`, Canvas's dummy account (`Account#ensure_defaults`,
  `db/migrate/20111111214312_load_initial_data.rb`); NULL is read as root too
  (`Account#root_account?`).
* Ids are 64-bit on PostgreSQL, as in Canvas; on SQLite they are the rowid so that they
  autoincrement.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    SQLColumnExpression,
    String,
    Text,
    false,
    literal_column,
    or_,
    text,
    true,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CanvasTimestamp, utcnow

# 64-bit ids on PostgreSQL; SQLite only autoincrements an `INTEGER PRIMARY KEY`.
BigId = BigInteger().with_variant(Integer, "sqlite")

IdPk = Annotated[int, mapped_column(BigId, primary_key=True)]
# `t.timestamps precision: nil`: NOT NULL, no database default (Rails fills them).
Created = Annotated[dt.datetime, mapped_column(CanvasTimestamp(), nullable=False, default=utcnow)]
Updated = Annotated[
    dt.datetime,
    mapped_column(CanvasTimestamp(), nullable=False, default=utcnow, onupdate=utcnow),
]
Moment = Annotated[dt.datetime | None, mapped_column(CanvasTimestamp())]
Name = Annotated[str | None, mapped_column(String(255))]

# Canvas's dummy account: every root account's `root_account_id`.
DUMMY_ROOT_ACCOUNT_ID = 0

# The vocabulary of DESIGN.md section 4; the lifecycle rules import it from here.
LIVE_ENROLLMENT_STATES: tuple[str, ...] = ("active", "invited", "creation_pending")
ENROLLMENT_STATES: tuple[str, ...] = (
    *LIVE_ENROLLMENT_STATES,
    "deleted",
    "rejected",
    "completed",
    "inactive",
)
ENDING_ENROLLMENT_STATES: tuple[str, ...] = ("deleted", "completed", "inactive")
DEFAULT_ENDING_ENROLLMENT_STATE = "deleted"  # what Canvas applies when the column is NULL
# Canvas's pairing states (`Canvas::SoftDeletable`); tep records an end in its own table.
CANVAS_PAIRING_STATES: tuple[str, ...] = ("active", "deleted")
# What tep shows: Canvas's two, plus `ended` from tep's pairing ends.
PAIRING_STATES: tuple[str, ...] = ("active", "ended", "deleted")
# Canvas's built-in course roles (`Role::ENROLLMENT_TYPES`, app/models/role.rb): one row per root
# account each, named like its base type, with workflow_state `built_in`.
ENROLLMENT_TYPES: tuple[str, ...] = (
    "StudentEnrollment",
    "TeacherEnrollment",
    "TaEnrollment",
    "DesignerEnrollment",
    "ObserverEnrollment",
)
ACCOUNT_ADMIN_ROLE = "AccountAdmin"  # the built-in account role (`Role::ACCOUNT_TYPES`)
ACCOUNT_MEMBERSHIP_ROLE = "AccountMembership"  # base type of custom account roles
# Role::BASE_TYPES (app/models/role.rb): the built-in roles Canvas gives every root account
# (`Account#create_built_in_roles`), each named like its base type; `NoPermissions` is
# Role::NULL_ROLE_TYPE. Pairs of (name, base_role_type).
BUILT_IN_ROLES: tuple[tuple[str, str], ...] = tuple(
    (name, name)
    for name in (ACCOUNT_ADMIN_ROLE, ACCOUNT_MEMBERSHIP_ROLE, *ENROLLMENT_TYPES, "NoPermissions")
)


def _partial(sql: str) -> dict[str, object]:
    clause = text(sql)
    return {"postgresql_where": clause, "sqlite_where": clause}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[IdPk]
    name: Mapped[Name]
    workflow_state: Mapped[str] = mapped_column(
        String(255), nullable=False, default="active", server_default="active"
    )
    parent_account_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("accounts.id"))
    # 0 (the dummy account) for a root account, as Canvas stores it; NULL is read as root too.
    root_account_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("accounts.id"), nullable=False, default=DUMMY_ROOT_ACCOUNT_ID
    )
    uuid: Mapped[Name]
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]

    @hybrid_property
    def is_root(self) -> bool:
        return self.root_account_id in (None, DUMMY_ROOT_ACCOUNT_ID)

    @is_root.inplace.expression
    @classmethod
    def _is_root_expression(cls) -> ColumnElement[bool]:
        return or_(cls.root_account_id.is_(None), cls.root_account_id == DUMMY_ROOT_ACCOUNT_ID)

    @property
    def resolved_root_account_id(self) -> int:
        return self.id if self.is_root else self.root_account_id


def real_accounts() -> ColumnElement[bool]:
    """Every account but Canvas's dummy account 0."""
    return Account.id != DUMMY_ROOT_ACCOUNT_ID


class User(Base):
    __tablename__ = "users"

    id: Mapped[IdPk]
    name: Mapped[Name]
    sortable_name: Mapped[Name]
    workflow_state: Mapped[str] = mapped_column(String(255), nullable=False, default="registered")
    uuid: Mapped[Name]
    created_at: Mapped[Created]
    # Canvas's per-user caches key on it: every writer of a user's enrollment touches it.
    updated_at: Mapped[Updated]


class Pseudonym(Base):
    """A login of a user in a root account; how Canvas ties a user to an account."""

    __tablename__ = "pseudonyms"
    __table_args__ = (Index("index_pseudonyms_on_user_id", "user_id"),)

    id: Mapped[IdPk]
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"), nullable=False)
    account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    workflow_state: Mapped[str] = mapped_column(String(255), nullable=False, default="active")
    unique_id: Mapped[str] = mapped_column(String(255), nullable=False)
    sis_user_id: Mapped[Name]
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class CommunicationChannel(Base):
    """Where a user can be reached; notices go to the user's active `email` channels."""

    __tablename__ = "communication_channels"
    __table_args__ = (Index("index_communication_channels_on_user_id", "user_id"),)

    id: Mapped[IdPk]
    path: Mapped[str] = mapped_column(String(255), nullable=False)
    path_type: Mapped[str] = mapped_column(
        String(255), nullable=False, default="email", server_default="email"
    )
    workflow_state: Mapped[str] = mapped_column(String(255), nullable=False, default="active")
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"), nullable=False)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class EnrollmentTerm(Base):
    """A term; every course has one (Canvas's root accounts have a "Default Term")."""

    __tablename__ = "enrollment_terms"
    __table_args__ = (Index("index_enrollment_terms_on_root_account_id", "root_account_id"),)

    id: Mapped[IdPk]
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    name: Mapped[Name]
    start_at: Mapped[Moment]
    end_at: Mapped[Moment]
    workflow_state: Mapped[str] = mapped_column(
        String(255), nullable=False, default="active", server_default="active"
    )
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


DEFAULT_TERM_NAME = "Default Term"  # EnrollmentTerm::DEFAULT_TERM_NAME


class Course(Base):
    __tablename__ = "courses"
    __table_args__ = (
        Index("index_courses_on_account_id", "account_id"),
        Index("index_courses_on_enrollment_term_id", "enrollment_term_id"),
    )

    id: Mapped[IdPk]
    name: Mapped[Name]
    account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    # No database default in Canvas; Canvas's model starts a course `created`, tep's API `claimed`.
    workflow_state: Mapped[str] = mapped_column(String(255), nullable=False, default="claimed")
    uuid: Mapped[Name]
    start_at: Mapped[Moment]
    conclude_at: Mapped[Moment]
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]
    course_code: Mapped[Name]
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    enrollment_term_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("enrollment_terms.id"), nullable=False
    )


class CourseSection(Base):
    __tablename__ = "course_sections"
    __table_args__ = (Index("index_course_sections_on_course_id", "course_id"),)

    id: Mapped[IdPk]
    course_id: Mapped[int] = mapped_column(BigId, ForeignKey("courses.id"), nullable=False)
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    default_section: Mapped[bool | None] = mapped_column(Boolean, default=False)
    workflow_state: Mapped[str] = mapped_column(
        String(255), nullable=False, default="active", server_default="active"
    )
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class Role(Base):
    """A role: the built-in ones per root account (workflow_state `built_in`) and custom ones."""

    __tablename__ = "roles"
    __table_args__ = (
        Index("index_roles_on_account_id", "account_id"),
        Index("index_roles_on_root_account_id", "root_account_id"),
    )

    id: Mapped[IdPk]
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    base_role_type: Mapped[str] = mapped_column(String(255), nullable=False)
    account_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("accounts.id"))
    workflow_state: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)

    @property
    def built_in(self) -> bool:
        return self.workflow_state == "built_in"


class RoleOverride(Base):
    """A permission a role has (or lacks) in an account and, by default, the accounts below."""

    __tablename__ = "role_overrides"
    __table_args__ = (Index("index_role_overrides_on_role_id", "role_id"),)

    id: Mapped[IdPk]
    permission: Mapped[str | None] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=true()
    )
    context_id: Mapped[int] = mapped_column(BigId, nullable=False)
    context_type: Mapped[str] = mapped_column(String(255), nullable=False)
    role_id: Mapped[int] = mapped_column(BigId, ForeignKey("roles.id"), nullable=False)
    applies_to_self: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=true()
    )
    applies_to_descendants: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=true()
    )
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    # Nullable here, unlike most of Canvas's tables (`t.timestamps null: true` in its migration).
    created_at: Mapped[dt.datetime | None] = mapped_column(CanvasTimestamp(), default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(
        CanvasTimestamp(), default=utcnow, onupdate=utcnow
    )


class AccountUser(Base):
    """An account admin: a user holding an account role in an account."""

    __tablename__ = "account_users"
    __table_args__ = (
        Index("index_account_users_on_account_id", "account_id"),
        Index("index_account_users_on_user_id", "user_id"),
    )

    id: Mapped[IdPk]
    account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"), nullable=False)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]
    role_id: Mapped[int] = mapped_column(BigId, ForeignKey("roles.id"), nullable=False)
    # `character varying` without a limit, as Canvas's migration has it.
    workflow_state: Mapped[str] = mapped_column(
        String(), nullable=False, default="active", server_default="active"
    )
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)


class TemporaryEnrollmentPairing(Base):
    """Canvas's pairing row. Canvas knows `active` and `deleted` only (`Canvas::SoftDeletable`);
    tep never writes another state here: a pairing's end is tep's `PairingEnd`."""

    __tablename__ = "temporary_enrollment_pairings"

    id: Mapped[IdPk]
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    workflow_state: Mapped[str] = mapped_column(
        String(255), nullable=False, default="active", server_default="active"
    )
    # `t.timestamps` of a Migration[7.0]: timestamp(6).
    created_at: Mapped[dt.datetime] = mapped_column(
        CanvasTimestamp(precision=6), nullable=False, default=utcnow
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        CanvasTimestamp(precision=6), nullable=False, default=utcnow, onupdate=utcnow
    )
    # Free text, as in Canvas: the sweep must meet (and refuse) values it does not know.
    ending_enrollment_state: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id"))
    deleted_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id"))


# Canvas's `active` scope for pairings: `where.not(workflow_state: "deleted")`.
def pairing_not_deleted() -> ColumnElement[bool]:
    return TemporaryEnrollmentPairing.workflow_state != "deleted"


class Enrollment(Base):
    __tablename__ = "enrollments"
    __table_args__ = (
        # Canvas's unique indexes: one enrollment per user, type, role and section ...
        Index(
            "index_enrollments_on_user_type_role_section",
            "user_id",
            "type",
            "role_id",
            "course_section_id",
            unique=True,
            **_partial("associated_user_id IS NULL"),  # type: ignore[arg-type]
        ),
        # ... and per temporary enrollment provider.
        Index(
            "index_enrollments_on_temp_enrollment_user_type_role_section",
            "temporary_enrollment_source_user_id",
            "user_id",
            "type",
            "role_id",
            "course_section_id",
            unique=True,
            **_partial("temporary_enrollment_source_user_id IS NOT NULL"),  # type: ignore[arg-type]
        ),
        # Canvas's partial index: the per-pairing work (expire its due rows, decide whether it
        # has ended) walks a pairing's enrollments through it.
        Index(
            "index_enrollments_on_temporary_enrollment_pairing_id",
            "temporary_enrollment_pairing_id",
            **_partial("temporary_enrollment_pairing_id IS NOT NULL"),  # type: ignore[arg-type]
        ),
        Index("index_enrollments_on_course_id", "course_id"),
        Index("index_enrollments_on_user_id", "user_id"),
        Index("index_enrollments_on_course_section_id", "course_section_id"),
        Index("index_enrollments_on_role_id", "role_id"),
        Index(
            "index_enrollments_on_temporary_enrollment_source_user_id",
            "temporary_enrollment_source_user_id",
            **_partial("temporary_enrollment_source_user_id IS NOT NULL"),  # type: ignore[arg-type]
        ),
    )

    id: Mapped[IdPk]
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"), nullable=False)
    course_id: Mapped[int] = mapped_column(BigId, ForeignKey("courses.id"), nullable=False)
    type: Mapped[str] = mapped_column(String(255), nullable=False)
    # Filled by Canvas in Ruby (`CanvasSlug`); tep fills it for the enrollments it creates.
    uuid: Mapped[Name]
    workflow_state: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]
    associated_user_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id"))
    course_section_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("course_sections.id"), nullable=False
    )
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    completed_at: Mapped[Moment]
    start_at: Mapped[Moment]
    end_at: Mapped[Moment]
    limit_privileges_to_course_section: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    role_id: Mapped[int] = mapped_column(BigId, ForeignKey("roles.id"), nullable=False)
    temporary_enrollment_source_user_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("users.id")
    )
    temporary_enrollment_pairing_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("temporary_enrollment_pairings.id")
    )


class EnrollmentState(Base):
    """Canvas's cache of each enrollment's effective state (app/models/enrollment_state.rb).

    Canvas's callbacks keep it in step with every enrollment change; tep writes SQL, so every tep
    writer of an enrollment updates this row in the same transaction (DESIGN.md section 4).
    """

    __tablename__ = "enrollment_states"
    __table_args__ = (
        Index("index_enrollment_states_on_state", "state"),
        Index("index_enrollment_states_on_currents", "state_is_current", "access_is_current"),
        Index("index_enrollment_states_on_state_valid_until", "state_valid_until"),
    )

    enrollment_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("enrollments.id"), primary_key=True, autoincrement=False
    )
    state: Mapped[Name]
    state_is_current: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    state_started_at: Mapped[Moment]
    # The next moment the state changes by date: `end_at` for a live enrollment within its dates.
    state_valid_until: Mapped[Moment]
    restricted_access: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    access_is_current: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    lock_version: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    updated_at: Mapped[Moment]
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)


def live(enrollment_state: SQLColumnExpression[str]) -> ColumnElement[bool]:
    """`state IN ('active', 'invited', 'creation_pending')` as literal SQL, not bind parameters:
    PostgreSQL only uses a partial index when it can prove the query's predicate implies the
    index's, which it cannot for a generic plan's parameters."""
    return enrollment_state.in_([literal_column(f"'{s}'") for s in LIVE_ENROLLMENT_STATES])
