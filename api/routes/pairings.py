"""The Temporary Enrollment Pairings API, as Canvas answers it (DESIGN.md section 5).

Every answer is the pairing under its root key, `{"temporary_enrollment_pairing": {...}}`, and
the list an array of those, as Canvas's `render json: pairing.as_json` renders them
(`app/controllers/temporary_enrollment_pairings_api_controller.rb`).

Every call needs Canvas's permission for it in the root account whose pairings these are
(api/authz.py): `temporary_enrollments_add` to create, `temporary_enrollments_delete` to delete,
any of add/edit/delete to list, show and initialize; otherwise Canvas's 401. Canvas checks the
account named in the path; tep checks the root account, the pairings' own, so an admin of a
sub-account cannot reach the root account's pairings through the sub-account's path.

Deleting a pairing ends it early through the lifecycle's own code path
(:func:`tasks.lifecycle.end_pairing`), so an API delete and the sweep apply the same rule and write
the same audit rows.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Caller, CallerDep
from api.authz import require_permission
from api.context import AccountIdPath, error_responses, find_account, id_path, valid_id
from api.db import DatabaseDep
from api.errors import ApiError, not_found, unprocessable
from api.pagination import FIELDS as PAGE_FIELDS
from api.pagination import LINK_HEADER_DOC, paginate, requested_page
from api.params import BOOLEAN, Field, ParamsDep, documented, string_schema
from api.schemas import TemporaryEnrollmentPairingAsJson, TemporaryEnrollmentPairingJson
from models import (
    DEFAULT_ENDING_ENROLLMENT_STATE,
    ENDING_ENROLLMENT_STATES,
    PAIRING_STATES,
    TemporaryEnrollmentPairing,
    transaction,
    utcnow,
)
from tasks import lifecycle
from tasks.events import record_pairing_created
from tasks.permissions import (
    MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS,
    TEMPORARY_ENROLLMENTS_ADD,
    TEMPORARY_ENROLLMENTS_DELETE,
)

router = APIRouter(prefix="/api/v1/accounts/{account_id}/temporary_enrollment_pairings")

PairingJson = TemporaryEnrollmentPairingAsJson
PairingIdPath = Annotated[
    int, id_path("temporary enrollment pairing"), valid_id("temporary enrollment pairing")
]

# A new pairing starts active; it leaves that state by expiring or by DELETE, never on creation.
CREATABLE_STATES = ("active",)
# What the list shows by default: Canvas lists every pairing that is not deleted (its pairings
# never leave `active`; ours become `ended` where Canvas's would stay `active`). Deleted ones are
# listed with `include_deleted=true`, or when `workflow_state[]` names `deleted`.
LISTED_BY_DEFAULT = ("active", "ended")

LIST_FIELDS = (
    Field(
        "workflow_state[]",
        {"type": "array", "items": string_schema(PAIRING_STATES)},
        "Only pairings in these states (`workflow_state=ended` also works). Default: active "
        "and ended.",
    ),
    Field(
        "include_deleted",
        BOOLEAN,
        "Also list deleted pairings (with `workflow_state[]`, in addition to those states).",
    ),
    *PAGE_FIELDS,
)
CREATE_FIELDS = (
    Field(
        "workflow_state",
        string_schema(CREATABLE_STATES),
        "The new pairing's state; only `active` is accepted.",
    ),
    Field(
        "ending_enrollment_state",
        string_schema(ENDING_ENROLLMENT_STATES),
        "What the pairing's enrollments become when they end (default `deleted`).",
    ),
)


def _authorize(session: Session, caller: Caller, account_id: str, wanted: tuple[str, ...]) -> None:
    """The path's account must exist (404), then the caller must hold one of `wanted` in the
    root account (401), as Canvas's `authorize_action` runs before the pairing is loaded."""
    find_account(session, caller, account_id)
    require_permission(session, caller, caller.root_account_id, wanted)


def _pairing(session: Session, root_account_id: int, pairing_id: int) -> TemporaryEnrollmentPairing:
    pairing = session.get(TemporaryEnrollmentPairing, pairing_id)
    if pairing is None or pairing.root_account_id != root_account_id:
        raise not_found(f"no temporary enrollment pairing with id {pairing_id}")
    return pairing


@router.get(
    "",
    response_model=list[PairingJson],
    summary="List temporary enrollment pairings",
    responses={**error_responses(), 200: {"headers": LINK_HEADER_DOC}},
    openapi_extra=documented(query=LIST_FIELDS),
    tags=["Temporary Enrollment Pairings"],
)
def list_pairings(
    account_id: AccountIdPath,
    caller: CallerDep,
    db: DatabaseDep,
    params: ParamsDep,
    request: Request,
    response: Response,
) -> list[PairingJson]:
    """The root account's pairings, each under its root key, oldest first (by `created_at`,
    then `id`), paginated. Deleted ones only with `include_deleted=true` or when
    `workflow_state[]` names `deleted`."""
    states = list(params.strings("workflow_state", choices=PAIRING_STATES) or LISTED_BY_DEFAULT)
    if params.boolean("include_deleted") and "deleted" not in states:
        states.append("deleted")
    page = requested_page(params)
    with transaction(db.read, commit=False) as session:
        _authorize(session, caller, account_id, MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS)
        stmt = (
            select(TemporaryEnrollmentPairing)
            .where(
                TemporaryEnrollmentPairing.root_account_id == caller.root_account_id,
                # The shown state (Canvas's row and tep's pairing ends), not Canvas's column.
                lifecycle.shown_state_sql().in_(states),
            )
            .order_by(TemporaryEnrollmentPairing.created_at, TemporaryEnrollmentPairing.id)
        )
        pairings = [row[0] for row in paginate(session, stmt, page, request, response)]
        views = lifecycle.pairing_views(session, pairings)  # one query for the page
        return [PairingJson.of(pairing, views[pairing.id]) for pairing in pairings]


@router.get(
    "/new",
    response_model=PairingJson,
    summary="New TemporaryEnrollmentPairing",
    responses=error_responses(),
    tags=["Temporary Enrollment Pairings"],
)
def new_pairing(account_id: AccountIdPath, caller: CallerDep, db: DatabaseDep) -> PairingJson:
    """An unsaved pairing of the account (`id` null), as a template for a create form."""
    with transaction(db.read, commit=False) as session:
        _authorize(session, caller, account_id, MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS)
    return PairingJson(
        temporary_enrollment_pairing=TemporaryEnrollmentPairingJson(
            id=None,
            root_account_id=caller.root_account_id,
            workflow_state="active",
            ending_enrollment_state=None,
            created_by_id=None,
            deleted_by_id=None,
            ended_at=None,
            created_at=None,
            updated_at=None,
        )
    )


@router.delete("/new", include_in_schema=False)
def new_pairing_delete() -> None:
    """`new` is not an id: without this, `DELETE .../new` would reach the delete route and be
    refused as a bad id instead of as a method `new` does not have."""
    raise ApiError(405, "Method Not Allowed", headers={"Allow": "GET"})


@router.get(
    "/{id}",
    response_model=PairingJson,
    summary="Get a single temporary enrollment pairing",
    responses=error_responses(),
    tags=["Temporary Enrollment Pairings"],
)
def show_pairing(
    account_id: AccountIdPath, id: PairingIdPath, caller: CallerDep, db: DatabaseDep
) -> PairingJson:
    """A pairing of the root account in any state, deleted ones included."""
    with transaction(db.read, commit=False) as session:
        _authorize(session, caller, account_id, MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS)
        pairing = _pairing(session, caller.root_account_id, id)
        return PairingJson.of(pairing, lifecycle.pairing_view(session, pairing))


@router.post(
    "",
    response_model=PairingJson,
    status_code=201,
    summary="Create temporary enrollment pairing",
    responses=error_responses(),
    openapi_extra=documented(body=CREATE_FIELDS),
    tags=["Temporary Enrollment Pairings"],
)
def create_pairing(
    account_id: AccountIdPath, caller: CallerDep, db: DatabaseDep, params: ParamsDep
) -> PairingJson:
    """Creates an active pairing; a value outside the accepted ones is a 400 naming them (never
    silently `deleted`, as Canvas would)."""
    params.string("workflow_state", choices=CREATABLE_STATES)
    ending_state = (
        params.string("ending_enrollment_state", choices=ENDING_ENROLLMENT_STATES)
        or DEFAULT_ENDING_ENROLLMENT_STATE
    )
    with transaction(db.write) as session:
        _authorize(session, caller, account_id, (TEMPORARY_ENROLLMENTS_ADD,))
        pairing = TemporaryEnrollmentPairing(
            root_account_id=caller.root_account_id,
            workflow_state="active",
            ending_enrollment_state=ending_state,
            created_by_id=caller.user_id,
        )
        session.add(pairing)
        session.flush()
        # The `pairing.created` event: an audit row in the same transaction (the outbox).
        record_pairing_created(session, pairing, actor_id=caller.user_id)
        return PairingJson.of(pairing, lifecycle.pairing_view(session, pairing))


@router.delete(
    "/{id}",
    response_model=PairingJson,
    summary="Delete temporary enrollment pairing",
    responses=error_responses(422),
    tags=["Temporary Enrollment Pairings"],
)
def delete_pairing(
    account_id: AccountIdPath, id: PairingIdPath, caller: CallerDep, db: DatabaseDep
) -> PairingJson:
    """Ends the pairing now: its live enrollments get its ending state, audited, and it becomes
    `deleted` with `deleted_by_id`. Deleting an `ended` pairing marks it `deleted`. Deleting a
    `deleted` pairing again changes nothing and returns it as it is (200). Answers the pairing
    (DESIGN.md section 5; the Canvas controller read, commit 0e63cfcd, answers 204 with no body)."""
    with transaction(db.write) as session:
        _authorize(session, caller, account_id, (TEMPORARY_ENROLLMENTS_DELETE,))
        _pairing(session, caller.root_account_id, id)
        try:
            pairing, _changed = lifecycle.end_pairing(
                session, id, as_of=utcnow(), actor_id=caller.user_id, delete=True
            )
        except lifecycle.UnknownEndingState as error:
            raise unprocessable(str(error)) from None
        return PairingJson.of(pairing, lifecycle.pairing_view(session, pairing))
