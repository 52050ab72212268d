"""What the `tep` commands share: one-line failures, the consoles, id options and the database.

Nothing here imports SQLAlchemy, rich or the settings when it is imported: `tep --help` loads
typer and these modules only, and each command imports what it needs when it runs.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session, sessionmaker

# models.MAX_ID (the largest bigint), spelled out so that declaring an id option does not import
# SQLAlchemy; tests/test_cli_conventions.py checks that the two agree.
MAX_ID = 2**63 - 1
# A process stopped by a signal exits 128 + its number, as a shell reports one it killed.
SIGINT_EXIT = 128 + signal.SIGINT
SIGTERM_EXIT = 128 + signal.SIGTERM
# PostgreSQL's SQLSTATE for a number out of its column's range (`bigint out of range`).
NUMERIC_VALUE_OUT_OF_RANGE = "22003"


class CliError(Exception):
    """A failure to report as one line and exit status 1 (2 for bad usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def fail(message: str, status: int = 2) -> NoReturn:
    raise CliError(message, status)


class Terminated(SystemExit):
    """SIGTERM, raised wherever the process is, as Ctrl-C raises KeyboardInterrupt, so that what
    runs cleans up: a sweep records what it committed, psycopg cancels the statement in flight.
    A SystemExit (with the status of a process SIGTERM ended), not a KeyboardInterrupt, which
    typer would turn into 130; no `except Exception` swallows either."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT)

    def __str__(self) -> str:
        return "SIGTERM"


def terminate(signum: int, frame: object) -> None:
    raise Terminated


def parse_iso(value: str, option: str) -> dt.datetime:
    """An ISO 8601 date-time, read as a task reads its `as_of` (tasks/arguments.py): one without
    an offset is UTC; a bad or out-of-range one is an ArgumentError, which main() shows in one
    line with exit status 2."""
    from tasks.arguments import parse_moment

    return parse_moment(value, option)


def id_option(*names: str, help: str) -> Any:
    """A typer option for an id: 1 to MAX_ID, anything else a usage error (exit status 2)."""
    return typer.Option(*names, min=1, max=MAX_ID, help=help)


@cache
def out() -> Console:
    from rich.console import Console

    return Console()


@cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def count(number: int) -> str:
    """A count as a table shows it: 1,234,567."""
    return f"{number:,}"


def complain(message: str) -> None:
    """One line on stderr, never wrapped (rich would wrap it at 80 columns off a terminal)."""
    print(f"tep: {' '.join(message.split())}", file=sys.stderr)


def database_error(error: SQLAlchemyError) -> str:
    """The driver's own first line (`bigint out of range`), never the statement and its values."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(error, DBAPIError) and error.orig is not None:
        lines = str(error.orig).splitlines()
        return f"database error: {lines[0] if lines else type(error.orig).__name__}"
    lines = str(error).splitlines()
    return f"database error: {error.__class__.__name__}" + (f": {lines[0]}" if lines else "")


def sqlite_file(url: str) -> str | None:
    """The file an SQLite URL names (None for another database or an in-memory one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or name in ("", ":memory:"):
        return None
    if parsed.query.get("mode") == "memory":  # `sqlite:///file:name?mode=memory&uri=true`
        return None
    if parsed.query.get("uri") in ("true", "1") and name.startswith("file:"):
        name = name.removeprefix("file:")
    return name or None


def database() -> sessionmaker[Session]:
    """The sessions of an existing database. SQLite would create a missing file on connect: a
    command run in the wrong folder would leave an empty `tep.sqlite` there and then report
    missing tables. Only `tep db upgrade` and `tep demo` create the database."""
    from worker import runtime
    from worker.settings import get_settings

    path = sqlite_file(get_settings().database_url)
    if path is not None and not os.path.exists(path):
        fail(
            f"no database at {os.path.abspath(path)} (TEP_DATABASE_URL): run `tep db upgrade` "
            "first to create it, or run tep where its database is",
            status=1,
        )
    return runtime.session_factory()
