"""tep's own tables, apart from Canvas's: in their own schema (`TEP_SCHEMA`, default `tep`) on
PostgreSQL, in the same file on SQLite (DESIGN.md section 3).

None is named like a Canvas table, and none has a foreign key into Canvas's tables: on Canvas's
own database a constraint of ours must never stand in the way of Canvas's writes. Ids that point
at Canvas's rows are plain columns.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from sqlalchemy import BigInteger, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import TEP_SCHEMA, Base, utcnow

BigId = BigInteger().with_variant(Integer, "sqlite")
IdPk = Annotated[int, mapped_column(BigId, primary_key=True)]
Created = Annotated[dt.datetime, mapped_column(nullable=False, default=utcnow)]
Updated = Annotated[dt.datetime, mapped_column(nullable=False, default=utcnow, onupdate=utcnow)]

SCHEMA = {"schema": TEP_SCHEMA}


class StateChange(Base):
    """The audit log and undo log: one row for every state change this service makes.

    `context_type`/`context_id` name what changed, in Canvas's polymorphic style (`Enrollment` or
    `TemporaryEnrollmentPairing`); `reason` says why; `run_id` ties a row to the sweep or request
    that made it; `actor_id` is the user who asked, NULL for the scheduled worker. A pairing's
    rows use tep's states (`active`, `ended`, `deleted`): an end is recorded here and in
    :class:`PairingEnd`, never in Canvas's pairing row.
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
        SCHEMA,
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
    # Beside a hosted Canvas (tasks/canvas_rest/), a change is first decided on tep's mirror and
    # then made in Canvas through its REST API: this is when Canvas confirmed it (NULL until
    # then, and always NULL when tep writes the tables itself).
    canvas_confirmed_at: Mapped[dt.datetime | None]


class PairingEnd(Base):
    """When, and by which run, a pairing ended: the state Canvas has no column for.

    Canvas's pairing row keeps `active` (Canvas knows no other live state); the API, CLI, metrics
    and events show a pairing with a row here as `ended`, with `ended_at`. A deleted pairing that
    had ended keeps its row (its `ended_at` stays shown).
    """

    __tablename__ = "temporary_enrollment_pairing_ends"
    __table_args__ = (SCHEMA,)

    temporary_enrollment_pairing_id: Mapped[int] = mapped_column(
        BigId, primary_key=True, autoincrement=False
    )
    root_account_id: Mapped[int] = mapped_column(BigId, nullable=False)
    ended_at: Mapped[dt.datetime] = mapped_column(nullable=False)
    run_id: Mapped[str] = mapped_column(String(36), nullable=False)
    created_at: Mapped[Created]


class EnrollmentDeadline(Base):
    """tep's index of the live temporary enrollments of open pairings, by `end_at`.

    Canvas has no index on `enrollments.end_at`, and tep adds none to Canvas's tables, so due work
    is found here: one row per live temporary enrollment of a pairing that has not ended, kept by
    every tep writer and by the sweep's discovery of what Canvas wrote (new enrollments by id,
    changed ones through Canvas's own `enrollment_states.state_valid_until` index). A row only
    says where to look: the sweep always decides from Canvas's enrollment row itself, so a stale
    row costs a look, never a wrong change. Rows of ended pairings are removed, so a finished
    pairing is never walked again.
    """

    __tablename__ = "temporary_enrollment_deadlines"
    __table_args__ = (
        # The sweep's driving index: due work is a range scan on end_at, paged by (end_at, id),
        # carrying the pairing id so a window is an index-only scan (PostgreSQL).
        Index(
            "index_temporary_enrollment_deadlines_on_end_at",
            "end_at",
            "enrollment_id",
            postgresql_include=["temporary_enrollment_pairing_id"],
        ),
        Index(
            "index_temporary_enrollment_deadlines_on_pairing_id", "temporary_enrollment_pairing_id"
        ),
        # Live temporary enrollments with no end date are bad data the sweep reports every run.
        Index(
            "index_temporary_enrollment_deadlines_without_end_at",
            "temporary_enrollment_pairing_id",
            postgresql_where=text("end_at IS NULL"),
            sqlite_where=text("end_at IS NULL"),
        ),
        SCHEMA,
    )

    enrollment_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    temporary_enrollment_pairing_id: Mapped[int] = mapped_column(BigId, nullable=False)
    root_account_id: Mapped[int] = mapped_column(BigId, nullable=False)
    end_at: Mapped[dt.datetime | None]


class ExpiryTimer(Base):
    """A sweep scheduled for one second (tasks/timers.py): the claim that makes each second's
    timer be sent once, however many beats, workers or API processes see it due.

    `due_at` is the whole second (the key: at most one timer a second); `fire_at` is when its
    sweep runs, the latest `end_at` of that second seen so far, so the sweep covers every
    enrollment of the second that it knows of; `claimed_until` is when the claim lapses and
    another process may claim the second again (after its moment: see tasks/timers.py). A row
    is only a claim, never work: a lost or doubled timer costs lateness or an idle sweep.
    """

    __tablename__ = "temporary_enrollment_timers"
    __table_args__ = (SCHEMA,)

    due_at: Mapped[dt.datetime] = mapped_column(primary_key=True)
    fire_at: Mapped[dt.datetime] = mapped_column(nullable=False)
    claimed_until: Mapped[dt.datetime] = mapped_column(nullable=False)


class DiscoveryCursor(Base):
    """How far the sweep's discovery has read Canvas's enrollments (by id); one row."""

    __tablename__ = "temporary_enrollment_discovery"
    __table_args__ = (SCHEMA,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_enrollment_id: Mapped[int] = mapped_column(BigId, nullable=False, default=0)
    # Up to when Canvas's date triggers (`enrollment_states.state_valid_until`) have been read.
    last_probed_at: Mapped[dt.datetime | None]
    updated_at: Mapped[Updated]


class SweepRun(Base):
    """One committed sweep (dry runs write nothing, so they are not recorded), or a streak of
    idle ones: an idle run replaces the row of the idle run before it, carrying the streak on in
    its summary (`idle_runs`, `idle_since`; tasks/lifecycle.py `record_run`)."""

    __tablename__ = "temporary_enrollment_sweep_runs"
    __table_args__ = (
        Index("index_temporary_enrollment_sweep_runs_on_started_at", "started_at"),
        SCHEMA,
    )

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


class ApiToken(Base):
    """An API token of tep's own API, bound to a user and a root account. Only a SHA-256 hash
    of the secret is stored. (Canvas's `access_tokens` is Canvas's table: not this.)"""

    __tablename__ = "api_tokens"
    __table_args__ = (
        Index("index_api_tokens_on_crypted_token", "crypted_token", unique=True),
        SCHEMA,
    )

    id: Mapped[IdPk]
    user_id: Mapped[int] = mapped_column(BigId, nullable=False)
    root_account_id: Mapped[int] = mapped_column(BigId, nullable=False)
    crypted_token: Mapped[str] = mapped_column(String(255), nullable=False)
    token_hint: Mapped[str] = mapped_column(String(16), nullable=False)
    # JSON list of `url:METHOD|/api/v1/...` scopes; NULL means the whole account.
    scopes: Mapped[str | None] = mapped_column(Text)
    workflow_state: Mapped[str] = mapped_column(String(255), nullable=False, default="active")
    expires_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class MetricTotal(Base):
    """A running total behind a Prometheus counter, kept as changes commit (tasks/metric_totals.py).

    A scrape reads these few rows instead of aggregating the audit table, so it costs the same
    at any history. `name` says what is counted (`state_changes:<context_type>` by `label` the
    state changed to, `expiry_lateness` by bucket, `sweep_runs`, ...); sums of durations are in
    whole milli- or microseconds, so every total is an exact integer whatever order writers add
    in.
    """

    __tablename__ = "temporary_enrollment_metric_totals"
    __table_args__ = (SCHEMA,)

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class SkipLog(Base):
    """When the sweep last logged a pairing it skips for bad data (tasks/skip_logs.py).

    Every sweep lists its skipped pairings in its summary, but logs one at ERROR only when it
    first appears and once a day after; this row, shared by every worker and kept across
    restarts, is that memory. One row per pairing and reason while the pairing is skipped for it:
    a sweep that went through all of its scope without meeting it again removes the row.
    """

    __tablename__ = "temporary_enrollment_skip_logs"
    __table_args__ = (SCHEMA,)

    temporary_enrollment_pairing_id: Mapped[int] = mapped_column(
        BigId, primary_key=True, autoincrement=False
    )
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Whose pairing it is: a sweep of one root account clears only that account's rows.
    root_account_id: Mapped[int] = mapped_column(BigId, nullable=False)
    last_logged_at: Mapped[dt.datetime] = mapped_column(nullable=False)


class CanvasCommand(Base):
    """tep's outbox beside a hosted Canvas: one change to make in Canvas through its REST API.

    The sweep (or a restore) decides a change on tep's mirror of Canvas's rows and writes the
    command in the same transaction; a delivery task sends it (tasks/canvas_rest/commands.py).
    A command is leased while it is sent (`lease_owner`, `lease_until`), so one worker at a time
    sends it, and finishes once with an `outcome`: `confirmed` (Canvas made the change),
    `already` (Canvas showed the target state already), `gone` (Canvas answered 404),
    `ended_by_canvas` (Canvas had ended it otherwise) or `refused` (Canvas said no for good;
    `last_error` says why). Ids of Canvas's rows are Canvas's own ids.
    """

    __tablename__ = "temporary_enrollment_canvas_commands"
    __table_args__ = (
        # The delivery task's claim reads the open commands in id order.
        Index(
            "index_temporary_enrollment_canvas_commands_open",
            "id",
            postgresql_where=text("finished_at IS NULL"),
            sqlite_where=text("finished_at IS NULL"),
        ),
        # A pairing ends once none of its commands is open; restore reads a pairing's commands.
        Index(
            "index_temporary_enrollment_canvas_commands_on_pairing_id",
            "temporary_enrollment_pairing_id",
        ),
        SCHEMA,
    )

    id: Mapped[IdPk]
    # `delete`, `conclude`, `deactivate` (Canvas's DELETE ...?task=), `reactivate`, `enroll`.
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    enrollment_id: Mapped[int] = mapped_column(BigId, nullable=False)
    course_id: Mapped[int] = mapped_column(BigId, nullable=False)
    temporary_enrollment_pairing_id: Mapped[int | None] = mapped_column(BigId)
    root_account_id: Mapped[int] = mapped_column(BigId, nullable=False)
    # The audit row of the decision (StateChange.id), confirmed when Canvas confirms.
    state_change_id: Mapped[int | None] = mapped_column(BigId)
    from_state: Mapped[str] = mapped_column(String(255), nullable=False)
    to_state: Mapped[str] = mapped_column(String(255), nullable=False)
    # JSON: what an `enroll` sends (user, role, section, temporary ids, the new end_at).
    payload: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str] = mapped_column(String(36), nullable=False)
    created_at: Mapped[Created]
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None]
    next_attempt_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[dt.datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))
    # The enrollment's state as Canvas answered it.
    canvas_state: Mapped[str | None] = mapped_column(String(255))
    # `enroll`: the id Canvas gave the new enrollment (recorded against the old one).
    new_enrollment_id: Mapped[int | None] = mapped_column(BigId)


class CanvasSync(Base):
    """What the last sync of a root account from a hosted Canvas did (tasks/canvas_rest/sync.py):
    when it ran, when it last read everything, and its summary (rows and request cost), JSON."""

    __tablename__ = "temporary_enrollment_canvas_syncs"
    __table_args__ = (SCHEMA,)

    root_account_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    synced_at: Mapped[dt.datetime] = mapped_column(nullable=False)
    full_synced_at: Mapped[dt.datetime | None]
    summary: Mapped[str] = mapped_column(Text, nullable=False)
