"""`tep`: the operator's command line, one module per command (group) in this folder.

Every failure an operator can cause (a bad setting, a date that is not ISO 8601, an unknown
account, a database that was never migrated) ends in one line on stderr and a non-zero exit.

Importing this package loads typer and the command modules only: each command imports
SQLAlchemy, the settings and rich when it runs, so that `tep --help` starts at once
(bench/startup.py measures it).
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from worker import logs
from worker.cli import admin, canvas, db, demo, prune, restore, serve, status, sweep, tokens
from worker.cli.shared import (
    NUMERIC_VALUE_OUT_OF_RANGE,
    SIGINT_EXIT,
    SIGTERM_EXIT,
    CliError,
    Terminated,
    complain,
    database_error,
    fail,
    terminate,
)

cli = typer.Typer(
    name="tep",
    help="Temporary enrollment lifecycle service for Canvas LMS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Inherited by every subcommand: `tep sweep -h` too.
    context_settings={"help_option_names": ["-h", "--help"]},
)
cli.add_typer(db.db_cli, name="db")
cli.add_typer(admin.admin_cli, name="admin")
cli.command()(status.status)
cli.add_typer(tokens.token_cli, name="token")
cli.command("api")(serve.serve)
cli.command()(sweep.sweep)
cli.command()(demo.demo)
cli.command()(restore.restore)  # tep restore PAIRING_ID [--end-at ISO]
cli.command()(prune.prune)  # tep prune [--older-than DAYS] [--audit-older-than DAYS]
cli.add_typer(canvas.canvas_cli, name="canvas")  # tep canvas check|sync|send


def _show_version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        print(f"tep {version('tep')}")
        raise typer.Exit()


@cli.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Show tep's version and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Temporary enrollment lifecycle service for Canvas LMS."""


def _exit_status(error: Exception) -> int | None:
    """The exit status of an expected failure, once reported in one line; None for a bug.

    An error class is looked for only in a module this process has already imported: an error
    of a module that was never loaded cannot have been raised, and `tep --help` must not pay
    for importing SQLAlchemy or the settings to find that out."""
    loaded = sys.modules
    if "worker.settings" in loaded and isinstance(error, loaded["worker.settings"].SettingsError):
        complain(str(error))
        return 2
    if "tasks.lifecycle" in loaded and isinstance(error, loaded["tasks.lifecycle"].LifecycleError):
        complain(str(error))
        return 2
    if "sqlalchemy" in loaded:
        from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

        if isinstance(error, OperationalError | ProgrammingError):
            message = database_error(error)
            if "no such table" in message or "does not exist" in message:
                message += " (run `tep db upgrade` first)"
            complain(message)
            return 1
        if isinstance(error, SQLAlchemyError):
            complain(database_error(error))
            out_of_range = getattr(getattr(error, "orig", None), "sqlstate", None)
            return 2 if out_of_range == NUMERIC_VALUE_OUT_OF_RANGE else 1
    if isinstance(error, OverflowError):  # a number SQLite cannot bind, a date past the year 9999
        complain(f"a value is out of range: {error}")
        return 2
    if isinstance(error, UnicodeEncodeError):  # bytes the locale could not decode, in a setting
        # Not the value: it may be a URL with its password.
        complain("a TEP_ setting is not UTF-8 text")
        return 2
    return None


def main() -> None:
    """Entry point: run the CLI and turn every expected failure into one line."""
    signal.signal(signal.SIGTERM, terminate)
    logs.setup_cli()  # the records the commands log, as TEP_LOG_FORMAT says (worker/logs.py)
    try:
        for argument in sys.argv[1:]:
            try:
                argument.encode()
            except UnicodeEncodeError:  # bytes the locale could not decode
                fail(f"{argument.encode(errors='replace').decode()!r} is not UTF-8 text")
        # Not standalone: typer returns, rather than raises, the status of typer.Exit and of
        # Ctrl-C (130); every other failure comes here as an exception.
        code = cli(standalone_mode=False)
    except CliError as error:
        complain(str(error))
        raise SystemExit(error.status) from None
    except Terminated:
        raise SystemExit(SIGTERM_EXIT) from None
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except typer.Abort:
        raise SystemExit(SIGINT_EXIT) from None
    except typer.TyperException as error:  # usage errors: a bad option value, a missing argument
        format_message = getattr(error, "format_message", None)
        message = format_message() if format_message else str(error)
        if type(error).__name__ == "NoArgsIsHelpError":  # `tep` (or `tep db`) alone
            # The help is the answer: rich has printed it already; without rich it is here.
            if message:
                print(message)
            raise SystemExit(0) from None
        complain(message)
        raise SystemExit(getattr(error, "exit_code", 2)) from None
    except Exception as error:
        status = _exit_status(error)
        if status is None:
            raise
        raise SystemExit(status) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
