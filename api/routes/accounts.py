"""What a Canvas client needs to reach pairings and enrollments: accounts, courses, sections,
users, roles and admins, in Canvas's shapes (`canvas.get_account`, `account.create_course`,
`account.create_user`, `course.create_course_section`, `canvas.get_course`, the Roles API, the
account's users as Canvas's temporary-enrollment UI lists them, `POST .../admins`).

Every endpoint here needs an admin of the account (api/authz.py); making an admin needs Canvas's
`manage_account_memberships` and every permission the new role would have
(`AccountUser` policy `create`, app/models/account_user.rb).

Creating users, courses, sections and admins is for standalone tep (`TEP_CANVAS_TABLES=managed`),
where tep's tables are a small Canvas; on Canvas's own database (`existing`) Canvas owns them and
these endpoints refuse (403): there, who is an admin is what Canvas's `account_users` say. Root
accounts are never created here (`tep demo`, the tests and Canvas make them, with their default
term and built-in roles: tasks/canvas_objects.py).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from api.auth import CallerDep
from api.authz import require_admin
from api.context import (
    AccountIdPath,
    CourseIdPath,
    canvas_owns,
    error_responses,
    find_account,
    find_course,
    login_of,
)
from api.db import DatabaseDep
from api.errors import bad_request, not_found, unauthorized
from api.pagination import FIELDS as PAGE_FIELDS
from api.pagination import LINK_HEADER_DOC, link_header, paginate, requested_page
from api.params import (
    BOOLEAN,
    DATE_TIME,
    Field,
    ParamsDep,
    documented,
    echo,
    integer_schema,
    is_ascii_integer,
    string_schema,
)
from api.routes.enrollments import TEMPORARY_SCOPE_COURSE_STATES, UserIdPath, shown_state_sql
from api.schemas import (
    AccountJson,
    AdminJson,
    CourseJson,
    RoleJson,
    RolePermissionJson,
    SectionJson,
    UserJson,
)
from models import (
    ACCOUNT_ADMIN_ROLE,
    LIVE_ENROLLMENT_STATES,
    MAX_ID,
    Account,
    AccountUser,
    CommunicationChannel,
    Course,
    CourseSection,
    Enrollment,
    Pseudonym,
    Role,
    TemporaryEnrollmentPairing,
    User,
    transaction,
    utcnow,
)
from tasks import canvas_objects, permissions

router = APIRouter(prefix="/api/v1")


DEFAULT_COURSE_NAME = "Unnamed Course"  # what Canvas names a course created without a name
# Deliberately loose: Canvas accepts any address with one @ and a dot in its domain. Matched
# whole (`fullmatch`): with `^...$`, `$` also matches before a final line break, so
# "a@b.example\n" passed and broke the header block of the mail sent to it.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

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
        account = find_account(session, caller, account_id)
        require_admin(session, caller, account.id)
        return AccountJson.of(account)


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
        require_admin(session, caller, account.id)
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
def show_course(course_id: CourseIdPath, caller: CallerDep, db: DatabaseDep) -> CourseJson:
    with transaction(db.read, commit=False) as session:
        course = find_course(session, caller, course_id)
        require_admin(session, caller, course.account_id)
        return CourseJson.of(course)


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
    course_id: CourseIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
) -> SectionJson:
    name = params.string("course_section", "name")
    with transaction(db.write) as session:
        course = find_course(session, caller, course_id)
        require_admin(session, caller, course.account_id)
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
    if address is not None and not EMAIL.fullmatch(address):
        raise bad_request(
            f"communication_channel[address] {echo(address)} is not an e-mail address"
        )
    if channel_type is not None and address is None:
        raise bad_request("communication_channel[type] needs communication_channel[address]")
    emails = [a for a in dict.fromkeys([address, unique_id]) if a and EMAIL.fullmatch(a)]

    with transaction(db.write) as session:
        account = find_account(session, caller, account_id)
        require_admin(session, caller, account.id)
        root = caller.root_account_id
        taken = session.scalar(
            select(Pseudonym.id).where(
                Pseudonym.account_id == root, Pseudonym.unique_id == unique_id
            )
        )
        if taken is not None:
            raise bad_request(
                f"pseudonym[unique_id] {echo(unique_id)} is already in use in this account"
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
                f"pseudonym[unique_id] {echo(unique_id)} is already in use in this account"
            ) from None
        return UserJson.of(user, login_of(session, user.id, root))


# --------------------------------------------------------------------------------------------
# Roles (Canvas's Roles API: app/controllers/role_overrides_controller.rb `api_index`)

ROLE_STATES = ("active", "inactive")
# RoleOverride::ENROLLMENT_TYPE_LABELS and ACCOUNT_ADMIN_LABEL (app/models/role_override.rb).
BUILT_IN_LABELS = {
    "StudentEnrollment": "Student",
    "TeacherEnrollment": "Teacher",
    "TaEnrollment": "TA",
    "DesignerEnrollment": "Designer",
    "ObserverEnrollment": "Observer",
    ACCOUNT_ADMIN_ROLE: "Account Admin",
}
# `Role#visible?`: built-in roles other than these are listed.
HIDDEN_BUILT_IN_ROLES = ("AccountMembership", "NoPermissions")
# The permission groups Canvas's JSON names (`group:` in RoleOverride::PERMISSIONS).
PERMISSION_GROUPS = {
    permission: "manage_temporary_enrollments"
    for permission in permissions.MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS
}

ROLE_FIELDS = (
    Field(
        "state[]",
        {"type": "array", "items": string_schema(ROLE_STATES)},
        "Only roles in these states (default: active; built-in roles count as active).",
    ),
    Field(
        "show_inherited",
        BOOLEAN,
        "Also the custom roles of the accounts above this one.",
    ),
    *PAGE_FIELDS,
)


def _permission_json(resolved: permissions.Resolved, permission: str) -> RolePermissionJson:
    """`Api::V1::Role#permission_json`."""
    enabled = resolved.enabled or frozenset()
    json = RolePermissionJson(
        enabled=bool(enabled),
        locked=resolved.locked,
        readonly=resolved.locked,
        explicit=resolved.explicit,
    )
    if enabled:
        json.applies_to_self = permissions.SELF in enabled
        json.applies_to_descendants = permissions.DESCENDANTS in enabled
    if resolved.explicit:
        json.prior_default = bool(resolved.prior_default)
    if permission in PERMISSION_GROUPS:
        json.group = PERMISSION_GROUPS[permission]
    return json


def role_json(session: Session, account: Account, chain: list[int], role: Role) -> RoleJson:
    """`Api::V1::Role#role_json(account, role, ...)`: its permissions as seen in `account`."""
    built_in = role.workflow_state == "built_in"
    account_role = permissions.is_account_role(role)
    label = BUILT_IN_LABELS.get(role.name, role.name) if built_in else role.name
    json = RoleJson(
        id=role.id,
        role=role.name,
        label=label,
        last_updated_at=role.updated_at,
        # Built-in account roles show AccountMembership, whatever they store.
        base_role_type="AccountMembership" if built_in and account_role else role.base_role_type,
        workflow_state=role.workflow_state,
        created_at=role.created_at,
        permissions={
            name: _permission_json(
                permissions.permission_for(session, chain, name, role, account.id), name
            )
            for name in permissions.PERMISSIONS
        },
        is_account_role=account_role,
    )
    if role.account_id is not None:
        owner = session.get(Account, role.account_id)
        if owner is not None:
            json.account = AccountJson.of(owner)
    return json


@router.get(
    "/accounts/{account_id}/roles",
    response_model=list[RoleJson],
    response_model_exclude_unset=True,
    summary="List roles",
    responses={**error_responses(), 200: {"headers": LINK_HEADER_DOC}},
    openapi_extra=documented(query=ROLE_FIELDS),
    tags=["Roles"],
)
def list_roles(
    account_id: AccountIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
    response: Response,
) -> list[RoleJson]:
    """The roles available in the account: the root account's built-in roles (AccountAdmin and
    the five course roles) when `active` is asked for, then the account's custom roles (with
    `show_inherited`, those of the accounts above it too) in the states asked for, by id;
    paginated. Each with the permissions tep knows, as they apply in this account."""
    states = params.strings("state", choices=ROLE_STATES) or ["active"]
    inherited = bool(params.boolean("show_inherited"))
    page = requested_page(params)
    with transaction(db.read, commit=False) as session:
        account = find_account(session, caller, account_id)
        require_admin(session, caller, account.id)
        chain = permissions.account_chain(session, account.id)
        roles: list[Role] = []
        if "active" in states:
            roles += session.scalars(
                select(Role)
                .where(
                    Role.root_account_id == account.resolved_root_account_id,
                    Role.workflow_state == "built_in",
                    Role.name.not_in(HIDDEN_BUILT_IN_ROLES),
                )
                .order_by(Role.id)
            ).all()
        owners = chain if inherited else [account.id]
        roles += session.scalars(
            select(Role)
            .where(Role.account_id.in_(owners), Role.workflow_state.in_(states))
            .order_by(Role.id)
        ).all()
        response.headers["Link"] = link_header(request, page, len(roles))
        shown = roles[page.offset : page.offset + page.per_page]
        return [role_json(session, account, chain, role) for role in shown]


# --------------------------------------------------------------------------------------------
# The account's users (UsersController#api_index, lib/user_search.rb)

# `include[]=email` (UsersController#api_index keeps `include & %w[avatar_url email ...]`;
# lib/api/v1/user.rb `user_json` then adds `email` for a caller with `read_email_addresses`,
# which every admin here is).
INCLUDE_EMAIL = "email"


class UserWithEmailJson(UserJson):
    """A user with `email` when it was asked for (the key is left out otherwise, as Canvas
    leaves it out): `User#email`, the first e-mail channel that is not retired, or null."""

    email: str | None = None

    @classmethod
    def of(
        cls, user: User, login: Pseudonym | None, emails: dict[int, str] | None = None
    ) -> UserWithEmailJson:
        json = cls(**UserJson.of(user, login).model_dump())
        if emails is not None:
            json.email = emails.get(user.id)
        return json


def emails_of(session: Session, user_ids: list[int]) -> dict[int, str]:
    """Each user's address as Canvas's `User#email` reads it (`email_channel`: the user's first
    `email` channel that is not retired; tep maps no `position`, so the first by id)."""
    found: dict[int, str] = {}
    if not user_ids:
        return found
    for user_id, path in session.execute(
        select(CommunicationChannel.user_id, CommunicationChannel.path)
        .where(
            CommunicationChannel.user_id.in_(user_ids),
            CommunicationChannel.path_type == "email",
            CommunicationChannel.workflow_state != "retired",
        )
        .order_by(CommunicationChannel.id)
    ):
        found.setdefault(user_id, path)
    return found


SEARCH_TERM_MIN = 3  # SearchTermHelper::MIN_SEARCH_TERM_LENGTH
USER_LIST_FIELDS = (
    Field(
        "search_term",
        string_schema(),
        f"Users whose name, login, SIS id or e-mail address contains it (at least "
        f"{SEARCH_TERM_MIN} characters), or whose id it is (any length).",
    ),
    Field(
        "temporary_enrollment_recipients",
        BOOLEAN,
        "Only users who are recipients of a live temporary enrollment provided by a user of "
        "the account.",
    ),
    Field(
        "temporary_enrollment_providers",
        BOOLEAN,
        "Only users who provide a live temporary enrollment to a user of the account (with the "
        "previous one: either).",
    ),
    Field(
        "include[]",
        {"type": "array", "items": string_schema()},
        "`email` adds each user's `email` (their first e-mail channel that is not retired, or "
        "null); other values are ignored, as Canvas ignores the ones it does not know.",
    ),
    *PAGE_FIELDS,
)


def _subtree(session: Session, account: Account) -> list[int]:
    """The account and every account below it."""
    root = account.resolved_root_account_id
    children: dict[int, list[int]] = {}
    for child_id, parent_id in session.execute(
        select(Account.id, Account.parent_account_id).where(
            Account.root_account_id == root, Account.workflow_state != "deleted"
        )
    ):
        if parent_id is not None:
            children.setdefault(parent_id, []).append(child_id)
    result, queue = [], [account.id]
    while queue:
        current = queue.pop()
        if current not in result:
            result.append(current)
            queue += children.get(current, [])
    return result


def _of_account(session: Session, account: Account, user: Any = User) -> ColumnElement[bool]:
    """`User.of_account(account).active` over `user` (User or an alias of it): users associated
    with the account. A root account's users are those with a login in it; a sub-account's,
    those enrolled in a course of it (or below) or holding a role in it (or below), the
    associations Canvas keeps (`user_account_associations`)."""
    active = user.workflow_state != "deleted"
    if account.is_root:
        login = aliased(Pseudonym)
        return and_(
            active,
            exists().where(
                login.user_id == user.id,
                login.account_id == account.id,
                login.workflow_state != "deleted",
            ),
        )
    accounts = _subtree(session, account)
    # Aliases of their own, so that these never correlate with an enclosing query's tables.
    enrollment, course, member = aliased(Enrollment), aliased(Course), aliased(AccountUser)
    return and_(
        active,
        or_(
            exists().where(
                enrollment.user_id == user.id,
                enrollment.workflow_state != "deleted",
                enrollment.course_id == course.id,
                course.account_id.in_(accounts),
            ),
            exists().where(
                member.user_id == user.id,
                member.account_id.in_(accounts),
                member.workflow_state != "deleted",
            ),
        ),
    )


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _matches(search_term: str, root_account_id: int) -> ColumnElement[bool]:
    """lib/user_search.rb: the name, else (for an admin) a login, an SIS id or an e-mail
    address containing the term, case-insensitively; or the user's id when it is a number."""
    pattern = f"%{_escape_like(search_term.lower())}%"
    login = exists().where(
        Pseudonym.user_id == User.id,
        Pseudonym.account_id == root_account_id,
        Pseudonym.workflow_state != "deleted",
        or_(
            func.lower(Pseudonym.unique_id).like(pattern, escape="\\"),
            func.lower(Pseudonym.sis_user_id).like(pattern, escape="\\"),
        ),
    )
    email = exists().where(
        CommunicationChannel.user_id == User.id,
        CommunicationChannel.path_type == "email",
        CommunicationChannel.workflow_state.in_(("active", "unconfirmed")),
        func.lower(CommunicationChannel.path).like(pattern, escape="\\"),
    )
    clauses = [func.lower(User.name).like(pattern, escape="\\"), login, email]
    # ASCII digits only (`int("²")` raises), and only an id a row can have (a bigint).
    if is_ascii_integer(search_term) and 1 <= int(search_term) <= MAX_ID:
        clauses.append(User.id == int(search_term))
    return or_(*clauses)


@router.get(
    "/accounts/{account_id}/users",
    response_model=list[UserWithEmailJson],
    response_model_exclude_unset=True,
    summary="List users in account",
    responses={**error_responses(), 200: {"headers": LINK_HEADER_DOC}},
    openapi_extra=documented(query=USER_LIST_FIELDS),
    tags=["Users"],
)
def list_users(
    account_id: AccountIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
    response: Response,
) -> list[UserJson]:
    """The account's users by sortable name, then id, paginated; filtered by `search_term`,
    and to temporary-enrollment recipients and/or providers as Canvas's temporary-enrollment
    UI lists them."""
    search_term = params.string("search_term")
    # The documented minimum (SearchTermHelper::MIN_SEARCH_TERM_LENGTH); an id may be shorter.
    if (
        search_term is not None
        and len(search_term.strip()) < SEARCH_TERM_MIN
        and not is_ascii_integer(search_term.strip())
    ):
        raise bad_request(f"search_term: {SEARCH_TERM_MIN} or more characters is required")
    recipients = bool(params.boolean("temporary_enrollment_recipients"))
    providers = bool(params.boolean("temporary_enrollment_providers"))
    with_email = INCLUDE_EMAIL in (params.strings("include") or [])
    page = requested_page(params)
    with transaction(db.read, commit=False) as session:
        account = find_account(session, caller, account_id)
        require_admin(session, caller, account.id)
        users = _of_account(session, account)
        stmt = select(User).where(users)
        if search_term is not None:
            stmt = stmt.where(_matches(search_term.strip(), caller.root_account_id))
        ends = []
        if recipients:
            ends.append(_temporary_end(session, account, "recipients"))
        if providers:
            ends.append(_temporary_end(session, account, "providers"))
        if ends:
            stmt = stmt.where(or_(*ends))
        # Canvas's `order_by_sortable_name`; a user written without one sorts by their name.
        stmt = stmt.order_by(func.lower(func.coalesce(User.sortable_name, User.name)), User.id)
        found = [row[0] for row in paginate(session, stmt, page, request, response)]
        logins = {user.id: login_of(session, user.id, caller.root_account_id) for user in found}
        emails = emails_of(session, [user.id for user in found]) if with_email else None
        return [UserWithEmailJson.of(user, logins[user.id], emails) for user in found]


def _temporary_end(session: Session, account: Account, which: str) -> ColumnElement[bool]:
    """Users who are recipients (`which` = recipients) or providers of a live temporary
    enrollment (the read-time rule) in a course that is not concluded or deleted, whose other
    end is a user of the account: lib/user_search.rb's
    `Enrollment.active_or_pending_by_date.temporary_enrollment_recipients_for_provider(users)`
    and `...temporary_enrollments_for_recipient(users)`."""
    peer = aliased(User)
    this_end: Any
    other_end: Any
    if which == "recipients":
        this_end, other_end = Enrollment.user_id, Enrollment.temporary_enrollment_source_user_id
    else:
        this_end, other_end = Enrollment.temporary_enrollment_source_user_id, Enrollment.user_id
    return exists(
        select(Enrollment.id)
        .outerjoin(
            TemporaryEnrollmentPairing,
            TemporaryEnrollmentPairing.id == Enrollment.temporary_enrollment_pairing_id,
        )
        .join(Course, Course.id == Enrollment.course_id)
        .join(peer, peer.id == other_end)
        .where(
            this_end == User.id,
            Enrollment.temporary_enrollment_source_user_id.is_not(None),
            Course.workflow_state.in_(TEMPORARY_SCOPE_COURSE_STATES),
            shown_state_sql(utcnow()).in_(LIVE_ENROLLMENT_STATES),
            _of_account(session, account, peer),
        )
        .correlate(User)
    )


# --------------------------------------------------------------------------------------------
# Admins (AdminsController#create)

ADMIN_FIELDS = (
    Field("user_id", integer_schema(), "The user to make an admin of the account.", required=True),
    Field("role_id", integer_schema(), "The account role (default: the built-in AccountAdmin)."),
    Field("role", string_schema(), "Deprecated: the account role by name (e.g. `AccountAdmin`)."),
    Field("send_confirmation", BOOLEAN, "Accepted for Canvas's clients; tep sends no e-mail."),
)


@router.post(
    "/accounts/{account_id}/admins",
    response_model=AdminJson,
    summary="Make an account admin",
    responses=error_responses(403),
    dependencies=[canvas_owns("admins")],
    openapi_extra=documented(body=ADMIN_FIELDS, body_required=True),
    tags=["Admins"],
)
def create_admin(
    account_id: AccountIdPath, caller: CallerDep, db: DatabaseDep, params: ParamsDep
) -> AdminJson:
    """Makes an existing user (with a login in the root account) an admin of the account, in
    the role `role_id` or `role` names (an account role of the account or above; default
    AccountAdmin). The caller needs `manage_account_memberships` there and every permission the
    role would have. Making an admin who already is one changes nothing."""
    user_id = params.integer("user_id", required=True)
    assert user_id is not None
    role_id = params.integer("role_id")
    role_name = params.string("role")
    params.boolean("send_confirmation")
    with transaction(db.write) as session:
        account = find_account(session, caller, account_id)
        require_admin(session, caller, account.id)
        user = session.get(User, user_id)
        login = login_of(session, user_id, caller.root_account_id)
        if user is None or user.workflow_state == "deleted" or login is None:
            raise not_found(f"no user with id {user_id}")
        try:
            role = permissions.account_role(session, account, role_id=role_id, name=role_name)
        except permissions.RoleError as error:
            raise bad_request(str(error)) from None
        if not permissions.may_grant(session, caller.user_id, account, role):
            raise unauthorized()
        admin, _written = permissions.grant(session, account, user_id, role)
        return AdminJson(
            id=admin.id,
            role=role.name,
            role_id=role.id,
            user=UserJson.of(user, login),
            workflow_state=admin.workflow_state,
        )


# --------------------------------------------------------------------------------------------
# Read-only lookups a REST client of Canvas starts from: the token's user (UsersController
# #api_show), the caller's permissions in an account (AccountsController#permissions) and a
# course's sections (SectionsController#index). tep's hosted-Canvas connector
# (tasks/canvas_rest/) calls them on a hosted Canvas; here they answer as Canvas does.


@router.get(
    "/users/{user_id}",
    response_model=UserWithEmailJson,
    summary="Show user details",
    responses=error_responses(),
    tags=["Users"],
)
def show_user(user_id: UserIdPath, caller: CallerDep, db: DatabaseDep) -> UserWithEmailJson:
    """The user (`self`: the token's user), with `email`, which Canvas's `api_show` always
    returns. Anyone may see themselves; another user of the root account needs an admin
    (Canvas's `:api_show_user`)."""
    with transaction(db.read, commit=False) as session:
        target = caller.user_id if user_id == "self" else int(user_id)
        user = session.get(User, target)
        login = login_of(session, target, caller.root_account_id)
        if user is None or user.workflow_state == "deleted" or login is None:
            raise not_found(f"no user with id {user_id}")
        if target != caller.user_id:
            require_admin(session, caller, caller.root_account_id)
        return UserWithEmailJson.of(user, login, emails_of(session, [user.id]))


PERMISSION_FIELDS = (
    Field(
        "permissions[]",
        {"type": "array", "items": string_schema()},
        "The permissions to check for the token's user in the account.",
    ),
)
# Permissions tep's model does not compute (tasks/permissions.py) but whose endpoints it
# serves: they answer what those endpoints here require, an admin of the account (the account's
# users need `read_roster` in Canvas, their e-mail addresses `read_email_addresses`).
ADMIN_PERMISSIONS = ("read_roster", "read_email_addresses")


@router.get(
    "/accounts/{account_id}/permissions",
    response_model=dict[str, bool],
    summary="Permissions",
    responses=error_responses(),
    openapi_extra=documented(query=PERMISSION_FIELDS),
    tags=["Accounts"],
)
def account_permissions(
    account_id: AccountIdPath, caller: CallerDep, db: DatabaseDep, params: ParamsDep
) -> dict[str, bool]:
    """Whether the token's user holds each of `permissions[]` in the account, as Canvas's
    `rights_status` answers (`{"temporary_enrollments_add": true, ...}`; a permission Canvas
    does not know is false). Canvas asks `:read` on the account first (an admin of it; 401
    otherwise). The temporary-enrollment permissions and `manage_account_memberships` follow
    Canvas's roles and overrides (tasks/permissions.py); `read_roster` and
    `read_email_addresses` are an admin's here, as the endpoints that need them require."""
    wanted = params.strings("permissions") or []
    with transaction(db.read, commit=False) as session:
        account = find_account(session, caller, account_id)
        require_admin(session, caller, account.id)
        result: dict[str, bool] = {}
        for name in wanted:
            if name in permissions.PERMISSIONS:
                result[name] = permissions.holds(session, caller.user_id, account.id, [name])
            else:
                result[name] = name in ADMIN_PERMISSIONS
        return result


@router.get(
    "/courses/{course_id}/sections",
    response_model=list[SectionJson],
    summary="List course sections",
    responses={**error_responses(), 200: {"headers": LINK_HEADER_DOC}},
    openapi_extra=documented(query=PAGE_FIELDS),
    tags=["Sections"],
)
def list_sections(
    course_id: CourseIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
    response: Response,
) -> list[SectionJson]:
    """The course's sections that are not deleted (`active_course_sections`), by name then id,
    paginated (SectionsController#index)."""
    page = requested_page(params)
    with transaction(db.read, commit=False) as session:
        course = find_course(session, caller, course_id)
        require_admin(session, caller, course.account_id)
        stmt = (
            select(CourseSection)
            .where(CourseSection.course_id == course.id, CourseSection.workflow_state != "deleted")
            .order_by(CourseSection.name, CourseSection.id)
        )
        return [SectionJson.of(row[0]) for row in paginate(session, stmt, page, request, response)]
