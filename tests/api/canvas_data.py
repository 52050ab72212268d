"""Arranging Canvas's permission rows (roles, role overrides, account users, sub-accounts) the
way Canvas's own writers leave them, for the API's permission tests in both table modes."""

from __future__ import annotations

import itertools

from sqlalchemy.orm import Session, sessionmaker

from models import Account, AccountUser, Role, RoleOverride, transaction
from tasks.canvas_objects import canvas_uuid

_n = itertools.count(1)


def sub_account(factory: sessionmaker[Session], parent_id: int, name: str = "Sub") -> int:
    """A sub-account of `parent_id` (its root account is the parent's)."""
    with transaction(factory) as session:
        parent = session.get_one(Account, parent_id)
        account = Account(
            name=f"{name} {next(_n)}",
            parent_account_id=parent.id,
            root_account_id=parent.resolved_root_account_id,
            uuid=canvas_uuid(),
        )
        session.add(account)
        session.flush()
        return account.id


def custom_role(
    factory: sessionmaker[Session],
    account_id: int,
    *,
    base: str = "AccountMembership",
    name: str | None = None,
    state: str = "active",
) -> int:
    """A custom role of the account, as the Roles API's `add_role` makes one (`account_id` and
    `root_account_id` set, workflow_state `active`)."""
    with transaction(factory) as session:
        account = session.get_one(Account, account_id)
        role = Role(
            name=name or f"Custom role {next(_n)}",
            base_role_type=base,
            account_id=account.id,
            root_account_id=account.resolved_root_account_id,
            workflow_state=state,
        )
        session.add(role)
        session.flush()
        return role.id


def override(
    factory: sessionmaker[Session],
    account_id: int,
    role_id: int,
    permission: str,
    *,
    enabled: bool = True,
    applies_to_self: bool = True,
    applies_to_descendants: bool = True,
) -> None:
    """A role override in the account, as `RoleOverride.manage_role_override` saves one."""
    with transaction(factory) as session:
        account = session.get_one(Account, account_id)
        session.add(
            RoleOverride(
                permission=permission,
                enabled=enabled,
                context_id=account.id,
                context_type="Account",
                role_id=role_id,
                applies_to_self=applies_to_self,
                applies_to_descendants=applies_to_descendants,
                root_account_id=account.resolved_root_account_id,
            )
        )


def account_user(
    factory: sessionmaker[Session],
    account_id: int,
    user_id: int,
    role_id: int,
    *,
    state: str = "active",
) -> int:
    """An `account_users` row, as Canvas's Admins API writes one."""
    with transaction(factory) as session:
        account = session.get_one(Account, account_id)
        row = AccountUser(
            account_id=account.id,
            user_id=user_id,
            role_id=role_id,
            root_account_id=account.resolved_root_account_id,
            workflow_state=state,
        )
        session.add(row)
        session.flush()
        return row.id
