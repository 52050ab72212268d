"""Finding the objects a request names, within the caller's root account.

Everything outside the caller's root account is reported exactly like something that does not
exist (404): a client must not learn that another institution's ids are taken.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Caller, CallerDep
from api.db import DatabaseDep
from api.errors import ErrorBody, forbidden, not_found
from api.params import MAX_ID
from models import DUMMY_ROOT_ACCOUNT_ID, Account, Course, CourseSection, Pseudonym, User

AccountIdPath = Annotated[
    str,
    Path(
        description="An account id, or `self` for the token's root account.",
        pattern=r"^(self|[0-9]{1,19})$",
        examples=["self"],
    ),
]


def id_path(what: str) -> Any:
    return Path(description=f"The {what}'s id.", ge=1, le=MAX_ID)


ERROR_DESCRIPTIONS = {
    400: "A parameter is missing or has a value that is not accepted; the message names it.",
    401: "No token, a bad token, a token whose scopes do not include this endpoint, or a user "
    "without the permission the endpoint needs (Canvas's `user not authorized to perform that "
    "action`, with `status` `unauthorized`).",
    403: "Not done by this service here: on Canvas's own database (`TEP_CANVAS_TABLES=existing`) "
    "Canvas owns users, courses, sections and admins.",
    404: "No such object in the token's root account.",
    422: "The parameters are well-formed but refer to something that cannot be used.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for Canvas error bodies."""
    return {
        code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]}
        for code in (400, 401, 404, *codes)
    }


def canvas_owns(what: str) -> Any:
    """A route dependency for the endpoints that create Canvas objects other than enrollments
    and pairings: on Canvas's own database (`existing` mode) Canvas owns its users, courses,
    sections and admins, and tep, which writes only what its lifecycle needs there, refuses
    (403). It runs after authentication, so a caller without a good token still gets the 401."""

    def refuse_on_canvas(_caller: CallerDep, db: DatabaseDep) -> None:
        if db.on_canvas:
            raise forbidden(
                f"Canvas owns {what} here: this service runs on Canvas's own database "
                f"(TEP_CANVAS_TABLES=existing) and does not create {what}; create them in Canvas"
            )

    return Depends(refuse_on_canvas)


def find_account(session: Session, caller: Caller, account_id: str) -> Account:
    """The account in the path: `self`, the caller's root account, or one of its sub-accounts."""
    target = caller.root_account_id if account_id == "self" else int(account_id)
    # Canvas's dummy account 0 is no account anyone may reach.
    account = session.get(Account, target) if target != DUMMY_ROOT_ACCOUNT_ID else None
    if (
        account is None
        or account.workflow_state == "deleted"
        or account.resolved_root_account_id != caller.root_account_id
    ):
        raise not_found(f"no account with id {account_id}")
    return account


def find_course(session: Session, caller: Caller, course_id: int) -> Course:
    course = session.get(Course, course_id)
    if (
        course is None
        or course.root_account_id != caller.root_account_id
        or course.workflow_state == "deleted"
    ):
        raise not_found(f"no course with id {course_id}")
    return course


def find_section(session: Session, caller: Caller, section_id: int) -> CourseSection:
    section = session.get(CourseSection, section_id)
    if (
        section is None
        or section.root_account_id != caller.root_account_id
        or section.workflow_state == "deleted"
    ):
        raise not_found(f"no section with id {section_id}")
    return section


def login_of(session: Session, user_id: int, root_account_id: int) -> Pseudonym | None:
    """The user's login in the root account: how Canvas knows a user belongs to an account."""
    return session.scalar(
        select(Pseudonym)
        .where(
            Pseudonym.user_id == user_id,
            Pseudonym.account_id == root_account_id,
            Pseudonym.workflow_state != "deleted",
        )
        .order_by(Pseudonym.id)
        .limit(1)
    )


def user_in_account(session: Session, user_id: int, root_account_id: int) -> User | None:
    user = session.get(User, user_id)
    if user is None or user.workflow_state == "deleted":
        return None
    if login_of(session, user_id, root_account_id) is None:
        return None
    return user
