"""`tep token create|list|revoke`: the API's tokens."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated

import typer

from worker.cli.shared import database, err, id_option

if TYPE_CHECKING:
    from models import ApiToken

token_cli = typer.Typer(help="API tokens.", no_args_is_help=True)


@token_cli.command("create")
def create_token(
    account: Annotated[int, id_option("--account", help="Root account id.")],
    user: Annotated[int, id_option("--user", help="The user the token acts for.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="Limit the token to an endpoint, e.g. "
            "'url:GET|/api/v1/accounts/:account_id/temporary_enrollment_pairings' (repeatable).",
        ),
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in",
            help="The token stops working after this long: 90d, 12h, 30m, 2w (default: never).",
        ),
    ] = None,
) -> None:
    """Create an API token; prints it once, alone on the last line. Only its hash is stored.

    The token acts for the user with the user's own permissions (Canvas's, from its
    account_users and roles); it grants none. A note on stderr says so when the user holds no
    account role in the account (`tep admin grant` makes one)."""
    from api.app import known_scopes
    from api.auth import create_token as store_token
    from models import transaction
    from tasks.lifecycle import iso
    from tasks.permissions import is_admin

    expires_at = token_expiry(expires_in) if expires_in is not None else None
    with transaction(database()) as session:
        token, secret = store_token(
            session,
            account_id=account,
            user_id=user,
            scopes=scope or (),
            known_scopes=known_scopes(),
            expires_at=expires_at,
        )
        admin = is_admin(session, user, account)
    scopes = ", ".join(scope) if scope else "every endpoint of the account"
    expiry = f"expires {iso(expires_at)}" if expires_at else "never expires"
    err().print(
        f"token {token.id} ({token.token_hint}...) for user {user} in account {account}; "
        f"scopes: {scopes}; {expiry}. It is shown only now.",
        highlight=False,
        soft_wrap=True,
    )
    if not admin:
        err().print(
            f"note: user {user} holds no account role in account {account}, so the API will "
            f"answer 401 to this token; `tep admin grant --account {account} --user {user}` "
            "makes the user an AccountAdmin",
            highlight=False,
            soft_wrap=True,
        )
    print(secret)


def token_expiry(text: str) -> dt.datetime:
    """`--expires-in`: now plus a duration (`90d`); LifecycleError (one line, exit 2) for one
    that is not a duration or ends past the year 9999."""
    from models import utcnow
    from tasks.lifecycle import LifecycleError
    from worker.notify_settings import parse_duration

    try:
        return utcnow() + parse_duration(text)
    except ValueError as error:
        raise LifecycleError(f"--expires-in: {error}") from None
    except OverflowError:
        raise LifecycleError(f"--expires-in {text.strip()!r} is too long") from None


def _state(token: ApiToken, now: dt.datetime) -> str:
    from api.auth import REVOKED

    if token.workflow_state == REVOKED:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return token.workflow_state


@token_cli.command("list")
def list_tokens(
    account: Annotated[int, id_option("--account", help="Root account id.")],
    all_: Annotated[bool, typer.Option("--all", help="Revoked tokens too.")] = False,
) -> None:
    """The account's tokens: id, hint (the first characters of the secret), user, scopes,
    created, last used (to the minute), expiry, state. Secrets are never shown: only their
    hashes are stored."""
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import select

    from api.auth import REVOKED
    from models import ApiToken, transaction, utcnow
    from tasks.lifecycle import iso, require_root_account

    now = utcnow()
    table = Table(title=f"API tokens of account {account}", title_justify="left")
    for column in ("id", "hint", "user", "scopes", "created", "last used", "expires", "state"):
        table.add_column(column, no_wrap=column != "scopes")
    with transaction(database(), commit=False) as session:
        require_root_account(session, account)
        stmt = select(ApiToken).where(ApiToken.root_account_id == account).order_by(ApiToken.id)
        if not all_:
            stmt = stmt.where(ApiToken.workflow_state != REVOKED)
        for token in session.scalars(stmt):
            table.add_row(
                str(token.id),
                f"{token.token_hint}...",
                str(token.user_id),
                ", ".join(json.loads(token.scopes)) if token.scopes else "(all)",
                iso(token.created_at),
                iso(token.last_used_at) if token.last_used_at else "never",
                iso(token.expires_at) if token.expires_at else "never",
                _state(token, now),
            )
    console = Console()
    if not console.is_terminal:  # a pipe or a file: no 80-column wrapping
        console = Console(width=200)
    console.print(table)


@token_cli.command("revoke")
def revoke(
    which: Annotated[
        str, typer.Argument(metavar="HINT|ID", help="The token's id or hint (tep token list).")
    ],
) -> None:
    """Revoke a token: it is refused (401) from the next request on."""
    from api.auth import revoke_token
    from models import transaction

    with transaction(database()) as session:
        token = revoke_token(session, which.strip())
        err().print(
            f"revoked token {token.id} ({token.token_hint}...) of user {token.user_id} in "
            f"account {token.root_account_id}",
            highlight=False,
            soft_wrap=True,
        )
