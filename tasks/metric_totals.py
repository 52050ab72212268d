"""The totals behind the Prometheus counters (tep.temporary_enrollment_metric_totals), kept as
changes commit, so that a scrape (tasks/metrics.py) reads a few rows whatever the history.

What is counted, under which key (`name`, `label`):

* every audit row, by what changed and the state it went to
  (`state_changes:<context_type>`, `<to_state>`);
* the lateness of each expiry (reason `expired`): from the enrollment's `end_at` to the change,
  never below zero, per histogram bucket (`expiry_lateness`, the bucket's upper bound) and summed
  in milliseconds (`expiry_lateness_milliseconds`);
* committed sweep runs (`sweep_runs`), their duration in microseconds
  (`sweep_run_microseconds`) and the pairings they skipped (`sweep_pairings_skipped`).

Totals are integers (BIGINT), so they are exact whatever order writers add in. The lateness sum
is kept in milliseconds, not microseconds: a backlog found late, a million enrollments six months
overdue (a first sweep after installing), is 1.6e19 microseconds, past BIGINT's 9.2e18.

How rows get counted: an audit row or sweep run the ORM inserts (`session.add`) is counted by the
mapper events below (an expiry's lateness too), so a new writer cannot forget it; a set-based
(Core) insert counts its own rows with :func:`count_state_changes` and :func:`count_lateness`,
since no per-row event sees them. Counts gather in the session and are written by one upsert
just before it commits (`value = value + :delta`), in key order: the rows are locked last, for
the moment of the commit, always in the same order, so concurrent writers queue on them without
deadlocking and every increment counts; a rolled-back transaction's counts go with it. (tep's
writers use no savepoints; a rolled-back savepoint's counts would still be written.)

Revision 0005 filled the totals from the audit table and runs there were before it; the totals
are kept from then on, and then no longer depend on the audit rows (a pruned audit row or a
restore's new `end_at` does not take a count back, as a Prometheus counter must not go down).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    case,
    cast,
    event,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapper, Session, SessionTransaction, object_session

from models import Enrollment, StateChange, SweepRun
from models.tep import MetricTotal

Key = tuple[str, str]

STATE_CHANGES = "state_changes"
LATENESS = "expiry_lateness"
LATENESS_MILLISECONDS = "expiry_lateness_milliseconds"
RUNS = "sweep_runs"
RUN_MICROSECONDS = "sweep_run_microseconds"
RUNS_SKIPPED = "sweep_pairings_skipped"
NO_LABEL = ""

# Lateness buckets (seconds from an enrollment's end_at to its change). Timers (tasks/timers.py)
# keep it under a second, so the buckets resolve 0.1 s up to 2 minutes (a timer lost and the
# interval sweep catching up: up to one interval, 60 s by default); the long ones show a stopped
# worker or a nightly-only setup. Counts are kept per bucket: changing these bounds later folds
# old counts into the next bound up (tasks/metrics.py), it does not lose them.
LATENESS_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 86400,
)  # fmt: skip
INF = "+Inf"
MICROSECOND = dt.timedelta(microseconds=1)
MICROSECONDS_PER_SECOND = 1_000_000
MILLISECONDS_PER_SECOND = 1_000

_PENDING = "tep.metric_totals.pending"
# The audit rows' context type of an enrollment and the reason of an expiry (tasks/lifecycle.py,
# which imports this module, names them; a test holds the two equal).
ENROLLMENT = "Enrollment"
REASON_EXPIRED = "expired"


def bucket_label(bound: float) -> str:
    """A bucket's upper bound as prometheus_client writes `le` (1 -> "1.0")."""
    return str(float(bound))


_BOUNDS = [(round(b * MICROSECONDS_PER_SECOND), bucket_label(b)) for b in LATENESS_BUCKETS]


def state_change_key(context_type: str, to_state: str) -> Key:
    return (f"{STATE_CHANGES}:{context_type}", to_state)


def pending(session: Session) -> Counter[Key]:
    """What this session's transaction has counted so far, not yet written."""
    counts: Counter[Key] = session.info.setdefault(_PENDING, Counter())
    return counts


def add(session: Session, key: Key, n: int) -> None:
    if n:
        pending(session)[key] += n


def count_state_changes(session: Session, context_type: str, to_state: str, n: int) -> None:
    """Count `n` audit rows written by a set-based insert (ORM inserts count themselves)."""
    add(session, state_change_key(context_type, to_state), n)


def lateness_microseconds(changed_at: dt.datetime, end_at: dt.datetime) -> int:
    """How late a change at `changed_at` was for `end_at`; never negative: a run ahead of time
    (`tep sweep --as-of` in the future) changes enrollments before their end, which is not late."""
    return max(0, (changed_at - end_at) // MICROSECOND)


def lateness_bucket(microseconds: int) -> str:
    for bound, label in _BOUNDS:
        if microseconds <= bound:
            return label
    return INF


def lateness_bucket_sql(microseconds: ColumnElement[Any]) -> ColumnElement[str]:
    """:func:`lateness_bucket` as SQL, for a statement that counts its rows itself. The bounds are
    literal SQL, not parameters, so the expression can be grouped by: PostgreSQL matches a
    GROUP BY expression to the selected one by its text."""
    return case(
        *(
            (microseconds <= literal_column(str(bound)), literal_column(f"'{label}'"))
            for bound, label in _BOUNDS
        ),
        else_=literal_column(f"'{INF}'"),
    )


def lateness_microseconds_sql(
    changed_at: ColumnElement[Any], end_at: ColumnElement[Any]
) -> ColumnElement[int]:
    """:func:`lateness_microseconds` as PostgreSQL SQL (an interval's epoch is exact)."""
    seconds = func.extract("epoch", changed_at - end_at)
    return cast(func.greatest(0, func.round(seconds * MICROSECONDS_PER_SECOND)), BigInteger)


def milliseconds(microseconds: int) -> int:
    """A lateness as the sum keeps it: rounded to the millisecond (half up; never negative)."""
    return (microseconds + 500) // 1000


def milliseconds_sql(microseconds: ColumnElement[int]) -> ColumnElement[int]:
    """:func:`milliseconds` as SQL (integer division of a non-negative BIGINT)."""
    return (microseconds + 500) // 1000


def count_lateness(session: Session, microseconds: Iterable[int]) -> None:
    """Count expiries of these lateness values (from :func:`lateness_microseconds`)."""
    for value in microseconds:
        count_lateness_bucket(session, lateness_bucket(value), 1, milliseconds(value))


def count_lateness_bucket(session: Session, bucket: str, n: int, milliseconds: int) -> None:
    """Count `n` expiries of one bucket, `milliseconds` late in all (the sum of
    :func:`milliseconds` of each)."""
    add(session, (LATENESS, bucket), n)
    add(session, (LATENESS_MILLISECONDS, NO_LABEL), milliseconds)


def count_run(session: Session, run: SweepRun) -> None:
    add(session, (RUNS, NO_LABEL), 1)
    add(session, (RUN_MICROSECONDS, NO_LABEL), (run.finished_at - run.started_at) // MICROSECOND)
    add(session, (RUNS_SKIPPED, NO_LABEL), run.pairings_skipped)


def write_pending(session: Session) -> None:
    """Add what the session counted to the totals, in its transaction: one upsert, in key order."""
    counts = session.info.pop(_PENDING, None)
    rows = [
        {"name": name, "label": label, "value": n}
        for (name, label), n in sorted((counts or {}).items())
        if n
    ]
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(MetricTotal).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[MetricTotal.name, MetricTotal.label],
        set_={"value": MetricTotal.value + stmt.excluded.value},
    )
    session.connection().execute(stmt)


def read(session: Session) -> dict[Key, int]:
    """Every total (a key never counted is absent: read it as 0)."""
    rows = session.execute(select(MetricTotal.name, MetricTotal.label, MetricTotal.value))
    return {(name, label): int(value) for name, label, value in rows}


@event.listens_for(Session, "before_commit")
def _write_before_commit(session: Session) -> None:
    # The commit's own flush would come after this hook: flush first, so that the rows it
    # inserts are counted in this transaction too.
    session.flush()
    write_pending(session)


@event.listens_for(Session, "after_transaction_end")
def _forget_when_over(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (already written) or rolled back
        session.info.pop(_PENDING, None)


@event.listens_for(StateChange, "after_insert")
def _count_inserted_state_change(
    _mapper: Mapper[Any], connection: Connection, row: StateChange
) -> None:
    session = object_session(row)
    if session is None:
        return
    count_state_changes(session, row.context_type, row.to_state, 1)
    if row.context_type == ENROLLMENT and row.reason == REASON_EXPIRED:
        # tep's own expiries are set-based and count their lateness themselves; this is for any
        # other writer of one, so that the totals still say what the audit table says.
        end_at = connection.scalar(select(Enrollment.end_at).where(Enrollment.id == row.context_id))
        if end_at is not None:
            count_lateness(session, [lateness_microseconds(row.created_at, end_at)])


@event.listens_for(SweepRun, "after_insert")
def _count_inserted_run(_mapper: Mapper[Any], _connection: Any, row: SweepRun) -> None:
    session = object_session(row)
    if session is not None:
        count_run(session, row)
