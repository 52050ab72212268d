"""The slice of Canvas's Enrollments API that attaches temporary enrollments to a pairing, lists
them and ends them by hand.

Every writer of a temporary enrollment takes its pairing's row lock first, as the sweep does: that
is what keeps the sweep's audit INSERT and its UPDATE looking at the same rows. A change that leaves
a pairing with nothing live ends the pairing by the lifecycle's own rules
(:func:`tasks.lifecycle.settle_pairing`).

Canvas's callbacks do not run when tep writes SQL, so every write here also does what they would
have done, in the same transaction: a new enrollment gets its uuid, the built-in role of its type
and its `enrollment_states` row (:func:`tasks.canvas_objects.create_enrollment`); a DELETE task
rewrites that row and touches the user (:func:`tasks.canvas_callbacks.sync_enrollments`); and
tep's deadline index follows both (:func:`tasks.deadlines.track`). The DELETE tasks write what
Canvas's own write (app/controllers/enrollments_api_controller.rb `destroy`, and the
`Enrollment#conclude`, `#deactivate` and `#destroy` it calls) changes: the state, `updated_at`,
and `completed_at` for `conclude`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import Caller, CallerDep
from api.context import error_responses, find_course, find_section, id_path, user_in_account
from api.db import Database, DatabaseDep
from api.errors import bad_request, not_found, unprocessable
from api.pagination import FIELDS as PAGE_FIELDS
from api.pagination import LINK_HEADER_DOC, paginate, requested_page
from api.params import (
    BOOLEAN,
    DATE_TIME,
    Field,
    Params,
    ParamsDep,
    documented,
    integer_schema,
    string_schema,
)
from api.schemas import EnrollmentJson
from models import (
    DEFAULT_ENDING_ENROLLMENT_STATE,
    ENDING_ENROLLMENT_STATES,
    ENROLLMENT_STATES,
    ENROLLMENT_TYPES,
    LIVE_ENROLLMENT_STATES,
    CourseSection,
    Enrollment,
    Role,
    StateChange,
    TemporaryEnrollmentPairing,
    transaction,
    utcnow,
)
from tasks import canvas_callbacks, canvas_objects, deadlines, lifecycle

router = APIRouter(prefix="/api/v1")

Pairing = TemporaryEnrollmentPairing

# Canvas lets a new enrollment start in these states; `invited` when none is given.
CREATABLE_STATES = ("active", "invited", "inactive")
DEFAULT_CREATED_STATE = "invited"
# Canvas lists active and invited enrollments when no `state[]` is given.
LISTED_BY_DEFAULT = ("active", "invited")

# DELETE's `task` and the state each one leaves the enrollment in (Canvas's default: conclude).
TASK_STATES = {
    "conclude": "completed",
    "delete": "deleted",
    "deactivate": "inactive",
    "inactivate": "inactive",
}
DEFAULT_TASK = "conclude"
# Why, in the audit table: `inactivate` and `deactivate` are the same task in Canvas.
TASK_REASONS = {
    "conclude": "enrollment_concluded",
    "delete": "enrollment_deleted",
    "deactivate": "enrollment_deactivated",
    "inactivate": "enrollment_deactivated",
}

CREATE_FIELDS = (
    Field("enrollment[user_id]", integer_schema(), "The user to enroll.", required=True),
    Field(
        "enrollment[type]",
        string_schema(ENROLLMENT_TYPES),
        "The type of enrollment.",
        required=True,
    ),
    Field(
        "enrollment[enrollment_state]",
        string_schema(CREATABLE_STATES),
        f"The state to create it in (default `{DEFAULT_CREATED_STATE}`).",
    ),
    Field("enrollment[start_at]", DATE_TIME, "When access starts (ISO 8601)."),
    Field(
        "enrollment[end_at]",
        DATE_TIME,
        "When access ends (ISO 8601); required for a temporary enrollment, and after its start.",
    ),
    Field(
        "enrollment[temporary_enrollment_source_user_id]",
        integer_schema(),
        "The provider whose enrollment the recipient temporarily gets. Makes this a temporary "
        "enrollment; needs `temporary_enrollment_pairing_id` and `end_at`.",
    ),
    Field(
        "enrollment[temporary_enrollment_pairing_id]",
        integer_schema(),
        "The active pairing of this root account that ends this temporary enrollment.",
    ),
)
COURSE_CREATE_FIELDS = (
    *CREATE_FIELDS,
    Field(
        "enrollment[course_section_id]",
        integer_schema(),
        "A section of the course (default: its default section).",
    ),
)
LIST_FIELDS = (
    Field(
        "state[]",
        {"type": "array", "items": string_schema(ENROLLMENT_STATES)},
        "Only enrollments in these states, as shown now (default: active and invited).",
    ),
    Field(
        "type[]",
        {"type": "array", "items": string_schema(ENROLLMENT_TYPES)},
        "Only enrollments of these types.",
    ),
    Field("user_id", integer_schema(), "Only this user's enrollments."),
    Field(
        "temporary_enrollments_for_recipient",
        BOOLEAN,
        "Only temporary enrollments (of `user_id`, when given, as the recipient).",
    ),
    Field(
        "temporary_enrollment_recipients_for_provider",
        BOOLEAN,
        "Only the temporary enrollments whose provider is `user_id` (required with it).",
    ),
    *PAGE_FIELDS,
)
TASK_DOC = (
    "What to do: `conclude` (completed), `delete` (deleted), `deactivate` or `inactivate` "
    f"(inactive). Default `{DEFAULT_TASK}`. In the query string (`?task=delete`) or the body."
)
DELETE_BODY = (Field("task", string_schema(tuple(TASK_STATES)), TASK_DOC),)


# --------------------------------------------------------------------------------------------
# The state shown: the read-time check


def shown_state(
    session: Session, enrollment: Enrollment, pairing: Pairing | None, now: dt.datetime
) -> str:
    """The state in force at `now`: a due temporary enrollment (the sweep's rule) shows its
    pairing's ending state before the worker has written it, so access ends on time. Only an
    open pairing (shown `active`: not deleted, no end recorded) still ends its enrollments."""
    if (
        pairing is not None
        and enrollment.workflow_state in LIVE_ENROLLMENT_STATES
        and lifecycle.is_due(enrollment.end_at, now)
        and lifecycle.pairing_state(session, pairing) == "active"  # last: it is a query
    ):
        ending_state = lifecycle.resolve_ending_state(pairing.ending_enrollment_state)
        if ending_state is not None:  # an unknown one is never guessed at
            return ending_state
    return enrollment.workflow_state


def shown_state_sql(now: dt.datetime) -> ColumnElement[str]:
    """:func:`shown_state` as SQL, over enrollments outer-joined to their pairings (and a
    correlated look at tep's pairing ends: `lifecycle.open_pairing`)."""
    return case(
        (
            and_(
                Enrollment.temporary_enrollment_pairing_id.is_not(None),
                Enrollment.workflow_state.in_(LIVE_ENROLLMENT_STATES),
                Enrollment.end_at <= now,
                lifecycle.open_pairing(),
                or_(
                    Pairing.ending_enrollment_state.is_(None),
                    Pairing.ending_enrollment_state.in_(ENDING_ENROLLMENT_STATES),
                ),
            ),
            func.coalesce(
                Pairing.ending_enrollment_state, literal(DEFAULT_ENDING_ENROLLMENT_STATE)
            ),
        ),
        else_=Enrollment.workflow_state,
    )


def enrollment_json(enrollment: Enrollment, state: str, role: str) -> EnrollmentJson:
    """`role` is the name of the enrollment's role (its type, for a built-in role)."""
    return EnrollmentJson(
        id=enrollment.id,
        user_id=enrollment.user_id,
        course_id=enrollment.course_id,
        course_section_id=enrollment.course_section_id,
        root_account_id=enrollment.root_account_id,
        type=enrollment.type,
        role=role,
        role_id=enrollment.role_id,
        enrollment_state=state,
        start_at=enrollment.start_at,
        end_at=enrollment.end_at,
        completed_at=enrollment.completed_at,
        temporary_enrollment_source_user_id=enrollment.temporary_enrollment_source_user_id,
        temporary_enrollment_pairing_id=enrollment.temporary_enrollment_pairing_id,
        created_at=enrollment.created_at,
        updated_at=enrollment.updated_at,
    )


# --------------------------------------------------------------------------------------------
# Create


def _create(
    session: Session, caller: Caller, section: CourseSection, params: Params
) -> EnrollmentJson:
    """Validate and insert; the caller has found `section` in the caller's root account."""
    user_id = params.integer("enrollment", "user_id", required=True)
    assert user_id is not None
    enrollment_type = params.string("enrollment", "type", required=True, choices=ENROLLMENT_TYPES)
    assert enrollment_type is not None
    state = (
        params.string("enrollment", "enrollment_state", choices=CREATABLE_STATES)
        or DEFAULT_CREATED_STATE
    )
    start_at = params.moment("enrollment", "start_at")
    end_at = params.moment("enrollment", "end_at")
    source_user_id = params.integer("enrollment", "temporary_enrollment_source_user_id")
    pairing_id = params.integer("enrollment", "temporary_enrollment_pairing_id")
    now = utcnow()

    temporary = source_user_id is not None or pairing_id is not None
    if temporary:
        # A temporary enrollment without a pairing would never end: the pairing is what this
        # service expires. Canvas allows one; we refuse it.
        for name, value in (
            ("temporary_enrollment_source_user_id", source_user_id),
            ("temporary_enrollment_pairing_id", pairing_id),
            ("end_at", end_at),
        ):
            if value is None:
                raise bad_request(
                    f"parameter enrollment[{name}] is required for a temporary enrollment"
                )
        assert end_at is not None
        start = start_at or now
        if end_at <= start:
            raise unprocessable(
                f"enrollment[end_at] {lifecycle.iso(end_at)} is not after the enrollment's start "
                f"{lifecycle.iso(start)}: a temporary enrollment must end after it starts"
            )
    elif start_at is not None and end_at is not None and end_at < start_at:
        raise unprocessable("enrollment[end_at] is before enrollment[start_at]")

    root = caller.root_account_id
    if user_in_account(session, user_id, root) is None:
        raise not_found(f"no user with id {user_id}")
    if source_user_id is not None:
        if user_in_account(session, source_user_id, root) is None:
            raise not_found(
                f"no user with id {source_user_id} (temporary_enrollment_source_user_id)"
            )
        if source_user_id == user_id:
            raise unprocessable("a user cannot be the provider of their own temporary enrollment")
    if pairing_id is not None:
        # The pairing's row lock, before writing one of its enrollments (see the module doc).
        pairing = session.execute(
            select(Pairing).where(Pairing.id == pairing_id).with_for_update()
        ).scalar_one_or_none()
        if pairing is None or pairing.root_account_id != root:
            raise not_found(f"no temporary enrollment pairing with id {pairing_id}")
        # The shown state: Canvas's row stays `active` when a pairing ends (tep's table says it).
        pairing_state = lifecycle.pairing_state(session, pairing)
        if pairing_state != "active":
            raise unprocessable(
                f"temporary enrollment pairing {pairing_id} is {pairing_state}; "
                "only an active pairing takes enrollments"
            )

    # The built-in role of the type, as Canvas gives an enrollment created without a role.
    role = canvas_objects.built_in_role(session, root, enrollment_type)
    # Canvas's unique index `index_enrollments_on_user_type_role_section`: one enrollment per
    # user, type, role and section, whatever its state. Canvas's own `Course#enroll_user` would
    # reuse the existing row; this service does not rewrite an enrollment it was asked to create.
    existing = session.scalar(
        select(Enrollment.id).where(
            Enrollment.user_id == user_id,
            Enrollment.type == enrollment_type,
            Enrollment.role_id == role.id,
            Enrollment.course_section_id == section.id,
            Enrollment.associated_user_id.is_(None),
        )
    )
    already = f"user {user_id} already has a {enrollment_type} enrollment in section {section.id}"
    if existing is not None:
        raise unprocessable(
            f"{already} (enrollment {existing}); Canvas allows one per user, role and section"
        )
    enrollment = Enrollment(
        user_id=user_id,
        course_id=section.course_id,
        course_section_id=section.id,
        root_account_id=root,
        type=enrollment_type,
        role_id=role.id,
        workflow_state=state,
        start_at=start_at,
        end_at=end_at,
        temporary_enrollment_source_user_id=source_user_id,
        temporary_enrollment_pairing_id=pairing_id,
    )
    try:
        # uuid, its `enrollment_states` row, the user's touch and tep's deadline index.
        canvas_objects.create_enrollment(session, enrollment, as_of=now)
    except IntegrityError:
        # Another request enrolled the same user between our check and our insert.
        raise unprocessable(f"{already}; Canvas allows one per user, role and section") from None
    return enrollment_json(enrollment, enrollment.workflow_state, role.name)


def _default_section(
    session: Session, db: Database, course_id: int, root_account_id: int
) -> CourseSection:
    section = session.scalar(
        select(CourseSection)
        .where(
            CourseSection.course_id == course_id,
            CourseSection.workflow_state != "deleted",
        )
        .order_by(CourseSection.default_section.desc(), CourseSection.id)
        .limit(1)
    )
    if section is None:
        if db.on_canvas:
            # Canvas's sections are Canvas's to create (it makes the default one on demand).
            raise unprocessable(
                f"course {course_id} has no section; Canvas owns sections here: create one in "
                "Canvas, or give enrollment[course_section_id]"
            )
        # A course made elsewhere without sections: Canvas creates the default one on demand.
        section = CourseSection(
            course_id=course_id, root_account_id=root_account_id, name="", default_section=True
        )
        session.add(section)
        session.flush()
    return section


@router.post(
    "/courses/{course_id}/enrollments",
    response_model=EnrollmentJson,
    summary="Enroll a user",
    responses=error_responses(422),
    openapi_extra=documented(body=COURSE_CREATE_FIELDS, body_required=True),
    tags=["Enrollments"],
)
def create_course_enrollment(
    course_id: Annotated[int, id_path("course")],
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
) -> EnrollmentJson:
    """Enrolls a user in the course (in its default section unless one is given). With
    `temporary_enrollment_source_user_id` and `temporary_enrollment_pairing_id` it is a
    temporary enrollment, ended by its pairing at `end_at`."""
    section_id = params.integer("enrollment", "course_section_id")
    with transaction(db.write) as session:
        course = find_course(session, caller, course_id)
        if section_id is None:
            section = _default_section(session, db, course.id, course.root_account_id)
        else:
            section = find_section(session, caller, section_id)
            if section.course_id != course.id:
                raise not_found(f"no section with id {section_id} in course {course_id}")
        return _create(session, caller, section, params)


@router.post(
    "/sections/{section_id}/enrollments",
    response_model=EnrollmentJson,
    summary="Enroll a user in a section",
    responses=error_responses(422),
    openapi_extra=documented(body=CREATE_FIELDS, body_required=True),
    tags=["Enrollments"],
)
def create_section_enrollment(
    section_id: Annotated[int, id_path("section")],
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
) -> EnrollmentJson:
    """Enrolls a user in the section (and so its course); parameters as for a course."""
    with transaction(db.write) as session:
        section = find_section(session, caller, section_id)
        find_course(session, caller, section.course_id)
        return _create(session, caller, section, params)


# --------------------------------------------------------------------------------------------
# List


@router.get(
    "/courses/{course_id}/enrollments",
    response_model=list[EnrollmentJson],
    summary="List enrollments",
    responses={**error_responses(), 200: {"headers": LINK_HEADER_DOC}},
    openapi_extra=documented(query=LIST_FIELDS),
    tags=["Enrollments"],
)
def list_enrollments(
    course_id: Annotated[int, id_path("course")],
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
    response: Response,
) -> list[EnrollmentJson]:
    """The course's enrollments by id, paginated, in the states shown now (a temporary
    enrollment past its `end_at` is in its pairing's ending state even before the worker ran)."""
    states = params.strings("state", choices=ENROLLMENT_STATES) or LISTED_BY_DEFAULT
    types = params.strings("type", choices=ENROLLMENT_TYPES)
    user_id = params.integer("user_id")
    for_recipient = params.boolean("temporary_enrollments_for_recipient")
    for_provider = params.boolean("temporary_enrollment_recipients_for_provider")
    if for_recipient and for_provider:
        raise bad_request(
            "give at most one of temporary_enrollments_for_recipient and "
            "temporary_enrollment_recipients_for_provider"
        )
    if for_provider and user_id is None:
        raise bad_request(
            "temporary_enrollment_recipients_for_provider needs user_id (the provider)"
        )
    page = requested_page(params)
    now = utcnow()
    shown = shown_state_sql(now).label("shown_state")

    with transaction(db.read, commit=False) as session:
        course = find_course(session, caller, course_id)
        stmt = (
            select(Enrollment, shown, Role.name)
            .outerjoin(Pairing, Pairing.id == Enrollment.temporary_enrollment_pairing_id)
            .join(Role, Role.id == Enrollment.role_id)
            .where(Enrollment.course_id == course.id, shown.in_(states))
            .order_by(Enrollment.id)
        )
        if types:
            stmt = stmt.where(Enrollment.type.in_(types))
        if for_provider:
            stmt = stmt.where(Enrollment.temporary_enrollment_source_user_id == user_id)
        else:
            if user_id is not None:
                stmt = stmt.where(Enrollment.user_id == user_id)
            if for_recipient:
                stmt = stmt.where(Enrollment.temporary_enrollment_source_user_id.is_not(None))
        rows = paginate(session, stmt, page, request, response)
        return [enrollment_json(enrollment, state, role) for enrollment, state, role in rows]


# --------------------------------------------------------------------------------------------
# Conclude, delete, deactivate


def _locked(session: Session, model: Any, id_: int) -> Any:
    return session.execute(
        select(model)
        .where(model.id == id_)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


@router.delete(
    "/courses/{course_id}/enrollments/{id}",
    response_model=EnrollmentJson,
    summary="Conclude, deactivate, or delete an enrollment",
    responses=error_responses(),
    openapi_extra=documented(body=DELETE_BODY),
    tags=["Enrollments"],
)
def delete_enrollment(
    course_id: Annotated[int, id_path("course")],
    id: Annotated[int, id_path("enrollment")],
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
) -> EnrollmentJson:
    """Concludes (`completed`), deletes or deactivates (`inactive`) the enrollment, with an audit
    row. Ending a pairing's last live enrollment ends the pairing. Asking for the state it is
    already in changes nothing; a deleted enrollment is not found, as in Canvas."""
    task = params.string("task", choices=tuple(TASK_STATES)) or DEFAULT_TASK
    to_state = TASK_STATES[task]
    now = utcnow()
    with transaction(db.write) as session:
        course = find_course(session, caller, course_id)
        found = session.get(Enrollment, id)
        if found is None or found.course_id != course.id:
            raise not_found(f"no enrollment with id {id} in course {course_id}")
        pairing_id = found.temporary_enrollment_pairing_id
        pairing = _locked(session, Pairing, pairing_id) if pairing_id is not None else None
        enrollment: Enrollment | None = _locked(session, Enrollment, id)
        if enrollment is None or enrollment.workflow_state == "deleted":
            raise not_found(f"no enrollment with id {id} in course {course_id}")
        from_state = enrollment.workflow_state
        if from_state != to_state:
            run_id = lifecycle.new_run_id()
            session.add(
                StateChange(
                    context_type=lifecycle.ENROLLMENT,
                    context_id=enrollment.id,
                    temporary_enrollment_pairing_id=pairing_id,
                    root_account_id=enrollment.root_account_id,
                    from_state=from_state,
                    to_state=to_state,
                    reason=TASK_REASONS[task],
                    run_id=run_id,
                    actor_id=caller.user_id,
                    created_at=now,
                )
            )
            # What Canvas's conclude / deactivate / destroy change on the row, and no more.
            enrollment.workflow_state = to_state
            enrollment.updated_at = now
            if to_state == "completed":
                enrollment.completed_at = now
            session.flush()
            # What Canvas's callbacks would have written, and tep's deadline index.
            canvas_callbacks.sync_enrollments(session, [enrollment.id], now)
            deadlines.track(session, [enrollment.id])
            if pairing is not None:
                lifecycle.settle_pairing(session, pairing.id, as_of=now, run_id=run_id)
                session.refresh(pairing)
                session.refresh(enrollment)
        role = session.get(Role, enrollment.role_id)
        return enrollment_json(
            enrollment,
            shown_state(session, enrollment, pairing, now),
            role.name if role is not None else enrollment.type,
        )
