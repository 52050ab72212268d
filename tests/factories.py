"""Small factories for test data: one call per Canvas object, sensible defaults, ids back."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

from sqlalchemy import delete
from sqlalchemy.orm import Session

from models import (
    Account,
    CourseSection,
    Enrollment,
    TemporaryEnrollmentPairing,
    User,
)
from tasks.canvas_objects import create_course, create_enrollment, create_root_account
from tests.canvas_schema import add_pseudonym

_counter = itertools.count(1)


def account(session: Session, *, name: str = "Test University", state: str = "active") -> Account:
    return create_root_account(session, name, workflow_state=state)


def user(session: Session, root: Account, *, name: str | None = None) -> User:
    n = next(_counter)
    record = User(name=name or f"User {n}")
    session.add(record)
    session.flush()
    # Canvas's own pseudonyms need columns tep does not map: the helper fills them there.
    add_pseudonym(session, user_id=record.id, account_id=root.id, unique_id=f"user{n}@example.edu")
    return record


def course(session: Session, root: Account, *, name: str | None = None) -> CourseSection:
    """A course with its default section; returns the section (its `course_id` is the course)."""
    n = next(_counter)
    _, section = create_course(session, root, name or f"Course {n}")
    return section


def pairing(
    session: Session,
    root: Account,
    *,
    ending_state: str | None = "deleted",
    state: str = "active",
) -> TemporaryEnrollmentPairing:
    record = TemporaryEnrollmentPairing(
        root_account_id=root.id, ending_enrollment_state=ending_state, workflow_state=state
    )
    session.add(record)
    session.flush()
    return record


def enrollment(
    session: Session,
    root: Account,
    *,
    user_id: int,
    section: CourseSection,
    end_at: dt.datetime | None = None,
    pairing: TemporaryEnrollmentPairing | None = None,
    source_user_id: int | None = None,
    state: str = "active",
    type: str = "TeacherEnrollment",
) -> Enrollment:
    """An enrollment written as tep's writers write one (uuid, role, its `enrollment_states` row,
    its deadline indexed): what Canvas would have in its tables."""
    record = Enrollment(
        user_id=user_id,
        course_id=section.course_id,
        course_section_id=section.id,
        root_account_id=root.id,
        type=type,
        workflow_state=state,
        end_at=end_at,
        temporary_enrollment_pairing_id=pairing.id if pairing else None,
        temporary_enrollment_source_user_id=source_user_id,
    )
    return create_enrollment(session, record)


def temporary_pairing(
    session: Session,
    root: Account,
    end_ats: Sequence[dt.datetime | None],
    *,
    ending_state: str | None = "deleted",
    states: Sequence[str] | None = None,
) -> tuple[TemporaryEnrollmentPairing, list[Enrollment]]:
    """A provider, a recipient, and one temporary enrollment per `end_ats` in a pairing."""
    provider = user(session, root, name="Provider")
    recipient = user(session, root, name="Recipient")
    record = pairing(session, root, ending_state=ending_state)
    enrollments = [
        enrollment(
            session,
            root,
            user_id=recipient.id,
            section=course(session, root),
            end_at=end_at,
            pairing=record,
            source_user_id=provider.id,
            state=(states[i] if states else "active"),
        )
        for i, end_at in enumerate(end_ats)
    ]
    return record, enrollments


def shown_pairing(session: Session, pairing_id: int) -> tuple[str, dt.datetime | None]:
    """A pairing's shown state and `ended_at` (Canvas's row and tep's pairing end together),
    read fresh from the database."""
    from tasks.lifecycle import pairing_view

    session.expire_all()
    record = session.get(TemporaryEnrollmentPairing, pairing_id)
    assert record is not None, f"no pairing {pairing_id}"
    view = pairing_view(session, record)
    return view.workflow_state, view.ended_at


def record_end(
    session: Session, pairing: TemporaryEnrollmentPairing, ended_at: dt.datetime
) -> None:
    """Mark a pairing ended as tep records it: a row in tep's pairing ends (Canvas's row keeps
    `active`), its deadline rows dropped."""
    from models import EnrollmentDeadline, PairingEnd

    session.add(
        PairingEnd(
            temporary_enrollment_pairing_id=pairing.id,
            root_account_id=pairing.root_account_id,
            ended_at=ended_at,
            run_id="test",
        )
    )
    session.execute(
        delete(EnrollmentDeadline).where(
            EnrollmentDeadline.temporary_enrollment_pairing_id == pairing.id
        )
    )
    session.flush()
