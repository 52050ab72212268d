"""A sweep cut off in the middle: its worker SIGKILLed, or its database connection terminated.

To cut it at a known point, the test waits until the sweep has committed some batches, then
takes an EXCLUSIVE lock on the audit table: the sweep's next batch blocks on its first audit
INSERT, inside its transaction, with its pairings claimed. PostgreSQL shows it waiting; the test
then kills the worker (or terminates the backend) at exactly that point and lets go of the lock.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from tests.processes import celery_worker, client_app, wait_until
from tests.reliability.bulk import (
    Backlog,
    assert_all_done,
    assert_consistent,
    expired_so_far,
    seed_backlog,
)
from tests.reliability.pg import (
    AUDIT_TABLE,
    backend_alive,
    backends_waiting_for,
    table_locked,
    terminate_backend,
)

SWEEP = "tasks.expire_due_pairings"
PAIRINGS = 20_000
BATCH_SIZE = "300"
RESULT_TIMEOUT_SECONDS = 300


def wait_for_progress(engine: Engine, backlog: Backlog) -> None:
    """Wait until the sweep has committed a batch (the caller then takes the audit lock)."""
    wait_until(lambda: expired_so_far(engine, backlog) > 0, 120, "the sweep's first batches")


def wait_blocked(engine: Engine) -> int:
    """The pid of the sweep's backend once it waits for the audit lock."""
    waiting: list[int] = []

    def blocked() -> bool:
        waiting[:] = backends_waiting_for(engine, AUDIT_TABLE)
        return len(waiting) == 1

    wait_until(blocked, 120, "the sweep to block on its next audit INSERT")
    return waiting[0]


def test_kill_9_mid_sweep_leaves_every_pairing_whole_and_the_next_run_finishes(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    backlog = seed_backlog(engine, PAIRINGS)
    env = {**env, "TEP_BATCH_SIZE": BATCH_SIZE}
    app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])

    with celery_worker(env, tmp_path, name="doomed") as worker:
        app.send_task(SWEEP, kwargs={"trigger": "doomed"})
        wait_for_progress(engine, backlog)
        with table_locked(engine, AUDIT_TABLE, "EXCLUSIVE"):
            backend = wait_blocked(engine)
            worker.kill()  # SIGKILL to the worker and its pool, mid-transaction
        # Let go of the lock: the orphaned backend finds its client gone and rolls back.
        wait_until(lambda: not backend_alive(engine, backend), 60, "the orphaned backend to end")

    after_kill = assert_consistent(engine, backlog)
    assert 0 < after_kill.pairings_ended < backlog.pairings, after_kill  # the kill was mid-run

    with celery_worker(env, tmp_path, name="successor"):
        summary = app.send_task(SWEEP, kwargs={"trigger": "successor"}).get(
            timeout=RESULT_TIMEOUT_SECONDS
        )

    assert summary["pairings_ended"] == backlog.pairings - after_kill.pairings_ended
    assert (
        summary["enrollments_changed_total"] == backlog.enrollments - after_kill.enrollments_expired
    )
    assert_all_done(engine, backlog)


def test_terminated_database_connection_mid_sweep_is_retried_and_completes(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    backlog = seed_backlog(engine, PAIRINGS)
    env = {**env, "TEP_BATCH_SIZE": BATCH_SIZE}
    app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])

    with celery_worker(env, tmp_path) as worker:
        result = app.send_task(SWEEP, kwargs={"trigger": "interrupted"})
        wait_for_progress(engine, backlog)
        with table_locked(engine, AUDIT_TABLE, "EXCLUSIVE"):
            backend = wait_blocked(engine)
            terminate_backend(engine, backend)
        summary = result.get(timeout=RESULT_TIMEOUT_SECONDS)
        log = worker.log

    assert f"Task {SWEEP}[{result.id}] retry: Retry in" in log, log
    assert "AdminShutdown" in log or "terminating connection" in log, log
    # The retry finished what the first attempt had not committed, and changed nothing twice.
    assert 0 < summary["enrollments_changed_total"] < backlog.enrollments
    assert summary["trigger"] == "interrupted"
    assert_all_done(engine, backlog)
