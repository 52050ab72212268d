"""The log: TEP_LOG_FORMAT=json for the worker, beat and `tep` (one JSON object per line), one
line per sweep, and a skipped pairing logged when it first appears and once a day after."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_sessionmaker, transaction, utcnow
from models.tep import SkipLog
from tasks import lifecycle, skip_logs
from tasks.lifecycle import SKIP_MISSING_END_AT, SKIP_UNKNOWN_ENDING_STATE, SkippedPairing
from tests import factories as f
from tests import services
from tests.conftest import schemas_for
from tests.processes import CeleryProcess, client_app, service_env, start_worker, wait_until
from worker.logs import JsonFormatter
from worker.settings import SettingsError, load_settings

T = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
SWEEP_TASK = "tasks.expire_due_pairings"


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a JSON log, each one object with the fields every record has."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)  # fails the test on any line that is not one JSON object
        assert isinstance(record, dict), line
        assert {"timestamp", "level", "logger", "message"} <= set(record), line
        moment = dt.datetime.fromisoformat(record["timestamp"])
        assert record["timestamp"].endswith("Z") and moment.utcoffset() == dt.timedelta(0)
        records.append(record)
    assert records, "the log is empty"
    return records


# --------------------------------------------------------------------------------------------
# The formatter and the setting


def test_a_json_record_is_one_line_with_its_fields_extras_and_traceback() -> None:
    logger = logging.getLogger("tep.test")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logger.makeRecord(
            "tep.test",
            logging.ERROR,
            __file__,
            1,
            "failed for %s:\n%s",
            ("pairing 7", "second line"),
            sys.exc_info(),
            extra={"run_id": "r-1", "counts": {"deleted": 2}, "at": T},
        )
    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "tep.test"
    assert entry["message"] == "failed for pairing 7:\nsecond line"
    assert entry["run_id"] == "r-1"
    assert entry["counts"] == {"deleted": 2}
    assert entry["at"] == str(T)  # what JSON has no type for is written as text
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: bad\nvalue")
    moment = dt.datetime.fromisoformat(entry["timestamp"])
    assert abs(moment - utcnow()) < MINUTE
    assert "task_id" not in entry  # no task is running


def test_log_format_is_text_by_default_json_when_asked_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEP_LOG_FORMAT", raising=False)
    assert load_settings().log_format == "text"
    monkeypatch.setenv("TEP_LOG_FORMAT", " JSON ")
    assert load_settings().log_format == "json"
    monkeypatch.setenv("TEP_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == "invalid settings: TEP_LOG_FORMAT='xml': use text or json"


# --------------------------------------------------------------------------------------------
# Skipped pairings: logged when they first appear, and once a day after


def sweep_logging(
    factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture, **kwargs: Any
) -> tuple[lifecycle.RunSummary, list[str]]:
    """A sweep, and the ERROR lines it logged about skipped pairings."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tep.lifecycle"):
        summary = lifecycle.run_sweep(factory, **kwargs)
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith("skipped pairing")
    ]
    return summary, errors


def listed(summary: lifecycle.RunSummary) -> dict[int, str]:
    return {s["pairing_id"]: s["reason"] for s in summary.to_json()["pairings_skipped"]}


def test_a_skipped_pairing_is_logged_when_it_first_appears_and_once_a_day_after(
    engine: Engine, database_url: str, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    root = f.account(session)
    bad, _ = f.temporary_pairing(session, root, [T - DAY], ending_state="graduated")
    session.commit()
    expected = {bad.id: SKIP_UNKNOWN_ENDING_STATE}

    first, logged = sweep_logging(make_sessionmaker(engine), caplog, as_of=T)
    assert listed(first) == expected
    assert len(logged) == 1 and logged[0].startswith(f"skipped pairing {bad.id} ")

    # Another worker (another engine, as after a restart), a minute later: listed, not logged.
    other = make_engine(database_url, schemas_for(database_url))
    try:
        later, logged = sweep_logging(make_sessionmaker(other), caplog, as_of=T + MINUTE)
    finally:
        other.dispose()
    assert listed(later) == expected
    assert logged == []

    # Still within the day: quiet; a day after it was last logged: logged again.
    factory = make_sessionmaker(engine)
    same_day, logged = sweep_logging(factory, caplog, as_of=T + 23 * HOUR)
    assert listed(same_day) == expected and logged == []
    next_day, logged = sweep_logging(factory, caplog, as_of=T + 25 * HOUR)
    assert listed(next_day) == expected and len(logged) == 1

    # Every summary says it was skipped, in its log line too.
    summary_lines = [
        r for r in caplog.records if r.getMessage().startswith(f"sweep {next_day.run_id}")
    ]
    assert [r.getMessage().split(": ", 1)[1] for r in summary_lines] == [
        f"0 enrollment(s) changed {next_day.enrollments_changed}, 0 pairing(s) ended, "
        f"1 skipped ({bad.id}) in {next_day.to_json()['duration_seconds']:.3f} s"
    ]


def test_a_dry_run_neither_logs_nor_notes_skipped_pairings(
    factory: sessionmaker[Session], session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    root = f.account(session)
    bad, _ = f.temporary_pairing(session, root, [None])
    session.commit()

    dry, logged = sweep_logging(factory, caplog, as_of=T, dry_run=True)
    assert listed(dry) == {bad.id: SKIP_MISSING_END_AT}
    assert logged == []
    with transaction(factory, commit=False) as check:
        assert check.scalars(select(SkipLog)).all() == []

    _, logged = sweep_logging(factory, caplog, as_of=T + MINUTE)
    assert len(logged) == 1  # the first real run meets it as new


def skipped(pairing_id: int, root_id: int, reason: str = SKIP_MISSING_END_AT) -> SkippedPairing:
    return SkippedPairing(pairing_id, root_id, reason, "detail")


def to_log(
    factory: sessionmaker[Session],
    pairings: list[SkippedPairing],
    as_of: dt.datetime,
    account_id: int | None = None,
) -> set[tuple[int, str]]:
    with transaction(factory) as session:
        return skip_logs.to_log(session, pairings, as_of=as_of, account_id=account_id)


def test_a_pairing_no_longer_skipped_is_forgotten_and_new_again_when_it_comes_back(
    factory: sessionmaker[Session],
) -> None:
    one, two = skipped(101, 1), skipped(102, 1)
    assert to_log(factory, [one, two], T) == {
        (101, SKIP_MISSING_END_AT),
        (102, SKIP_MISSING_END_AT),
    }
    assert to_log(factory, [two], T + MINUTE) == set()  # 101 was fixed: its row goes
    assert to_log(factory, [one, two], T + 2 * MINUTE) == {(101, SKIP_MISSING_END_AT)}
    # The same pairing skipped for another reason is another entry.
    changed = skipped(102, 1, SKIP_UNKNOWN_ENDING_STATE)
    assert to_log(factory, [one, changed], T + 3 * MINUTE) == {(102, SKIP_UNKNOWN_ENDING_STATE)}
    with transaction(factory, commit=False) as session:
        rows = session.execute(
            select(SkipLog.temporary_enrollment_pairing_id, SkipLog.reason, SkipLog.last_logged_at)
        ).all()
    assert sorted(rows) == [
        (101, SKIP_MISSING_END_AT, T + 2 * MINUTE),
        (102, SKIP_UNKNOWN_ENDING_STATE, T + 3 * MINUTE),
    ]


def test_a_sweep_of_one_account_forgets_only_that_accounts_pairings(
    factory: sessionmaker[Session],
) -> None:
    ours, theirs = skipped(201, 1), skipped(202, 2)
    assert len(to_log(factory, [ours, theirs], T)) == 2
    # Account 1's sweep does not meet account 2's pairing, and must not forget it.
    assert to_log(factory, [ours], T + MINUTE, account_id=1) == set()
    assert to_log(factory, [ours, theirs], T + 2 * MINUTE) == set()
    # Account 1's pairing fixed: its sweep forgets it.
    assert to_log(factory, [], T + 3 * MINUTE, account_id=1) == set()
    assert to_log(factory, [ours, theirs], T + 4 * MINUTE) == {(201, SKIP_MISSING_END_AT)}


def test_a_run_far_ahead_of_time_does_not_silence_todays_runs(
    factory: sessionmaker[Session],
) -> None:
    bad = skipped(301, 1)
    assert len(to_log(factory, [bad], T + 7 * DAY)) == 1  # `tep sweep --as-of` next week
    assert len(to_log(factory, [bad], T)) == 1
    assert to_log(factory, [bad], T + MINUTE) == set()


def test_of_two_workers_noting_the_same_new_pairing_at_once_one_logs_it(
    factory: sessionmaker[Session],
) -> None:
    bad = skipped(401, 1)
    results: list[set[tuple[int, str]]] = []
    with transaction(factory) as first:
        results.append(skip_logs.to_log(first, [bad], as_of=T, account_id=None))
        # The second waits for the first's lock (PostgreSQL: the row's; SQLite: the write
        # lock), then finds the pairing logged a second ago.
        second = threading.Thread(target=lambda: results.append(to_log(factory, [bad], T)))
        second.start()
        time.sleep(0.5)
    second.join(timeout=30)
    assert results == [{(401, SKIP_MISSING_END_AT)}, set()]


# --------------------------------------------------------------------------------------------
# Real processes: the worker, beat and `tep` with TEP_LOG_FORMAT=json


@pytest.fixture
def json_env(postgres_database_url: str, redis_url: str) -> dict[str, str]:
    return service_env(
        postgres_database_url, redis_url, services.unique_queue(), TEP_LOG_FORMAT="json"
    )


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_a_json_worker_logs_one_object_per_line_and_one_line_per_sweep(
    json_env: dict[str, str], pg_session: Session, tmp_path: Path
) -> None:
    root = f.account(pg_session)
    past = utcnow() - DAY
    f.temporary_pairing(pg_session, root, [past, past], ending_state="completed")
    bad, _ = f.temporary_pairing(pg_session, root, [past], ending_state="graduated")
    pg_session.commit()
    log_path = tmp_path / "worker.json.log"
    app = client_app(json_env["TEP_BROKER_URL"], json_env["TEP_QUEUE"])

    worker = start_worker(json_env, tmp_path, "--logfile", str(log_path))
    try:
        wait_until(lambda: " ready." in read(log_path), 60, "the worker to be ready", worker)
        sent = [app.send_task(SWEEP_TASK, kwargs={"trigger": "test"}) for _ in range(2)]
        summaries = [result.get(timeout=60) for result in sent]
        failing = app.send_task("tasks.end_pairing", args=[10**12])  # no such pairing
        with pytest.raises(Exception, match="no temporary enrollment pairing"):
            failing.get(timeout=60)
        wait_until(lambda: "UnknownPairing" in read(log_path), 30, "the failure's log", worker)
    finally:
        worker.stop()
    records = parse_lines(log_path.read_text())

    # One line per sweep, with its run id, its task and its counts as fields.
    for result, summary in zip(sent, summaries, strict=True):
        [line] = [r for r in records if summary["run_id"] in r["message"]]
        assert line["logger"] == "tep.lifecycle"
        assert line["run_id"] == summary["run_id"]
        assert line["task_id"] == result.id
        assert line["task_name"] == SWEEP_TASK
        assert line["enrollments_changed"] == summary["enrollments_changed"]
        assert line["enrollments_changed_total"] == summary["enrollments_changed_total"]
        assert line["pairings_ended"] == summary["pairings_ended"]
        assert line["pairings_skipped"] == 1
        assert line["skipped_pairing_ids"] == [bad.id]
        # Celery's own success line is there, without the summary again.
        [success] = [
            r for r in records if r.get("task_id") == result.id and "succeeded" in r["message"]
        ]
        assert success["message"].startswith(f"Task {SWEEP_TASK}[{result.id}] succeeded in ")
        assert success["message"].endswith("s")
        assert success["task_name"] == SWEEP_TASK
    assert summaries[0]["enrollments_changed_total"] == 2
    # The skipped pairing: listed by both runs, logged by the first alone.
    for summary in summaries:
        assert [s["pairing_id"] for s in summary["pairings_skipped"]] == [bad.id]
    [error] = [r for r in records if r["message"].startswith("skipped pairing")]
    assert error["level"] == "ERROR"
    assert (error["pairing_id"], error["reason"]) == (bad.id, SKIP_UNKNOWN_ENDING_STATE)
    assert error["run_id"] == summaries[0]["run_id"]
    # A task's exception: one record, its traceback one field.
    [failure] = [r for r in records if r.get("task_id") == failing.id and r["level"] == "ERROR"]
    assert "raised unexpected" in failure["message"]
    assert failure["exception"].startswith("Traceback (most recent call last):")
    assert "UnknownPairing: no temporary enrollment pairing with id" in failure["exception"]
    assert any(r["message"].endswith(" ready.") for r in records)


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_json_beat_logs_one_object_per_line(json_env: dict[str, str], tmp_path: Path) -> None:
    env = {**json_env, "TEP_SWEEP_INTERVAL_SECONDS": "1"}
    log_path = tmp_path / "beat.json.log"
    beat = CeleryProcess(
        [
            "beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "beat-schedule"),
            "--logfile", str(log_path),
        ],
        env,
        tmp_path / "beat.out",
    )  # fmt: skip
    try:
        wait_until(lambda: "Sending due task" in read(log_path), 60, "a tick", beat)
    finally:
        beat.stop()
    records = parse_lines(log_path.read_text())
    assert any(r["message"] == "beat: Starting..." for r in records)
    assert any("expire-due-pairings-every-interval" in r["message"] for r in records)


def tep(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    environment.update(TEP_DATABASE_URL=f"sqlite:///{workdir / 'tep.sqlite'}", **env)
    return subprocess.run(
        [sys.executable, "-c", "from worker.cli import main; main()", *args],
        env=environment,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tep_logs_text_by_default_and_json_when_asked(tmp_path: Path) -> None:
    assert tep(tmp_path, "db", "upgrade").returncode == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'tep.sqlite'}")
    with make_sessionmaker(engine)() as session:
        root = f.account(session)
        bad, _ = f.temporary_pairing(session, root, [utcnow() - DAY], ending_state="graduated")
        session.commit()
    engine.dispose()

    # Text: Python's default lines, warnings and errors only (the skipped pairing, new).
    text = tep(tmp_path, "sweep", "--json")
    assert text.returncode == 0, text.stderr
    assert text.stderr.splitlines() == [
        f"skipped pairing {bad.id} (root account {root.id}): unknown_ending_state: "
        "ending_enrollment_state 'graduated' is not one of deleted, completed, inactive"
    ]

    # JSON: every line an object; the run's line from INFO up. The pairing was logged by the
    # run before (another process): not again.
    again = tep(tmp_path, "sweep", "--json", TEP_LOG_FORMAT="json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    records = parse_lines(again.stderr)
    [line] = [r for r in records if r.get("run_id") == summary["run_id"]]
    assert line["logger"] == "tep.lifecycle"
    assert line["message"].startswith(f"sweep {summary['run_id']} as of ")
    assert line["pairings_skipped"] == 1 and line["skipped_pairing_ids"] == [bad.id]
    assert "task_id" not in line  # no Celery task in `tep sweep`

    # A day on, it is logged again.
    ahead = (utcnow() + 25 * HOUR).isoformat()
    later = tep(tmp_path, "sweep", "--as-of", ahead, "--yes", TEP_LOG_FORMAT="json")
    assert later.returncode == 0, later.stderr
    [error] = [r for r in parse_lines(later.stderr) if r["level"] == "ERROR"]
    assert (error["pairing_id"], error["reason"]) == (bad.id, SKIP_UNKNOWN_ENDING_STATE)
