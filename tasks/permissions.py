"""Canvas's account permissions, read from Canvas's own tables (`account_users`, `roles`,
`role_overrides`), for the few permissions tep needs.

Who may do what in an account is Canvas's to say, so tep reads it as Canvas computes it rather
than keeping a permission model of its own (on Canvas's database the rows are Canvas's; in
`managed` mode `tep admin grant` and `POST /api/v1/accounts/:id/admins` write them):

* **Memberships.** A user holds an account role through an `account_users` row in the account or
  an account above it (`Account#account_users_for` / `cached_account_users_for`,
  app/models/account.rb); a row whose `workflow_state` is `deleted` counts for nothing
  (`AccountUser.active`, app/models/account_user.rb).
* **Defaults.** Each permission says which base role types may hold it (`available_to`) and which
  hold it by default (`true_for`) (`RoleOverride::PERMISSIONS`, app/models/role_override.rb). The
  temporary-enrollment permissions are available to AccountAdmin and AccountMembership (custom
  account roles) and true for AccountAdmin, `account_only: true`; `manage_account_memberships`
  is available to AccountMembership only and true for AccountAdmin, so an AccountAdmin holds it
  and no override can take it away. A permission not `available_to` a role's base type is
  `locked`: its default stands and overrides are not read.
* **Overrides.** A `role_overrides` row (`context_type` `Account`) for the role and permission in
  an account of the chain turns the permission on or off there, for the account itself
  (`applies_to_self`) and/or the accounts below (`applies_to_descendants`). They are applied from
  the root account down to the account asked about, as
  `RoleOverride.uncached_permission_for` walks them, and the result is adjusted for the account
  asked about as `RoleOverride.enabled_for?` does; `AccountUser#has_permission_to?` is then
  "the result includes :self".

Not read: Canvas's `role_overrides.locked` (tep's model does not map the column: an override
locked higher up cannot be undone lower down in Canvas, and tep would let a lower override
through), site admin and federated parent accounts, and the `temporary_enrollments` feature
flag (`account_allows`), which tep takes as on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import (
    ACCOUNT_ADMIN_ROLE,
    ACCOUNT_MEMBERSHIP_ROLE,
    DUMMY_ROOT_ACCOUNT_ID,
    ENROLLMENT_TYPES,
    Account,
    AccountUser,
    Role,
    RoleOverride,
    utcnow,
)

TEMPORARY_ENROLLMENTS_ADD = "temporary_enrollments_add"
TEMPORARY_ENROLLMENTS_EDIT = "temporary_enrollments_edit"
TEMPORARY_ENROLLMENTS_DELETE = "temporary_enrollments_delete"
MANAGE_ACCOUNT_MEMBERSHIPS = "manage_account_memberships"
# RoleOverride::MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS: any of them lets a user list, show and
# initialize pairings (app/controllers/temporary_enrollment_pairings_api_controller.rb).
MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS = (
    TEMPORARY_ENROLLMENTS_ADD,
    TEMPORARY_ENROLLMENTS_EDIT,
    TEMPORARY_ENROLLMENTS_DELETE,
)

# Role::ACCOUNT_TYPES: the base types of account roles (app/models/role.rb).
ACCOUNT_ROLE_TYPES = (ACCOUNT_ADMIN_ROLE, ACCOUNT_MEMBERSHIP_ROLE)

SELF = "self"
DESCENDANTS = "descendants"
SELF_AND_DESCENDANTS = frozenset({SELF, DESCENDANTS})


@dataclasses.dataclass(frozen=True)
class Permission:
    """One entry of Canvas's `RoleOverride::PERMISSIONS`, as far as tep reads it."""

    available_to: frozenset[str]
    true_for: frozenset[str]


_ADMINS = frozenset(ACCOUNT_ROLE_TYPES)
_ACCOUNT_ADMIN = frozenset({ACCOUNT_ADMIN_ROLE})
PERMISSIONS: dict[str, Permission] = {
    TEMPORARY_ENROLLMENTS_ADD: Permission(_ADMINS, _ACCOUNT_ADMIN),
    TEMPORARY_ENROLLMENTS_EDIT: Permission(_ADMINS, _ACCOUNT_ADMIN),
    TEMPORARY_ENROLLMENTS_DELETE: Permission(_ADMINS, _ACCOUNT_ADMIN),
    MANAGE_ACCOUNT_MEMBERSHIPS: Permission(frozenset({ACCOUNT_MEMBERSHIP_ROLE}), _ACCOUNT_ADMIN),
}


class RoleError(Exception):
    """A role that cannot be used as asked; the message is meant for people."""


def base_role_type(role: Role) -> str:
    """The role's base type. Canvas's built-in AccountAdmin role has base type `AccountAdmin`
    (`Account#create_built_in_roles`); the built-in role named AccountAdmin is read as such
    whatever its row stores (older Canvas data stored `AccountMembership` there)."""
    if role.workflow_state == "built_in" and role.name == ACCOUNT_ADMIN_ROLE:
        return ACCOUNT_ADMIN_ROLE
    return role.base_role_type


def is_account_role(role: Role) -> bool:
    """`Role#account_role?`."""
    return base_role_type(role) in ACCOUNT_ROLE_TYPES


def is_course_role(role: Role) -> bool:
    """`Role#course_role?`."""
    return role.base_role_type in ENROLLMENT_TYPES


def account_chain(session: Session, account_id: int) -> list[int]:
    """The account and every account above it, nearest first, up to its root account
    (`Account#account_chain`, by `parent_account_id`)."""
    chain: list[int] = []
    current: int | None = account_id
    while current is not None and current != DUMMY_ROOT_ACCOUNT_ID and current not in chain:
        account = session.get(Account, current)
        if account is None:
            break
        chain.append(account.id)
        if account.is_root:
            break
        current = account.parent_account_id or account.root_account_id
    return chain


def memberships(
    session: Session, user_id: int, chain: Sequence[int]
) -> list[tuple[AccountUser, Role]]:
    """The user's live `account_users` rows in these accounts, with their roles."""
    if not chain:
        return []
    return [
        (account_user, role)
        for account_user, role in session.execute(
            select(AccountUser, Role)
            .join(Role, Role.id == AccountUser.role_id)
            .where(
                AccountUser.user_id == user_id,
                AccountUser.account_id.in_(chain),
                AccountUser.workflow_state != "deleted",
                Role.workflow_state != "deleted",
            )
            .order_by(AccountUser.id)
        ).all()
    ]


def _applies_to(override: RoleOverride) -> frozenset[str] | None:
    """`RoleOverride#applies_to`."""
    result = set()
    if override.applies_to_self:
        result.add(SELF)
    if override.applies_to_descendants:
        result.add(DESCENDANTS)
    return frozenset(result) or None


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A permission of a role as seen from one account (`RoleOverride.permission_for`'s hash):
    `enabled` is where it applies (`self`, `descendants`) or None; `context_id` the account of
    the last override read; `explicit` whether an override in the account itself set it, and
    `prior_default` what it would be without that override; `locked` when no override can
    change it (a base role type it is not available to)."""

    enabled: frozenset[str] | None
    locked: bool
    explicit: bool
    prior_default: frozenset[str] | None
    context_id: int | None


def permission_for(
    session: Session,
    chain: Sequence[int],
    permission: str,
    role: Role,
    role_account_id: int | None,
) -> Resolved:
    """`RoleOverride.uncached_permission_for(context, permission, role, role_context)`, with
    `chain` the `account_chain` of the context (nearest first) and `role_account_id` the account
    the role is held in (an `account_users` row's account)."""
    definition = PERMISSIONS[permission]
    base = base_role_type(role)
    locked = base not in definition.available_to
    enabled: frozenset[str] | None = SELF_AND_DESCENDANTS if base in definition.true_for else None
    if locked:  # cannot be overridden: the overrides are not read
        return Resolved(enabled, True, False, enabled, None)
    context = chain[0]
    overrides = {
        override.context_id: override
        for override in session.scalars(
            select(RoleOverride).where(
                RoleOverride.role_id == role.id,
                RoleOverride.permission == permission,
                RoleOverride.context_type == "Account",
                RoleOverride.context_id.in_(chain),
            )
        )
    }
    context_id: int | None = None
    explicit = False
    last_override = False
    prior_default = enabled
    hit_role_context = False
    for account_id in reversed(chain):  # the root account first, the one asked about last
        override = overrides.get(account_id)
        last_override = account_id == context
        prior_default = enabled
        if override is None:
            # No override here: what applied above to the descendants applies here.
            if last_override and enabled == frozenset({DESCENDANTS}):
                enabled = SELF_AND_DESCENDANTS
            elif last_override and enabled == frozenset({SELF}):
                enabled = None
        else:
            context_id = account_id
            explicit = explicit or last_override
            value = _applies_to(override) if override.enabled else None
            # Once past the role's own account an override may add, never take away.
            enabled = (enabled or value) if hit_role_context else value
        hit_role_context = hit_role_context or account_id == role_account_id
        if enabled and hit_role_context:
            break
    if not last_override:
        prior_default = enabled
    return Resolved(enabled, False, explicit, prior_default, context_id)


def enabled_for(
    session: Session,
    chain: Sequence[int],
    permission: str,
    role: Role,
    role_account_id: int | None,
) -> frozenset[str]:
    """Where the permission applies as seen from `chain[0]`, adjusted for that account as
    `RoleOverride.enabled_for?` adjusts it. It includes `self` when the role holds the
    permission in that account (`AccountUser#has_permission_to?`)."""
    resolved = permission_for(session, chain, permission, role, role_account_id)
    if not resolved.enabled:
        return frozenset()
    if chain[0] == resolved.context_id:
        return resolved.enabled
    if DESCENDANTS in resolved.enabled:
        return SELF_AND_DESCENDANTS
    return frozenset()


def holds(session: Session, user_id: int, account_id: int, permissions: Iterable[str]) -> bool:
    """Whether the user holds any of `permissions` in the account, through a role held there or
    in an account above it (`Account#grants_any_right?` for account permissions)."""
    wanted = list(permissions)
    chain = account_chain(session, account_id)
    for account_user, role in memberships(session, user_id, chain):
        for permission in wanted:
            if SELF in enabled_for(session, chain, permission, role, account_user.account_id):
                return True
    return False


def is_admin(session: Session, user_id: int, account_id: int) -> bool:
    """Whether the user holds any account role in the account or an account above it: an admin
    of the account, in any role (Canvas's `account_membership` / `membership_for_user`)."""
    return bool(memberships(session, user_id, account_chain(session, account_id)))


# --------------------------------------------------------------------------------------------
# Finding roles as Canvas's Account does


def role_is_valid_for(session: Session, account: Account, role: Role) -> bool:
    """`Account#valid_role?`: a built-in role of the account's root account, or a custom role of
    the account or one above it. Built-in roles of another root account are not found here
    (Canvas would map them to this root account's; tep treats another root account's ids as
    unknown)."""
    if role.workflow_state == "built_in":
        return role.root_account_id == account.resolved_root_account_id
    return role.account_id in account_chain(session, account.id)


def role_by_id(session: Session, account: Account, role_id: int) -> Role | None:
    """`Account#get_role_by_id`: the role, if it can be used in the account."""
    role = session.get(Role, role_id)
    if role is None or not role_is_valid_for(session, account, role):
        return None
    return role


def role_by_name(
    session: Session, account: Account, name: str, *, course_role: bool
) -> Role | None:
    """`Account#get_course_role_by_name` / `get_account_role_by_name`: the built-in role of that
    name, else an active custom role of that name in the account or one above it (the nearest)."""
    root = account.resolved_root_account_id
    built_in = session.scalar(
        select(Role).where(
            Role.root_account_id == root, Role.workflow_state == "built_in", Role.name == name
        )
    )
    candidates: list[Role] = [built_in] if built_in is not None else []
    chain = account_chain(session, account.id)
    custom = {
        role.account_id: role
        for role in session.scalars(
            select(Role).where(
                Role.account_id.in_(chain), Role.workflow_state == "active", Role.name == name
            )
        )
    }
    candidates += [custom[account_id] for account_id in chain if account_id in custom]
    for role in candidates:
        if (is_course_role(role) if course_role else is_account_role(role)) and (
            role.workflow_state != "built_in" or name not in ("AccountMembership", "NoPermissions")
        ):
            return role
    return None


def account_role(
    session: Session, account: Account, *, role_id: int | None = None, name: str | None = None
) -> Role:
    """The account role an admin is made with (`AdminsController#require_role`): by id, else by
    name, else the built-in AccountAdmin. Raises RoleError for one that cannot be used."""
    role: Role | None
    if role_id is not None:
        role = role_by_id(session, account, role_id)
        if role is None:
            raise RoleError(f"no role with id {role_id} in account {account.id}")
    elif name is not None:
        role = role_by_name(session, account, name, course_role=False)
        if role is None:
            raise RoleError(f"no account role named {name!r} in account {account.id}")
    else:
        role = role_by_name(session, account, ACCOUNT_ADMIN_ROLE, course_role=False)
        if role is None:
            raise RoleError(
                f"root account {account.resolved_root_account_id} has no built-in AccountAdmin "
                "role (Canvas creates it with the root account)"
            )
    # AccountUser#valid_role?: an account role (built-in, or custom of an account in the chain).
    if not is_account_role(role):
        raise RoleError(f"role {role.id} ({role.name}) is not an account role")
    if role.workflow_state not in ("built_in", "active"):
        raise RoleError(f"role {role.id} ({role.name}) is {role.workflow_state}")
    return role


def grant(session: Session, account: Account, user_id: int, role: Role) -> tuple[AccountUser, bool]:
    """Make the user an admin of the account in `role` (an `account_users` row, as Canvas's
    `AdminsController#create` makes one: `first_or_initialize` by user and role). Returns the
    row and whether it was written: an existing active row is left as it is, a deleted one is
    made active again."""
    existing = session.scalar(
        select(AccountUser)
        .where(
            AccountUser.account_id == account.id,
            AccountUser.user_id == user_id,
            AccountUser.role_id == role.id,
        )
        .order_by(AccountUser.id)
        .limit(1)
    )
    if existing is not None:
        if existing.workflow_state != "deleted":
            return existing, False
        existing.workflow_state = "active"
        existing.updated_at = utcnow()
        session.flush()
        return existing, True
    row = AccountUser(
        account_id=account.id,
        user_id=user_id,
        role_id=role.id,
        root_account_id=account.resolved_root_account_id,
        workflow_state="active",
    )
    session.add(row)
    session.flush()
    return row, True


def may_grant(session: Session, user_id: int, account: Account, role: Role) -> bool:
    """`AccountUser` policy `create`: the granting user holds `manage_account_memberships` in the
    account and every permission the new role would have there (`is_subset_of?`), for the
    permissions tep knows."""
    if not holds(session, user_id, account.id, [MANAGE_ACCOUNT_MEMBERSHIPS]):
        return False
    chain = account_chain(session, account.id)
    needed = [
        permission
        for permission in PERMISSIONS
        if SELF in enabled_for(session, chain, permission, role, account.id)
    ]
    return all(holds(session, user_id, account.id, [permission]) for permission in needed)
