"""Creating Canvas objects the way Canvas creates them, for tep's own writers (the API, the demo,
tests) in `managed` mode, and enrollments in both modes.

What Canvas's models do on create, and tep repeats, each from Canvas's source:

* a root account gets `root_account_id = 0` (`Account#ensure_defaults`), a "Default Term"
  (`Account#default_enrollment_term`) and its built-in roles (`Role.ensure_built_in_roles!`,
  app/models/role.rb: one row per built-in type, `workflow_state 'built_in'`);
* a course belongs to its root account's default term unless given one;
* an enrollment gets a `uuid` (`CanvasSlug`), a `role_id` (the built-in role of its type when
  none is given, `Enrollment#infer_role`... via `Enrollment#role`), its `enrollment_states` row
  and its user's touch (tasks/canvas_callbacks.py), and tep indexes its deadline.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import (
    BUILT_IN_ROLES,
    DEFAULT_TERM_NAME,
    DUMMY_ROOT_ACCOUNT_ID,
    Account,
    Course,
    CourseSection,
    Enrollment,
    EnrollmentTerm,
    Role,
    utcnow,
)
from tasks import canvas_callbacks, deadlines


class CanvasObjectError(Exception):
    """A request Canvas itself would refuse; the message is meant for people."""


def canvas_uuid() -> str:
    """A uuid as Canvas makes them (`CanvasSlug.generate_securish_uuid`: 40 url-safe chars)."""
    return secrets.token_urlsafe(30)[:40]


def create_root_account(session: Session, name: str, *, workflow_state: str = "active") -> Account:
    account = Account(
        name=name,
        workflow_state=workflow_state,
        root_account_id=DUMMY_ROOT_ACCOUNT_ID,
        uuid=canvas_uuid(),
    )
    session.add(account)
    session.flush()
    ensure_root_account_defaults(session, account.id)
    return account


def ensure_root_account_defaults(session: Session, root_account_id: int) -> None:
    """The default term and the built-in roles of a root account, where missing."""
    has_term = session.scalar(
        select(EnrollmentTerm.id).where(EnrollmentTerm.root_account_id == root_account_id).limit(1)
    )
    if has_term is None:
        session.add(EnrollmentTerm(root_account_id=root_account_id, name=DEFAULT_TERM_NAME))
    existing = set(
        session.scalars(
            select(Role.name).where(
                Role.root_account_id == root_account_id, Role.workflow_state == "built_in"
            )
        )
    )
    for name, base_role_type in BUILT_IN_ROLES:
        if name not in existing:
            session.add(
                Role(
                    name=name,
                    base_role_type=base_role_type,
                    account_id=root_account_id,
                    root_account_id=root_account_id,
                    workflow_state="built_in",
                )
            )
    session.flush()


def default_term_id(session: Session, root_account_id: int) -> int:
    term_id = session.scalar(
        select(EnrollmentTerm.id)
        .where(EnrollmentTerm.root_account_id == root_account_id)
        .order_by(EnrollmentTerm.id)
        .limit(1)
    )
    if term_id is None:
        ensure_root_account_defaults(session, root_account_id)
        return default_term_id(session, root_account_id)
    return term_id


def create_course(
    session: Session,
    account: Account,
    name: str,
    *,
    course_code: str | None = None,
    workflow_state: str = "claimed",
    start_at: dt.datetime | None = None,
    conclude_at: dt.datetime | None = None,
) -> tuple[Course, CourseSection]:
    """A course with its default section, in its root account's default term."""
    root = account.resolved_root_account_id
    course = Course(
        name=name,
        course_code=course_code,
        account_id=account.id,
        root_account_id=root,
        enrollment_term_id=default_term_id(session, root),
        workflow_state=workflow_state,
        start_at=start_at,
        conclude_at=conclude_at,
        uuid=canvas_uuid(),
    )
    session.add(course)
    session.flush()
    section = CourseSection(
        course_id=course.id, root_account_id=root, name=name, default_section=True
    )
    session.add(section)
    session.flush()
    return course, section


def built_in_role(session: Session, root_account_id: int, enrollment_type: str) -> Role:
    role = session.scalar(
        select(Role).where(
            Role.root_account_id == root_account_id,
            Role.workflow_state == "built_in",
            Role.name == enrollment_type,
        )
    )
    if role is None:
        ensure_root_account_defaults(session, root_account_id)
        return built_in_role(session, root_account_id, enrollment_type)
    return role


def create_enrollments(
    session: Session,
    enrollments: Sequence[Enrollment],
    *,
    as_of: dt.datetime | None = None,
) -> list[Enrollment]:
    """Insert enrollments as Canvas would: uuid and role filled in, then their cache rows, their
    users touched and their deadlines indexed, in the caller's transaction."""
    if len(enrollments) > 1:
        canvas_callbacks.allow_bulk_writes(session)  # many users may be touched at once
    for enrollment in enrollments:
        if enrollment.uuid is None:
            enrollment.uuid = canvas_uuid()
        if enrollment.role_id is None:
            enrollment.role_id = built_in_role(
                session, enrollment.root_account_id, enrollment.type
            ).id
        if enrollment.workflow_state is None:
            enrollment.workflow_state = "active"
        session.add(enrollment)
    session.flush()
    ids = [e.id for e in enrollments]
    moment = as_of or utcnow()
    canvas_callbacks.sync_enrollments(session, ids, moment)
    deadlines.track(session, ids)
    for enrollment in enrollments:
        session.refresh(enrollment)
    return list(enrollments)


def create_enrollment(
    session: Session, enrollment: Enrollment, *, as_of: dt.datetime | None = None
) -> Enrollment:
    return create_enrollments(session, [enrollment], as_of=as_of)[0]
