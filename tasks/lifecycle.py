"""The temporary enrollment lifecycle: the rules of DESIGN.md section 4, in one place.

* A *live* enrollment is `active`, `invited` or `creation_pending`.
* A temporary enrollment is *due* at `as_of` when it is live, its pairing is `active`, and
  `end_at <= as_of` (the boundary is due).
* Expiring it sets the pairing's `ending_enrollment_state` (NULL means `deleted`, as in Canvas) and
  writes an audit row with the state it had.
* A pairing *ends* when it has enrollments and none of them is live (whoever made them not live:
  tep, or Canvas's own job, which destroys `deleted` ones itself); an empty pairing stays active.
  The end is recorded in tep's own table (`PairingEnd`); Canvas's pairing row keeps `active`,
  the only live state Canvas knows.
* Every enrollment change also does what Canvas's callbacks would have (tasks/canvas_callbacks.py):
  its `enrollment_states` row, its user's `updated_at`, `completed_at` for `completed`.
* Due work is found in tep's own index of deadlines (tasks/deadlines.py), never by a scan of
  Canvas's tables; the decision is always made on Canvas's enrollment row itself.
* A pairing whose data the rules cannot apply to (an ending state we do not know, a live enrollment
  with no `end_at`, a deleted root account) is never guessed at: it is skipped, reported, logged.
* Beside a hosted Canvas (sessions made `through_canvas`), these rules run on tep's mirror of
  Canvas's rows: each enrollment change is also a command to Canvas, written with it, and a pairing
  ends once Canvas has answered them all (tasks/canvas_rest/commands.py).

Functions here take a `Session` and never commit; :func:`run_sweep` is the one driver that owns
transactions, because a sweep commits batch by batch so that a large backlog neither holds locks
for minutes nor loses finished work when a worker dies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from models import (
    DEFAULT_ENDING_ENROLLMENT_STATE,
    DUMMY_ROOT_ACCOUNT_ID,
    ENDING_ENROLLMENT_STATES,
    LIVE_ENROLLMENT_STATES,
    Account,
    AnySelect,
    CanvasTimestamp,
    Enrollment,
    EnrollmentDeadline,
    PairingEnd,
    StateChange,
    SweepRun,
    TemporaryEnrollmentPairing,
    User,
    UTCDateTime,
    through_canvas,
    transaction,
    utcnow,
)
from tasks import canvas_callbacks, deadlines, metric_totals, skip_logs

log = logging.getLogger("tep.lifecycle")

SelectT = TypeVar("SelectT", bound=AnySelect)

# How a sweep goes through a backlog, measured with bench/ on 1,000,000 due enrollments among
# 2,000,000 (bench/RESULTS.md).
#
# WINDOW_SIZE due rows are read at a time, in (end_at, id) order, from the sweep's partial index;
# only their distinct pairings come back, in id order (0.6 s for 1,000,000 rows). They are then
# expired in id order, DEFAULT_BATCH_SIZE pairings per transaction. Id order matters: a pairing's
# enrollments are created together, so pairing id order is (near enough) the table's physical
# order, and each batch writes one stretch of the table whose pages are dirtied once, as a single
# UPDATE of everything would. Batches taken in end_at order each touched pages all over the
# table, and every batch was another pass over it: the same sweep took 44 s instead of 35 s
# (floor 20-23 s). The window's pairings are held in Python: at most one per row, in practice a
# few MB (peak RSS 93 MB for this backlog of 100,000 pairings).
WINDOW_SIZE = 1_000_000

# Pairings per transaction (TEP_BATCH_SIZE; DESIGN.md section 5). A transaction expires every due
# enrollment of its pairings and holds their row locks until it commits, which an API call
# ending one of them waits for. Since batches follow the table's order, their size hardly moves a
# large sweep's time (pairings of 10 due rows: 1,000 a batch 35.2 s, 2,500 35.5-38.0 s, 10,000
# 34.8 s), so it is set by the lock time: the longest batch took 1.2, 1.6 and 3.8 s (the first
# one includes reading the window). An ordinary sweep finds far fewer due pairings than this
# and is one batch whatever the setting.
DEFAULT_BATCH_SIZE = 2_500

# Why a change was made; stored in the audit table's `reason`.
REASON_EXPIRED = "expired"
REASON_PAIRING_DELETED = "pairing_deleted"
REASON_PAIRING_ENDED = "pairing_ended"

# Why a pairing was skipped; reported in the run summary.
SKIP_UNKNOWN_ENDING_STATE = "unknown_ending_state"
SKIP_MISSING_END_AT = "missing_end_at"
SKIP_ACCOUNT_DELETED = "account_deleted"

# The nightly run also rebuilds the deadline index from Canvas's rows (tasks/deadlines.py).
TRIGGER_NIGHTLY = "nightly"

# How a recorded run went. A run cut short is recorded with what its committed batches did:
# `interrupted` when it was stopped from outside (Ctrl-C, a signal, the process exiting: a
# BaseException that is not an Exception), `failed` when an error ended it (a time limit too).
RUN_COMPLETED = "completed"
RUN_INTERRUPTED = "interrupted"
RUN_FAILED = "failed"

ENROLLMENT = "Enrollment"
PAIRING = "TemporaryEnrollmentPairing"

Pairing = TemporaryEnrollmentPairing


class LifecycleError(Exception):
    """A request the rules refuse; the message is meant for people."""


class UnknownAccount(LifecycleError):
    pass


class UnknownPairing(LifecycleError):
    pass


class UnknownEndingState(LifecycleError):
    pass


# Literal SQL for the live states, not bind parameters: PostgreSQL only uses a partial index when
# it can prove the query's predicate implies the index's, which it cannot for a generic plan's
# parameters (psycopg prepares statements it has run five times).
_LIVE = Enrollment.workflow_state.in_([literal_column(f"'{s}'") for s in LIVE_ENROLLMENT_STATES])
_TEMPORARY = Enrollment.temporary_enrollment_pairing_id.is_not(None)


def _id_in(
    session: Session,
    column: InstrumentedAttribute[int] | InstrumentedAttribute[int | None],
    ids: Collection[int],
) -> ColumnElement[bool]:
    """`column IN ids`, as `column = ANY(:array)` on PostgreSQL.

    A sweep batch names tens of thousands of pairings. An IN list sends each as its own bind
    parameter (psycopg refuses more than 65,535, and the planner reads them one by one); one array
    parameter costs the same whatever its length. SQLite has no arrays and keeps the IN list.
    """
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=ARRAY(BigInteger)))
    return column.in_(ids)


def resolve_ending_state(value: str | None) -> str | None:
    """The state a pairing's enrollments end in, or None when the value is not one we know."""
    if value is None:
        return DEFAULT_ENDING_ENROLLMENT_STATE
    return value if value in ENDING_ENROLLMENT_STATES else None


def is_due(end_at: dt.datetime | None, as_of: dt.datetime) -> bool:
    """The due rule for one end date (the SQL below states the same rule for many rows)."""
    return end_at is not None and end_at <= as_of


def require_aware(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise LifecycleError(f"{moment.isoformat()} has no time zone; give an offset such as Z")
    return moment.astimezone(dt.UTC)


def new_run_id() -> str:
    return str(uuid.uuid4())


@dataclasses.dataclass(frozen=True)
class SkippedPairing:
    pairing_id: int
    root_account_id: int
    reason: str
    detail: str


@dataclasses.dataclass
class RunSummary:
    """What a sweep did (or, in a dry run, would do)."""

    run_id: str
    as_of: dt.datetime
    dry_run: bool
    account_id: int | None
    trigger: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    enrollments_changed: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(ENDING_ENROLLMENT_STATES, 0)
    )
    pairings_ended: int = 0
    skipped: dict[int, SkippedPairing] = dataclasses.field(default_factory=dict)
    batches: int = 0
    # Deadline index rows written by this run's discovery (tasks/deadlines.py).
    discovered: int = 0
    status: str = RUN_COMPLETED
    error: str | None = None  # what cut the run short

    @property
    def enrollments_changed_total(self) -> int:
        return sum(self.enrollments_changed.values())

    def skip(self, pairing: SkippedPairing) -> None:
        """List a pairing as skipped; logged once the run is over (:func:`log_skipped`)."""
        self.skipped.setdefault(pairing.pairing_id, pairing)

    def to_json(self) -> dict[str, Any]:
        finished = self.finished_at or utcnow()
        return {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "as_of": iso(self.as_of),
            "dry_run": self.dry_run,
            "account_id": self.account_id,
            "enrollments_changed": dict(self.enrollments_changed),
            "enrollments_changed_total": self.enrollments_changed_total,
            "pairings_ended": self.pairings_ended,
            "pairings_skipped": [
                dataclasses.asdict(s) for s in sorted(self.skipped.values(), key=_by_id)
            ],
            "batches": self.batches,
            "deadlines_discovered": self.discovered,
            "started_at": iso(self.started_at),
            "finished_at": iso(finished),
            "duration_seconds": round((finished - self.started_at).total_seconds(), 3),
            "status": self.status,
            "error": self.error,
        }

    def copy(self) -> RunSummary:
        return dataclasses.replace(
            self, enrollments_changed=dict(self.enrollments_changed), skipped=dict(self.skipped)
        )


def _by_id(skipped: SkippedPairing) -> int:
    return skipped.pairing_id


def iso(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as Canvas writes timestamps."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------
# Finding due work


def due_enrollments(as_of: dt.datetime, account_id: int | None = None) -> ColumnElement[bool]:
    """The due rule as SQL, over tep's deadline index (the sweep's driving index)."""
    clause = EnrollmentDeadline.end_at <= as_of
    if account_id is not None:
        clause = and_(clause, EnrollmentDeadline.root_account_id == account_id)
    return clause


def open_pairing() -> ColumnElement[bool]:
    """SQL over `Pairing`: neither deleted (Canvas's row) nor ended (tep's table)."""
    return and_(
        Pairing.workflow_state != "deleted",
        ~exists().where(PairingEnd.temporary_enrollment_pairing_id == Pairing.id),
    )


def join_due(stmt: SelectT, until: dt.datetime, account_id: int | None = None) -> SelectT:
    """`stmt` over the live temporary enrollments of open pairings ending by `until`: found
    through tep's deadline index, decided on Canvas's rows (`Enrollment`, `Pairing` joined)."""
    return (
        stmt.select_from(EnrollmentDeadline)
        .join(Enrollment, Enrollment.id == EnrollmentDeadline.enrollment_id)
        .join(Pairing, Pairing.id == Enrollment.temporary_enrollment_pairing_id)
        .where(
            due_enrollments(until, account_id), _LIVE, Enrollment.end_at <= until, open_pairing()
        )
    )


def count_due(session: Session, as_of: dt.datetime, account_id: int | None = None) -> int:
    """Due enrollments of open pairings (what a sweep at `as_of` would expire)."""
    return session.scalar(join_due(select(func.count()), as_of, account_id)) or 0


def _next_window(
    session: Session,
    as_of: dt.datetime,
    account_id: int | None,
    after: tuple[dt.datetime, int] | None,
    limit: int,
) -> tuple[tuple[dt.datetime, int] | None, list[int]]:
    """The next `limit` due enrollments in (end_at, id) order, after the keyset `after`: the
    window's last key (None when it is empty) and its distinct pairings, in id order.

    Paging by keyset keeps every read an index range scan, so a sweep costs O(due rows) however
    large the table, and a pairing that is skipped or locked elsewhere is stepped over, not re-read.
    The rows themselves are not kept: only the pairings and the end of the window are needed.
    """
    row = EnrollmentDeadline
    stmt = select(row.end_at, row.enrollment_id.label("id"), row.temporary_enrollment_pairing_id)
    stmt = stmt.where(due_enrollments(as_of, account_id))
    if after is not None:
        # Typed binds: an untyped datetime would reach SQLite in whatever form its class suggests
        # (freezegun's, for one), and a string comparison with the stored form can then never
        # move past the last key.
        key = tuple_(
            literal(after[0], type_=EnrollmentDeadline.end_at.type),
            literal(after[1], type_=EnrollmentDeadline.enrollment_id.type),
        )
        stmt = stmt.where(tuple_(row.end_at, row.enrollment_id) > key)
    stmt = stmt.order_by(row.end_at, row.enrollment_id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        return _summarise_window_in_the_database(session, stmt)
    last: tuple[dt.datetime, int] | None = None
    pairings: set[int] = set()
    for end_at, id_, pairing_id in session.execute(stmt):
        # end_at and the pairing id are NOT NULL here: the due predicate requires both.
        if end_at is not None and pairing_id is not None:
            last = (end_at, id_)
            pairings.add(pairing_id)
    return last, sorted(pairings)


def _summarise_window_in_the_database(
    session: Session, window_rows: Select[dt.datetime | None, int, int]
) -> tuple[tuple[dt.datetime, int] | None, list[int]]:
    """PostgreSQL: the window's last key and its distinct pairings in id order, computed by the
    server and sent as one array.

    A window is up to a million rows of which only the last key and the distinct pairings
    matter; sending every row to Python to find them cost more than the rest of a batch's
    bookkeeping together (bench/), and memory that grew with the window.
    """
    window = window_rows.cte("window")
    pairing_id = window.c.temporary_enrollment_pairing_id
    # The window's last key, in one sort: the window CTE is not guaranteed to come out in order.
    newest = (
        select(window.c.end_at, window.c.id)
        .order_by(window.c.end_at.desc(), window.c.id.desc())
        .limit(1)
        .subquery("newest")
    )
    pairings = select(
        func.array_agg(aggregate_order_by(pairing_id.distinct(), pairing_id))
    ).scalar_subquery()
    row = session.execute(
        select(newest.c.end_at, newest.c.id, pairings.label("pairings")).select_from(newest)
    ).one_or_none()
    if row is None:  # an empty window; a row's end_at is never NULL (the due rule requires it)
        return None, []
    return (row.end_at, row.id), list(row.pairings)


def _batches(pairing_ids: list[int], batch_size: int, done: Container[int]) -> Iterator[list[int]]:
    """`pairing_ids` less those in `done`, in their order, `batch_size` at a time."""
    batch: list[int] = []
    for pairing_id in pairing_ids:
        if pairing_id not in done:
            batch.append(pairing_id)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def pairings_missing_end_at(
    session: Session, *, account_id: int | None = None, pairing_ids: Collection[int] | None = None
) -> list[SkippedPairing]:
    """Active pairings with a live temporary enrollment that has no `end_at` (bad data).

    Two steps: the undated enrollments first, through their own partial index, which holds only
    them (normally none), then their pairings, by id. Written as one join, PostgreSQL was free to
    start from the pairings table, and did: a sequential scan, or a walk of the primary key past
    every ended pairing, in every sweep, idle ones included (bench/: an idle sweep's cost grew
    with the table). Asked separately, an idle sweep's check costs one empty index scan.
    """
    if pairing_ids is None:
        # Every run: from tep's index, whose partial index holds only undated rows (normally
        # none), then checked on Canvas's rows.
        indexed = select(EnrollmentDeadline.enrollment_id).where(
            EnrollmentDeadline.end_at.is_(None)
        )
        scope: ColumnElement[bool] = Enrollment.id.in_(indexed.scalar_subquery())
    else:
        # A batch: from Canvas's rows of its pairings (Canvas's partial index).
        scope = _id_in(session, Enrollment.temporary_enrollment_pairing_id, pairing_ids)
    undated = select(Enrollment.temporary_enrollment_pairing_id, func.count()).where(
        scope, _TEMPORARY, _LIVE, Enrollment.end_at.is_(None)
    )
    counts = {
        pid: n
        for pid, n in session.execute(undated.group_by(Enrollment.temporary_enrollment_pairing_id))
        if pid is not None
    }
    if not counts:
        return []
    stmt = (
        select(Pairing.id, Pairing.root_account_id)
        .where(_id_in(session, Pairing.id, list(counts)), open_pairing())
        .order_by(Pairing.id)
    )
    if account_id is not None:
        stmt = stmt.where(Pairing.root_account_id == account_id)
    return [
        SkippedPairing(
            pid, root, SKIP_MISSING_END_AT, f"{counts[pid]} live enrollment(s) without end_at"
        )
        for pid, root in session.execute(stmt)
    ]


# --------------------------------------------------------------------------------------------
# Changing state (shared by the sweep and by ending a pairing early)


@dataclasses.dataclass(frozen=True)
class ChangeContext:
    """Who and what a set of changes belongs to, stamped on every audit row."""

    run_id: str
    as_of: dt.datetime
    reason: str
    actor_id: int | None = None
    changed_at: dt.datetime = dataclasses.field(default_factory=utcnow)


def expire_enrollments(
    session: Session,
    pairing_ids: Collection[int],
    ending_state: str,
    where: ColumnElement[bool],
    ctx: ChangeContext,
    *,
    write: bool = True,
) -> int:
    """Move the live enrollments of `pairing_ids` matching `where` to `ending_state`, audited."""
    changed = expire_enrollments_by_pairing(
        session, dict.fromkeys(pairing_ids, ending_state), where, ctx, write=write
    )
    return changed.get(ending_state, 0)


def expire_enrollments_by_pairing(
    session: Session,
    ending_states: Mapping[int, str],
    where: ColumnElement[bool],
    ctx: ChangeContext,
    *,
    write: bool = True,
) -> dict[str, int]:
    """Move the live enrollments matching `where` of each pairing in `ending_states` to that
    pairing's ending state, audited. Returns the enrollments changed per ending state.

    The caller holds the pairings' row locks, and every writer of a temporary enrollment takes
    its pairing's lock first, so the rows cannot change under this function.
    """
    if not ending_states:
        return {}
    if write and session.get_bind().dialect.name == "postgresql":
        changes = _expire_and_audit_in_one_statement(session, ending_states, where, ctx)
    else:
        by_state: dict[str, list[int]] = {}
        for pairing_id, ending_state in ending_states.items():
            by_state.setdefault(ending_state, []).append(pairing_id)
        changes = {
            ending_state: _expire_in_two_statements(session, ids, ending_state, where, ctx, write)
            for ending_state, ids in by_state.items()
        }
    if write and through_canvas(session):
        # Beside a hosted Canvas the change above is the decision, made on tep's mirror; each
        # changed enrollment also gets a command to Canvas, in this transaction.
        _write_canvas_commands(session, list(ending_states), ctx)
    return changes


# The hooks into the hosted-Canvas connector (tasks/canvas_rest/commands.py). Imported when first
# called: the connector builds on these rules (it imports this module), so this module cannot
# import it at its top.


def _write_canvas_commands(session: Session, pairing_ids: list[int], ctx: ChangeContext) -> None:
    from tasks.canvas_rest.commands import write_for_changes

    write_for_changes(session, pairing_ids, ctx)


def _not_awaiting_canvas(
    session: Session, pairings: list[tuple[int, int, str]]
) -> list[tuple[int, int, str]]:
    from tasks.canvas_rest.commands import not_awaiting_canvas

    return not_awaiting_canvas(session, pairings)


def _expire_in_two_statements(
    session: Session,
    pairing_ids: Collection[int],
    ending_state: str,
    where: ColumnElement[bool],
    ctx: ChangeContext,
    write: bool,
) -> int:
    """The portable path (SQLite, and dry runs): the audit rows are copied from the rows as they
    are now (their `from_state`), then the rows are updated, then Canvas's caches; the counts are
    compared anyway, and a mismatch rolls the batch back."""
    scope = and_(
        _TEMPORARY,
        _LIVE,
        _id_in(session, Enrollment.temporary_enrollment_pairing_id, pairing_ids),
        where,
    )
    if not write:
        return session.scalar(select(func.count()).select_from(Enrollment).where(scope)) or 0
    values: dict[str, Any] = {"workflow_state": ending_state, "updated_at": ctx.changed_at}
    if ending_state == "completed":
        values["completed_at"] = ctx.as_of
    audit = insert(StateChange).from_select(
        _AUDIT_COLUMNS,
        select(
            literal(ENROLLMENT),
            Enrollment.id,
            Enrollment.temporary_enrollment_pairing_id,
            Enrollment.root_account_id,
            Enrollment.workflow_state,
            literal(ending_state),
            *_audit_constants(ctx),
        ).where(scope),
    )
    # Core statements on the session's connection: these are set-based SQL, not ORM unit-of-work
    # operations. SQLAlchemy only keeps an INSERT's row count when asked to.
    connection = session.connection()
    audited = connection.execute(audit.execution_options(preserve_rowcount=True)).rowcount
    rows = session.execute(select(Enrollment.id, Enrollment.end_at).where(scope)).all()
    ids = [id_ for id_, _ in rows]
    changed = connection.execute(
        update(Enrollment).where(_id_in(session, Enrollment.id, ids)).values(**values)
    ).rowcount
    if changed != audited:
        raise LifecycleError(
            f"enrollments changed under the sweep ({changed} updated, {audited} audited); "
            "batch rolled back"
        )
    canvas_callbacks.sync_enrollments(session, ids, ctx.as_of, ctx.changed_at)
    metric_totals.count_state_changes(session, ENROLLMENT, ending_state, changed)
    if ctx.reason == REASON_EXPIRED:
        metric_totals.count_lateness(
            session,
            (
                metric_totals.lateness_microseconds(ctx.changed_at, end_at)
                for _, end_at in rows
                if end_at is not None
            ),
        )
    return int(changed)


_AUDIT_COLUMNS = [
    StateChange.context_type,
    StateChange.context_id,
    StateChange.temporary_enrollment_pairing_id,
    StateChange.root_account_id,
    StateChange.from_state,
    StateChange.to_state,
    StateChange.reason,
    StateChange.run_id,
    StateChange.actor_id,
    StateChange.created_at,
]


def _audit_constants(ctx: ChangeContext) -> list[ColumnElement[Any]]:
    """The audit columns that are the same for every row of a call (reason .. created_at)."""
    return [
        literal(ctx.reason),
        literal(ctx.run_id),
        literal(ctx.actor_id, type_=Enrollment.user_id.type),
        literal(ctx.changed_at, type_=UTCDateTime()),
    ]


def _expire_and_audit_in_one_statement(
    session: Session,
    ending_states: Mapping[int, str],
    where: ColumnElement[bool],
    ctx: ChangeContext,
) -> dict[str, int]:
    """PostgreSQL: every pairing's due rows updated and audited by one statement.

        WITH claimed AS (SELECT unnest(:pairing_ids) AS pairing_id, unnest(:states) AS state),
             due AS (SELECT id, workflow_state FROM enrollments WHERE <scope>),
             changed AS (UPDATE enrollments SET workflow_state = claimed.state, ...
                         FROM claimed WHERE pairing_id = claimed.pairing_id AND <scope>
                         RETURNING id, ..., claimed.state),
             audited AS (INSERT INTO temporary_enrollment_state_changes (...)
                         SELECT ..., due.workflow_state, changed.state
                         FROM changed JOIN due USING (id) RETURNING to_state)
        SELECT to_state, count(*) FROM audited GROUP BY to_state

    Measured with bench/ (bench/RESULTS.md), the cost of a sweep is writing rows, so this is
    shaped for the write:
    * One statement per batch, not a pair per ending state: one pass over the batch's pages.
    * The UPDATE walks its rows through the pairing index, in the table's order (roughly), as
      the one-statement floor does. An earlier form joined the UPDATE to `due` by id; PostgreSQL
      hashed that join, the hash spilled into batches, and the rows came out in hash order: every
      page was dirtied, evicted and written several times, with three times the WAL and the
      full-page images of the floor, for the same rows.
    * `due` is the rows' state before the update (every part of one statement sees the same
      snapshot, and RETURNING only sees the new state); it is joined to what the UPDATE
      returned, after the write, where its order costs nothing.
    * The audit rows are made from what the UPDATE returned, so they are exactly the rows it
      changed: the count check of the portable path holds by construction.
    * The counts come back per state and, for the metric totals (tasks/metric_totals.py), per
      lateness bucket: the audit rows joined to the changed rows' `end_at`, in this statement.
    """
    pairing_ids = bindparam(None, list(ending_states), type_=ARRAY(BigInteger))
    claimed = select(
        func.unnest(pairing_ids).label("pairing_id"),
        func.unnest(bindparam(None, list(ending_states.values()), type_=ARRAY(String()))).label(
            "ending_state"
        ),
    ).cte("claimed")
    scope = and_(
        _TEMPORARY, _LIVE, Enrollment.temporary_enrollment_pairing_id == any_(pairing_ids), where
    )
    due = (
        select(Enrollment.id, Enrollment.workflow_state.label("from_state")).where(scope).cte("due")
    )
    as_of = literal(ctx.as_of, type_=CanvasTimestamp())
    changed = (
        update(Enrollment)
        .where(claimed.c.pairing_id == Enrollment.temporary_enrollment_pairing_id, scope)
        .values(
            workflow_state=claimed.c.ending_state,
            updated_at=ctx.changed_at,
            completed_at=case(
                (claimed.c.ending_state == "completed", as_of), else_=Enrollment.completed_at
            ),
        )
        .returning(
            Enrollment.id,
            Enrollment.temporary_enrollment_pairing_id,
            Enrollment.root_account_id,
            Enrollment.user_id,
            Enrollment.start_at,
            Enrollment.end_at,
            Enrollment.type,
            claimed.c.ending_state,
        )
        .cte("changed")
    )
    # What Canvas's callbacks would have written (tasks/canvas_callbacks.py), from the same
    # rows: their cache rows and their users' updated_at.
    cached = canvas_callbacks.enrollment_state_upsert(
        session,
        select(
            changed.c.id.label("enrollment_id"),
            changed.c.ending_state.label("workflow_state"),
            changed.c.start_at,
            changed.c.end_at,
            changed.c.type,
            changed.c.root_account_id,
        ),
        ctx.as_of,
        ctx.changed_at,
    ).cte("cached")
    touched = (
        update(User)
        .where(User.id.in_(select(changed.c.user_id)))
        .values(updated_at=ctx.changed_at)
        .cte("touched")
    )
    audited = (
        insert(StateChange)
        .from_select(
            _AUDIT_COLUMNS,
            select(
                literal(ENROLLMENT),
                changed.c.id,
                changed.c.temporary_enrollment_pairing_id,
                changed.c.root_account_id,
                due.c.from_state,
                changed.c.ending_state,
                *_audit_constants(ctx),
            ).join_from(changed, due, due.c.id == changed.c.id),
        )
        .returning(StateChange.to_state, StateChange.context_id)
        .cte("audited")
    )
    late = metric_totals.lateness_microseconds_sql(
        literal(ctx.changed_at, type_=CanvasTimestamp()), changed.c.end_at
    ).label("late")
    # Materialized: each row's lateness is computed once (numeric arithmetic), not once more for
    # every bucket the CASE below tries, as an inlined subquery had it (9 % of a batch's time).
    lateness = (
        select(audited.c.to_state, late)
        .join_from(audited, changed, changed.c.id == audited.c.context_id)
        .cte("lateness")
        .prefix_with("MATERIALIZED")
    )
    bucket = metric_totals.lateness_bucket_sql(lateness.c.late)
    late_ms = func.coalesce(func.sum(metric_totals.milliseconds_sql(lateness.c.late)), 0)
    counts = (
        select(lateness.c.to_state, bucket, func.count(), late_ms)
        .group_by(lateness.c.to_state, bucket)
        .add_cte(cached, touched)
    )
    changes: dict[str, int] = {}
    for state, bucket_label, n, late_total in session.connection().execute(counts):
        changes[state] = changes.get(state, 0) + int(n)
        if ctx.reason == REASON_EXPIRED:
            metric_totals.count_lateness_bucket(session, bucket_label, int(n), int(late_total))
    for state, n in changes.items():
        metric_totals.count_state_changes(session, ENROLLMENT, state, n)
    return changes


def pairings_with_nothing_left(
    session: Session, pairing_ids: Collection[int], as_of: dt.datetime
) -> list[int]:
    """Those of `pairing_ids` whose every live enrollment is due at `as_of`, i.e. that end once
    their due enrollments expire. Asked before the update so a dry run gets the same answer."""
    still_live = exists().where(
        Enrollment.temporary_enrollment_pairing_id == Pairing.id,
        _TEMPORARY,
        _LIVE,
        or_(Enrollment.end_at.is_(None), Enrollment.end_at > as_of),
    )
    has_enrollments = exists().where(Enrollment.temporary_enrollment_pairing_id == Pairing.id)
    stmt = (
        select(Pairing.id)
        .where(_id_in(session, Pairing.id, pairing_ids), has_enrollments, ~still_live)
        .order_by(Pairing.id)
    )
    return list(session.scalars(stmt))


def audit_pairings(
    session: Session,
    pairings: Iterable[tuple[int, int, str]],
    to_state: str,
    ctx: ChangeContext,
) -> list[tuple[int, int, str]]:
    """An audit row for each pairing `(id, root_account_id, from_state)` moving to `to_state`
    (tep's pairing states: `active`, `ended`, `deleted`). Returns the pairings."""
    pairings = list(pairings)
    if not pairings:
        return pairings
    connection = session.connection()
    if session.get_bind().dialect.name == "postgresql":
        # One statement however many: a sweep batch ends thousands of pairings, which would
        # otherwise go as many multi-row INSERTs of ten bound parameters a row (bench/).
        rows = (
            func.unnest(
                bindparam(None, [p[0] for p in pairings], type_=ARRAY(BigInteger)),
                bindparam(None, [p[1] for p in pairings], type_=ARRAY(BigInteger)),
                bindparam(None, [p[2] for p in pairings], type_=ARRAY(String())),
            )
            .table_valued("pairing_id", "root_account_id", "from_state")
            .render_derived()
        )
        connection.execute(
            insert(StateChange).from_select(
                _AUDIT_COLUMNS,
                select(
                    literal(PAIRING),
                    rows.c.pairing_id,
                    rows.c.pairing_id,
                    rows.c.root_account_id,
                    rows.c.from_state,
                    literal(to_state),
                    *_audit_constants(ctx),
                ),
            )
        )
    else:
        connection.execute(
            insert(StateChange),
            [
                {
                    "context_type": PAIRING,
                    "context_id": pid,
                    "temporary_enrollment_pairing_id": pid,
                    "root_account_id": root,
                    "from_state": from_state,
                    "to_state": to_state,
                    "reason": ctx.reason,
                    "run_id": ctx.run_id,
                    "actor_id": ctx.actor_id,
                    "created_at": ctx.changed_at,
                }
                for pid, root, from_state in pairings
            ],
        )
    metric_totals.count_state_changes(session, PAIRING, to_state, len(pairings))
    return pairings


def record_pairing_ends(
    session: Session,
    pairings: Iterable[tuple[int, int, str]],
    ctx: ChangeContext,
    *,
    ended_at: dt.datetime,
) -> int:
    """End pairings `(id, root_account_id, from_state)`: a row each in tep's pairing ends and an
    audit row each. Canvas's pairing row is not touched: Canvas has no `ended` state.

    Beside a hosted Canvas, a pairing with commands Canvas has not answered yet does not end
    here: it ends when the last of them finishes (tasks/canvas_rest/commands.py). Returns how
    many ended."""
    if through_canvas(session):
        pairings = _not_awaiting_canvas(session, list(pairings))
    pairings = audit_pairings(session, pairings, "ended", ctx)
    if pairings:
        session.connection().execute(
            insert(PairingEnd),
            [
                {
                    "temporary_enrollment_pairing_id": pid,
                    "root_account_id": root,
                    "ended_at": ended_at,
                    "run_id": ctx.run_id,
                    "created_at": ctx.changed_at,
                }
                for pid, root, _ in pairings
            ],
        )
        deadlines.forget_pairings(session, [p[0] for p in pairings])
    return len(pairings)


# --------------------------------------------------------------------------------------------
# The sweep


def expire_batch(
    session: Session,
    pairing_ids: Collection[int],
    summary: RunSummary,
    *,
    write: bool,
) -> None:
    """Expire the due enrollments of these pairings and end those left with nothing live.

    Claims the open pairings with `FOR UPDATE SKIP LOCKED`: a pairing another sweep is working on
    is left to it. Everything here commits (or rolls back) with the caller's transaction, so each
    pairing is processed wholly or not at all. The deadline index follows: rows of pairings that
    are over (deleted, or ended elsewhere) are dropped, so they are not walked again, and the
    claimed pairings' rows are re-read from Canvas's rows.
    """
    if write:
        closed = set(pairing_ids) - set(
            session.scalars(
                select(Pairing.id).where(_id_in(session, Pairing.id, pairing_ids), open_pairing())
            )
        )
        deadlines.forget_pairings(session, closed)
    claimed = session.execute(
        select(
            Pairing.id,
            Pairing.root_account_id,
            Pairing.ending_enrollment_state,
            Account.workflow_state,
        )
        .join(Account, Account.id == Pairing.root_account_id)
        .where(_id_in(session, Pairing.id, pairing_ids), open_pairing())
        .order_by(Pairing.id)
        .with_for_update(of=Pairing, skip_locked=True)
    ).all()
    if claimed:
        # The claim's NOT EXISTS saw its statement's snapshot: a pairing another sweep ended and
        # unlocked meanwhile is claimed all the same, since its end is in tep's table and
        # Canvas's row did not change (PostgreSQL re-checks a locked row only if it changed).
        # With the locks held, a new statement sees every end committed by an earlier holder.
        ended_meanwhile = set(
            session.scalars(
                select(PairingEnd.temporary_enrollment_pairing_id).where(
                    _id_in(
                        session, PairingEnd.temporary_enrollment_pairing_id, [r[0] for r in claimed]
                    )
                )
            )
        )
        claimed = [row for row in claimed if row[0] not in ended_meanwhile]
    if not claimed:
        return
    missing_end_at = {
        s.pairing_id: s
        for s in pairings_missing_end_at(session, pairing_ids=[row[0] for row in claimed])
    }

    ending_states: dict[int, str] = {}
    roots: dict[int, int] = {}
    for pid, root, raw_state, account_state in claimed:
        ending_state = resolve_ending_state(raw_state)
        if account_state == "deleted":
            summary.skip(
                SkippedPairing(pid, root, SKIP_ACCOUNT_DELETED, f"account {root} is deleted")
            )
        elif ending_state is None:
            summary.skip(
                SkippedPairing(
                    pid,
                    root,
                    SKIP_UNKNOWN_ENDING_STATE,
                    f"ending_enrollment_state {raw_state!r} is not one of "
                    f"{', '.join(ENDING_ENROLLMENT_STATES)}",
                )
            )
        elif pid in missing_end_at:
            summary.skip(missing_end_at[pid])
        else:
            ending_states[pid] = ending_state
            roots[pid] = root
    if not roots:
        return

    ctx = ChangeContext(run_id=summary.run_id, as_of=summary.as_of, reason=REASON_EXPIRED)
    ending = pairings_with_nothing_left(session, list(roots), summary.as_of)
    due = Enrollment.end_at <= summary.as_of
    changed = expire_enrollments_by_pairing(session, ending_states, due, ctx, write=write)
    for ending_state, count in changed.items():
        summary.enrollments_changed[ending_state] += count
    ended_now = len(ending)
    if write:
        ended_now = record_pairing_ends(
            session, ((pid, roots[pid], "active") for pid in ending), ctx, ended_at=summary.as_of
        )
        ended = set(ending)
        deadlines.refresh_pairings(session, [pid for pid in roots if pid not in ended])
    summary.pairings_ended += ended_now


ProgressCallback = Callable[[RunSummary], None]


# set_config(..., true) is SET LOCAL: both end with the transaction, in one round trip.
SWEEP_SETTINGS_SQL = (
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), "
    "set_config('jit', 'off', true)"
)


def _plan_for_the_sweep(session: Session) -> None:
    """PostgreSQL: plan this transaction's statements for their actual parameters, without JIT.

    * psycopg prepares a statement it has run five times, and PostgreSQL then switches to a
      generic plan that ignores the parameter values. For a sweep batch, whose arrays hold
      anything from one pairing to tens of thousands, that plan was measured at three times the
      time of a custom one (bench/). Planning costs milliseconds; a batch writes for seconds.
    * JIT compilation pays off for long scans and aggregates; a sweep's statements are index
      lookups and writes. The window's row estimate (a million-row LIMIT) put its cost above
      `jit_above_cost`, so an idle sweep compiled for 8 ms to read an empty index range, and a
      larger table, with larger estimates, made it compile more (bench/, the idle figures).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(SWEEP_SETTINGS_SQL))
        canvas_callbacks.allow_bulk_writes(session)


def run_sweep(
    factory: sessionmaker[Session],
    *,
    as_of: dt.datetime | None = None,
    dry_run: bool = False,
    account_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    window_size: int = WINDOW_SIZE,
    trigger: str = "manual",
    on_batch: ProgressCallback | None = None,
) -> RunSummary:
    """Expire everything due at `as_of` (default: now), batch by batch. Idempotent.

    The due rows are read a window at a time (`window_size` rows, in `end_at` order); the
    window's pairings are then expired in id order, `batch_size` pairings at a time, each batch
    its own transaction. A dry run takes the same path, counts instead of writing, and
    rolls every batch back, so what it reports is what a real run at that moment would do.
    """
    started_at = utcnow()
    as_of = require_aware(as_of) if as_of is not None else started_at
    summary = RunSummary(
        run_id=new_run_id(),
        as_of=as_of,
        dry_run=dry_run,
        account_id=account_id,
        trigger=trigger,
        started_at=started_at,
    )
    if account_id is not None:
        with transaction(factory, commit=False) as session:
            require_root_account(session, account_id)
    # What the committed batches did, and the batch being written: the record of a run that an
    # exception or a signal cuts short.
    committed = summary.copy()
    in_flight: Collection[int] = ()
    try:
        # Bring tep's deadline index up to what others wrote (tasks/deadlines.py). This commits
        # even in a dry run: it changes no enrollment or pairing, only where tep looks for work.
        with transaction(factory) as session:
            _plan_for_the_sweep(session)
            if trigger == TRIGGER_NIGHTLY:
                summary.discovered = deadlines.rebuild(session)
            else:
                summary.discovered = deadlines.discover(session, as_of)
        with transaction(factory, commit=False) as session:
            _plan_for_the_sweep(session)
            # Pairings with an undated live enrollment are never due, so no window would meet
            # them; list them here so that every run reports them until someone fixes the data.
            for bad in pairings_missing_end_at(session, account_id=account_id):
                summary.skip(bad)
        committed = summary.copy()

        # Pairings not to take again: those skipped (bad data), and in a dry run every one
        # already counted, since nothing changes and a pairing with due rows in two windows would
        # be met (and counted) twice. A real run expires all of a pairing's due rows at once, so
        # its later rows are gone from the index by the next window.
        seen: set[int] = set(summary.skipped)
        done: Container[int] = seen if dry_run else summary.skipped.keys()
        after: tuple[dt.datetime, int] | None = None
        while True:
            with transaction(factory, commit=False) as session:
                _plan_for_the_sweep(session)
                last, window = _next_window(session, as_of, account_id, after, window_size)
            if last is None:
                break
            if after is not None and last <= after:
                # The keyset must move forward; a window that does not would be read for ever.
                raise LifecycleError(f"sweep window did not advance past {after}; sweep stopped")
            after = last
            for pairing_ids in _batches(window, batch_size, done):
                in_flight = pairing_ids
                with transaction(factory, commit=not dry_run) as session:
                    _plan_for_the_sweep(session)
                    expire_batch(session, pairing_ids, summary, write=not dry_run)
                    summary.batches += 1
                committed, in_flight = summary.copy(), ()
                if dry_run:
                    seen.update(pairing_ids)
                if on_batch is not None:
                    on_batch(summary)
    except BaseException as error:
        if not dry_run:
            record_cut_short(factory, summary, committed, in_flight, error)
        raise

    summary.finished_at = utcnow()
    if not dry_run:
        record_run(factory, summary)
        log_skipped(factory, summary)
    log_summary(summary)
    return summary


# The skipped pairings a run's log line names; its summary (and its recorded run) lists them all.
SKIPPED_IDS_LOGGED = 20


def log_summary(summary: RunSummary) -> None:
    """The run's one log line, its counts also as fields of a JSON log (worker/logs.py).

    Celery's line on the sweep task's success leaves out the task's result, which is this same
    summary (worker/celery_app.py), so a sweep is logged once."""
    skipped = sorted(summary.skipped)
    named = ", ".join(str(pid) for pid in skipped[:SKIPPED_IDS_LOGGED])
    more = len(skipped) - SKIPPED_IDS_LOGGED
    facts = summary.to_json()
    del facts["pairings_skipped"]  # the whole list (with details), every tick: too much
    log.info(
        "sweep %s as of %s%s: %d enrollment(s) changed %s, %d pairing(s) ended, %d skipped%s"
        " in %.3f s",
        summary.run_id,
        iso(summary.as_of),
        " (dry run)" if summary.dry_run else "",
        summary.enrollments_changed_total,
        summary.enrollments_changed,
        summary.pairings_ended,
        len(skipped),
        f" ({named}{f' and {more} more' if more > 0 else ''})" if skipped else "",
        facts["duration_seconds"],
        extra={
            **facts,
            "pairings_skipped": len(skipped),
            "skipped_pairing_ids": skipped[:SKIPPED_IDS_LOGGED],
        },
    )


def log_skipped(factory: sessionmaker[Session], summary: RunSummary) -> None:
    """Log at ERROR the run's skipped pairings that are new, or were last logged a day or more
    ago (tasks/skip_logs.py); its summary lists every one either way.

    Only for a committed run that went through its whole scope: a dry run or a run cut short
    logs none (the next run does)."""
    skipped = sorted(summary.skipped.values(), key=_by_id)
    try:
        with transaction(factory) as session:
            due = skip_logs.to_log(
                session, skipped, as_of=summary.as_of, account_id=summary.account_id
            )
    except SQLAlchemyError as error:
        # Without the memory, every one is logged: better twice than never.
        log.warning(
            "sweep %s: could not note which skipped pairings were logged: %s",
            summary.run_id,
            _first_line(error),
            extra={"run_id": summary.run_id},
        )
        due = {(s.pairing_id, s.reason) for s in skipped}
    for pairing in skipped:
        if (pairing.pairing_id, pairing.reason) in due:
            log.error(
                "skipped pairing %s (root account %s): %s: %s",
                pairing.pairing_id,
                pairing.root_account_id,
                pairing.reason,
                pairing.detail,
                extra={"run_id": summary.run_id, **dataclasses.asdict(pairing)},
            )


def record_run(factory: sessionmaker[Session], summary: RunSummary) -> None:
    """Record a committed run (or one cut short, with what its committed batches did).

    Idle runs do not each add a row: beat's tick alone would add 1,440 a day, and the runs that
    did something would scroll away among them. An idle run (:func:`is_idle_run`) takes the
    place of the latest row when that one is an idle run of the same trigger and account, and
    carries on its streak in the summary: `idle_runs` (how many runs the row stands for) and
    `idle_since` (when the first of them started). The row is otherwise this run's, so the
    latest row is always the last run (the metrics' last-sweep time moves on every tick), and
    every run that changed something or failed keeps a row of its own. The metric totals count
    each run as its row is inserted (tasks/metric_totals.py), idle ones included.
    """
    recorded = summary.to_json()
    with transaction(factory) as session:
        if is_idle_run(recorded):
            recorded.update(_idle_streak(session, summary))
        session.add(
            SweepRun(
                id=summary.run_id,
                trigger=summary.trigger,
                as_of=summary.as_of,
                account_id=summary.account_id,
                started_at=summary.started_at,
                finished_at=summary.finished_at or utcnow(),
                enrollments_changed=summary.enrollments_changed_total,
                pairings_ended=summary.pairings_ended,
                pairings_skipped=len(summary.skipped),
                summary=json.dumps(recorded),
            )
        )


def is_idle_run(summary: Mapping[str, Any]) -> bool:
    """Whether a recorded run (its JSON summary) completed and changed nothing: no enrollment,
    no pairing end. It may have skipped pairings: those are left as they were."""
    return (
        summary.get("status", RUN_COMPLETED) == RUN_COMPLETED
        and not summary.get("enrollments_changed_total")
        and not summary.get("pairings_ended")
    )


def _idle_streak(session: Session, summary: RunSummary) -> dict[str, Any]:
    """The streak an idle run carries on: the latest row's, which is removed, when that row is
    an idle run of the same trigger and account that started no later; else a new one."""
    streak: dict[str, Any] = {"idle_runs": 1, "idle_since": iso(summary.started_at)}
    latest = session.execute(
        select(
            SweepRun.id,
            SweepRun.trigger,
            SweepRun.account_id,
            SweepRun.started_at,
            SweepRun.summary,
        )
        .order_by(SweepRun.started_at.desc(), SweepRun.id.desc())
        .limit(1)
    ).first()
    if (
        latest is None
        or (latest.trigger, latest.account_id) != (summary.trigger, summary.account_id)
        or latest.started_at > summary.started_at
    ):
        return streak
    previous = json.loads(latest.summary)
    if not is_idle_run(previous):
        return streak
    # By its id: a concurrent idle run that took its place first leaves nothing to delete here,
    # and this run starts a streak of its own rather than count the other's twice.
    removed = session.connection().execute(delete(SweepRun).where(SweepRun.id == latest.id))
    if removed.rowcount:
        streak = {
            "idle_runs": int(previous.get("idle_runs", 1)) + 1,
            "idle_since": previous.get("idle_since", previous["started_at"]),
        }
    return streak


def record_cut_short(
    factory: sessionmaker[Session],
    summary: RunSummary,
    committed: RunSummary,
    in_flight: Collection[int],
    error: BaseException,
) -> None:
    """Record a run that `error` cut short, with what its committed batches changed (the audit
    rows of its run id). A failure to record is logged: it must not hide the error, which the
    caller raises on."""
    cause = _root_cause(error)
    try:
        # A signal that comes during a batch's COMMIT is raised once the COMMIT is done: the
        # batch being written may have committed after all.
        if in_flight and _audited(factory, summary.run_id, in_flight):
            committed = summary.copy()
        committed.status = RUN_FAILED if isinstance(cause, Exception) else RUN_INTERRUPTED
        committed.error = _first_line(cause)
        committed.finished_at = utcnow()
        record_run(factory, committed)
    except Exception as failure:
        # Expected when the database itself cut the run short, whose error the caller reports.
        log.log(
            logging.INFO if isinstance(error, SQLAlchemyError) else logging.ERROR,
            "sweep %s: could not record the run that %s cut short: %s",
            summary.run_id,
            type(cause).__name__,
            _first_line(failure),
        )
        return
    # INFO: whatever cut the run short is reported by whoever sees the error (the worker's task
    # failure, the CLI's one line).
    log.info(
        "sweep %s %s (%s): its committed batches changed %d enrollment(s), ended %d pairing(s)",
        summary.run_id,
        committed.status,
        committed.error,
        committed.enrollments_changed_total,
        committed.pairings_ended,
    )


def _root_cause(error: BaseException) -> BaseException:
    """What cut the run short, not what failed as its transaction was rolled back for it: a
    Celery soft time limit raised in the middle of a statement makes the ROLLBACK fail with
    "another command is already in progress" (SQLAlchemy's error, from psycopg's, during it)."""
    seen = {id(error)}
    while True:
        before = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if before is None or id(before) in seen:
            return error
        seen.add(id(before))
        error = before


def _first_line(error: BaseException) -> str:
    """`OperationalError: connection refused`: an error's class and first line, cut short."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def _audited(factory: sessionmaker[Session], run_id: str, pairing_ids: Collection[int]) -> bool:
    """Whether this run wrote audit rows for any of these pairings (by the pairing index)."""
    with transaction(factory, commit=False) as session:
        found = session.scalar(
            select(StateChange.id)
            .where(
                _id_in(session, StateChange.temporary_enrollment_pairing_id, pairing_ids),
                StateChange.run_id == run_id,
            )
            .limit(1)
        )
    return found is not None


def require_root_account(session: Session, account_id: int) -> Account:
    account = session.get(Account, account_id) if account_id != DUMMY_ROOT_ACCOUNT_ID else None
    if account is None:
        raise UnknownAccount(f"no account with id {account_id}")
    if not account.is_root:
        raise UnknownAccount(
            f"account {account_id} is a sub-account; give its root account "
            f"{account.root_account_id}"
        )
    return account


# --------------------------------------------------------------------------------------------
# Ending one pairing now


def end_pairing(
    session: Session,
    pairing_id: int,
    *,
    as_of: dt.datetime,
    actor_id: int | None = None,
    delete: bool = False,
    run_id: str | None = None,
) -> tuple[Pairing, dict[str, int]]:
    """End a pairing early: its live enrollments get its ending state now, audited, and the
    pairing's end is recorded in tep's table; with `delete`, Canvas's row also becomes `deleted`
    with `deleted_by_id`, as Canvas's DELETE writes it.

    Waits for the pairing's row lock (a sweep holding it finishes its batch first). A pairing
    that is already over is returned unchanged (so ending or deleting twice is harmless), except
    that deleting an `ended` pairing marks it `deleted`, keeping its `ended_at`. Returns the
    pairing and the enrollments changed per state.
    """
    pairing = session.execute(
        select(Pairing).where(Pairing.id == pairing_id).with_for_update()
    ).scalar_one_or_none()
    if pairing is None:
        raise UnknownPairing(f"no temporary enrollment pairing with id {pairing_id}")
    if delete and through_canvas(session):
        # tep never deletes a pairing in a hosted Canvas (README, "Running beside a hosted
        # Canvas"); marking only the mirror's row deleted would be undone by the next sync.
        raise LifecycleError(
            f"pairing {pairing_id} is a hosted Canvas's: delete it in Canvas (the next sync "
            "mirrors that), or end it early here without deleting it"
        )
    shown = pairing_state(session, pairing)
    if shown == "deleted" or (shown == "ended" and not delete):
        return pairing, {}
    ending_state = resolve_ending_state(pairing.ending_enrollment_state)
    if ending_state is None and shown == "active":
        raise UnknownEndingState(
            f"pairing {pairing_id} has ending_enrollment_state "
            f"{pairing.ending_enrollment_state!r}, not one of {', '.join(ENDING_ENROLLMENT_STATES)}"
        )
    ctx = ChangeContext(
        run_id=run_id or new_run_id(),
        as_of=require_aware(as_of),
        reason=REASON_PAIRING_DELETED if delete else REASON_PAIRING_ENDED,
        actor_id=actor_id,
    )
    canvas_callbacks.allow_bulk_writes(session)
    # An ended pairing has nothing live left to expire.
    changed = (
        expire_enrollments(session, [pairing_id], ending_state, true(), ctx) if ending_state else 0
    )
    me = [(pairing.id, pairing.root_account_id, shown)]
    if delete:
        audit_pairings(session, me, "deleted", ctx)
        if shown == "active" and not (
            # Beside a hosted Canvas, the end waits for Canvas's answers (record_pairing_ends).
            through_canvas(session) and not _not_awaiting_canvas(session, me)
        ):
            _insert_pairing_end(session, pairing.id, pairing.root_account_id, ctx)
        # What Canvas's own DELETE writes (temporary_enrollment_pairings_api_controller.rb):
        # the soft delete and who did it.
        session.connection().execute(
            update(Pairing)
            .where(Pairing.id == pairing.id)
            .values(workflow_state="deleted", deleted_by_id=actor_id, updated_at=ctx.changed_at)
        )
    else:
        record_pairing_ends(session, me, ctx, ended_at=ctx.as_of)
    deadlines.forget_pairings(session, [pairing.id])
    session.refresh(pairing)
    return pairing, {ending_state: changed} if ending_state and changed else {}


def _insert_pairing_end(session: Session, pairing_id: int, root: int, ctx: ChangeContext) -> None:
    session.connection().execute(
        insert(PairingEnd).values(
            temporary_enrollment_pairing_id=pairing_id,
            root_account_id=root,
            ended_at=ctx.as_of,
            run_id=ctx.run_id,
            created_at=ctx.changed_at,
        )
    )


# --------------------------------------------------------------------------------------------
# How a pairing is shown (Canvas's row and tep's end together)


@dataclasses.dataclass(frozen=True)
class PairingView:
    """A pairing as tep shows it: `workflow_state` `active`, `ended` or `deleted`, and when it
    ended (tep's table; Canvas's row has no such column)."""

    workflow_state: str
    ended_at: dt.datetime | None


def pairing_views(session: Session, pairings: Iterable[Pairing]) -> dict[int, PairingView]:
    """The shown state of each pairing, in one query of tep's pairing ends."""
    pairings = list(pairings)
    ends: dict[int, dt.datetime] = {}
    if pairings:
        ends = dict(
            session.execute(
                select(PairingEnd.temporary_enrollment_pairing_id, PairingEnd.ended_at).where(
                    _id_in(
                        session,
                        PairingEnd.temporary_enrollment_pairing_id,
                        [p.id for p in pairings],
                    )
                )
            ).all()
        )
    return {
        p.id: PairingView(
            "deleted" if p.workflow_state == "deleted" else "ended" if p.id in ends else "active",
            ends.get(p.id),
        )
        for p in pairings
    }


def pairing_view(session: Session, pairing: Pairing) -> PairingView:
    return pairing_views(session, [pairing])[pairing.id]


def pairing_state(session: Session, pairing: Pairing) -> str:
    return pairing_view(session, pairing).workflow_state


def shown_state_sql() -> ColumnElement[str]:
    """SQL over `Pairing`: the state tep shows (`active`, `ended` or `deleted`)."""
    ended = exists().where(PairingEnd.temporary_enrollment_pairing_id == Pairing.id)
    return case(
        (Pairing.workflow_state == "deleted", literal("deleted")),
        (ended, literal("ended")),
        else_=literal("active"),
    )


def settle_pairing(session: Session, pairing_id: int, *, as_of: dt.datetime, run_id: str) -> None:
    """Apply the sweep's rules to one pairing now, as a batch of one: expire its due enrollments
    and end it if nothing live is left. For a writer that has just changed one of the pairing's
    enrollments (an API conclude or delete) and holds the pairing's row lock."""
    summary = RunSummary(
        run_id=run_id,
        as_of=as_of,
        dry_run=False,
        account_id=None,
        trigger="api",
        started_at=utcnow(),
    )
    expire_batch(session, [pairing_id], summary, write=True)
