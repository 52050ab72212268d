"""`tep db upgrade`: create or migrate the schema."""

from __future__ import annotations

import typer

from worker.cli.shared import err, fail

db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema (Alembic) in TEP_DATABASE_URL."""
    from migrations import CanvasSchemaMismatch, upgrade
    from worker.settings import get_settings

    settings = get_settings()
    try:
        upgrade(settings.database_url, settings.schemas())
    except CanvasSchemaMismatch as exc:
        for problem in exc.problems:
            err().print(problem, markup=False, highlight=False)
        fail(
            f"{len(exc.problems)} Canvas table(s) or column(s) tep needs are missing in schema "
            f"{settings.canvas_schema!r} (TEP_CANVAS_TABLES=existing); nothing was changed"
        )
    err().print("database is up to date")
