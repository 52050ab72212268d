"""Data the lifecycle rules cannot apply to, met by a real worker: skipped, reported, logged at
ERROR with ids; everything else processed; nothing about the bad pairings changed."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Enrollment, StateChange, TemporaryEnrollmentPairing, utcnow
from tests import factories as f
from tests.processes import celery_worker, client_app

DAY = dt.timedelta(days=1)


def snapshot(session: Session, pairing_id: int) -> tuple[object, ...]:
    session.commit()
    state, ended_at = f.shown_pairing(session, pairing_id)
    pairing = session.get(TemporaryEnrollmentPairing, pairing_id)
    assert pairing is not None
    enrollments = session.execute(
        select(Enrollment.id, Enrollment.workflow_state, Enrollment.end_at, Enrollment.updated_at)
        .where(Enrollment.temporary_enrollment_pairing_id == pairing_id)
        .order_by(Enrollment.id)
    ).all()
    return (state, ended_at, pairing.updated_at, tuple(enrollments))


def test_bad_pairings_are_skipped_reported_and_logged_by_a_real_worker(
    env: dict[str, str], pg_session: Session, tmp_path: Path
) -> None:
    past = utcnow() - DAY
    root = f.account(pg_session)
    good = [
        f.temporary_pairing(pg_session, root, [past, past], ending_state=state)[0].id
        for state in ("deleted", "completed", "inactive")
    ]
    unknown, _ = f.temporary_pairing(pg_session, root, [past], ending_state="graduated")
    undated, _ = f.temporary_pairing(pg_session, root, [past, None])  # one due, one never
    gone_root = f.account(pg_session, name="Closed University", state="deleted")
    orphan, _ = f.temporary_pairing(pg_session, gone_root, [past])
    pg_session.commit()
    bad = {
        unknown.id: (root.id, "unknown_ending_state"),
        undated.id: (root.id, "missing_end_at"),
        orphan.id: (gone_root.id, "account_deleted"),
    }
    before = {pid: snapshot(pg_session, pid) for pid in bad}

    app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])
    with celery_worker(env, tmp_path) as worker:
        first = app.send_task("tasks.expire_due_pairings").get(timeout=120)
        second = app.send_task("tasks.expire_due_pairings").get(timeout=120)
        log = worker.log

    # Everything else was processed.
    assert first["pairings_ended"] == 3
    assert first["enrollments_changed"] == {"deleted": 2, "completed": 2, "inactive": 2}
    assert {snapshot(pg_session, pid)[0] for pid in good} == {"ended"}
    # The bad ones are listed in the summary, with their reasons, on every run.
    for summary in (first, second):
        listed = {
            s["pairing_id"]: (s["root_account_id"], s["reason"])
            for s in summary["pairings_skipped"]
        }
        assert listed == bad
    assert second["enrollments_changed_total"] == 0
    # Logged at ERROR with their ids, once: the second run, a moment later, lists them in its
    # summary but does not log them again (tasks/skip_logs.py: once a day).
    for pid, (root_id, reason) in bad.items():
        pattern = rf"ERROR/\S+\] skipped pairing {pid} \(root account {root_id}\): {reason}: "
        assert len(re.findall(pattern, log)) == 1, log
    assert "graduated" in log
    # And nothing about them changed: no state, no timestamp, no audit row.
    assert {pid: snapshot(pg_session, pid) for pid in bad} == before
    audited = pg_session.scalar(
        select(func.count())
        .select_from(StateChange)
        .where(StateChange.temporary_enrollment_pairing_id.in_(bad))
    )
    assert audited == 0
