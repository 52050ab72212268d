"""The measurements. Each one starts from its own file copy of the built data and checks its counts.

Sweeps run in child processes (spawned, so they start as clean as a worker does): that is how
the peak RSS of the sweeping process alone is read (`getrusage` in the child), and how several
sweepers run truly at once. Wall times are taken with `time.monotonic()`, which on Linux is one
clock for every process, so a parent can time children it released together.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import multiprocessing
import resource
import time
from multiprocessing.synchronize import Event
from typing import Any

import psycopg
from sqlalchemy import event, select

from bench.data import AS_OF, TEP, Shape, connect, sqlalchemy_url
from models import (
    LIVE_ENROLLMENT_STATES,
    Enrollment,
    StateChange,
    TemporaryEnrollmentPairing,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from tasks import canvas_callbacks, lifecycle

_LIVE_SQL = ", ".join(f"'{s}'" for s in LIVE_ENROLLMENT_STATES)

# The floor: what PostgreSQL itself does to give the same rows the same states, with no audit,
# no batching, no deadline index and no pairing bookkeeping: one UPDATE of the enrollments and
# one of their `enrollment_states` rows (Canvas's cache, which must follow every change), in one
# transaction. On Canvas's schema both statements fire Canvas's `guard_excessive_updates`
# triggers, so the transaction raises the guard's limit for the two tables with SET LOCAL, as
# Canvas's own bulk updates do (and as the sweep does, tasks/canvas_callbacks.py).
FLOOR_GUARD_LIMIT = 2_000_000_000


def guard_sql(tables: tuple[str, ...]) -> str:
    """SET LOCAL of Canvas's update guard's limit for `tables`, in one statement."""
    return "SELECT " + ", ".join(
        f"set_config('inst.max_update_limit.{table}', '{FLOOR_GUARD_LIMIT}', true)"
        for table in tables
    )


FLOOR_GUARD_SQL = guard_sql(("enrollments", "enrollment_states"))
FLOOR_SQL = f"""
UPDATE enrollments e
   SET workflow_state = COALESCE(p.ending_enrollment_state, 'deleted'),
       updated_at = now(),
       completed_at = CASE WHEN p.ending_enrollment_state = 'completed'
                           THEN %(as_of)s ELSE e.completed_at END
  FROM temporary_enrollment_pairings p
 WHERE p.id = e.temporary_enrollment_pairing_id
   AND p.workflow_state = 'active'
   AND e.temporary_enrollment_pairing_id IS NOT NULL
   AND e.workflow_state IN ({_LIVE_SQL})
   AND e.end_at <= %(as_of)s
"""
# The same enrollments' cache rows, as the sweep leaves them (a state that is not live: no dates,
# see tasks/canvas_callbacks.py). Every temporary enrollment of the built data that ends by as_of
# was due, so they are the temporary ones ending by as_of; the row count is checked.
FLOOR_STATES_SQL = """
UPDATE enrollment_states s
   SET state = e.workflow_state,
       state_is_current = true,
       state_started_at = NULL,
       state_valid_until = NULL,
       access_is_current = false,
       lock_version = s.lock_version + 1,
       updated_at = now()
  FROM enrollments e
 WHERE e.id = s.enrollment_id
   AND e.temporary_enrollment_pairing_id IS NOT NULL
   AND e.end_at <= %(as_of)s
"""

# Canvas's EnrollmentState.recalculate_expired_states works through expired rows 250 at a time.
BASELINE_BATCH = 250


@dataclasses.dataclass
class Check:
    """A count the benchmark expected, and what it found."""

    what: str
    expected: int
    found: int

    @property
    def ok(self) -> bool:
        return self.expected == self.found


@dataclasses.dataclass
class SweepResult:
    seconds: float
    changed: int
    pairings_ended: int
    batches: int
    peak_rss_mb: float
    finished_at: float  # time.monotonic() in the child
    # The longest stretch between two commits: at most what one batch held its pairings' row
    # locks for (the first stretch also holds the run's opening reads).
    longest_batch: float
    # Deadline index rows the run's discovery (or, nightly, its rebuild) wrote, and how long
    # that first transaction took.
    discovered: int = 0
    discovery_seconds: float = 0.0


@dataclasses.dataclass
class FloorResult:
    seconds: float  # both statements and the commit
    enrollments_seconds: float  # the enrollments UPDATE alone
    states_seconds: float  # the enrollment_states UPDATE alone
    rows: int
    state_rows: int


def floor(url: str, as_of: dt.datetime = AS_OF) -> FloorResult:
    """The floor's two UPDATEs in one transaction, timed together (commit included) and apart."""
    with connect(url) as conn:
        parameters = {"as_of": as_of}
        started = time.monotonic()
        conn.execute(FLOOR_GUARD_SQL)
        rows = conn.execute(FLOOR_SQL, parameters).rowcount
        between = time.monotonic()
        state_rows = conn.execute(FLOOR_STATES_SQL, parameters).rowcount
        states_done = time.monotonic()
        conn.commit()
        finished = time.monotonic()
    return FloorResult(
        seconds=finished - started,
        enrollments_seconds=between - started,
        states_seconds=states_done - between,
        rows=rows,
        state_rows=state_rows,
    )


def _sweep_child(
    url: str,
    batch_size: int,
    start: Event | None,
    results: Any,
    as_of: dt.datetime,
    trigger: str,
) -> None:
    engine = make_engine(sqlalchemy_url(url))
    factory = make_sessionmaker(engine)
    with engine.connect():
        pass  # connect before the start signal: we time the sweep, not the handshake
    if start is not None:
        start.wait()
    started = time.monotonic()
    commits = [started]
    discovery: list[float] = []

    @event.listens_for(engine, "commit")
    def _first_commit(_connection: Any) -> None:
        # The run's first commit ends its discovery (or nightly rebuild) of the deadline index.
        if not discovery:
            discovery.append(time.monotonic() - started)

    summary = lifecycle.run_sweep(
        factory,
        as_of=as_of,
        batch_size=batch_size,
        trigger=trigger,
        on_batch=lambda _: commits.append(time.monotonic()),
    )
    finished = time.monotonic()
    engine.dispose()
    results.put(
        SweepResult(
            seconds=finished - started,
            changed=summary.enrollments_changed_total,
            pairings_ended=summary.pairings_ended,
            batches=summary.batches,
            # ru_maxrss is in KiB on Linux.
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            finished_at=finished,
            longest_batch=max((b - a for a, b in itertools.pairwise(commits)), default=0.0),
            discovered=summary.discovered,
            discovery_seconds=discovery[0] if discovery else 0.0,
        )
    )


def sweepers(
    url: str,
    count: int,
    batch_size: int,
    as_of: dt.datetime = AS_OF,
    *,
    trigger: str = "bench",
) -> tuple[float, list[SweepResult]]:
    """Run `count` sweeps at once, in separate processes, over the same backlog.

    Returns the wall time from the moment they are released to the moment the last one is done,
    and each one's result.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    children = [
        context.Process(target=_sweep_child, args=(url, batch_size, start, results, as_of, trigger))
        for _ in range(count)
    ]
    for child in children:
        child.start()
    _wait_connected(url, children)
    released = time.monotonic()
    start.set()
    done = [results.get(timeout=3600) for _ in children]
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"a sweeper exited with {child.exitcode}")
    return max(r.finished_at for r in done) - released, done


def _wait_connected(url: str, children: list[Any], timeout: float = 120) -> None:
    """Until every child is connected to the database (ready to be released), or one has died."""
    name = url.rpartition("/")[2]
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
            if row is not None and row[0] >= len(children):
                return
            if any(child.exitcode is not None for child in children):
                raise RuntimeError("a sweeper exited before it was connected")
            time.sleep(0.05)
    raise RuntimeError(f"{len(children)} sweepers did not connect within {timeout} s")


def exactly_once(url: str, shape: Shape, as_of: dt.datetime = AS_OF) -> list[Check]:
    """After sweeping everything: every due enrollment changed exactly once, audited once, its
    `enrollment_states` row and its user following; every pairing ended once; nothing else
    touched; nothing due left in tep's deadline index."""
    temporary = "e.temporary_enrollment_pairing_id IS NOT NULL"
    with connect(url) as conn:

        def one(sql: str) -> int:
            row = conn.execute(sql, {"as_of": as_of}).fetchone()
            return int(row[0]) if row else -1

        changes = f"{TEP}.temporary_enrollment_state_changes"
        distinct_users = one(f"SELECT count(DISTINCT user_id) FROM enrollments e WHERE {temporary}")
        return [
            Check(
                "enrollment audit rows",
                shape.due,
                one(f"SELECT count(*) FROM {changes} WHERE context_type = 'Enrollment'"),
            ),
            Check(
                "enrollments audited",
                shape.due,
                one(
                    f"SELECT count(DISTINCT context_id) FROM {changes} "
                    "WHERE context_type = 'Enrollment'"
                ),
            ),
            Check(
                "enrollments changed from a live state",
                shape.due,
                one(
                    f"SELECT count(*) FROM enrollments e WHERE {temporary} "
                    f"AND workflow_state NOT IN ({_LIVE_SQL})"
                ),
            ),
            Check(
                "enrollment_states rows following their enrollments",
                shape.due,
                one(
                    "SELECT count(*) FROM enrollments e JOIN enrollment_states s "
                    f"ON s.enrollment_id = e.id WHERE {temporary} AND s.state = e.workflow_state "
                    "AND s.state_is_current AND s.state_valid_until IS NULL "
                    "AND s.lock_version = 1"
                ),
            ),
            Check(
                "users of the due enrollments touched",
                distinct_users,
                one("SELECT count(*) FROM users WHERE updated_at > created_at"),
            ),
            Check(
                "pairings ended (tep's pairing ends)",
                shape.pairings,
                one(f"SELECT count(*) FROM {TEP}.temporary_enrollment_pairing_ends"),
            ),
            Check(
                "pairing rows left active (Canvas knows no ended state)",
                shape.pairings,
                one(
                    "SELECT count(*) FROM temporary_enrollment_pairings "
                    "WHERE workflow_state = 'active'"
                ),
            ),
            Check(
                "pairing audit rows",
                shape.pairings,
                one(
                    f"SELECT count(*) FROM {changes} "
                    "WHERE context_type = 'TemporaryEnrollmentPairing'"
                ),
            ),
            Check(
                "deadline index rows left",
                0,
                one(f"SELECT count(*) FROM {TEP}.temporary_enrollment_deadlines"),
            ),
            Check(
                "unrelated enrollments untouched",
                0,
                one(
                    "SELECT count(*) FROM enrollments e WHERE NOT "
                    f"({temporary}) AND updated_at > created_at"
                ),
            ),
            Check(
                "unrelated enrollment_states rows untouched",
                0,
                one(
                    "SELECT count(*) FROM enrollments e JOIN enrollment_states s "
                    f"ON s.enrollment_id = e.id WHERE NOT ({temporary}) AND s.lock_version <> 0"
                ),
            ),
        ]


def baseline(
    url: str, rows: int, per_pairing: int, as_of: dt.datetime = AS_OF
) -> tuple[float, int]:
    """The per-row way, as Canvas's `EnrollmentState.recalculate_expired_states` does it.

    Canvas loads up to 250 expired enrollments as objects, then for each one recalculates and
    saves its state (`process_states_for` -> `ensure_current_state` -> `save`), every save its
    own transaction, and goes again until none is left. Here likewise: 250 due enrollments (with
    their pairings, found as the sweep finds them) loaded as ORM objects, then each one changed in
    Python (its state, `updated_at`, `completed_at`, and an audit row) and flushed, its
    `enrollment_states` row and its user's `updated_at` written as the sweep writes them, and
    committed on its own: the work the sweep does, row by row. It runs over the first `rows` due
    enrollments (whole pairings) and returns the seconds taken and the rows changed.
    """
    engine = make_engine(sqlalchemy_url(url))
    factory = make_sessionmaker(engine)
    last_pairing = max(1, rows // per_pairing)
    run_id = lifecycle.new_run_id()
    changed = 0
    started = time.monotonic()
    with factory() as session:
        while True:
            batch = session.execute(
                lifecycle.join_due(select(Enrollment, TemporaryEnrollmentPairing), as_of)
                .where(Enrollment.temporary_enrollment_pairing_id <= last_pairing)
                .limit(BASELINE_BATCH)
            ).all()
            session.commit()
            if not batch:
                break
            for enrollment, pairing in batch:
                state = lifecycle.resolve_ending_state(pairing.ending_enrollment_state) or "deleted"
                now = utcnow()
                session.add(
                    StateChange(
                        context_type=lifecycle.ENROLLMENT,
                        context_id=enrollment.id,
                        temporary_enrollment_pairing_id=pairing.id,
                        root_account_id=enrollment.root_account_id,
                        from_state=enrollment.workflow_state,
                        to_state=state,
                        reason=lifecycle.REASON_EXPIRED,
                        run_id=run_id,
                        created_at=now,
                    )
                )
                enrollment.workflow_state = state
                enrollment.updated_at = now
                if state == "completed":
                    enrollment.completed_at = as_of
                session.flush()
                canvas_callbacks.sync_enrollments(session, [enrollment.id], as_of, now)
                session.commit()  # one row, one transaction: an ActiveRecord `save`
                changed += 1
    seconds = time.monotonic() - started
    engine.dispose()
    return seconds, changed


def idle(
    urls: list[str], runs: int, batch_size: int, as_of: dt.datetime = AS_OF
) -> list[list[float]]:
    """Seconds of `runs` sweeps with nothing due on each database, in one warm process as a
    worker is. The databases take turns, run by run, so that what the machine is doing at the
    moment (other processes, the disk's flush latency, which dominates an idle sweep's single
    commit) weighs on each of them alike."""
    factories = [make_sessionmaker(make_engine(sqlalchemy_url(url))) for url in urls]
    times: list[list[float]] = [[] for _ in urls]
    try:
        for factory in factories:
            # One run first, untimed: a worker's process is warm (connected, statements compiled).
            lifecycle.run_sweep(factory, as_of=as_of, batch_size=batch_size, trigger="bench")
        for _ in range(runs):
            for factory, spent in zip(factories, times, strict=True):
                started = time.monotonic()
                summary = lifecycle.run_sweep(
                    factory, as_of=as_of, batch_size=batch_size, trigger="bench"
                )
                spent.append(time.monotonic() - started)
                if summary.enrollments_changed_total:
                    raise RuntimeError("an idle sweep found work: the data is not what was built")
    finally:
        for factory in factories:
            bind = factory.kw["bind"]
            bind.dispose()
    return times
