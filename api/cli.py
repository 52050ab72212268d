"""`tep api` and `tep token create`, registered on the `tep` command line by worker/cli.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from models import transaction
from worker import runtime

if TYPE_CHECKING:  # `tep sweep` and friends should not pay for importing the web stack
    from fastapi import FastAPI

token_cli = typer.Typer(help="API tokens.", no_args_is_help=True)

err = Console(stderr=True)


def app_from_settings() -> FastAPI:
    """The app on TEP_DATABASE_URL: uvicorn's factory, called once in each worker process."""
    from api.app import create_app
    from worker.settings import get_settings

    settings = get_settings()
    return create_app(
        runtime.session_factory(),
        webhook_urls=settings.webhook_url_list,
        canvas_tables=settings.canvas_tables,
    )


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the Canvas-compatible REST API (run `tep db upgrade` first)."""
    import uvicorn

    from worker.settings import get_settings

    get_settings()  # refuse bad settings with one line before uvicorn starts
    uvicorn.run(
        "api.cli:app_from_settings",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
    )


@token_cli.command("create")
def create_token(
    account: Annotated[int, typer.Option("--account", help="Root account id.")],
    user: Annotated[int, typer.Option("--user", help="The user the token acts for.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="Limit the token to an endpoint, e.g. "
            "'url:GET|/api/v1/accounts/:account_id/temporary_enrollment_pairings' (repeatable).",
        ),
    ] = None,
) -> None:
    """Create an API token; prints it once, alone on the last line. Only its hash is stored.

    The token acts for the user with the user's own permissions (Canvas's, from its
    account_users and roles); it grants none. A note on stderr says so when the user holds no
    account role in the account (`tep admin grant` makes one)."""
    from api.app import known_scopes
    from api.auth import create_token as store_token
    from tasks.permissions import is_admin

    with transaction(runtime.session_factory()) as session:
        token, secret = store_token(
            session,
            account_id=account,
            user_id=user,
            scopes=scope or (),
            known_scopes=known_scopes(),
        )
        admin = is_admin(session, user, account)
    scopes = ", ".join(scope) if scope else "every endpoint of the account"
    err.print(
        f"token {token.id} ({token.token_hint}...) for user {user} in account {account}; "
        f"scopes: {scopes}. It is shown only now.",
        highlight=False,
        soft_wrap=True,
    )
    if not admin:
        err.print(
            f"note: user {user} holds no account role in account {account}, so the API will "
            f"answer 401 to this token; `tep admin grant --account {account} --user {user}` "
            "makes the user an AccountAdmin",
            highlight=False,
            soft_wrap=True,
        )
    print(secret)
