"""What Canvas's callbacks would have done, for writers that change enrollments in SQL.

Canvas keeps `enrollment_states` (its cache of each enrollment's effective state) and
`users.updated_at` (its per-user cache keys) in step with every enrollment change through Rails
callbacks (app/models/enrollment.rb, app/models/enrollment_state.rb). tep writes SQL, so no
callback runs: every tep writer of an enrollment calls this module in the same transaction
(DESIGN.md section 4), so that Canvas reading its cache sees what tep did.

The cache row follows `EnrollmentState#recalculate_state` for the dates on the enrollment itself
(a temporary enrollment carries its own `start_at`/`end_at`; course and term dates are not
consulted, and a completed course does not turn the state `completed` here):

* not `active`/`invited`: `state` = the workflow state, no dates;
* within its dates: `state` = the workflow state, `state_started_at` = `start_at`,
  `state_valid_until` = `end_at` (the next date trigger, which Canvas's 5-minute job reads);
* before its start: `pending_active`/`pending_invited` for students and observers
  (`view_restrictable?`), `inactive` otherwise, valid until `start_at`;
* after its end: `completed`, started at `end_at` (tep never leaves a live temporary enrollment
  past its end: the sweep ends it, and restore needs a new `end_at`).

Every row written gets `state_is_current` true, `access_is_current` false (Canvas recalculates
access lazily), `lock_version + 1` (Canvas's optimistic lock: a Rails writer holding the old
version retries) and `updated_at`.

Canvas's `guard_excessive_updates` triggers (config/initializers/postgresql_adapter.rb) warn
about, or with `inst.max_update_fail` refuse, one statement that touches more than
`inst.max_update_limit` rows of a table (1,000 by default). Canvas's own bulk writers raise the
limit for their transaction with `SET LOCAL`; tep does the same, for exactly the tables it
writes, in its writer transactions (:func:`allow_bulk_writes`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    and_,
    any_,
    bindparam,
    case,
    literal,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from models import AnySelect, CanvasTimestamp, Enrollment, EnrollmentState, User

# Canvas's `Enrollment#view_restrictable?`: students and observers see a course before it starts
# (pending) rather than losing it (inactive).
VIEW_RESTRICTABLE_TYPES = ("StudentEnrollment", "ObserverEnrollment")

# The tables tep writes on Canvas's database, and the most rows one of its statements may touch
# there: a sweep window (tasks/lifecycle.py WINDOW_SIZE). Every tep statement names its rows by
# the ids of pairings or enrollments it has locked, so this is a bound, not a guess.
WRITTEN_TABLES = ("enrollments", "enrollment_states", "users", "temporary_enrollment_pairings")
MAX_ROWS_PER_STATEMENT = 1_000_000


def allow_bulk_writes(session: Session) -> None:
    """PostgreSQL: raise Canvas's update guard, for this transaction and tep's tables only
    (`SET LOCAL inst.max_update_limit.<table>`), as Canvas's own bulk updates do."""
    if session.get_bind().dialect.name != "postgresql":
        return
    settings = ", ".join(
        f"set_config('inst.max_update_limit.{table}', '{MAX_ROWS_PER_STATEMENT}', true)"
        for table in WRITTEN_TABLES
    )
    session.execute(text(f"SELECT {settings}"))


def _moment(value: dt.datetime) -> ColumnElement[dt.datetime]:
    return literal(value, type_=CanvasTimestamp())


def cached_state_columns(
    workflow_state: ColumnElement[str],
    start_at: ColumnElement[Any],
    end_at: ColumnElement[Any],
    enrollment_type: ColumnElement[str],
    as_of: dt.datetime,
) -> dict[str, ColumnElement[Any]]:
    """`state`, `state_started_at` and `state_valid_until` as SQL, from an enrollment's columns
    (Canvas's `recalculate_state` and `calculate_state_based_on_dates`, see the module doc)."""
    now = _moment(as_of)
    invited_or_active = workflow_state.in_(("active", "invited"))
    not_started = and_(start_at.is_not(None), start_at > now)
    ended = and_(end_at.is_not(None), end_at < now)
    pending = case(
        (
            enrollment_type.in_(VIEW_RESTRICTABLE_TYPES),
            case((workflow_state == "active", "pending_active"), else_="pending_invited"),
        ),
        else_="inactive",
    )
    state = case(
        (~invited_or_active, workflow_state),
        (not_started, pending),
        (ended, "completed"),
        else_=workflow_state,
    )
    started = case(
        (~invited_or_active, None),
        (not_started, None),
        (ended, end_at),
        else_=start_at,
    )
    valid_until = case(
        (~invited_or_active, None),
        (not_started, start_at),
        (ended, None),
        else_=end_at,
    )
    return {"state": state, "state_started_at": started, "state_valid_until": valid_until}


def ids_in(session: Session, column: Any, ids: Collection[int]) -> ColumnElement[bool]:
    """`column IN ids`, as `column = ANY(:array)` on PostgreSQL: one bind parameter however many
    ids (psycopg refuses more than 65,535 parameters). SQLite has no arrays."""
    if session.get_bind().dialect.name == "postgresql":
        clause: ColumnElement[bool] = column == any_(
            bindparam(None, list(ids), type_=ARRAY(BigInteger))
        )
        return clause
    in_list: ColumnElement[bool] = column.in_(list(ids))
    return in_list


def enrollment_state_upsert(
    session: Session, rows: AnySelect, as_of: dt.datetime, changed_at: dt.datetime
) -> Any:
    """INSERT .. ON CONFLICT DO UPDATE of `enrollment_states` from `rows`, a SELECT of
    (enrollment_id, workflow_state, start_at, end_at, type, root_account_id): the cache row of
    each, created for an enrollment that has none (one tep creates)."""
    source = rows.subquery("changed_enrollments")
    computed = cached_state_columns(
        source.c.workflow_state, source.c.start_at, source.c.end_at, source.c.type, as_of
    )
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(EnrollmentState).from_select(
        [
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
        ],
        select(
            source.c.enrollment_id,
            computed["state"],
            literal(True),
            computed["state_started_at"],
            computed["state_valid_until"],
            literal(False),
            literal(False),
            literal(0),
            _moment(changed_at),
            source.c.root_account_id,
        )
        # SQLite needs a WHERE to tell the SELECT's end from ON CONFLICT (its upsert docs).
        .where(true()),
    )
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[EnrollmentState.enrollment_id],
        set_={
            "state": excluded.state,
            "state_is_current": True,
            "state_started_at": excluded.state_started_at,
            "state_valid_until": excluded.state_valid_until,
            "access_is_current": False,
            "lock_version": EnrollmentState.lock_version + 1,
            "updated_at": excluded.updated_at,
        },
    )


def sync_enrollments(
    session: Session,
    enrollment_ids: Collection[int],
    as_of: dt.datetime,
    changed_at: dt.datetime | None = None,
) -> None:
    """After changing these enrollments: their `enrollment_states` rows (the state at `as_of`)
    and their users' `updated_at` (`changed_at`, default `as_of`), as Canvas's callbacks would
    have written them."""
    if not enrollment_ids:
        return
    changed_at = changed_at or as_of
    where = ids_in(session, Enrollment.id, enrollment_ids)
    rows = select(
        Enrollment.id.label("enrollment_id"),
        Enrollment.workflow_state,
        Enrollment.start_at,
        Enrollment.end_at,
        Enrollment.type,
        Enrollment.root_account_id,
    ).where(where)
    connection = session.connection()
    connection.execute(enrollment_state_upsert(session, rows, as_of, changed_at))
    touch_users(session, select(Enrollment.user_id).where(where), changed_at)


def touch_users(session: Session, user_ids: AnySelect, changed_at: dt.datetime) -> None:
    """`users.updated_at` of these users (Canvas's `User#touch`; its caches key on it)."""
    session.connection().execute(
        update(User).where(User.id.in_(user_ids.scalar_subquery())).values(updated_at=changed_at)
    )
