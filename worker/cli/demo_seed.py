"""Demo data (`tep demo`): one root account with pairings that are due, about to be due, and in
the future."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy.orm import Session

from models import (
    Account,
    CommunicationChannel,
    Enrollment,
    Pseudonym,
    TemporaryEnrollmentPairing,
    User,
)
from tasks import permissions
from tasks.canvas_objects import create_course, create_enrollment, create_root_account
from tasks.events import record_pairing_created

# How far ahead the "about to expire" pairing ends, so that a worker started right after seeding
# is seen expiring it live on its next beat tick.
SOON = dt.timedelta(seconds=20)


@dataclasses.dataclass(frozen=True)
class DemoSeed:
    account_id: int
    due_pairing_ids: list[int]
    soon_pairing_ids: list[int]
    future_pairing_ids: list[int]
    due_enrollments: int
    # An AccountAdmin of the account: `tep token create --account A --user ADMIN` gives a token
    # the whole API answers.
    admin_id: int = 0


def _user(session: Session, account: Account, name: str, login: str) -> User:
    user = User(name=name, sortable_name=", ".join(reversed(name.split(" ", 1))))
    session.add(user)
    session.flush()
    session.add(Pseudonym(user_id=user.id, account_id=account.id, unique_id=login))
    session.add(CommunicationChannel(user_id=user.id, path=login, path_type="email"))
    return user


def seed_demo(session: Session, now: dt.datetime) -> DemoSeed:
    """Add a demo account; returns what was made. Adds a fresh account each time it runs."""
    account = create_root_account(session, "Demo University")
    admin = _user(session, account, "Ada Admin", "ada@demo.example")
    # The API reads Canvas's permissions: Ada holds the built-in AccountAdmin role, so her tokens
    # may manage the demo's pairings and enrollments.
    permissions.grant(
        session, account, admin.id, permissions.account_role(session, account, name="AccountAdmin")
    )
    provider = _user(session, account, "Paula Provider", "paula@demo.example")
    # One substitute per pairing: Canvas's unique index allows a recipient one temporary
    # enrollment per provider, type, role and section (deleted ones included), so the same
    # recipient could not stand in for the same provider in the same course twice.
    substitutes = iter(
        [
            _user(session, account, f"{name} Substitute", f"{name.lower()}@demo.example")
            for name in ("Sam", "Robin", "Kim", "Alex", "Jo")
        ]
    )

    courses = []
    for code, title in [("BIO-101", "Biology"), ("CHEM-110", "Chemistry"), ("HIST-200", "History")]:
        course, section = create_course(session, account, title, course_code=code)
        create_enrollment(
            session,
            Enrollment(
                user_id=provider.id,
                course_id=course.id,
                course_section_id=section.id,
                root_account_id=account.id,
                type="TeacherEnrollment",
            ),
            as_of=now,
        )
        courses.append((course, section))

    def pairing(ending_state: str | None, end_ats: list[dt.timedelta]) -> int:
        record = TemporaryEnrollmentPairing(
            root_account_id=account.id,
            ending_enrollment_state=ending_state,
            created_by_id=admin.id,
        )
        session.add(record)
        session.flush()
        record_pairing_created(session, record, admin.id)  # the `pairing.created` event
        recipient = next(substitutes)
        for (course, section), offset in zip(courses, end_ats, strict=False):
            create_enrollment(
                session,
                Enrollment(
                    user_id=recipient.id,
                    course_id=course.id,
                    course_section_id=section.id,
                    root_account_id=account.id,
                    type="TeacherEnrollment",
                    start_at=now - dt.timedelta(days=14),
                    end_at=now + offset,
                    temporary_enrollment_source_user_id=provider.id,
                    temporary_enrollment_pairing_id=record.id,
                ),
                as_of=now,
            )
        return record.id

    day = dt.timedelta(days=1)
    due = [
        pairing("deleted", [-day, -day, -day]),
        pairing("completed", [-2 * day, -dt.timedelta(hours=1)]),
        pairing(None, [-dt.timedelta(minutes=5)]),  # NULL ends as `deleted`, as in Canvas
    ]
    soon = [pairing("inactive", [SOON, SOON])]
    future = [pairing("completed", [7 * day, 7 * day, 7 * day])]
    session.flush()
    return DemoSeed(
        account_id=account.id,
        due_pairing_ids=due,
        soon_pairing_ids=soon,
        future_pairing_ids=future,
        due_enrollments=6,
        admin_id=admin.id,
    )
