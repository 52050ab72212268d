"""A real Celery worker and beat, on Redis and PostgreSQL, doing the service's main job."""

from __future__ import annotations

import ast
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Enrollment, SweepRun, utcnow
from tests import factories as f
from tests import services
from tests.processes import (
    PROJECT_ROOT,
    celery_beat,
    celery_worker,
    client_app,
    service_env,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

DAY = dt.timedelta(days=1)


@pytest.fixture
def env(postgres_database_url: str, redis_url: str) -> dict[str, str]:
    return service_env(postgres_database_url, redis_url, services.unique_queue())


def seed_due_and_future(session: Session) -> tuple[list[int], list[int]]:
    now = utcnow()
    root = f.account(session)
    due = [
        f.temporary_pairing(session, root, [now - DAY, now - DAY], ending_state=state)[0].id
        for state in ("deleted", "completed", "inactive")
    ]
    future = [f.temporary_pairing(session, root, [now + 7 * DAY])[0].id]
    session.commit()
    return due, future


def pairing_states(session: Session, ids: list[int]) -> list[str]:
    """The pairings' shown states (Canvas's row with tep's pairing end), in id order."""
    session.commit()
    return [f.shown_pairing(session, pairing_id)[0] for pairing_id in sorted(ids)]


def test_worker_runs_a_sweep_sent_through_the_broker(
    env: dict[str, str], pg_session: Session, tmp_path: Path
) -> None:
    due, future = seed_due_and_future(pg_session)
    app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])

    with celery_worker(env, tmp_path) as worker:
        result = app.send_task("tasks.expire_due_pairings", kwargs={"trigger": "test"})
        summary = result.get(timeout=60)
        # Ending one early through the broker: the task says `ended`, as tep shows the pairing
        # (Canvas's row keeps `active`; the end is in tep's table).
        early = app.send_task("tasks.end_pairing", args=[future[0]]).get(timeout=60)

    assert summary["enrollments_changed"] == {"deleted": 2, "completed": 2, "inactive": 2}
    assert summary["pairings_ended"] == 3
    assert summary["trigger"] == "test"
    assert pairing_states(pg_session, due) == ["ended", "ended", "ended"]
    assert early == {
        "pairing_id": future[0],
        "workflow_state": "ended",
        "enrollments_changed": {"deleted": 1},
    }
    assert pairing_states(pg_session, future) == ["ended"]
    assert pg_session.get(SweepRun, summary["run_id"]) is not None
    assert summary["run_id"] in worker.log  # the worker logs each run's summary


def test_celery_call_and_result_from_the_command_line(
    env: dict[str, str], pg_session: Session, tmp_path: Path
) -> None:
    due, _ = seed_due_and_future(pg_session)

    def celery(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", *args],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with celery_worker(env, tmp_path):
        task_id = celery(
            "call", "tasks.expire_due_pairings", "--kwargs", json.dumps({"dry_run": True})
        )
        app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])
        app.AsyncResult(task_id).get(timeout=60)
        # `celery result` prints the returned value as Python prints a dict.
        summary = ast.literal_eval(celery("result", task_id))

    assert summary["dry_run"] is True
    assert summary["enrollments_changed_total"] == 6
    assert summary["pairings_ended"] == 3
    assert pairing_states(pg_session, due) == ["active", "active", "active"]  # nothing written


def recorded_triggers(session: Session) -> list[str]:
    session.rollback()  # a fresh snapshot: the worker commits its runs meanwhile
    return list(session.scalars(select(SweepRun.trigger)))


def test_beat_ends_due_pairings_without_anyone_calling(
    env: dict[str, str], pg_session: Session, tmp_path: Path
) -> None:
    env = {**env, "TEP_SWEEP_INTERVAL_SECONDS": "1"}
    due, future = seed_due_and_future(pg_session)
    # And one that falls due while the processes run: beat must catch it on a later tick.
    root = f.account(pg_session, name="Soon")
    soon, soon_enrollments = f.temporary_pairing(
        pg_session, root, [utcnow() + dt.timedelta(seconds=3)]
    )
    pg_session.commit()

    with celery_worker(env, tmp_path), celery_beat(env, tmp_path) as beat:
        wait_until(
            lambda: pairing_states(pg_session, [*due, soon.id]) == ["ended"] * 4,
            60,
            "beat-driven sweeps to end the due pairings",
        )
        # The worker's start-up look-ahead (tasks/timers.py) may end them before beat's first
        # tick, and a tick beat has sent may still be on its way to the worker: wait for the
        # worker to have recorded a beat run, not only for beat's line.
        wait_until(
            lambda: "Sending due task expire-due-pairings-every-interval" in beat.log,
            60,
            "beat to send its interval sweep",
        )
        wait_until(lambda: "beat" in recorded_triggers(pg_session), 60, "a beat run recorded")

    assert pairing_states(pg_session, future) == ["active"]
    enrollment = pg_session.get(Enrollment, soon_enrollments[0].id)
    assert enrollment is not None and enrollment.workflow_state == "deleted"
    runs = pg_session.scalars(select(SweepRun.trigger)).all()
    # Beat's ticks, and the timer its look-ahead may have set for the soon one (tasks/timers.py).
    assert "beat" in runs and set(runs) <= {"beat", "timer"}
