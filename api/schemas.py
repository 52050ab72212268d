"""The JSON objects the API returns, in Canvas's shapes and names.

Timestamps are ISO 8601 in UTC with a `Z`, as Canvas writes them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, PlainSerializer, WithJsonSchema

from models import Account, Course, CourseSection, Pseudonym, TemporaryEnrollmentPairing, User
from tasks.lifecycle import PairingView, iso

Timestamp = Annotated[
    dt.datetime,
    PlainSerializer(iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

# Canvas shows a course's internal states under the names its API documents.
COURSE_STATES_SHOWN = {"claimed": "unpublished", "created": "unpublished"}


class TemporaryEnrollmentPairingJson(BaseModel):
    """A TemporaryEnrollmentPairing, as Canvas's API returns it, with the state tep shows:
    `workflow_state` `ended` and `ended_at` come from tep's pairing ends (Canvas's row knows only
    `active` and `deleted`, and has no `ended_at`)."""

    id: int | None
    root_account_id: int
    workflow_state: str
    ending_enrollment_state: str | None
    created_by_id: int | None
    deleted_by_id: int | None
    ended_at: Timestamp | None
    created_at: Timestamp | None
    updated_at: Timestamp | None

    @classmethod
    def of(
        cls, pairing: TemporaryEnrollmentPairing, view: PairingView
    ) -> TemporaryEnrollmentPairingJson:
        """`view` is the pairing's shown state (`lifecycle.pairing_view(s)`)."""
        return cls(
            id=pairing.id,
            root_account_id=pairing.root_account_id,
            workflow_state=view.workflow_state,
            ending_enrollment_state=pairing.ending_enrollment_state,
            created_by_id=pairing.created_by_id,
            deleted_by_id=pairing.deleted_by_id,
            ended_at=view.ended_at,
            created_at=pairing.created_at,
            updated_at=pairing.updated_at,
        )


class TemporaryEnrollmentPairingAsJson(BaseModel):
    """A pairing as Canvas answers it: `render json: pairing.as_json`, and Canvas's models render
    under their root key (`app/controllers/temporary_enrollment_pairings_api_controller.rb`; its
    spec and Canvas's UI, `ui/shared/temporary-enrollment/react/api/enrollment.ts`, read
    `temporary_enrollment_pairing` from the answer)."""

    temporary_enrollment_pairing: TemporaryEnrollmentPairingJson

    @classmethod
    def of(
        cls, pairing: TemporaryEnrollmentPairing, view: PairingView
    ) -> TemporaryEnrollmentPairingAsJson:
        return cls(temporary_enrollment_pairing=TemporaryEnrollmentPairingJson.of(pairing, view))


class AccountJson(BaseModel):
    id: int
    name: str | None  # nullable in Canvas's table
    parent_account_id: int | None
    # null for a root account, as Canvas shows it (lib/api/v1/account.rb), not the stored 0.
    root_account_id: int | None
    workflow_state: str

    @classmethod
    def of(cls, account: Account) -> AccountJson:
        return cls(
            id=account.id,
            name=account.name,
            parent_account_id=account.parent_account_id,
            root_account_id=None if account.is_root else account.root_account_id,
            workflow_state=account.workflow_state,
        )


class CourseJson(BaseModel):
    id: int
    name: str | None  # nullable in Canvas's table
    course_code: str | None
    account_id: int
    root_account_id: int
    workflow_state: str
    start_at: Timestamp | None
    end_at: Timestamp | None
    created_at: Timestamp

    @classmethod
    def of(cls, course: Course) -> CourseJson:
        return cls(
            id=course.id,
            name=course.name,
            course_code=course.course_code,
            account_id=course.account_id,
            root_account_id=course.root_account_id,
            workflow_state=COURSE_STATES_SHOWN.get(course.workflow_state, course.workflow_state),
            start_at=course.start_at,
            end_at=course.conclude_at,
            created_at=course.created_at,
        )


class SectionJson(BaseModel):
    id: int
    name: str
    course_id: int
    created_at: Timestamp

    @classmethod
    def of(cls, section: CourseSection) -> SectionJson:
        return cls(
            id=section.id,
            name=section.name,
            course_id=section.course_id,
            created_at=section.created_at,
        )


class UserJson(BaseModel):
    """A User, as Canvas's `user_json` renders one for an admin (lib/api/v1/user.rb:
    `API_USER_JSON_OPTS` id, name, created_at, sortable_name, short_name; `sis_user_id`,
    `integration_id` and `login_id` from the user's login in the root account)."""

    id: int
    name: str | None  # nullable in Canvas's table
    created_at: Timestamp
    sortable_name: str | None
    short_name: str | None
    sis_user_id: str | None
    integration_id: str | None
    login_id: str | None

    @classmethod
    def of(cls, user: User, login: Pseudonym | None) -> UserJson:
        return cls(
            id=user.id,
            name=user.name,
            created_at=user.created_at,
            sortable_name=user.sortable_name,
            # `User#short_name`: its own column, else the name; tep maps no short_name column.
            short_name=user.name,
            sis_user_id=login.sis_user_id if login else None,
            integration_id=None,  # a column of Canvas's pseudonyms tep does not map
            login_id=login.unique_id if login else None,
        )


class GradesJson(BaseModel):
    """A student enrollment's `grades` (only the link: tep keeps no scores)."""

    html_url: str


class EnrollmentJson(BaseModel):
    """An Enrollment, as Canvas's `enrollment_json` renders it (lib/api/v1/user.rb,
    `API_ENROLLMENT_JSON_OPTS`, then `role`, `role_id`, `html_url`, `user`), plus tep's
    `completed_at`.

    `enrollment_state` is the state in force now: a temporary enrollment whose `end_at` has
    passed shows its pairing's ending state even before the worker has written it; one in a
    deleted course or section shows `deleted`, as Canvas shows it. `grades` is there for student
    enrollments only and `temporary_enrollment_provider` with
    `include[]=temporary_enrollment_providers` only (keys left out otherwise, as Canvas does).
    """

    id: int
    root_account_id: int
    user_id: int
    course_id: int
    course_section_id: int
    associated_user_id: int | None
    temporary_enrollment_source_user_id: int | None
    temporary_enrollment_pairing_id: int | None
    limit_privileges_to_course_section: bool
    enrollment_state: str
    created_at: Timestamp
    updated_at: Timestamp
    start_at: Timestamp | None
    end_at: Timestamp | None
    completed_at: Timestamp | None
    type: str
    role: str
    role_id: int
    html_url: str
    user: UserJson
    grades: GradesJson | None = None
    temporary_enrollment_provider: UserJson | None = None


class RolePermissionJson(BaseModel):
    """One permission of a role (`Api::V1::Role#permission_json`): `applies_to_self` and
    `applies_to_descendants` only when enabled, `prior_default` only when explicit."""

    enabled: bool
    locked: bool
    readonly: bool
    explicit: bool
    prior_default: bool | None = None
    applies_to_self: bool | None = None
    applies_to_descendants: bool | None = None
    group: str | None = None


class RoleJson(BaseModel):
    """A Role, as Canvas's Roles API renders it (`Api::V1::Role#role_json`, lib/api/v1/role.rb).
    `permissions` holds the permissions tep knows (the temporary-enrollment ones and
    `manage_account_memberships`), computed for the account asked about; `account` is there for
    a custom role only (built-in roles belong to no account)."""

    id: int
    role: str
    label: str
    last_updated_at: Timestamp
    base_role_type: str
    workflow_state: str
    created_at: Timestamp
    permissions: dict[str, RolePermissionJson]
    is_account_role: bool
    account: AccountJson | None = None


class AdminJson(BaseModel):
    """An account admin (an `account_users` row), as `Api::V1::Admin#admin_json` renders it."""

    id: int
    role: str
    role_id: int
    user: UserJson
    workflow_state: str
