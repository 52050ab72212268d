"""What a Canvas client needs to reach pairings and enrollments: accounts, courses, sections and
users, in Canvas's shapes (`canvas.get_account`, `account.create_course`, `account.create_user`,
`course.create_course_section`, `canvas.get_course`).

Creating users, courses and sections is for standalone tep (`TEP_CANVAS_TABLES=managed`), where
tep's tables are a small Canvas; on Canvas's own database (`existing`) Canvas owns them and these
endpoints refuse (403). Root accounts are never created here (`tep demo`, the tests and Canvas
make them, with their default term and built-in roles: tasks/canvas_objects.py).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import CallerDep
from api.context import (
    AccountIdPath,
    canvas_owns,
    error_responses,
    find_account,
    find_course,
    id_path,
    login_of,
)
from api.db import DatabaseDep
from api.errors import bad_request
from api.params import DATE_TIME, Field, ParamsDep, documented, string_schema
from api.schemas import AccountJson, CourseJson, SectionJson, UserJson
from models import CommunicationChannel, CourseSection, Pseudonym, User, transaction
from tasks import canvas_objects

router = APIRouter(prefix="/api/v1")


DEFAULT_COURSE_NAME = "Unnamed Course"  # what Canvas names a course created without a name
# Deliberately loose: Canvas accepts any address with one @ and a dot in its domain.
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

COURSE_FIELDS = (
    Field("course[name]", string_schema(), f"The course's name (default {DEFAULT_COURSE_NAME})."),
    Field("course[course_code]", string_schema(), "The course code."),
    Field("course[start_at]", DATE_TIME, "When the course starts (ISO 8601)."),
    Field("course[end_at]", DATE_TIME, "When the course ends (ISO 8601)."),
)
SECTION_FIELDS = (
    Field("course_section[name]", string_schema(), "The section's name (default: the course's)."),
)
USER_FIELDS = (
    Field("user[name]", string_schema(), "The user's full name.", required=True),
    Field("user[sortable_name]", string_schema(), "Name for sorting (default: `Last, First`)."),
    Field(
        "pseudonym[unique_id]",
        string_schema(),
        "The login, unique in the root account. An e-mail address also becomes the user's "
        "e-mail communication channel.",
        required=True,
    ),
    Field("pseudonym[sis_user_id]", string_schema(), "The SIS id of the login."),
    Field(
        "communication_channel[type]",
        string_schema(("email",)),
        "The channel's type; only `email` is kept.",
    ),
    Field("communication_channel[address]", string_schema(), "An e-mail address for notices."),
)


@router.get(
    "/accounts/{account_id}",
    response_model=AccountJson,
    summary="Get a single account",
    responses=error_responses(),
    tags=["Accounts"],
)
def show_account(account_id: AccountIdPath, caller: CallerDep, db: DatabaseDep) -> AccountJson:
    with transaction(db.read, commit=False) as session:
        return AccountJson.of(find_account(session, caller, account_id))


@router.post(
    "/accounts/{account_id}/courses",
    response_model=CourseJson,
    summary="Create a new course",
    responses=error_responses(403),
    dependencies=[canvas_owns("courses")],
    openapi_extra=documented(body=COURSE_FIELDS),
    tags=["Courses"],
)
def create_course(
    account_id: AccountIdPath, caller: CallerDep, db: DatabaseDep, params: ParamsDep
) -> CourseJson:
    """Creates a course in the account, with its default section."""
    name = params.string("course", "name") or DEFAULT_COURSE_NAME
    code = params.string("course", "course_code")
    start_at = params.moment("course", "start_at")
    end_at = params.moment("course", "end_at")
    if start_at and end_at and end_at < start_at:
        raise bad_request("course[end_at] is before course[start_at]")
    with transaction(db.write) as session:
        account = find_account(session, caller, account_id)
        # In its root account's default term, with its default section (where enrollments made
        # without a section go), as Canvas creates a course.
        course, _section = canvas_objects.create_course(
            session, account, name, course_code=code, start_at=start_at, conclude_at=end_at
        )
        return CourseJson.of(course)


@router.get(
    "/courses/{course_id}",
    response_model=CourseJson,
    summary="Get a single course",
    responses=error_responses(),
    tags=["Courses"],
)
def show_course(
    course_id: Annotated[int, id_path("course")], caller: CallerDep, db: DatabaseDep
) -> CourseJson:
    with transaction(db.read, commit=False) as session:
        return CourseJson.of(find_course(session, caller, course_id))


@router.post(
    "/courses/{course_id}/sections",
    response_model=SectionJson,
    summary="Create course section",
    responses=error_responses(403),
    dependencies=[canvas_owns("sections")],
    openapi_extra=documented(body=SECTION_FIELDS),
    tags=["Sections"],
)
def create_section(
    course_id: Annotated[int, id_path("course")],
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
) -> SectionJson:
    name = params.string("course_section", "name")
    with transaction(db.write) as session:
        course = find_course(session, caller, course_id)
        section = CourseSection(
            course_id=course.id, root_account_id=course.root_account_id, name=name or course.name
        )
        session.add(section)
        session.flush()
        return SectionJson.of(section)


def sortable(name: str) -> str:
    """Canvas's default sortable name: `Last, First Middle`."""
    first, _, last = name.strip().rpartition(" ")
    return f"{last}, {first}" if first else name.strip()


@router.post(
    "/accounts/{account_id}/users",
    response_model=UserJson,
    summary="Create a user",
    responses=error_responses(403),
    dependencies=[canvas_owns("users")],
    openapi_extra=documented(body=USER_FIELDS, body_required=True),
    tags=["Users"],
)
def create_user(
    account_id: AccountIdPath, caller: CallerDep, db: DatabaseDep, params: ParamsDep
) -> UserJson:
    """Creates a user with a login (pseudonym) in the root account, as Canvas does."""
    name = params.string("user", "name", required=True)
    assert name is not None
    if not name.strip():
        raise bad_request("parameter user[name] must not be blank")
    sortable_name = params.string("user", "sortable_name") or sortable(name)
    unique_id = params.string("pseudonym", "unique_id", required=True)
    assert unique_id is not None
    sis_user_id = params.string("pseudonym", "sis_user_id")
    channel_type = params.string("communication_channel", "type", choices=("email",))
    address = params.string("communication_channel", "address")
    if address is not None and not EMAIL.match(address):
        raise bad_request(f"communication_channel[address] {address!r} is not an e-mail address")
    if channel_type is not None and address is None:
        raise bad_request("communication_channel[type] needs communication_channel[address]")
    emails = [a for a in dict.fromkeys([address, unique_id]) if a and EMAIL.match(a)]

    with transaction(db.write) as session:
        find_account(session, caller, account_id)
        root = caller.root_account_id
        taken = session.scalar(
            select(Pseudonym.id).where(
                Pseudonym.account_id == root, Pseudonym.unique_id == unique_id
            )
        )
        if taken is not None:
            raise bad_request(
                f"pseudonym[unique_id] {unique_id!r} is already in use in this account"
            )
        user = User(
            name=name.strip(), sortable_name=sortable_name, uuid=canvas_objects.canvas_uuid()
        )
        session.add(user)
        session.flush()
        session.add(
            Pseudonym(
                user_id=user.id, account_id=root, unique_id=unique_id, sis_user_id=sis_user_id
            )
        )
        session.add_all(
            CommunicationChannel(user_id=user.id, path=a, path_type="email") for a in emails
        )
        try:
            session.flush()
        except IntegrityError:
            # Another request took the same login between our check and our insert.
            raise bad_request(
                f"pseudonym[unique_id] {unique_id!r} is already in use in this account"
            ) from None
        return UserJson.of(user, login_of(session, user.id, root))
