"""`tep status` as an operator runs it: a real process against the test database."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

from sqlalchemy.orm import Session, sessionmaker

from models import Notice, utcnow
from tasks import lifecycle, webhooks
from tests import factories as f
from tests.processes import PROJECT_ROOT
from tests.receivers import webhook_receiver

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


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
    assert len(report["last_runs"]) == 2
    assert report["last_runs"][0]["enrollments_changed"]["deleted"] == 1
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
