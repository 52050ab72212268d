"""tep's deadline index follows what others write to Canvas's tables (tasks/deadlines.py), on
every backend (SQLite, managed PostgreSQL, Canvas's own schema)."""

from __future__ import annotations

import datetime as dt

from freezegun import freeze_time
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from models import DiscoveryCursor, Enrollment, EnrollmentDeadline, EnrollmentState
from tasks import lifecycle
from tests import factories as f

T = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _as_canvas_moved_its_end(session: Session, enrollment_id: int, end_at: dt.datetime) -> None:
    """What Canvas does when an admin moves an enrollment's end in its UI: the row and its cache
    row's date trigger change, and no tep writer sees it. The id is behind the discovery cursor."""
    session.execute(update(Enrollment).where(Enrollment.id == enrollment_id).values(end_at=end_at))
    session.execute(
        update(EnrollmentState)
        .where(EnrollmentState.enrollment_id == enrollment_id)
        .values(state_valid_until=end_at)
    )
    session.execute(
        delete(EnrollmentDeadline).where(EnrollmentDeadline.enrollment_id == enrollment_id)
    )
    session.execute(update(DiscoveryCursor).values(last_enrollment_id=enrollment_id + 10_000))
    session.commit()


def test_an_end_canvas_moved_earlier_is_found_through_its_date_trigger(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    _, (enrollment,) = f.temporary_pairing(session, root, [T + 24 * HOUR])
    session.commit()
    lifecycle.run_sweep(factory, as_of=T - HOUR)  # the cursor now stands at T - 1 h
    _as_canvas_moved_its_end(session, enrollment.id, T - dt.timedelta(minutes=30))

    summary = lifecycle.run_sweep(factory, as_of=T)

    assert summary.discovered == 1
    assert summary.enrollments_changed_total == 1
    session.expire_all()
    assert session.get(Enrollment, enrollment.id).workflow_state == "deleted"  # type: ignore[union-attr]


def test_a_passed_trigger_is_read_once_not_by_every_sweep(
    factory: sessionmaker[Session], session: Session
) -> None:
    """A non-temporary enrollment's passed trigger stays in tep's managed tables forever (no
    Canvas job clears it): each sweep reads only the triggers passed since the last one."""
    root = f.account(session)
    teacher = f.user(session, root)
    f.enrollment(
        session, root, user_id=teacher.id, section=f.course(session, root), end_at=T - 2 * HOUR
    )
    _, (temporary,) = f.temporary_pairing(session, root, [T + 24 * HOUR])
    session.commit()
    lifecycle.run_sweep(factory, as_of=T - 3 * HOUR)
    _as_canvas_moved_its_end(session, temporary.id, T - HOUR)

    first = lifecycle.run_sweep(factory, as_of=T)
    again = lifecycle.run_sweep(factory, as_of=T + dt.timedelta(minutes=10))

    assert (first.discovered, first.enrollments_changed_total) == (1, 1)
    assert (again.discovered, again.enrollments_changed_total) == (0, 0)


def test_a_preview_of_the_future_does_not_move_the_probe_ahead(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    _, (enrollment,) = f.temporary_pairing(session, root, [T + 24 * HOUR])
    session.commit()
    with freeze_time(T - HOUR):  # "now" for the cursor, which never passes the wall clock
        lifecycle.run_sweep(factory, as_of=T - HOUR)
        lifecycle.run_sweep(factory, as_of=T + 30 * 24 * HOUR, dry_run=True)  # a month ahead
    _as_canvas_moved_its_end(session, enrollment.id, T - dt.timedelta(minutes=30))

    with freeze_time(T):
        summary = lifecycle.run_sweep(factory, as_of=T)

    assert summary.enrollments_changed_total == 1


def test_the_nightly_run_rebuilds_the_index_from_canvas_rows(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    _, (due, later) = f.temporary_pairing(session, root, [T - HOUR, T + HOUR])
    session.execute(delete(EnrollmentDeadline))
    session.execute(update(DiscoveryCursor).values(last_enrollment_id=later.id + 10_000))
    session.commit()

    summary = lifecycle.run_sweep(factory, as_of=T, trigger=lifecycle.TRIGGER_NIGHTLY)

    assert summary.enrollments_changed_total == 1
    session.expire_all()
    assert session.get(EnrollmentDeadline, later.id) is not None
    assert session.get(EnrollmentDeadline, due.id) is None
