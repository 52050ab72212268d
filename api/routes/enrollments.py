"""The slice of Canvas's Enrollments API that attaches temporary enrollments to a pairing, lists
them (a course's, and a user's as Canvas's temporary-enrollment UI reads them), ends them by
hand and reactivates them (app/controllers/enrollments_api_controller.rb).

Every writer of a temporary enrollment takes its pairing's row lock first, as the sweep does: that
is what keeps the sweep's audit INSERT and its UPDATE looking at the same rows. A change that leaves
a pairing with nothing live ends the pairing by the lifecycle's own rules
(:func:`tasks.lifecycle.settle_pairing`).

Canvas's callbacks do not run when tep writes SQL, so every write here also does what they would
have done, in the same transaction: a new enrollment gets its uuid, its role and its
`enrollment_states` row (:func:`tasks.canvas_objects.create_enrollment`); a DELETE task or a
reactivation rewrites that row and touches the user (:func:`tasks.canvas_callbacks
.sync_enrollments`); and tep's deadline index follows (:func:`tasks.deadlines.track`). The DELETE
tasks write what Canvas's own write (`destroy`, and the `Enrollment#conclude`, `#deactivate` and
`#destroy` it calls) changes: the state, `updated_at`, and `completed_at` for `conclude`.

Every endpoint here needs an admin of the course's account (api/authz.py); a user may list their
own enrollments (`/users/self/enrollments`) without being one, as in Canvas.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy import ColumnElement, Label, and_, case, func, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import Caller, CallerDep
from api.authz import require_admin
from api.context import (
    CourseIdPath,
    EnrollmentIdPath,
    SectionIdPath,
    error_responses,
    find_course,
    find_section,
    user_id_path,
    user_in_account,
)
from api.db import Database, DatabaseDep
from api.errors import ApiError, bad_request, not_found, unauthorized, unprocessable
from api.pagination import FIELDS as PAGE_FIELDS
from api.pagination import LINK_HEADER_DOC, paginate, public_base, requested_page
from api.params import (
    BOOLEAN,
    DATE_TIME,
    Field,
    Params,
    ParamsDep,
    documented,
    echo,
    integer_schema,
    string_schema,
)
from api.schemas import EnrollmentJson, GradesJson, UserJson
from models import (
    DEFAULT_ENDING_ENROLLMENT_STATE,
    ENDING_ENROLLMENT_STATES,
    ENROLLMENT_STATES,
    ENROLLMENT_TYPES,
    LIVE_ENROLLMENT_STATES,
    Account,
    AnySelect,
    Course,
    CourseSection,
    Enrollment,
    PairingEnd,
    Pseudonym,
    Role,
    StateChange,
    TemporaryEnrollmentPairing,
    User,
    transaction,
    utcnow,
)
from tasks import canvas_callbacks, canvas_objects, deadlines, lifecycle, permissions, timers

router = APIRouter(prefix="/api/v1")

Pairing = TemporaryEnrollmentPairing

# Canvas lets a new enrollment start in these states; `invited` when none is given.
CREATABLE_STATES = ("active", "invited", "inactive")
DEFAULT_CREATED_STATE = "invited"
# The type of an enrollment created with neither a type nor a role (EnrollmentsApiController
# #create: `type = "StudentEnrollment" if type.blank?`).
DEFAULT_TYPE = "StudentEnrollment"
# Canvas lists active and invited enrollments when no `state[]` is given.
LISTED_BY_DEFAULT = ("active", "invited")

# EnrollmentsApiController's @@errors, the messages Canvas answers a bad role or type with.
INVALID_TYPE = "Invalid type"
INVALID_ROLE = "Invalid role"
INACTIVE_ROLE = "Cannot create an enrollment with this role because it is inactive."
BASE_TYPE_MISMATCH = "The specified type must match the base type for the role"

# The user endpoint's synthetic states (`enrollment_states_for_state_param`): each stands for
# the states listed. `pending_active`/`pending_invited` are Canvas's cached states before an
# enrollment's start; tep shows an enrollment's own state (so they match nothing here).
SYNTHETIC_STATES: dict[str, tuple[str, ...]] = {
    "current_and_invited": ("active", "invited"),
    "current_and_future": (
        "active",
        "invited",
        "creation_pending",
        "pending_active",
        "pending_invited",
    ),
    "current_and_concluded": ("active", "completed"),
    "current_future_and_restricted": (
        "active",
        "invited",
        "creation_pending",
        "pending_active",
        "pending_invited",
        "inactive",
    ),
}
PENDING_STATES = ("pending_active", "pending_invited")
USER_STATES = (*ENROLLMENT_STATES, *PENDING_STATES, *SYNTHETIC_STATES)
# The course states of the temporary-enrollment scopes (Enrollment
# .temporary_enrollments_for_recipient / .temporary_enrollment_recipients_for_provider).
TEMPORARY_SCOPE_COURSE_STATES = ("available", "claimed", "created")

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
REASON_REACTIVATED = "reactivated"
# `include[]` values that change the answer; Canvas ignores the ones it does not know, and so
# does tep.
INCLUDE_PROVIDERS = "temporary_enrollment_providers"

CREATE_FIELDS = (
    Field("enrollment[user_id]", integer_schema(), "The user to enroll.", required=True),
    Field(
        "enrollment[type]",
        string_schema(ENROLLMENT_TYPES),
        f"The type of enrollment. Default: the base type of `enrollment[role_id]` when given, "
        f"else `{DEFAULT_TYPE}`; with a role it must be the role's base type.",
    ),
    Field(
        "enrollment[role_id]",
        integer_schema(),
        "A course role (built-in or custom, of the course's account or one above it); the "
        "type comes from its base type. Roles API: `GET /accounts/:account_id/roles`.",
    ),
    Field(
        "enrollment[role]",
        string_schema(),
        "Deprecated: a course role by name, when no `role_id` is given.",
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
        "enrollment[limit_privileges_to_course_section]",
        BOOLEAN,
        "Limit the user to their own section (default false).",
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
INCLUDE_FIELD = Field(
    "include[]",
    {"type": "array", "items": string_schema()},
    f"`{INCLUDE_PROVIDERS}` adds `temporary_enrollment_provider` (the provider's user) to "
    "temporary enrollments; other values are ignored, as Canvas ignores the ones it does not "
    "know. `include=...` (one value) works too.",
)
TYPE_FIELD = Field(
    "type[]",
    {"type": "array", "items": string_schema(ENROLLMENT_TYPES)},
    "Only enrollments of these types.",
)
LIST_FIELDS = (
    Field(
        "state[]",
        {"type": "array", "items": string_schema(ENROLLMENT_STATES)},
        "Only enrollments in these states, as shown now (default: active and invited).",
    ),
    TYPE_FIELD,
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
    INCLUDE_FIELD,
    *PAGE_FIELDS,
)
USER_LIST_FIELDS = (
    Field(
        "state[]",
        {"type": "array", "items": string_schema(USER_STATES)},
        "Only enrollments in these states, as shown now; Canvas's synthetic states stand for "
        "several: `current_and_invited` (active, invited), `current_and_future` (active, "
        "invited, creation_pending), `current_and_concluded` (active, completed), "
        "`current_future_and_restricted` (those of current_and_future and inactive). Default: "
        "active and invited; with a temporary-enrollment filter, every state.",
    ),
    TYPE_FIELD,
    Field(
        "temporary_enrollments_for_recipient",
        BOOLEAN,
        "The user's temporary enrollments (the user as the recipient). With this parameter or "
        "the next, only enrollments in courses whose account grants the caller a "
        "temporary-enrollment permission are listed (none: 401); given but false, nothing is "
        "listed (as in Canvas).",
    ),
    Field(
        "temporary_enrollment_recipients_for_provider",
        BOOLEAN,
        "The temporary enrollments the user provides (the user as the provider).",
    ),
    INCLUDE_FIELD,
    *PAGE_FIELDS,
)
TASK_DOC = (
    "What to do: `conclude` (completed), `delete` (deleted), `deactivate` or `inactivate` "
    f"(inactive). Default `{DEFAULT_TASK}`. In the query string (`?task=delete`) or the body."
)
DELETE_BODY = (Field("task", string_schema(tuple(TASK_STATES)), TASK_DOC),)

UserIdPath = Annotated[
    str,
    Path(
        description="A user id, or `self` for the token's user.",
        pattern=r"^(self|[0-9]{1,19})$",
        examples=["self"],
    ),
    user_id_path(),
]


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


# --------------------------------------------------------------------------------------------
# Rendering


@dataclasses.dataclass(frozen=True)
class Shown:
    """An enrollment with what its JSON needs besides its own columns."""

    enrollment: Enrollment
    state: str  # the shown state (read-time rule)
    role: str  # the role's name (its type, for a built-in role)
    course_deleted: bool = False
    section_deleted: bool = False


def _users(session: Session, user_ids: set[int], root_account_id: int) -> dict[int, UserJson]:
    """Canvas's user JSON of each user, with their login in the root account: two queries."""
    if not user_ids:
        return {}
    users = session.scalars(select(User).where(User.id.in_(user_ids))).all()
    logins: dict[int, Pseudonym] = {}
    for login in session.scalars(
        select(Pseudonym)
        .where(
            Pseudonym.user_id.in_(user_ids),
            Pseudonym.account_id == root_account_id,
            Pseudonym.workflow_state != "deleted",
        )
        .order_by(Pseudonym.id)
    ):
        logins.setdefault(login.user_id, login)
    return {user.id: UserJson.of(user, logins.get(user.id)) for user in users}


def render(
    session: Session,
    shown: Sequence[Shown],
    request: Request,
    *,
    include: Sequence[str] = (),
) -> list[EnrollmentJson]:
    """Canvas's `enrollment_json` of each: `html_url` to the user in the course, `user`, and
    `temporary_enrollment_provider` when asked for (`include[]=temporary_enrollment_providers`:
    the provider's user, unless deleted)."""
    # From TEP_PUBLIC_URL (else a relative URL), never from the request's Host header.
    base = public_base(request)
    root = shown[0].enrollment.root_account_id if shown else 0
    providers = INCLUDE_PROVIDERS in include
    wanted = {item.enrollment.user_id for item in shown}
    if providers:
        wanted |= {
            item.enrollment.temporary_enrollment_source_user_id
            for item in shown
            if item.enrollment.temporary_enrollment_source_user_id is not None
        }
    users = _users(session, wanted, root)
    deleted_users = set(
        session.scalars(
            select(User.id).where(User.id.in_(wanted), User.workflow_state == "deleted")
        )
    )
    result = []
    for item in shown:
        e = item.enrollment
        json = EnrollmentJson(
            id=e.id,
            root_account_id=e.root_account_id,
            user_id=e.user_id,
            course_id=e.course_id,
            course_section_id=e.course_section_id,
            associated_user_id=e.associated_user_id,
            temporary_enrollment_source_user_id=e.temporary_enrollment_source_user_id,
            temporary_enrollment_pairing_id=e.temporary_enrollment_pairing_id,
            limit_privileges_to_course_section=bool(e.limit_privileges_to_course_section),
            # Canvas shows an enrollment of a deleted course or section as deleted.
            enrollment_state="deleted"
            if item.course_deleted or item.section_deleted
            else item.state,
            created_at=e.created_at,
            updated_at=e.updated_at,
            start_at=e.start_at,
            end_at=e.end_at,
            completed_at=e.completed_at,
            type=e.type,
            role=item.role,
            role_id=e.role_id,
            html_url=f"{base}/courses/{e.course_id}/users/{e.user_id}",
            user=users[e.user_id],
        )
        if e.type == "StudentEnrollment":
            json.grades = GradesJson(html_url=f"{base}/courses/{e.course_id}/grades/{e.user_id}")
        source = e.temporary_enrollment_source_user_id
        if providers and source is not None and source in users and source not in deleted_users:
            json.temporary_enrollment_provider = users[source]
        result.append(json)
    return result


def listing(now: dt.datetime) -> tuple[AnySelect, Label[str]]:
    """Enrollments with their shown state, role name and their course's and section's states,
    for a list (filter and order it, then :func:`shown_rows`)."""
    shown = shown_state_sql(now).label("shown_state")
    return (
        select(
            Enrollment,
            shown,
            Role.name,
            Course.workflow_state == "deleted",
            CourseSection.workflow_state == "deleted",
        )
        .outerjoin(Pairing, Pairing.id == Enrollment.temporary_enrollment_pairing_id)
        .join(Role, Role.id == Enrollment.role_id)
        .join(Course, Course.id == Enrollment.course_id)
        .join(CourseSection, CourseSection.id == Enrollment.course_section_id)
    ), shown


def shown_rows(rows: Sequence[Any]) -> list[Shown]:
    return [
        Shown(enrollment, state, role, bool(course_deleted), bool(section_deleted))
        for enrollment, state, role, course_deleted, section_deleted in rows
    ]


def _include(params: Params) -> list[str]:
    return params.strings("include") or []


# --------------------------------------------------------------------------------------------
# Create


def _role_and_type(session: Session, course: Course, params: Params) -> tuple[Role, str]:
    """The enrollment's role and type, decided as EnrollmentsApiController#create decides them:
    `enrollment[role_id]` (else the deprecated `enrollment[role]` name) names a course role
    of the course's account or above, whose base type is the type; without a role the type (by
    default StudentEnrollment) names its built-in role. Canvas's messages, as a 400."""
    given_type = params.string("enrollment", "type")
    role_id = params.integer("enrollment", "role_id")
    role_name = params.string("enrollment", "role")
    account = session.get_one(Account, course.account_id)
    errors: list[str] = []
    role: Role | None
    if role_id is not None:
        role = permissions.role_by_id(session, account, role_id)
    elif role_name is not None:
        role = permissions.role_by_name(session, account, role_name, course_role=True)
    else:
        enrollment_type = given_type or DEFAULT_TYPE
        if enrollment_type not in ENROLLMENT_TYPES:
            raise bad_request(
                f"{INVALID_TYPE}: enrollment[type] {echo(enrollment_type)} is not accepted; use "
                f"one of: {', '.join(ENROLLMENT_TYPES)}"
            )
        try:
            role = canvas_objects.built_in_role(session, course.root_account_id, enrollment_type)
        except canvas_objects.CanvasObjectError as error:
            raise unprocessable(str(error)) from None
    if role is not None and permissions.is_course_role(role) and role.workflow_state != "deleted":
        enrollment_type = given_type or role.base_role_type
        if role.workflow_state == "inactive":
            errors.append(INACTIVE_ROLE)
        elif enrollment_type != role.base_role_type:
            errors.append(BASE_TYPE_MISMATCH)
    else:
        errors.append(INVALID_ROLE)
    if errors:
        raise bad_request(", ".join(errors))
    assert role is not None
    return role, enrollment_type


def _create(
    session: Session,
    caller: Caller,
    course: Course,
    section: CourseSection,
    params: Params,
    request: Request,
) -> EnrollmentJson:
    """Validate and insert; the caller has found `section` in the caller's root account and
    checked that the caller is an admin there."""
    user_id = params.integer("enrollment", "user_id", required=True)
    assert user_id is not None
    role, enrollment_type = _role_and_type(session, course, params)
    state = (
        params.string("enrollment", "enrollment_state", choices=CREATABLE_STATES)
        or DEFAULT_CREATED_STATE
    )
    start_at = params.moment("enrollment", "start_at")
    end_at = params.moment("enrollment", "end_at")
    limit_privileges = bool(params.boolean("enrollment", "limit_privileges_to_course_section"))
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
    pairing: Pairing | None = None
    if pairing_id is not None:
        # The pairing's row lock, before writing one of its enrollments (see the module doc).
        pairing = session.execute(
            select(Pairing).where(Pairing.id == pairing_id).with_for_update()
        ).scalar_one_or_none()
        if pairing is None or pairing.root_account_id != root:
            raise not_found(f"no temporary enrollment pairing with id {pairing_id}")
        # The shown state: Canvas's row stays `active` when a pairing ends (tep's table says it).
        # An ended pairing is still `active` to Canvas, which takes enrollments into it: it
        # opens again, as a reactivation reopens it (`_reopen`).
        pairing_state = lifecycle.pairing_state(session, pairing)
        if pairing_state == "deleted":
            raise unprocessable(
                f"temporary enrollment pairing {pairing_id} is deleted; "
                "only an active pairing takes enrollments"
            )

    # Canvas's unique index `index_enrollments_on_user_type_role_section`: one enrollment per
    # user, type, role and section, whatever its state. Canvas's `Course#enroll_user`
    # (app/models/course.rb; the API's create passes `allow_multiple_enrollments`) reuses that
    # row: one not `active` takes the requested state (a deleted one comes back), and every one
    # takes the new dates, section privileges and temporary ids.
    existing = session.scalar(
        select(Enrollment.id).where(
            Enrollment.user_id == user_id,
            Enrollment.type == enrollment_type,
            Enrollment.role_id == role.id,
            Enrollment.course_section_id == section.id,
            Enrollment.associated_user_id.is_(None),
        )
    )
    already = (
        f"user {user_id} already has a {enrollment_type} enrollment in role {role.name} in "
        f"section {section.id}"
    )
    run_id = lifecycle.new_run_id()
    if existing is not None:
        reused = _enroll_again(
            session,
            caller,
            existing,
            state=state,
            start_at=start_at,
            end_at=end_at,
            limit_privileges=limit_privileges,
            source_user_id=source_user_id,
            pairing_id=pairing_id,
            run_id=run_id,
            now=now,
        )
        if pairing is not None and reused.workflow_state in LIVE_ENROLLMENT_STATES:
            _reopen(session, caller, pairing, run_id, now)
        if temporary:
            timers.schedule_after_commit(session, [end_at])
        [json] = render(
            session, [Shown(reused, reused.workflow_state, role.name)], request,
            include=_include(params),
        )  # fmt: skip
        return json
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
        limit_privileges_to_course_section=limit_privileges,
        temporary_enrollment_source_user_id=source_user_id,
        temporary_enrollment_pairing_id=pairing_id,
    )
    try:
        # uuid, its `enrollment_states` row, the user's touch and tep's deadline index.
        canvas_objects.create_enrollment(session, enrollment, as_of=now)
    except IntegrityError:
        # Another request enrolled the same user between our check and our insert.
        raise unprocessable(f"{already}; Canvas allows one per user, role and section") from None
    if pairing is not None and state in LIVE_ENROLLMENT_STATES:
        _reopen(session, caller, pairing, run_id, now)
    if temporary:  # due within the timers' horizon: its timer now, not at the next tick
        timers.schedule_after_commit(session, [end_at])
    [json] = render(
        session, [Shown(enrollment, enrollment.workflow_state, role.name)], request,
        include=_include(params),
    )  # fmt: skip
    return json


REASON_ENROLLED_AGAIN = "enrolled_again"


def _enroll_again(
    session: Session,
    caller: Caller,
    enrollment_id: int,
    *,
    state: str,
    start_at: dt.datetime | None,
    end_at: dt.datetime | None,
    limit_privileges: bool,
    source_user_id: int | None,
    pairing_id: int | None,
    run_id: str,
    now: dt.datetime,
) -> Enrollment:
    """Canvas's `Course#enroll_user` on a row it finds: a state change (audited) unless the row
    is `active`, and the new dates, privileges and temporary ids; what Canvas's callbacks would
    have written, and tep's deadline index, as every writer here."""
    enrollment: Enrollment = _locked(session, Enrollment, enrollment_id)
    if enrollment.workflow_state != "active" and enrollment.workflow_state != state:
        _audit(session, caller, enrollment, state, REASON_ENROLLED_AGAIN, run_id, now)
        enrollment.workflow_state = state
        if state != "completed":
            enrollment.completed_at = None
    enrollment.start_at = start_at
    enrollment.end_at = end_at
    enrollment.limit_privileges_to_course_section = limit_privileges
    enrollment.temporary_enrollment_source_user_id = source_user_id
    enrollment.temporary_enrollment_pairing_id = pairing_id
    enrollment.updated_at = now
    session.flush()
    canvas_callbacks.sync_enrollments(session, [enrollment.id], now)
    deadlines.track(session, [enrollment.id])
    return enrollment


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


ENROLLMENT_RESPONSE: dict[str, Any] = {"response_model_exclude_unset": True}


@router.post(
    "/courses/{course_id}/enrollments",
    response_model=EnrollmentJson,
    summary="Enroll a user",
    responses=error_responses(422),
    openapi_extra=documented(body=COURSE_CREATE_FIELDS, body_required=True),
    tags=["Enrollments"],
    **ENROLLMENT_RESPONSE,
)
def create_course_enrollment(
    course_id: CourseIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
) -> EnrollmentJson:
    """Enrolls a user in the course (in its default section unless one is given), in the role
    `enrollment[role_id]` names or the built-in role of `enrollment[type]`. With
    `temporary_enrollment_source_user_id` and `temporary_enrollment_pairing_id` it is a
    temporary enrollment, ended by its pairing at `end_at`."""
    with transaction(db.write) as session:
        course = find_course(session, caller, course_id)
        require_admin(session, caller, course.account_id)
        section_id = params.integer("enrollment", "course_section_id")
        if section_id is None:
            section = _default_section(session, db, course.id, course.root_account_id)
        else:
            section = find_section(session, caller, section_id)
            if section.course_id != course.id:
                raise not_found(f"no section with id {section_id} in course {course_id}")
        return _create(session, caller, course, section, params, request)


@router.post(
    "/sections/{section_id}/enrollments",
    response_model=EnrollmentJson,
    summary="Enroll a user in a section",
    responses=error_responses(422),
    openapi_extra=documented(body=CREATE_FIELDS, body_required=True),
    tags=["Enrollments"],
    **ENROLLMENT_RESPONSE,
)
def create_section_enrollment(
    section_id: SectionIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
) -> EnrollmentJson:
    """Enrolls a user in the section (and so its course); parameters as for a course."""
    with transaction(db.write) as session:
        section = find_section(session, caller, section_id)
        course = find_course(session, caller, section.course_id)
        require_admin(session, caller, course.account_id)
        return _create(session, caller, course, section, params, request)


# --------------------------------------------------------------------------------------------
# List: a course's


@router.get(
    "/courses/{course_id}/enrollments",
    response_model=list[EnrollmentJson],
    summary="List enrollments",
    responses={**error_responses(), 200: {"headers": LINK_HEADER_DOC}},
    openapi_extra=documented(query=LIST_FIELDS),
    tags=["Enrollments"],
    **ENROLLMENT_RESPONSE,
)
def list_enrollments(
    course_id: CourseIdPath,
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
    include = _include(params)
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

    with transaction(db.read, commit=False) as session:
        course = find_course(session, caller, course_id)
        require_admin(session, caller, course.account_id)
        stmt, shown = listing(now)
        stmt = stmt.where(Enrollment.course_id == course.id, shown.in_(states)).order_by(
            Enrollment.id
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
        return render(session, shown_rows(rows), request, include=include)


# --------------------------------------------------------------------------------------------
# List: a user's


def expand_states(states: Sequence[str]) -> list[str]:
    """Canvas's `enrollment_states_for_state_param`: synthetic states replaced by theirs."""
    result: list[str] = []
    for state in states:
        for item in SYNTHETIC_STATES.get(state, (state,)):
            if item not in result:
                result.append(item)
    return result


def _find_user(session: Session, caller: Caller, user_id: str) -> int:
    target = caller.user_id if user_id == "self" else int(user_id)
    if user_in_account(session, target, caller.root_account_id) is None:
        raise not_found(f"no user with id {user_id}")
    return target


def _temporary_accounts_allowed(
    session: Session, caller: Caller, stmt: AnySelect
) -> tuple[bool, list[int]]:
    """Whether there are candidate enrollments at all, and the accounts of their courses that
    grant the caller a temporary-enrollment permission (`user_index_enrollments`: the
    enrollments whose `course.account.grants_any_right?` any of
    `MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS`)."""
    account_ids = sorted(
        set(session.scalars(stmt.with_only_columns(Course.account_id).order_by(None).distinct()))
    )
    allowed = [
        account_id
        for account_id in account_ids
        if permissions.holds(
            session,
            caller.user_id,
            account_id,
            permissions.MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS,
        )
    ]
    return bool(account_ids), allowed


@router.get(
    "/users/{user_id}/enrollments",
    response_model=list[EnrollmentJson],
    summary="List a user's enrollments",
    responses={**error_responses(), 200: {"headers": LINK_HEADER_DOC}},
    openapi_extra=documented(query=USER_LIST_FIELDS),
    tags=["Enrollments"],
    **ENROLLMENT_RESPONSE,
)
def list_user_enrollments(
    user_id: UserIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
    response: Response,
) -> list[EnrollmentJson]:
    """The user's enrollments in the token's root account, by type then id, paginated, in the
    states shown now (the read-time rule of the course list). With
    `temporary_enrollments_for_recipient` the user's temporary enrollments, with
    `temporary_enrollment_recipients_for_provider` the ones the user provides (in courses that
    are not concluded or deleted), as Canvas's temporary-enrollment UI reads them; the caller
    then needs a temporary-enrollment permission in the courses' accounts. Otherwise the caller
    needs to be the user, or an admin of the root account. A user with none gets `[]`."""
    requested = params.strings("state", choices=USER_STATES)
    types = params.strings("type", choices=ENROLLMENT_TYPES)
    temporary_given = {
        name
        for name in (
            "temporary_enrollments_for_recipient",
            "temporary_enrollment_recipients_for_provider",
        )
        if params.raw(name) is not None
    }
    for_recipient = params.boolean("temporary_enrollments_for_recipient")
    for_provider = params.boolean("temporary_enrollment_recipients_for_provider")
    include = _include(params)
    page = requested_page(params)
    now = utcnow()

    with transaction(db.read, commit=False) as session:
        target = _find_user(session, caller, user_id)
        stmt, shown = listing(now)
        stmt = stmt.where(Enrollment.root_account_id == caller.root_account_id)
        if types:
            stmt = stmt.where(Enrollment.type.in_(types))
        if requested:
            stmt = stmt.where(shown.in_(expand_states(requested)))
        elif not temporary_given:
            stmt = stmt.where(shown.in_(LISTED_BY_DEFAULT))
        if temporary_given:
            # EnrollmentsApiController#temporary_enrollment_conditions: the recipient's
            # temporary enrollments, else the provider's recipients', else none at all.
            if for_recipient:
                stmt = stmt.where(
                    Enrollment.user_id == target,
                    Enrollment.temporary_enrollment_source_user_id.is_not(None),
                )
            elif for_provider:
                stmt = stmt.where(Enrollment.temporary_enrollment_source_user_id == target)
            else:
                stmt = stmt.where(literal(False))
            stmt = stmt.where(Course.workflow_state.in_(TEMPORARY_SCOPE_COURSE_STATES))
            found, allowed = _temporary_accounts_allowed(session, caller, stmt)
            if found and not allowed:
                raise unauthorized()
            stmt = stmt.where(Course.account_id.in_(allowed))
        else:
            stmt = stmt.where(Enrollment.user_id == target)
            if target != caller.user_id:
                require_admin(session, caller, caller.root_account_id)
        stmt = stmt.order_by(Enrollment.type, Enrollment.id)
        rows = paginate(session, stmt, page, request, response)
        return render(session, shown_rows(rows), request, include=include)


# --------------------------------------------------------------------------------------------
# Conclude, delete, deactivate; reactivate


def _locked(session: Session, model: Any, id_: int) -> Any:
    return session.execute(
        select(model)
        .where(model.id == id_)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _lock_enrollment(
    session: Session, course: Course, id_: int, *, now: dt.datetime, run_id: str
) -> tuple[Enrollment, Pairing | None]:
    """The course's enrollment (not deleted: Canvas's `Course#enrollments`), locked, after its
    pairing's row (the lock order of every writer), as the API shows it.

    A write acts on what a read shows (the read-time rule): an enrollment shown `deleted` is
    not found, as in Canvas, and nothing is written; one shown in another ending state before
    the worker wrote it gets that state written first, as the sweep would write it (its
    pairing settled in this request's run: reason `expired`), so the task then starts from the
    state the client saw."""
    found = session.get(Enrollment, id_)
    if found is None or found.course_id != course.id:
        raise not_found(f"no enrollment with id {id_} in course {course.id}")
    pairing_id = found.temporary_enrollment_pairing_id
    pairing = _locked(session, Pairing, pairing_id) if pairing_id is not None else None
    enrollment: Enrollment | None = _locked(session, Enrollment, id_)
    if enrollment is None or enrollment.workflow_state == "deleted":
        raise not_found(f"no enrollment with id {id_} in course {course.id}")
    if pairing is not None:
        shown = shown_state(session, enrollment, pairing, now)
        if shown == "deleted":
            raise not_found(f"no enrollment with id {id_} in course {course.id}")
        if shown != enrollment.workflow_state:
            lifecycle.settle_pairing(session, pairing.id, as_of=now, run_id=run_id)
            session.refresh(pairing)
            session.refresh(enrollment)
    return enrollment, pairing


def _audit(
    session: Session,
    caller: Caller,
    enrollment: Enrollment,
    to_state: str,
    reason: str,
    run_id: str,
    now: dt.datetime,
) -> None:
    session.add(
        StateChange(
            context_type=lifecycle.ENROLLMENT,
            context_id=enrollment.id,
            temporary_enrollment_pairing_id=enrollment.temporary_enrollment_pairing_id,
            root_account_id=enrollment.root_account_id,
            from_state=enrollment.workflow_state,
            to_state=to_state,
            reason=reason,
            run_id=run_id,
            actor_id=caller.user_id,
            created_at=now,
        )
    )


def _answer(
    session: Session,
    enrollment: Enrollment,
    pairing: Pairing | None,
    now: dt.datetime,
    request: Request,
) -> EnrollmentJson:
    role = session.get(Role, enrollment.role_id)
    section = session.get(CourseSection, enrollment.course_section_id)
    [json] = render(
        session,
        [
            Shown(
                enrollment,
                shown_state(session, enrollment, pairing, now),
                role.name if role is not None else enrollment.type,
                section_deleted=section is not None and section.workflow_state == "deleted",
            )
        ],
        request,
    )
    return json


@router.delete(
    "/courses/{course_id}/enrollments/{id}",
    response_model=EnrollmentJson,
    summary="Conclude, deactivate, or delete an enrollment",
    responses=error_responses(),
    openapi_extra=documented(body=DELETE_BODY),
    tags=["Enrollments"],
    **ENROLLMENT_RESPONSE,
)
def delete_enrollment(
    course_id: CourseIdPath,
    id: EnrollmentIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
) -> EnrollmentJson:
    """Concludes (`completed`), deletes or deactivates (`inactive`) the enrollment, with an audit
    row. Ending a pairing's last live enrollment ends the pairing. Asking for the state it is
    already in changes nothing; a deleted enrollment is not found, as in Canvas. The state is
    the one shown (the read-time rule): a temporary enrollment past its `end_at` and shown
    `deleted` is not found; one shown `completed` or `inactive` has that expiry written first
    (reason `expired`), and the task applies to it from there."""
    task = params.string("task", choices=tuple(TASK_STATES)) or DEFAULT_TASK
    to_state = TASK_STATES[task]
    now = utcnow()
    run_id = lifecycle.new_run_id()
    with transaction(db.write) as session:
        course = find_course(session, caller, course_id)
        require_admin(session, caller, course.account_id)
        enrollment, pairing = _lock_enrollment(session, course, id, now=now, run_id=run_id)
        if enrollment.workflow_state != to_state:
            _audit(session, caller, enrollment, to_state, TASK_REASONS[task], run_id, now)
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
        return _answer(session, enrollment, pairing, now, request)


@router.put(
    "/courses/{course_id}/enrollments/{id}/reactivate",
    response_model=EnrollmentJson,
    summary="Re-activate an enrollment",
    responses=error_responses(),
    tags=["Enrollments"],
    **ENROLLMENT_RESPONSE,
)
def reactivate_enrollment(
    course_id: CourseIdPath,
    id: EnrollmentIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    request: Request,
) -> EnrollmentJson:
    """Makes an `inactive` enrollment `active` again (Canvas's `reactivate`); any other state is
    a 400 `enrollment not inactive`. Audited (reason `reactivated`). A temporary enrollment whose
    pairing had ended (every enrollment ended) reopens the pairing, so that it ends the
    enrollment at its `end_at`; one past its `end_at` is shown in its pairing's ending state at
    once, and the sweep writes it."""
    now = utcnow()
    run_id = lifecycle.new_run_id()
    with transaction(db.write) as session:
        course = find_course(session, caller, course_id)
        require_admin(session, caller, course.account_id)
        enrollment, pairing = _lock_enrollment(session, course, id, now=now, run_id=run_id)
        if enrollment.workflow_state != "inactive":
            # Canvas renders `{"error": "enrollment not inactive"}`; tep keeps its one error
            # shape, with Canvas's message.
            raise ApiError(400, "enrollment not inactive")
        _audit(session, caller, enrollment, "active", REASON_REACTIVATED, run_id, now)
        enrollment.workflow_state = "active"
        enrollment.updated_at = now
        session.flush()
        if pairing is not None and pairing.workflow_state != "deleted":
            _reopen(session, caller, pairing, run_id, now)
        canvas_callbacks.sync_enrollments(session, [enrollment.id], now)
        deadlines.track(session, [enrollment.id])
        return _answer(session, enrollment, pairing, now, request)


def _reopen(
    session: Session, caller: Caller, pairing: Pairing, run_id: str, now: dt.datetime
) -> None:
    """An ended pairing taking a live enrollment again is open again: its end (tep's row) goes,
    audited as the pairing back to `active` (a `pairing.restored` event)."""
    end = session.get(PairingEnd, pairing.id)
    if end is None:
        return
    session.add(
        StateChange(
            context_type=lifecycle.PAIRING,
            context_id=pairing.id,
            temporary_enrollment_pairing_id=pairing.id,
            root_account_id=pairing.root_account_id,
            from_state="ended",
            to_state="active",
            reason=REASON_REACTIVATED,
            run_id=run_id,
            actor_id=caller.user_id,
            created_at=now,
        )
    )
    session.delete(end)
    session.flush()
