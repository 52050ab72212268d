"""A sweep cut short (Ctrl-C, SIGTERM, an error) is recorded with what its committed batches did.

`tep sweep` as an operator runs it, stopped by a signal after its first batch commits: it exits
128 + the signal's number, and `tep status` shows the run as `interrupted`, its counts those of
the audit rows its committed batches wrote. In-process, the same record for a run stopped
between batches, during a batch's COMMIT, or by an error (`failed`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from models import StateChange, SweepRun, utcnow
from tasks import lifecycle
from tests import factories as f
from tests import services
from tests.processes import celery_worker, client_app, service_env
from tests.reliability.bulk import assert_consistent, seed_backlog
from tests.reliability.pg import AUDIT_TABLE, backend_alive, backends_waiting_for, table_locked

# Enough batches that the sweep is still running when the test has seen the first one commit.
PAIRINGS = 2_000
BATCH_SIZE = "50"
PAST = dt.timedelta(days=1)
# The worker's soft time limit is 5/12 of it (4.2 s), the hard one half (5 s).
VISIBILITY_TIMEOUT_SECONDS = "10"


def audited(session: Session, run_id: str) -> tuple[int, int]:
    """(enrollments expired, pairings ended) by the committed audit rows of a run."""
    session.expire_all()
    rows = dict(
        session.execute(
            select(StateChange.context_type, func.count())
            .where(StateChange.run_id == run_id)
            .group_by(StateChange.context_type)
        ).all()
    )
    return rows.get(lifecycle.ENROLLMENT, 0), rows.get(lifecycle.PAIRING, 0)


def only_run(session: Session) -> tuple[SweepRun, dict[str, Any]]:
    session.expire_all()
    runs = session.scalars(select(SweepRun)).all()
    assert len(runs) == 1, [run.summary for run in runs]
    return runs[0], json.loads(runs[0].summary)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("signum", "status", "error"),
    [(signal.SIGINT, 130, "KeyboardInterrupt"), (signal.SIGTERM, 143, "Terminated: SIGTERM")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_mid_sweep_exits_128_plus_it_and_records_the_committed_batches(
    pg_engine: Engine,
    pg_session: Session,
    postgres_database_url: str,
    tmp_path: Path,
    signum: int,
    status: int,
    error: str,
) -> None:
    backlog = seed_backlog(pg_engine, PAIRINGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    env.update(TEP_DATABASE_URL=postgres_database_url, TEP_BATCH_SIZE=BATCH_SIZE, COLUMNS="200")

    def tep(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", *args],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def audit_rows() -> int:
        with pg_engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(StateChange)) or 0)

    sweep = tep("sweep", "--json")
    try:
        wait_until(lambda: audit_rows() > 0 or sweep.poll() is not None, 60, "a batch commit")
        # Hold the next batch at its first audit INSERT, inside its transaction, so that the
        # signal comes mid-batch: that batch must roll back and not be counted.
        with table_locked(pg_engine, AUDIT_TABLE, "EXCLUSIVE"):
            wait_until(
                lambda: len(backends_waiting_for(pg_engine, AUDIT_TABLE)) == 1,
                60,
                "the sweep to wait for the audit table",
            )
            sweep.send_signal(signum)
            stdout, stderr = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()

    assert sweep.returncode == status, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"tep: sweep interrupted ({signal.Signals(signum).name})")
    assert stdout == ""

    run, summary = only_run(pg_session)
    enrollments, pairings = audited(pg_session, run.id)
    assert 0 < enrollments < backlog.enrollments  # stopped mid-run, after some batches
    assert (run.enrollments_changed, run.pairings_ended) == (enrollments, pairings)
    assert summary["status"] == lifecycle.RUN_INTERRUPTED
    assert summary["error"] == error
    assert summary["enrollments_changed_total"] == enrollments
    assert summary["batches"] == pairings // int(BATCH_SIZE)  # each pairing ends in its batch
    assert run.trigger == "cli"
    tally = assert_consistent(pg_engine, backlog)  # no pairing half done by the cut
    assert tally.enrollments_expired == enrollments

    done = tep("status", "--json")
    report = json.loads(done.communicate(timeout=60)[0])
    assert done.returncode == 0
    assert report["last_runs"][0]["status"] == lifecycle.RUN_INTERRUPTED
    table = tep("status")
    assert f"interrupted: {error}" in table.communicate(timeout=60)[0]


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_a_worker_sweep_stopped_by_its_time_limit_is_recorded_as_failed(
    pg_engine: Engine,
    pg_session: Session,
    postgres_database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    backlog = seed_backlog(pg_engine, PAIRINGS)
    env = service_env(
        postgres_database_url,
        redis_url,
        services.unique_queue(),
        TEP_BATCH_SIZE=BATCH_SIZE,
        TEP_VISIBILITY_TIMEOUT_SECONDS=VISIBILITY_TIMEOUT_SECONDS,
    )
    app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])

    def audit_rows() -> int:
        with pg_engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(StateChange)) or 0)

    def runs() -> int:
        with pg_engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(SweepRun)) or 0)

    waiting: list[int] = []
    with celery_worker(env, tmp_path) as worker:
        app.send_task("tasks.expire_due_pairings", kwargs={"trigger": "limited"})
        wait_until(lambda: audit_rows() > 0, 60, "a batch commit")
        # The next batch waits at its audit INSERT until the soft time limit stops it.
        with table_locked(pg_engine, AUDIT_TABLE, "EXCLUSIVE"):
            wait_until(lambda: runs() > 0, 60, "the run cut short to be recorded")
            # Its retry starts over; stop the worker before that one gets anywhere.
            worker.kill()
            waiting = backends_waiting_for(pg_engine, AUDIT_TABLE)
    wait_until(
        lambda: not any(backend_alive(pg_engine, pid) for pid in waiting),
        60,
        "the killed worker's backends to end",
    )

    run, summary = only_run(pg_session)
    assert run.trigger == "limited"
    assert summary["status"] == lifecycle.RUN_FAILED
    assert summary["error"].startswith("SoftTimeLimitExceeded"), summary["error"]
    enrollments, pairings = audited(pg_session, run.id)
    assert 0 < enrollments < backlog.enrollments
    assert (run.enrollments_changed, run.pairings_ended) == (enrollments, pairings)


def due_pairings(session: Session, count: int) -> None:
    root = f.account(session)
    for _ in range(count):
        f.temporary_pairing(session, root, [utcnow() - PAST, utcnow() - PAST])
    session.commit()


def test_a_run_stopped_between_batches_records_the_batches_before(
    factory: sessionmaker[Session], session: Session
) -> None:
    due_pairings(session, 3)

    def stop_after_two(summary: lifecycle.RunSummary) -> None:
        if summary.batches == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lifecycle.run_sweep(factory, batch_size=1, on_batch=stop_after_two)

    run, summary = only_run(session)
    assert audited(session, run.id) == (4, 2)
    assert (run.enrollments_changed, run.pairings_ended) == (4, 2)
    assert (summary["status"], summary["error"], summary["batches"]) == (
        lifecycle.RUN_INTERRUPTED,
        "KeyboardInterrupt",
        2,
    )
    # The next run finishes the rest and is recorded as completed.
    rest = lifecycle.run_sweep(factory, batch_size=1)
    assert rest.enrollments_changed_total == 2
    assert rest.to_json()["status"] == lifecycle.RUN_COMPLETED


def test_a_batch_that_committed_as_the_signal_came_is_counted(
    factory: sessionmaker[Session], session: Session
) -> None:
    """A signal during a batch's COMMIT is raised once the COMMIT is done: the batch counts."""
    due_pairings(session, 3)
    commits = 0

    def interrupt_the_second_batch_commit(_: Session) -> None:
        nonlocal commits
        commits += 1
        if commits == 3:  # the deadline index's, the first batch's, then the second batch's
            raise KeyboardInterrupt

    event.listen(factory, "after_commit", interrupt_the_second_batch_commit)
    try:
        with pytest.raises(KeyboardInterrupt):
            lifecycle.run_sweep(factory, batch_size=1)
    finally:
        event.remove(factory, "after_commit", interrupt_the_second_batch_commit)

    run, summary = only_run(session)
    assert audited(session, run.id) == (4, 2)
    assert (run.enrollments_changed, run.pairings_ended, summary["batches"]) == (4, 2, 2)
    assert summary["status"] == lifecycle.RUN_INTERRUPTED


def test_an_error_mid_run_is_recorded_as_failed(
    factory: sessionmaker[Session], session: Session
) -> None:
    due_pairings(session, 2)

    def fail_after_one(summary: lifecycle.RunSummary) -> None:
        raise RuntimeError("the disk is full\nsecond line")

    with pytest.raises(RuntimeError):
        lifecycle.run_sweep(factory, batch_size=1, on_batch=fail_after_one)

    run, summary = only_run(session)
    assert (run.enrollments_changed, run.pairings_ended) == audited(session, run.id) == (2, 1)
    assert summary["status"] == lifecycle.RUN_FAILED
    assert summary["error"] == "RuntimeError: the disk is full"


def test_a_dry_run_cut_short_records_nothing(
    factory: sessionmaker[Session], session: Session
) -> None:
    due_pairings(session, 2)

    def stop(summary: lifecycle.RunSummary) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lifecycle.run_sweep(factory, batch_size=1, dry_run=True, on_batch=stop)
    assert session.scalars(select(SweepRun)).all() == []


def test_a_refused_account_is_no_run(factory: sessionmaker[Session], session: Session) -> None:
    """Bad input is refused before the run starts: nothing to record."""
    with pytest.raises(lifecycle.UnknownAccount):
        lifecycle.run_sweep(factory, account_id=4242)
    assert session.scalars(select(SweepRun)).all() == []
