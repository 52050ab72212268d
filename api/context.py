"""Finding the objects a request names, within the caller's root account.

Everything outside the caller's root account is reported exactly like something that does not
exist (404): a client must not learn that another institution's ids are taken.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path
from pydantic import BeforeValidator
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Caller, CallerDep
from api.db import DatabaseDep
from api.errors import ErrorBody, forbidden, not_found
from api.params import cut, is_ascii_integer
from models import DUMMY_ROOT_ACCOUNT_ID, MAX_ID, Account, Course, CourseSection, Pseudonym, User


def _path_id(what: str, *, self_allowed: bool = False) -> BeforeValidator:
    """The check of an id in a path, before FastAPI's own: ASCII digits only (FastAPI's integer
    parsing takes `1_000`, `12.0` and ` 12`), and a number no id can have (0, or beyond the
    64-bit ids Canvas's tables hold) names nothing: a 404, as Canvas answers an unknown id,
    never a database error. Anything else that is not an id is a 400 (a ValueError here)."""

    def check(value: Any) -> Any:
        if not isinstance(value, str) or (self_allowed and value == "self"):
            return value
        if not is_ascii_integer(value):
            raise ValueError("must be an id in ASCII digits" + (" or self" if self_allowed else ""))
        if not 1 <= int(value) <= MAX_ID:
            raise not_found(f"no {what} with id {cut(value)}")
        return value

    return BeforeValidator(check)


AccountIdPath = Annotated[
    str,
    Path(
        description="An account id, or `self` for the token's root account.",
        pattern=r"^(self|[0-9]{1,19})$",
        examples=["self"],
    ),
    _path_id("account", self_allowed=True),
]


def id_path(what: str) -> Any:
    return Path(description=f"The {what}'s id.", ge=1, le=MAX_ID)


def valid_id(what: str) -> Any:
    """With :func:`id_path`, after it: `Annotated[int, id_path("course"), valid_id("course")]`
    (in this order, or the document loses the id's minimum and maximum)."""
    return _path_id(what)


CourseIdPath = Annotated[int, id_path("course"), valid_id("course")]
SectionIdPath = Annotated[int, id_path("section"), valid_id("section")]
EnrollmentIdPath = Annotated[int, id_path("enrollment"), valid_id("enrollment")]


def user_id_path() -> Any:
    """The check of a user id in a path (`self` or an id), after its `Path(...)`."""
    return _path_id("user", self_allowed=True)


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
