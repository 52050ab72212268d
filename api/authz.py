"""Who may call what: Canvas's permissions, checked in the request's own transaction.

* The Temporary Enrollment Pairings API needs the token's user to hold, in the pairings' root
  account, the permission Canvas's controller asks for
  (`TemporaryEnrollmentPairingsApiController#authorize_action`, through
  `enforce_granular_permissions`): `temporary_enrollments_add` to create,
  `temporary_enrollments_delete` to delete, and any of add/edit/delete
  (`RoleOverride::MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS`) to list, show and initialize. The
  rules are Canvas's, read from its tables (tasks/permissions.py).
* The other endpoints (enrollments, users, roles, courses, sections, admins) need an admin of the
  account the object belongs to: a live `account_users` row there or above.
* Anyone else gets Canvas's 401 (`render_unauthorized_action`): `{"status": "unauthorized",
  "errors": [{"message": "user not authorized to perform that action"}]}`.

A check runs after the path's account (or course) has been found, so another root account's
objects stay a 404, as in Canvas (`api_find` before `authorize_action`). Token scopes are
checked before any of this (api/auth.py) and narrow a token further.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from api.auth import Caller
from api.errors import unauthorized
from tasks import permissions


def require_permission(
    session: Session, caller: Caller, account_id: int, wanted: Iterable[str]
) -> None:
    """A 401 unless the caller holds any of `wanted` in the account (or above it)."""
    if not permissions.holds(session, caller.user_id, account_id, wanted):
        raise unauthorized()


def require_admin(session: Session, caller: Caller, account_id: int) -> None:
    """A 401 unless the caller holds an account role in the account or an account above it."""
    if not permissions.is_admin(session, caller.user_id, account_id):
        raise unauthorized()
