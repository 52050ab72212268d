"""EXPLAIN ANALYZE of the floor and of the statements of one sweep batch.

The sweep's statements are built by SQLAlchemy, so they are recorded as the driver receives them
(text and parameters) while one batch runs in a transaction that is then rolled back, and replayed
under `EXPLAIN (ANALYZE, BUFFERS)` in the same state, again in a transaction rolled back.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import event

from bench.data import AS_OF, sqlalchemy_url
from bench.measure import FLOOR_SQL
from models import make_engine, make_sessionmaker, transaction, utcnow
from tasks import lifecycle


def collect(url: str, batch_size: int) -> dict[str, str]:
    plans = {"floor UPDATE": _explain(url, FLOOR_SQL, {"as_of": AS_OF})}
    for title, (statement, parameters) in _one_batch(url, batch_size).items():
        plans[title] = _explain(url, statement, parameters)
    return plans


def _explain(url: str, statement: str, parameters: Any) -> str:
    with psycopg.connect(url) as conn:
        # Under the settings the sweep sets for its own transactions (no JIT, custom plans).
        conn.execute(lifecycle.SWEEP_SETTINGS_SQL)
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).fetchall()
        conn.rollback()
    return "\n".join(str(row[0]) for row in rows)


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
        _, window = lifecycle._next_window(session, AS_OF, None, None, lifecycle.WINDOW_SIZE)
        first = next(lifecycle._batches(window, batch_size, done=()), [])
        lifecycle.expire_batch(session, first, summary, write=True)
    engine.dispose()

    # What each statement does, told by its text. (The pairings' own audit rows are sent as a
    # batched multi-row INSERT whose parameters are not recorded in replayable form; they are
    # one row per pairing and cheap.)
    titles = {
        "the window: next due enrollments by (end_at, id)": "SELECT enrollments.end_at",
        "the claim: FOR UPDATE SKIP LOCKED": "SKIP LOCKED",
        "pairings left with nothing live": "NOT (EXISTS",
        "expire + audit (one data-modifying CTE)": "WITH claimed AS",
        "pairings ended": "UPDATE temporary_enrollment_pairings",
    }
    found: dict[str, tuple[str, Any]] = {}
    for title, marker in titles.items():
        for statement, parameters in recorded:
            if marker in statement:
                found[title] = (statement, parameters)
                break
    return found
