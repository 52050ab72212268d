"""Creating Canvas objects the way Canvas creates them, for tep's own writers (the API, the demo,
tests) in `managed` mode, and enrollments in both modes.

What Canvas's models do on create, and tep repeats, each from Canvas's source:

* a root account gets `root_account_id = 0` (`Account#ensure_defaults`), a "Default Term"
  (`Account#default_enrollment_term`) and its built-in roles (`Account#create_built_in_roles`,
  app/models/account.rb: one row per `Role::BASE_TYPES` entry, named like its base type,
  `workflow_state 'built_in'`);
* a course belongs to its root account's default term unless given one;
* an enrollment gets a `uuid` (`CanvasSlug`), a `role_id` (the built-in role of its type when
  none is given, `Enrollment#ensure_role_id` via `Enrollment#default_canvas_role`), its
  `enrollment_states` row and its user's touch (tasks/canvas_callbacks.py), and tep indexes its
  deadline.

Roles and terms are only ever *created* with a root account (:func:`create_root_account`, which
only tep's own tables, tests and the demo use: tep never creates root accounts in Canvas's). The
lookups (:func:`built_in_role`, :func:`default_term_id`) never create what is missing: on
Canvas's database (`existing` mode) the roles and terms are Canvas's, and one that is missing is
an error to report, not a row for tep to invent.
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

# The built-in roles Canvas gives every root account (models.BUILT_IN_ROLES).
CANVAS_BUILT_IN_ROLES: tuple[str, ...] = tuple(name for name, _ in BUILT_IN_ROLES)


class CanvasObjectError(Exception):
    """A request Canvas itself would refuse, or a Canvas object that should exist and does not;
    the message is meant for people."""


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
    """Create the default term and the built-in roles of a root account tep has just created,
    where missing, as Canvas does for a new root account (`Account#create_default_objects`).

    Only for root accounts tep creates itself (managed mode, the demo, tests): tep never creates
    roles or terms in Canvas's own tables; the lookups below refuse instead."""
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
    for name in CANVAS_BUILT_IN_ROLES:
        if name not in existing:
            session.add(
                Role(
                    name=name,
                    base_role_type=name,
                    account_id=None,  # built-in roles belong to no account, only a root account
                    root_account_id=root_account_id,
                    workflow_state="built_in",
                )
            )
    session.flush()


def default_term_id(session: Session, root_account_id: int) -> int:
    """The root account's default term (its first). Raises CanvasObjectError when it has none:
    Canvas gives every root account one, and tep does not make one up."""
    term_id = session.scalar(
        select(EnrollmentTerm.id)
        .where(EnrollmentTerm.root_account_id == root_account_id)
        .order_by(EnrollmentTerm.id)
        .limit(1)
    )
    if term_id is None:
        raise CanvasObjectError(
            f"root account {root_account_id} has no enrollment term; Canvas creates its "
            '"Default Term" with the root account (Account#default_enrollment_term), and tep '
            "does not create terms"
        )
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


def built_in_role(session: Session, root_account_id: int, name: str) -> Role:
    """The root account's built-in role named `name` (an enrollment type, or `AccountAdmin`):
    `Role.get_built_in_role(name, root_account_id:)`. Raises CanvasObjectError when it is
    missing: Canvas creates the built-in roles with the root account, and tep does not create
    roles (on Canvas's database they are Canvas's)."""
    role = session.scalar(
        select(Role)
        .where(
            Role.root_account_id == root_account_id,
            Role.workflow_state == "built_in",
            Role.name == name,
        )
        .order_by(Role.id)
        .limit(1)
    )
    if role is None:
        raise CanvasObjectError(
            f"root account {root_account_id} has no built-in role {name} in Canvas's roles "
            "table; Canvas creates the built-in roles with the root account "
            "(Account#create_built_in_roles), and tep does not create roles"
        )
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
