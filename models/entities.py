"""The tables, with Canvas's own table and column names (see DESIGN.md section 3).

Only the columns this service reads or writes are mapped; a Canvas engineer should recognise every
name. Ids are 64-bit on PostgreSQL, as in Canvas; on SQLite they are the rowid so that they
autoincrement.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, WorkflowState, utcnow

# 64-bit ids on PostgreSQL; SQLite only autoincrements an `INTEGER PRIMARY KEY`.
BigId = BigInteger().with_variant(Integer, "sqlite")

IdPk = Annotated[int, mapped_column(BigId, primary_key=True)]
Created = Annotated[dt.datetime, mapped_column(nullable=False, default=utcnow)]
Updated = Annotated[dt.datetime, mapped_column(nullable=False, default=utcnow, onupdate=utcnow)]

# The vocabulary of DESIGN.md section 4. Kept beside the schema because the partial indexes below
# are defined by it; the lifecycle rules import it from here.
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
PAIRING_STATES: tuple[str, ...] = ("active", "ended", "deleted")
ENROLLMENT_TYPES: tuple[str, ...] = (
    "StudentEnrollment",
    "TeacherEnrollment",
    "TaEnrollment",
    "DesignerEnrollment",
    "ObserverEnrollment",
)

_LIVE_SQL = "workflow_state IN ('active', 'invited', 'creation_pending')"
# Live temporary enrollments: the only rows the sweep ever looks for. Every index the sweep uses is
# partial on this predicate so that its cost follows the due rows, not the table.
_LIVE_TEMPORARY_SQL = f"temporary_enrollment_pairing_id IS NOT NULL AND {_LIVE_SQL}"


def _partial(sql: str) -> dict[str, object]:
    clause = text(sql)
    return {"postgresql_where": clause, "sqlite_where": clause}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[IdPk]
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    parent_account_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("accounts.id"))
    # NULL for a root account, as in Canvas.
    root_account_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("accounts.id"))
    workflow_state: Mapped[WorkflowState] = mapped_column(default="active")
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]

    @property
    def resolved_root_account_id(self) -> int:
        return self.root_account_id if self.root_account_id is not None else self.id


class User(Base):
    __tablename__ = "users"

    id: Mapped[IdPk]
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    sortable_name: Mapped[str | None] = mapped_column(String(255))
    workflow_state: Mapped[WorkflowState] = mapped_column(default="registered")
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class Pseudonym(Base):
    """A login of a user in a root account; how Canvas ties a user to an account."""

    __tablename__ = "pseudonyms"
    __table_args__ = (
        Index(
            "index_pseudonyms_on_account_id_and_unique_id", "account_id", "unique_id", unique=True
        ),
        Index("index_pseudonyms_on_user_id", "user_id"),
    )

    id: Mapped[IdPk]
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"), nullable=False)
    account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    unique_id: Mapped[str] = mapped_column(String(255), nullable=False)
    sis_user_id: Mapped[str | None] = mapped_column(String(255))
    workflow_state: Mapped[WorkflowState] = mapped_column(default="active")
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class CommunicationChannel(Base):
    """Where a user can be reached; notices go to the user's active `email` channels."""

    __tablename__ = "communication_channels"
    __table_args__ = (Index("index_communication_channels_on_user_id", "user_id"),)

    id: Mapped[IdPk]
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"), nullable=False)
    path: Mapped[str] = mapped_column(String(255), nullable=False)
    path_type: Mapped[str] = mapped_column(String(255), nullable=False, default="email")
    workflow_state: Mapped[WorkflowState] = mapped_column(default="active")
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class Course(Base):
    __tablename__ = "courses"
    __table_args__ = (Index("index_courses_on_root_account_id", "root_account_id"),)

    id: Mapped[IdPk]
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    course_code: Mapped[str | None] = mapped_column(String(255))
    account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    workflow_state: Mapped[WorkflowState] = mapped_column(default="claimed")
    start_at: Mapped[dt.datetime | None]
    conclude_at: Mapped[dt.datetime | None]
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class CourseSection(Base):
    __tablename__ = "course_sections"
    __table_args__ = (Index("index_course_sections_on_course_id", "course_id"),)

    id: Mapped[IdPk]
    course_id: Mapped[int] = mapped_column(BigId, ForeignKey("courses.id"), nullable=False)
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    default_section: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    workflow_state: Mapped[WorkflowState] = mapped_column(default="active")
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class TemporaryEnrollmentPairing(Base):
    __tablename__ = "temporary_enrollment_pairings"
    __table_args__ = (
        Index(
            "index_temp_enrollment_pairings_on_root_account_and_created_at",
            "root_account_id",
            "created_at",
            "id",
        ),
    )

    id: Mapped[IdPk]
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    workflow_state: Mapped[WorkflowState] = mapped_column(default="active")
    # Free text, as in Canvas: the sweep must meet (and refuse) values it does not know.
    ending_enrollment_state: Mapped[str | None] = mapped_column(String(255))
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id"))
    deleted_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id"))
    ended_at: Mapped[dt.datetime | None]
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class Enrollment(Base):
    __tablename__ = "enrollments"
    __table_args__ = (
        # The sweep's driving index: due work is found by a range scan on end_at over live
        # temporary enrollments only, ordered so the sweep can page through it by (end_at, id).
        # It carries the pairing id (INCLUDE, PostgreSQL), the only other column a window reads,
        # so that reading a window is an index-only scan rather than a heap visit per due row.
        Index(
            "index_enrollments_on_temporary_end_at",
            "end_at",
            "id",
            postgresql_include=["temporary_enrollment_pairing_id"],
            **_partial(_LIVE_TEMPORARY_SQL),  # type: ignore[arg-type]
        ),
        # Per-pairing work (expire its due rows, decide whether it has ended).
        Index(
            "index_enrollments_on_temporary_enrollment_pairing_id",
            "temporary_enrollment_pairing_id",
            **_partial("temporary_enrollment_pairing_id IS NOT NULL"),  # type: ignore[arg-type]
        ),
        # Live temporary enrollments with no end date are bad data the sweep reports every run.
        Index(
            "index_enrollments_on_temporary_without_end_at",
            "temporary_enrollment_pairing_id",
            **_partial(f"{_LIVE_TEMPORARY_SQL} AND end_at IS NULL"),  # type: ignore[arg-type]
        ),
        Index("index_enrollments_on_course_id_and_id", "course_id", "id"),
        Index("index_enrollments_on_user_id", "user_id"),
        Index("index_enrollments_on_course_section_id", "course_section_id"),
        Index(
            "index_enrollments_on_temporary_enrollment_source_user_id",
            "temporary_enrollment_source_user_id",
            **_partial("temporary_enrollment_source_user_id IS NOT NULL"),  # type: ignore[arg-type]
        ),
    )

    id: Mapped[IdPk]
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"), nullable=False)
    course_id: Mapped[int] = mapped_column(BigId, ForeignKey("courses.id"), nullable=False)
    course_section_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("course_sections.id"), nullable=False
    )
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    type: Mapped[str] = mapped_column(String(255), nullable=False)
    workflow_state: Mapped[WorkflowState] = mapped_column(default="active")
    start_at: Mapped[dt.datetime | None]
    end_at: Mapped[dt.datetime | None]
    completed_at: Mapped[dt.datetime | None]
    temporary_enrollment_source_user_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("users.id")
    )
    temporary_enrollment_pairing_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("temporary_enrollment_pairings.id")
    )
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class StateChange(Base):
    """The audit log and undo log: one row for every state change this service makes.

    `context_type`/`context_id` name what changed, in Canvas's polymorphic style (`Enrollment` or
    `TemporaryEnrollmentPairing`); `reason` says why; `run_id` ties a row to the sweep or request
    that made it; `actor_id` is the user who asked, NULL for the scheduled worker.
    """

    __tablename__ = "temporary_enrollment_state_changes"
    __table_args__ = (
        Index(
            "index_temporary_enrollment_state_changes_on_pairing_id",
            "temporary_enrollment_pairing_id",
            "id",
        ),
        # No index on run_id: no query looks rows up by it (restore reads a pairing's rows by
        # the index above), and every index here is written once per expired enrollment, which
        # the benchmark shows to be most of a sweep's cost beyond the bare UPDATE.
        Index("index_temporary_enrollment_state_changes_on_created_at", "created_at"),
    )

    id: Mapped[IdPk]
    context_type: Mapped[str] = mapped_column(String(255), nullable=False)
    context_id: Mapped[int] = mapped_column(BigId, nullable=False)
    # NULL for a change to an enrollment that belongs to no pairing (an API conclude/delete).
    temporary_enrollment_pairing_id: Mapped[int | None] = mapped_column(BigId)
    root_account_id: Mapped[int] = mapped_column(BigId, nullable=False)
    from_state: Mapped[str] = mapped_column(String(255), nullable=False)
    to_state: Mapped[str] = mapped_column(String(255), nullable=False)
    reason: Mapped[str] = mapped_column(String(255), nullable=False)
    run_id: Mapped[str] = mapped_column(String(36), nullable=False)
    actor_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[Created]


class SweepRun(Base):
    """One committed sweep (dry runs write nothing, so they are not recorded)."""

    __tablename__ = "temporary_enrollment_sweep_runs"
    __table_args__ = (Index("index_temporary_enrollment_sweep_runs_on_started_at", "started_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    trigger: Mapped[str] = mapped_column(String(64), nullable=False)
    as_of: Mapped[dt.datetime] = mapped_column(nullable=False)
    account_id: Mapped[int | None] = mapped_column(BigId)
    started_at: Mapped[dt.datetime] = mapped_column(nullable=False)
    finished_at: Mapped[dt.datetime] = mapped_column(nullable=False)
    enrollments_changed: Mapped[int] = mapped_column(Integer, nullable=False)
    pairings_ended: Mapped[int] = mapped_column(Integer, nullable=False)
    pairings_skipped: Mapped[int] = mapped_column(Integer, nullable=False)
    summary: Mapped[str] = mapped_column(Text, nullable=False)  # the JSON summary, verbatim


class AccessToken(Base):
    """An API token. Only a SHA-256 hash of the secret is stored."""

    __tablename__ = "access_tokens"
    __table_args__ = (Index("index_access_tokens_on_crypted_token", "crypted_token", unique=True),)

    id: Mapped[IdPk]
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"), nullable=False)
    root_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"), nullable=False)
    crypted_token: Mapped[str] = mapped_column(String(255), nullable=False)
    token_hint: Mapped[str] = mapped_column(String(16), nullable=False)
    # JSON list of `url:METHOD|/api/v1/...` scopes; NULL means the whole account.
    scopes: Mapped[str | None] = mapped_column(Text)
    workflow_state: Mapped[WorkflowState] = mapped_column(default="active")
    expires_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]
