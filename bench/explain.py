"""EXPLAIN ANALYZE of the floor and of the statements of one sweep batch.

The sweep's statements are built by SQLAlchemy, so they are recorded as the driver receives them
(text and parameters) while one batch runs in a transaction that is then rolled back, and replayed
under `EXPLAIN (ANALYZE, BUFFERS)` in the same state, again in a transaction rolled back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from bench.data import AS_OF, connect, sqlalchemy_url
from bench.measure import FLOOR_SQL, FLOOR_STATES_SQL, guard_sql
from models import make_engine, make_sessionmaker, transaction, utcnow
from tasks import canvas_callbacks, deadlines, lifecycle


def collect(url: str, batch_size: int) -> dict[str, str]:
    floor = {"as_of": AS_OF}
    enrollments, states = _explain(url, [(FLOOR_SQL, floor), (FLOOR_STATES_SQL, floor)])
    plans = {"floor: UPDATE enrollments": enrollments, "floor: UPDATE enrollment_states": states}
    for title, (statement, parameters) in _one_batch(url, batch_size).items():
        (plans[title],) = _explain(url, [(statement, parameters)])
    return plans


def _explain(url: str, statements: list[tuple[str, Any]]) -> list[str]:
    """The plans of `statements`, run one after the other in one transaction, rolled back."""
    plans = []
    with connect(url) as conn:
        # Under the settings the sweep sets for its own transactions (no JIT, custom plans), and
        # Canvas's update guard raised for every table the sweep or the floor writes.
        conn.execute(lifecycle.SWEEP_SETTINGS_SQL)
        conn.execute(guard_sql(canvas_callbacks.WRITTEN_TABLES))
        for statement, parameters in statements:
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).fetchall()
            plans.append("\n".join(str(row[0]) for row in rows))
        conn.rollback()
    return plans


def _one_batch(url: str, batch_size: int) -> dict[str, tuple[str, Any]]:
    """The first batch's statements, by what they do, with their parameters."""
    engine = make_engine(sqlalchemy_url(url))
    recorded: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        recorded.append((statement, parameters))

    summary = lifecycle.RunSummary(
        run_id=lifecycle.new_run_id(),
        as_of=AS_OF,
        dry_run=False,
        account_id=None,
        trigger="explain",
        started_at=utcnow(),
    )
    with transaction(make_sessionmaker(engine), commit=False) as session:
        lifecycle._plan_for_the_sweep(session)
        deadlines.discover(session, AS_OF)
        _, window = lifecycle._next_window(session, AS_OF, None, None, lifecycle.WINDOW_SIZE)
        first = next(lifecycle._batches(window, batch_size, done=()), [])
        lifecycle.expire_batch(session, first, summary, write=True)
    engine.dispose()

    # What each statement does, told by its text. (The pairings' ends are sent as a batched
    # multi-row INSERT whose parameters are not recorded in replayable form; they are one row per
    # pairing and cheap.)
    titles: dict[str, Callable[[str], bool]] = {
        "discovery: enrollments past the cursor (the last LOOKBACK_IDS ids)": lambda s: (
            "INSERT INTO tep.temporary_enrollment_deadlines" in s and "enrollments.id >" in s
        ),
        "discovery: enrollments whose cached state_valid_until has passed": lambda s: (
            "INSERT INTO tep.temporary_enrollment_deadlines" in s and "state_valid_until <=" in s
        ),
        "the window: next due deadlines by (end_at, id)": lambda s: 'WITH "window" AS' in s,
        "the claim: FOR UPDATE SKIP LOCKED": lambda s: "SKIP LOCKED" in s,
        "pairings left with nothing live": lambda s: "end_at IS NULL OR" in s,
        "expire + cache + touch users + audit (one data-modifying CTE)": lambda s: (
            "WITH claimed AS" in s
        ),
        "the pairings' audit rows": lambda s: "FROM unnest(" in s,
        "deadline rows of ended pairings dropped": lambda s: s.startswith(
            "DELETE FROM tep.temporary_enrollment_deadlines"
        ),
    }
    found: dict[str, tuple[str, Any]] = {}
    for title, matches in titles.items():
        for statement, parameters in recorded:
            if matches(statement):
                found[title] = (statement, parameters)
                break
    return found
