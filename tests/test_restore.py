"""Restoring a pairing from the audit table (DESIGN.md section 4), on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import (
    Enrollment,
    EnrollmentDeadline,
    EnrollmentState,
    StateChange,
    TemporaryEnrollmentPairing,
    User,
    transaction,
    utcnow,
)
from tasks import lifecycle, restore
from tasks.events import record_pairing_created
from tests import factories as f
from tests.processes import PROJECT_ROOT

T = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    pairing: tuple[object, ...]
    enrollments: list[tuple[object, ...]]


def snapshot(session: Session, pairing_id: int) -> Snapshot:
    """What a restore must bring back (everything but `updated_at`): the pairing as shown
    (Canvas's row with tep's pairing end) and who deleted it, and its enrollments."""
    session.commit()
    state, ended_at = f.shown_pairing(session, pairing_id)
    pairing = session.get(TemporaryEnrollmentPairing, pairing_id)
    assert pairing is not None
    enrollments = session.scalars(
        select(Enrollment)
        .where(Enrollment.temporary_enrollment_pairing_id == pairing_id)
        .order_by(Enrollment.id)
    ).all()
    return Snapshot(
        (state, ended_at, pairing.deleted_by_id),
        [(e.id, e.workflow_state, e.end_at, e.completed_at) for e in enrollments],
    )


def shown(session: Session, pairing_id: int) -> tuple[str, dt.datetime | None]:
    """The pairing's shown state and ended_at, read in a new transaction (the session's own
    would not see what the code under test committed since)."""
    session.commit()
    return f.shown_pairing(session, pairing_id)


def redated(before: Snapshot, end_at: dt.datetime) -> Snapshot:
    """`before` with every enrollment's end_at moved to `end_at` (a restore with --end-at)."""
    return Snapshot(before.pairing, [(i, s, end_at, c) for i, s, _, c in before.enrollments])


def cache_rows(session: Session, pairing_id: int) -> dict[int, tuple[str | None, int]]:
    """Canvas's `enrollment_states` rows of the pairing's enrollments: (state, lock_version)."""
    session.commit()
    rows = session.execute(
        select(EnrollmentState.enrollment_id, EnrollmentState.state, EnrollmentState.lock_version)
        .join(Enrollment, Enrollment.id == EnrollmentState.enrollment_id)
        .where(Enrollment.temporary_enrollment_pairing_id == pairing_id)
    ).all()
    return {enrollment_id: (state, version) for enrollment_id, state, version in rows}


def indexed(session: Session, pairing_id: int) -> dict[int, dt.datetime | None]:
    """tep's deadline index rows of the pairing: enrollment id -> end_at."""
    session.commit()
    return dict(
        session.execute(
            select(EnrollmentDeadline.enrollment_id, EnrollmentDeadline.end_at).where(
                EnrollmentDeadline.temporary_enrollment_pairing_id == pairing_id
            )
        ).all()
    )


def restore_now(
    factory: sessionmaker[Session], pairing_id: int, *, as_of: dt.datetime = T, **kwargs: object
) -> restore.RestoreResult:
    with transaction(factory) as session:
        return restore.restore_pairing(session, pairing_id, as_of=as_of, **kwargs)  # type: ignore[arg-type]


def audit_rows(session: Session, pairing_id: int, reason: str) -> int:
    session.commit()
    stmt = select(func.count()).where(
        StateChange.temporary_enrollment_pairing_id == pairing_id, StateChange.reason == reason
    )
    return session.scalar(stmt) or 0


@pytest.mark.parametrize("ending_state", ["deleted", "completed", "inactive", None])
def test_restore_undoes_an_expiry_for_each_ending_state(
    factory: sessionmaker[Session], session: Session, ending_state: str | None
) -> None:
    root = f.account(session)
    pairing, _ = f.temporary_pairing(
        session, root, [T - DAY, T - DAY, T - DAY], ending_state=ending_state,
        states=["active", "invited", "creation_pending"],
    )  # fmt: skip
    before = snapshot(session, pairing.id)

    summary = lifecycle.run_sweep(factory, as_of=T)
    assert summary.pairings_ended == 1
    assert snapshot(session, pairing.id) != before
    new_end = T + DAY

    result = restore_now(factory, pairing.id, end_at=new_end)

    assert snapshot(session, pairing.id) == redated(before, new_end)
    assert result.undone_reason == "expired"
    assert result.pairing_state == "active"
    assert result.enrollments_restored == {"active": 1, "invited": 1, "creation_pending": 1}
    assert audit_rows(session, pairing.id, "restored") == 4  # 3 enrollments and the pairing
    with pytest.raises(restore.NothingToRestore, match=f"pairing {pairing.id} is active"):
        restore_now(factory, pairing.id)


def test_restore_undoes_an_early_delete(factory: sessionmaker[Session], session: Session) -> None:
    root = f.account(session)
    actor = f.user(session, root)
    pairing, _ = f.temporary_pairing(
        session, root, [T + DAY, T + 2 * DAY], ending_state="completed"
    )
    before = snapshot(session, pairing.id)
    with transaction(factory) as work:
        lifecycle.end_pairing(work, pairing.id, as_of=T, actor_id=actor.id, delete=True)
    deleted = snapshot(session, pairing.id)
    assert deleted.pairing == ("deleted", T, actor.id)
    assert {e[1] for e in deleted.enrollments} == {"completed"}

    result = restore_now(factory, pairing.id, actor_id=actor.id)

    assert snapshot(session, pairing.id) == before
    assert result.undone_reason == "pairing_deleted"
    assert lifecycle.run_sweep(factory, as_of=T).enrollments_changed_total == 0


def test_restore_with_a_new_end_at_is_expired_again_then(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(session, root, [T - DAY, T - DAY])
    session.commit()
    lifecycle.run_sweep(factory, as_of=T)
    new_end = T + 3 * DAY

    restore_now(factory, pairing.id, end_at=new_end)

    restored = snapshot(session, pairing.id)
    assert restored.pairing[0] == "active"
    assert [(e[1], e[2]) for e in restored.enrollments] == [("active", new_end)] * 2
    # Back in tep's deadline index at the new date: the sweep finds them there.
    assert indexed(session, pairing.id) == {e.id: new_end for e in enrollments}
    early = lifecycle.run_sweep(factory, as_of=new_end - dt.timedelta(seconds=1))
    assert early.enrollments_changed_total == 0
    on_time = lifecycle.run_sweep(factory, as_of=new_end)
    assert on_time.enrollments_changed == {"deleted": 2, "completed": 0, "inactive": 0}
    assert snapshot(session, pairing.id).pairing[0] == "ended"
    assert {e.id for e in enrollments} == {e[0] for e in restored.enrollments}


def test_restore_refuses_an_end_at_that_has_passed(
    factory: sessionmaker[Session], session: Session
) -> None:
    """A live enrollment brought back with its end_at passed would be ended again at once, by
    Canvas's own job as by the next sweep: the restore needs a new end_at, in the future."""
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(
        session, root, [T - DAY, T + DAY], ending_state="completed"
    )
    session.commit()
    with transaction(factory) as work:  # ends both now: one had passed, one had not
        lifecycle.end_pairing(work, pairing.id, as_of=T)
    ended = snapshot(session, pairing.id)
    cache = cache_rows(session, pairing.id)

    with pytest.raises(restore.RestoreNeedsEndAt, match=rf"\({enrollments[0].id}\) has passed"):
        restore_now(factory, pairing.id)
    for too_early in (T - DAY, T):  # the boundary is due, so `T` itself is refused
        with pytest.raises(restore.RestoreNeedsEndAt, match="is not after"):
            restore_now(factory, pairing.id, end_at=too_early)

    # Nothing half-applied: neither enrollment, nor the pairing, nor Canvas's cache, nor the audit.
    assert snapshot(session, pairing.id) == ended
    assert cache_rows(session, pairing.id) == cache
    assert indexed(session, pairing.id) == {}
    assert audit_rows(session, pairing.id, "restored") == 0

    result = restore_now(factory, pairing.id, end_at=T + 2 * DAY)
    assert result.enrollments_restored == {"active": 2}
    assert shown(session, pairing.id) == ("active", None)


def test_restore_keeps_canvas_cache_coherent_and_the_deadline_index(
    factory: sessionmaker[Session], session: Session
) -> None:
    """What Canvas's callbacks would write for a restore: `enrollment_states` back to the
    restored state (valid until the new end_at, lock_version + 1), the users touched; and tep's
    deadline index has the enrollments again, so a sweep at the new date expires them."""
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(
        session, root, [T - DAY, T - DAY], ending_state="inactive", states=["active", "invited"]
    )
    session.commit()
    lifecycle.run_sweep(factory, as_of=T)
    expired = cache_rows(session, pairing.id)
    assert {state for state, _ in expired.values()} == {"inactive"}
    assert indexed(session, pairing.id) == {}

    restored_at = T + dt.timedelta(hours=1)
    new_end = T + 3 * DAY
    restore_now(factory, pairing.id, as_of=restored_at, end_at=new_end)

    session.expire_all()
    cache = cache_rows(session, pairing.id)
    assert cache == {
        enrollments[0].id: ("active", expired[enrollments[0].id][1] + 1),
        enrollments[1].id: ("invited", expired[enrollments[1].id][1] + 1),
    }
    for row in session.scalars(
        select(EnrollmentState).where(EnrollmentState.enrollment_id.in_(cache))
    ):
        assert (row.state_is_current, row.access_is_current) == (True, False)
        assert (row.state_valid_until, row.updated_at) == (new_end, restored_at)
    recipient = session.get(User, enrollments[0].user_id)
    assert recipient is not None and recipient.updated_at == restored_at
    assert indexed(session, pairing.id) == {e.id: new_end for e in enrollments}

    assert lifecycle.run_sweep(factory, as_of=new_end - dt.timedelta(seconds=1)).batches == 0
    again = lifecycle.run_sweep(factory, as_of=new_end)
    assert again.enrollments_changed == {"deleted": 0, "completed": 0, "inactive": 2}
    assert shown(session, pairing.id) == ("ended", new_end)
    assert {state for state, _ in cache_rows(session, pairing.id).values()} == {"inactive"}


def test_restore_steps_back_one_change_at_a_time(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [T - DAY, T + DAY], ending_state="inactive")
    original = snapshot(session, pairing.id)
    lifecycle.run_sweep(factory, as_of=T)  # expires the first; the pairing stays active
    after_first = snapshot(session, pairing.id)
    lifecycle.run_sweep(factory, as_of=T + DAY)  # expires the second and ends the pairing
    assert snapshot(session, pairing.id).pairing[0] == "ended"

    # Restored at T, the second one's end_at (T + DAY) is still ahead: no new date needed.
    restore_now(factory, pairing.id)
    assert snapshot(session, pairing.id) == after_first
    # The first one's (T - DAY) has passed: it comes back only with a new date.
    with pytest.raises(restore.RestoreNeedsEndAt):
        restore_now(factory, pairing.id)
    assert snapshot(session, pairing.id) == after_first
    restore_now(factory, pairing.id, end_at=T + 2 * DAY)
    first, second = original.enrollments
    assert snapshot(session, pairing.id) == dataclasses.replace(
        original, enrollments=[(*first[:2], T + 2 * DAY, first[3]), second]
    )
    with pytest.raises(restore.NothingToRestore):
        restore_now(factory, pairing.id)


def test_restore_refuses_when_something_changed_since(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(session, root, [T - DAY, T - DAY])
    session.commit()
    lifecycle.run_sweep(factory, as_of=T)
    # Someone (Canvas, an admin) reactivated one enrollment by hand after the sweep.
    with transaction(factory) as work:
        work.execute(
            update(Enrollment)
            .where(Enrollment.id == enrollments[1].id)
            .values(workflow_state="active")
        )
    changed = snapshot(session, pairing.id)

    with pytest.raises(restore.RestoreConflict, match=f"enrollment {enrollments[1].id} is active"):
        restore_now(factory, pairing.id)

    assert snapshot(session, pairing.id) == changed  # nothing half-applied
    assert audit_rows(session, pairing.id, "restored") == 0


def test_restore_refuses_a_pairing_with_nothing_to_restore(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [T + DAY])
    session.commit()
    with pytest.raises(restore.NothingToRestore, match="active and has no recorded change"):
        restore_now(factory, pairing.id)
    with pytest.raises(lifecycle.UnknownPairing):
        restore_now(factory, pairing.id + 1000)


def tep(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"TEP_DATABASE_URL": url, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", "from worker.cli import main; main()", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_restore_never_undoes_the_creation_of_a_pairing(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [T - DAY])
    record_pairing_created(session, pairing)
    original = snapshot(session, pairing.id)
    with pytest.raises(restore.NothingToRestore, match="active and has no recorded change"):
        restore_now(factory, pairing.id)

    lifecycle.run_sweep(factory, as_of=T)
    restore_now(factory, pairing.id, end_at=T + DAY)
    assert snapshot(session, pairing.id) == redated(original, T + DAY)
    with pytest.raises(restore.NothingToRestore):
        restore_now(factory, pairing.id)  # the `created` row stays; it is not a state to go to


def test_tep_restore_command(
    database_url: str, factory: sessionmaker[Session], session: Session, tmp_path: Path
) -> None:
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [T - DAY], ending_state="completed")
    session.commit()
    lifecycle.run_sweep(factory, as_of=T)

    # The enrollment's end_at (T - DAY) has passed: without a new one, Canvas (and the next
    # sweep) would end it again at once, so `tep restore` refuses, in one line, changing nothing.
    before = snapshot(session, pairing.id)
    refused = tep(database_url, "restore", str(pairing.id))
    assert refused.returncode == 2
    assert (refused.stdout, "Traceback" in refused.stderr) == ("", False)
    assert refused.stderr.startswith("tep: the end_at of 1 enrollment(s) to restore")
    assert "give a new one with --end-at; nothing was restored" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    past = tep(database_url, "restore", str(pairing.id), "--end-at", "2020-01-01T00:00:00Z")
    assert past.returncode == 2
    assert (past.stdout, "Traceback" in past.stderr) == ("", False)
    assert past.stderr.startswith("tep: --end-at 2020-01-01T00:00:00Z is not after ")
    assert len(past.stderr.strip().splitlines()) == 1
    assert snapshot(session, pairing.id) == before
    assert audit_rows(session, pairing.id, "restored") == 0

    # A date in the future, without an offset (read as UTC).
    later = (utcnow() + 30 * DAY).replace(microsecond=0)
    naive = later.replace(tzinfo=None).isoformat()
    done = tep(database_url, "restore", str(pairing.id), "--end-at", naive)
    assert done.returncode == 0, done.stderr
    assert f"pairing {pairing.id} restored to active" in done.stdout
    assert f"end at {lifecycle.iso(later)}" in done.stdout

    again = tep(database_url, "restore", str(pairing.id), "--json")
    assert again.returncode == 2
    assert again.stdout == ""
    assert again.stderr.strip() == (
        f"tep: pairing {pairing.id} is active and has no recorded change to undo"
    )
    with transaction(factory) as work:
        lifecycle.end_pairing(work, pairing.id, as_of=T, delete=True)
    as_json = tep(database_url, "restore", str(pairing.id), "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["pairing_state"] == "active"
    assert result["undone_reason"] == "pairing_deleted"
    assert result["enrollments_restored"] == {"active": 1}
    missing = tep(database_url, "restore", "999999")
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        "tep: no temporary enrollment pairing with id 999999",
    )
    bad = tep(database_url, "restore", str(pairing.id), "--end-at", "next tuesday")
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("tep: --end-at 'next tuesday' is not an ISO 8601")


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_restore_pairing_task_on_a_real_worker(
    postgres_database_url: str, redis_url: str, pg_session: Session, tmp_path: Path
) -> None:
    from models import make_engine, make_sessionmaker
    from tests import services
    from tests.processes import celery_worker, client_app, service_env

    now = utcnow()
    root = f.account(pg_session)
    pairing, _ = f.temporary_pairing(pg_session, root, [now - DAY], ending_state="inactive")
    untouched, _ = f.temporary_pairing(pg_session, root, [now + DAY])
    pg_session.commit()
    engine = make_engine(postgres_database_url)
    lifecycle.run_sweep(make_sessionmaker(engine), as_of=now)
    engine.dispose()
    new_end = now + 2 * DAY

    env = service_env(postgres_database_url, redis_url, services.unique_queue())
    app = client_app(redis_url, env["TEP_QUEUE"])
    with celery_worker(env, tmp_path):
        # Its end_at has passed: the task refuses, as `tep restore` does, and changes nothing.
        with pytest.raises(Exception, match="give a new one with --end-at"):
            app.send_task("tasks.restore_pairing", args=[pairing.id]).get(timeout=60)
        restored = app.send_task(
            "tasks.restore_pairing", args=[pairing.id], kwargs={"end_at": lifecycle.iso(new_end)}
        ).get(timeout=60)
        with pytest.raises(Exception, match="active and has no recorded change"):
            app.send_task("tasks.restore_pairing", args=[untouched.id]).get(timeout=60)
        again = app.send_task(
            "tasks.expire_due_pairings", kwargs={"as_of": lifecycle.iso(new_end)}
        ).get(timeout=60)

    assert restored["pairing_state"] == "active"
    assert restored["enrollments_restored"] == {"active": 1}
    assert restored["end_at"] == lifecycle.iso(new_end)
    # The restored enrollment expires again at its new end date (with `untouched`, due by then).
    assert again["enrollments_changed"] == {"deleted": 1, "completed": 0, "inactive": 1}
    assert snapshot(pg_session, pairing.id).pairing[0] == "ended"
