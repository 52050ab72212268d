"""`tep admin grant`: make a user an admin of an account (Canvas's account_users)."""

from __future__ import annotations

from typing import Annotated

import typer

from worker.cli.shared import database, err, fail, id_option

# models.ACCOUNT_ADMIN_ROLE, spelled out so that --help need not import SQLAlchemy (the tests
# check that they agree).
ACCOUNT_ADMIN_ROLE = "AccountAdmin"

admin_cli = typer.Typer(help="Account admins (Canvas's account_users).", no_args_is_help=True)


@admin_cli.command("grant")
def admin_grant(
    account: Annotated[int, id_option("--account", help="The account (root or sub-account).")],
    user: Annotated[int, id_option("--user", help="The user to make an admin.")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="An account role by name: the built-in AccountAdmin, or a custom account role "
            "of the account or one above it.",
        ),
    ] = ACCOUNT_ADMIN_ROLE,
) -> None:
    """Make a user an admin of an account (an `account_users` row, as Canvas's Admins API makes
    one), so that the API lets their tokens act: an AccountAdmin holds every permission, a
    custom role what its role overrides enable. Only in TEP_CANVAS_TABLES=managed: on Canvas's
    own database the admins are Canvas's (make them in Canvas)."""
    from sqlalchemy import select

    from models import (
        CANVAS_TABLES_EXISTING,
        DUMMY_ROOT_ACCOUNT_ID,
        Account,
        Pseudonym,
        User,
        transaction,
    )
    from tasks import permissions
    from worker.settings import get_settings

    settings = get_settings()
    if settings.canvas_tables == CANVAS_TABLES_EXISTING:
        fail(
            "Canvas owns its admins here (TEP_CANVAS_TABLES=existing): tep does not write "
            "Canvas's account_users; make the admin in Canvas (Admins API or the account's "
            "settings), then `tep token create` for that user"
        )
    with transaction(database()) as session:
        target = session.get(Account, account)
        if target is None or account == DUMMY_ROOT_ACCOUNT_ID or target.workflow_state == "deleted":
            fail(f"no account with id {account}")
        root = target.resolved_root_account_id
        if session.get(User, user) is None:
            fail(f"no user with id {user}")
        login = session.scalar(
            select(Pseudonym.id).where(
                Pseudonym.user_id == user,
                Pseudonym.account_id == root,
                Pseudonym.workflow_state != "deleted",
            )
        )
        if login is None:  # how Canvas ties a user to a root account (AdminsController#create)
            fail(f"user {user} has no login in root account {root}")
        try:
            found = permissions.account_role(session, target, name=role)
        except permissions.RoleError as error:
            fail(str(error))
        row, written = permissions.grant(session, target, user, found)
        message = (
            f"user {user} is now {found.name} of account {account}"
            if written
            else f"user {user} already is {found.name} of account {account}"
        )
        err().print(f"{message} (account_users row {row.id})", highlight=False, soft_wrap=True)
