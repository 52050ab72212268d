"""`tep status` and `tep status --check` as an operator runs them (a real process against the
test database), and the check's rules (tasks/status.py) on each backend."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from models import Notice, SweepRun, utcnow
from tasks import lifecycle, webhooks
from tasks.status import CRITICAL, WARNING, check_status
from tests import factories as f
from tests.processes import PROJECT_ROOT
from tests.receivers import webhook_receiver

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


def tep(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"TEP_DATABASE_URL": database_url, "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=environment,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_reports_due_work_runs_skips_and_what_is_waiting(
    database_url: str, factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session, name="North College")
    other = f.account(session, name="South College")
    f.temporary_pairing(session, root, [now - DAY], ending_state="archived")  # skipped
    f.temporary_pairing(session, root, [now + 2 * HOUR, now + 3 * DAY], ending_state="completed")
    f.temporary_pairing(session, other, [now + 5 * DAY, now + 30 * DAY])
    f.temporary_pairing(session, other, [now - HOUR])
    session.commit()
    lifecycle.run_sweep(factory, as_of=now - DAY)  # nothing was due then; records a run
    with webhook_receiver() as receiver:
        dead = receiver.url
    lifecycle.run_sweep(factory, as_of=now)
    webhooks.deliver_webhooks(factory, [dead], "secret")
    pairing, _ = f.temporary_pairing(session, root, [now + HOUR])
    session.add(
        Notice(
            temporary_enrollment_pairing_id=pairing.id,
            root_account_id=root.id,
            kind="before_end",
            threshold_seconds=86400,
            ends_at=now + HOUR,
            attempts=2,
            last_error="SMTPRecipientsRefused: nobody",
        )
    )
    session.commit()
    env = {"TEP_WEBHOOK_URLS": dead, "TEP_WEBHOOK_SECRET": "secret"}

    done = tep(database_url, "status", "--json", **env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    due = {(row["account"], row["ending_state"]): row for row in report["due"]}
    assert due[("North College", "completed")] == {
        "root_account_id": root.id,
        "account": "North College",
        "ending_state": "completed",
        "due_now": 0,
        "next_24h": 1,
        "next_7d": 2,  # within 7 days, the 24 hours included
    }
    assert due[("North College", "deleted")]["next_24h"] == 1  # the pairing of the notice
    assert due[("North College", "archived")]["due_now"] == 1  # the unknown state is shown as is
    assert due[("South College", "deleted")]["next_7d"] == 1
    assert due[("South College", "deleted")]["due_now"] == 0  # swept by the second run
    # The first run changed nothing: it is counted among the idle runs, not listed.
    assert [run["status"] for run in report["last_runs"]] == ["completed"]
    assert report["last_runs"][0]["enrollments_changed"]["deleted"] == 1
    assert report["idle_runs"]["runs_since_last_listed"] == 0
    assert report["idle_runs"]["last_trigger"] == "manual"
    assert [s["reason"] for s in report["skipped_pairings"]] == ["unknown_ending_state"]
    assert report["webhooks"][0]["url"] == dead
    assert report["webhooks"][0]["undelivered"] == 2  # enrollment.expired + pairing.ended
    assert report["webhooks"][0]["failing"] == 1
    assert report["notices_unsent"]["pending"] == 1
    assert report["notices_unsent"]["items"][0]["last_error"].startswith("SMTPRecipients")

    table = tep(database_url, "status", **env)
    assert table.returncode == 0, table.stderr
    for text in ("North College", "archived", "unknown_ending_state", dead, "SMTPRecipients"):
        assert text in table.stdout


def test_status_with_a_bad_setting_is_one_line(database_url: str) -> None:
    done = tep(database_url, "status", TEP_NOTIFY_BEFORE="3 days")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "TEP_NOTIFY_BEFORE" in done.stderr and "Traceback" not in done.stderr


def test_status_shows_a_run_cut_short_and_runs_recorded_before_there_was_a_status(
    database_url: str, factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session)
    for _ in range(2):
        f.temporary_pairing(session, root, [now - DAY])
    # A run recorded before runs cut short were recorded: its summary has no status.
    earlier = lifecycle.RunSummary(
        run_id="run-before-statuses",
        as_of=now - 2 * DAY,
        dry_run=False,
        account_id=None,
        trigger="beat",
        started_at=now - 2 * DAY,
        finished_at=now - 2 * DAY,
    )
    old_summary = earlier.to_json()
    del old_summary["status"], old_summary["error"]
    session.add(
        SweepRun(
            id=earlier.run_id,
            trigger="beat",
            as_of=earlier.as_of,
            started_at=earlier.started_at,
            finished_at=earlier.started_at,
            enrollments_changed=0,
            pairings_ended=0,
            pairings_skipped=0,
            summary=json.dumps(old_summary),
        )
    )
    session.commit()

    def stop(summary: lifecycle.RunSummary) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lifecycle.run_sweep(factory, batch_size=1, on_batch=stop)

    done = tep(database_url, "status", "--json")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["last_runs"]
    assert [(run["status"], run["enrollments_changed_total"]) for run in runs] == [
        (lifecycle.RUN_INTERRUPTED, 1),
    ]
    assert runs[0]["error"] == "KeyboardInterrupt"
    # The old run changed nothing and completed (no status was recorded then): an idle one.
    assert json.loads(done.stdout)["idle_runs"]["last_run_id"] == "run-before-statuses"
    table = tep(database_url, "status")
    assert "interrupted: KeyboardInterrupt" in table.stdout


def test_status_lists_the_runs_that_did_something_and_counts_the_idle_ones(
    database_url: str, factory: sessionmaker[Session], session: Session
) -> None:
    """Idle runs scroll nothing away: a failed night stays listed among a day of beat ticks."""
    now = utcnow()
    root = f.account(session)
    f.temporary_pairing(session, root, [now - HOUR])
    session.commit()
    failed = record(factory, now - 3 * HOUR, trigger="nightly", status=lifecycle.RUN_FAILED)
    changed = lifecycle.run_sweep(factory, trigger="beat")
    idle = [lifecycle.run_sweep(factory, trigger="beat") for _ in range(25)]

    done = tep(database_url, "status", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [run["run_id"] for run in report["last_runs"]] == [changed.run_id, failed.run_id]
    assert report["idle_runs"] == {
        "last_run_id": idle[-1].run_id,
        "last_trigger": "beat",
        "last_finished_at": lifecycle.iso(idle[-1].finished_at or now),
        "runs_since_last_listed": 25,
        "since": lifecycle.iso(idle[0].started_at),
    }

    table = tep(database_url, "status")
    assert table.returncode == 0, table.stderr
    assert "failed: OperationalError: gone" in table.stdout
    assert "Idle runs (nothing to change): 25 since the last run listed" in table.stdout


# --------------------------------------------------------------------------------------------
# tep status --check


def record(
    factory: sessionmaker[Session],
    at: dt.datetime,
    *,
    trigger: str = "beat",
    status: str = lifecycle.RUN_COMPLETED,
    skipped: int = 0,
    account_id: int | None = None,
) -> lifecycle.RunSummary:
    """A run recorded as the sweep records one (lifecycle.record_run), at `at`."""
    summary = lifecycle.RunSummary(
        run_id=lifecycle.new_run_id(),
        as_of=at,
        dry_run=False,
        account_id=account_id,
        trigger=trigger,
        started_at=at,
        finished_at=at + dt.timedelta(milliseconds=20),
        status=status,
        error=None if status == lifecycle.RUN_COMPLETED else "OperationalError: gone",
    )
    for n in range(skipped):
        summary.skip(lifecycle.SkippedPairing(n + 1, 1, lifecycle.SKIP_MISSING_END_AT, "no end"))
    lifecycle.record_run(factory, summary)
    return summary


def check(session: Session, interval: float = 60) -> list[tuple[int, str]]:
    session.commit()
    findings = check_status(session, utcnow(), dt.timedelta(seconds=interval))
    return [(finding.level, finding.message) for finding in findings]


def test_check_is_ok_while_the_sweeps_run_and_nothing_waits(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    f.temporary_pairing(session, root, [utcnow() + DAY])
    session.commit()
    lifecycle.run_sweep(factory, trigger="beat")
    assert check(session) == []


def test_check_reports_failed_and_interrupted_runs_until_a_good_run_does_their_work(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    record(factory, now - 3 * HOUR, trigger="nightly", status=lifecycle.RUN_FAILED)
    record(factory, now - 2 * HOUR, trigger="beat", status=lifecycle.RUN_FAILED)
    record(factory, now - HOUR, trigger="manual", status=lifecycle.RUN_INTERRUPTED)
    record(factory, now - 50 * MINUTE, trigger="beat", account_id=5)  # one account's work only
    found = check(session, interval=0)
    assert [level for level, _ in found] == [CRITICAL, WARNING]
    assert found[0][1].startswith("2 sweep run(s) failed since a good run did their work")
    assert "beat run" in found[0][1] and "OperationalError: gone" in found[0][1]
    assert found[1][1].startswith("1 sweep run(s) interrupted")

    # A good run over all accounts did their work again; the nightly run alone rebuilds the
    # deadline index, so its failure stays until a nightly run completes.
    record(factory, now - 30 * MINUTE, trigger="beat")
    found = check(session, interval=0)
    assert len(found) == 1 and "1 sweep run(s) failed" in found[0][1]
    assert "nightly run" in found[0][1]
    record(factory, now - 20 * MINUTE, trigger="nightly")
    assert check(session, interval=0) == []

    # Looked for two days back: an older failure is no longer a reason.
    record(factory, now - 10 * MINUTE, trigger="beat", status=lifecycle.RUN_FAILED)
    assert [level for level, _ in check(session, interval=0)] == [CRITICAL]
    session.execute(update(SweepRun).values(started_at=now - 3 * DAY))
    session.commit()
    assert check(session, interval=0) == []


def test_check_reports_overdue_enrollments_a_stopped_sweep_and_skipped_pairings(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session)
    f.temporary_pairing(session, root, [now - 10 * MINUTE, now - 5 * MINUTE])
    f.temporary_pairing(session, root, [now - MINUTE])  # due, but not for two intervals yet
    session.commit()
    record(factory, now - 4 * MINUTE, skipped=2)

    found = check(session)
    assert [level for level, _ in found] == [CRITICAL, CRITICAL, WARNING]
    assert found[0][1].startswith("2 temporary enrollment(s) have been due for more than 2 min")
    assert found[1][1].startswith("no sweep has finished for 4 min")
    assert "is beat running?" in found[1][1]
    assert found[2][1].startswith("the last sweep skipped 2 pairing(s) (missing_end_at: 2)")

    # With the interval sweep off, the nightly run is the sweep: a day's wait is no backlog.
    assert [level for level, _ in check(session, interval=0)] == [WARNING]


def test_check_says_no_sweep_has_run_yet(session: Session) -> None:
    assert check(session) == [(CRITICAL, "no sweep has run yet: is beat running?")]
    assert check(session, interval=0) == []


def test_tep_status_check_exits_with_the_worst_level_one_line_each(
    database_url: str, factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    record(factory, now)
    ok = tep(database_url, "status", "--check")
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("OK: ") and ok.stdout.count("\n") == 1

    record(factory, now + MINUTE / 2, skipped=1)
    warning = tep(database_url, "status", "--check")
    assert warning.returncode == 1
    assert warning.stdout.splitlines() == [
        "WARNING: the last sweep skipped 1 pairing(s) (missing_end_at: 1): they are left "
        "untouched until their data is fixed; `tep status` lists them"
    ]

    record(factory, now + MINUTE, status=lifecycle.RUN_FAILED, skipped=1)
    critical = tep(database_url, "status", "--check")
    assert critical.returncode == 2
    lines = critical.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["CRITICAL", "WARNING"]
    as_json = tep(database_url, "status", "--check", "--json")
    assert as_json.returncode == 2
    report = json.loads(as_json.stdout)
    assert (report["status"], report["exit_status"]) == ("CRITICAL", 2)
    assert [item["level"] for item in report["findings"]] == ["CRITICAL", "WARNING"]


def test_tep_status_check_on_a_database_it_cannot_read_is_critical(tmp_path: Path) -> None:
    missing = tep(f"sqlite:///{tmp_path / 'nowhere.sqlite'}", "status", "--check")
    assert missing.returncode == 2
    assert missing.stdout.startswith("CRITICAL: no database at ")
    assert missing.stdout.count("\n") == 1 and "Traceback" not in missing.stderr
    assert not (tmp_path / "nowhere.sqlite").exists()

    down = tep("postgresql://postgres@127.0.0.1:9/tep", "status", "--check")
    assert down.returncode == 2
    assert down.stdout.startswith("CRITICAL: cannot read tep's database: database error")
    assert down.stdout.count("\n") == 1

    bad = tep("sqlite:///x.sqlite", "status", "--check", TEP_RETENTION_DAYS="0")
    assert bad.returncode == 2
    assert bad.stdout.startswith("CRITICAL: invalid settings: TEP_RETENTION_DAYS=")


def test_check_reports_commands_canvas_has_not_confirmed(session: Session) -> None:
    """Beside a hosted Canvas: an enrollment ended in tep's mirror but not yet in Canvas keeps
    people's access there, as critical as due work nobody expires; a fresh one is not yet."""
    from models import CanvasCommand
    from tasks.status import canvas_outbox

    now = utcnow()
    interval = dt.timedelta(seconds=60)

    def command(created_at: dt.datetime, **values: object) -> None:
        session.add(
            CanvasCommand(
                kind="conclude",
                enrollment_id=7,
                course_id=3,
                temporary_enrollment_pairing_id=5,
                root_account_id=1,
                from_state="active",
                to_state="completed",
                run_id="run",
                created_at=created_at,
                **values,
            )
        )
        session.commit()

    command(now - MINUTE)
    assert not [x for x in check_status(session, now, interval) if "Canvas" in x.message]
    command(now - HOUR, attempts=4, last_error="Canvas did not answer DELETE ... after 8 attempts")
    command(now - 2 * HOUR, finished_at=now - HOUR, outcome="confirmed")  # done: not counted
    [finding] = [x for x in check_status(session, now, interval) if "Canvas" in x.message]
    assert finding.level == CRITICAL
    assert finding.message.startswith("1 command(s) to Canvas not confirmed for more than 2 min")
    assert "the last error: Canvas did not answer DELETE" in finding.message
    outbox = canvas_outbox(session, now)
    assert (outbox["open_commands"], outbox["failing_commands"]) == (2, 1)
    assert outbox["oldest_open_at"] == lifecycle.iso(now - HOUR)
    assert outbox["refused_commands_7d"] == 0

    # A refusal for good (Canvas keeps the enrollment live): a warning for a day, listed a week.
    command(
        now - 3 * HOUR,
        finished_at=now - 2 * HOUR,
        outcome="refused",
        last_error="Canvas answered 200 but still shows the enrollment active",
    )
    findings = check_status(session, now, interval)
    [warning] = [x for x in findings if x.level == WARNING and "refused" in x.message]
    assert warning.message.startswith("Canvas refused 1 command(s) in the last 24 h")
    outbox = canvas_outbox(session, now)
    assert outbox["refused_commands_7d"] == 1
    assert outbox["last_refusal"].startswith("Canvas answered 200")
    assert not [x for x in check_status(session, now + 2 * DAY, interval) if "refused" in x.message]
