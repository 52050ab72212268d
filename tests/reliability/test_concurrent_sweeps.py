"""Sweeps that run at the same moment: several workers, beat, `celery call` and `tep sweep`.

Each test holds an ACCESS EXCLUSIVE lock on the pairings table while it starts the sweeps, waits
until PostgreSQL shows every one of them blocked on that lock, then lets go: they start at the
same instant by construction, not by luck of timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models import SweepRun, make_sessionmaker, utcnow
from tests.processes import PROJECT_ROOT, celery_beat, celery_worker, client_app, wait_until
from tests.reliability.bulk import assert_all_done, seed_backlog
from tests.reliability.pg import PAIRINGS_TABLE, backends_waiting_for, table_locked

SWEEP = "tasks.expire_due_pairings"
# Enough that each sweep runs many batches while the others run theirs.
CONCURRENT_PAIRINGS = 20_000
CONCURRENT_BATCH_SIZE = "500"
RESULT_TIMEOUT_SECONDS = 300
# Words that would mean the sweeps got in each other's way.
CONFLICT_WORDS = ("deadlock", "could not serialize", "Traceback", "ERROR/")


def waiting_sweeps(engine: Engine) -> int:
    return len(backends_waiting_for(engine, PAIRINGS_TABLE))


def test_four_sweeps_at_once_change_every_enrollment_exactly_once(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    backlog = seed_backlog(engine, CONCURRENT_PAIRINGS)
    env = {**env, "TEP_BATCH_SIZE": CONCURRENT_BATCH_SIZE}
    app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])

    # Two workers of two pool processes each: four sweeps in four processes.
    with (
        celery_worker(env, tmp_path, name="first", concurrency=2) as first,
        celery_worker(env, tmp_path, name="second", concurrency=2) as second,
    ):
        with table_locked(engine, PAIRINGS_TABLE, "ACCESS EXCLUSIVE"):
            results = [
                app.send_task(SWEEP, kwargs={"trigger": f"concurrent-{n}"}) for n in range(4)
            ]
            wait_until(lambda: waiting_sweeps(engine) == 4, 60, "four sweeps blocked on the lock")
        summaries = [result.get(timeout=RESULT_TIMEOUT_SECONDS) for result in results]

    assert sum(s["enrollments_changed_total"] for s in summaries) == backlog.enrollments
    assert sum(s["pairings_ended"] for s in summaries) == backlog.pairings
    assert all(s["pairings_skipped"] == [] for s in summaries)
    assert_all_done(engine, backlog)
    for log in (first.log, second.log):
        assert not [word for word in CONFLICT_WORDS if word in log], log
    print("enrollments changed per sweep:", [s["enrollments_changed_total"] for s in summaries])


def test_beat_celery_call_and_tep_sweep_at_the_same_moment(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    backlog = seed_backlog(engine, 5_000)
    env = {**env, "TEP_BATCH_SIZE": "200", "TEP_SWEEP_INTERVAL_SECONDS": "1"}

    def command(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    with celery_worker(env, tmp_path, concurrency=2) as worker:
        with table_locked(engine, PAIRINGS_TABLE, "ACCESS EXCLUSIVE"):
            call = command("-m", "celery", "-A", "worker", "call", SWEEP)
            call_out, call_err = call.communicate(timeout=120)
            assert call.returncode == 0, call_err
            wait_until(lambda: waiting_sweeps(engine) == 1, 60, "the called sweep to block")
            with celery_beat(env, tmp_path) as beat:
                wait_until(lambda: waiting_sweeps(engine) == 2, 60, "a beat sweep to block")
                cli = command("-c", "from worker.cli import main; main()", "sweep", "--json")
                wait_until(lambda: waiting_sweeps(engine) == 3, 60, "`tep sweep` to block")
                released_at = utcnow()
        # The lock is gone: the three run at once. Beat keeps ticking; later ticks find nothing.
        cli_out, cli_err = cli.communicate(timeout=RESULT_TIMEOUT_SECONDS)
        assert cli.returncode == 0, cli_err
        app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])
        called = app.AsyncResult(call_out.strip()).get(timeout=RESULT_TIMEOUT_SECONDS)
        assert "Sending due task" in beat.log

        def three_triggers_recorded() -> bool:
            with make_sessionmaker(engine)() as session:
                return len(started_before(session, released_at)) == 3

        wait_until(three_triggers_recorded, RESULT_TIMEOUT_SECONDS, "the beat sweep to finish")
        worker_log = worker.log

    with make_sessionmaker(engine)() as session:
        runs = started_before(session, released_at)
    assert sorted(run.trigger for run in runs) == ["beat", "celery", "cli"]
    assert json.loads(cli_out)["run_id"] in {run.id for run in runs}
    assert called["run_id"] in {run.id for run in runs}
    assert sum(run.enrollments_changed for run in runs) == backlog.enrollments
    assert sum(run.pairings_ended for run in runs) == backlog.pairings
    assert_all_done(engine, backlog)
    assert not [word for word in CONFLICT_WORDS if word in worker_log], worker_log


def started_before(session: Session, moment: object) -> list[SweepRun]:
    return list(session.scalars(select(SweepRun).where(SweepRun.started_at < moment)))
