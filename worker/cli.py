"""`tep`: the operator's command line.

Every failure an operator can cause (a bad setting, a date that is not ISO 8601, an unknown
account, a database that was never migrated) ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from api import cli as api_cli
from models import (
    ACCOUNT_ADMIN_ROLE,
    CANVAS_TABLES_EXISTING,
    DUMMY_ROOT_ACCOUNT_ID,
    Account,
    Enrollment,
    Pseudonym,
    TemporaryEnrollmentPairing,
    User,
    transaction,
    utcnow,
)
from tasks import lifecycle
from worker import runtime
from worker.restore_cli import restore
from worker.settings import SettingsError, get_settings
from worker.status import status

# Below this many due enrollments a progress bar would only flicker.
PROGRESS_BAR_MIN_DUE = 5000
DEMO_SWEEP_INTERVAL_SECONDS = 5
DEMO_TIMEOUT_SECONDS = 90

cli = typer.Typer(
    name="tep",
    help="Temporary enrollment lifecycle service for Canvas LMS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
admin_cli = typer.Typer(help="Account admins (Canvas's account_users).", no_args_is_help=True)
cli.add_typer(admin_cli, name="admin")
cli.command()(status)
cli.add_typer(api_cli.token_cli, name="token")
cli.command("api")(api_cli.serve)

out = Console()
err = Console(stderr=True)


class CliError(Exception):
    """A failure to report as one line and exit status 1 (2 for bad usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def fail(message: str, status: int = 2) -> NoReturn:
    raise CliError(message, status)


def parse_iso(value: str, option: str) -> dt.datetime:
    """An ISO 8601 date-time; one without an offset is read as UTC, as Canvas reads them."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not an ISO 8601 date-time (e.g. 2026-11-26T14:00:00Z)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema (Alembic) in TEP_DATABASE_URL."""
    from migrations import CanvasSchemaMismatch, upgrade

    settings = get_settings()
    try:
        upgrade(settings.database_url, settings.schemas())
    except CanvasSchemaMismatch as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        fail(
            f"{len(exc.problems)} Canvas table(s) or column(s) tep needs are missing in schema "
            f"{settings.canvas_schema!r} (TEP_CANVAS_TABLES=existing); nothing was changed"
        )
    err.print("database is up to date")


@admin_cli.command("grant")
def admin_grant(
    account: Annotated[int, typer.Option("--account", help="The account (root or sub-account).")],
    user: Annotated[int, typer.Option("--user", help="The user to make an admin.")],
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
    from tasks import permissions

    settings = get_settings()
    if settings.canvas_tables == CANVAS_TABLES_EXISTING:
        fail(
            "Canvas owns its admins here (TEP_CANVAS_TABLES=existing): tep does not write "
            "Canvas's account_users; make the admin in Canvas (Admins API or the account's "
            "settings), then `tep token create` for that user"
        )
    with transaction(runtime.session_factory()) as session:
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
        err.print(f"{message} (account_users row {row.id})", highlight=False, soft_wrap=True)


def summary_table(summary: dict[str, Any]) -> Table:
    title = "Sweep (dry run: nothing was written)" if summary["dry_run"] else "Sweep"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("run id", summary["run_id"])
    table.add_row("as of", summary["as_of"])
    if summary["account_id"] is not None:
        table.add_row("account", str(summary["account_id"]))
    for state, count in summary["enrollments_changed"].items():
        table.add_row(f"enrollments -> {state}", str(count))
    table.add_row("pairings ended", str(summary["pairings_ended"]))
    table.add_row("pairings skipped", str(len(summary["pairings_skipped"])))
    table.add_row("duration", f"{summary['duration_seconds']:.2f} s")
    return table


def skipped_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Skipped pairings (not changed; fix the data)", title_justify="left")
    for column in ("pairing", "root account", "reason", "detail"):
        table.add_column(column)
    for item in summary["pairings_skipped"]:
        table.add_row(
            str(item["pairing_id"]), str(item["root_account_id"]), item["reason"], item["detail"]
        )
    return table


@cli.command()
def sweep(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO 8601 moment to sweep as of (default now).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; write nothing.")
    ] = False,
    account: Annotated[
        int | None, typer.Option("--account", help="Only this root account's pairings.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Expire the temporary enrollments that are due, in this process."""
    moment = parse_iso(as_of, "--as-of") if as_of is not None else None
    factory = runtime.session_factory()
    settings = get_settings()
    kwargs: dict[str, Any] = {
        "as_of": moment,
        "dry_run": dry_run,
        "account_id": account,
        "batch_size": settings.batch_size,
        "trigger": "cli",
    }
    total = 0
    if not as_json and out.is_terminal:
        with transaction(factory, commit=False) as session:
            total = lifecycle.count_due(session, moment or utcnow(), account)
    if total >= PROGRESS_BAR_MIN_DUE:
        columns = (TextColumn("expiring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=out, transient=True) as progress:
            bar = progress.add_task("sweep", total=total)

            def advance(summary: lifecycle.RunSummary) -> None:
                progress.update(bar, completed=summary.enrollments_changed_total)

            result = lifecycle.run_sweep(factory, on_batch=advance, **kwargs).to_json()
    else:
        result = lifecycle.run_sweep(factory, **kwargs).to_json()

    if as_json:
        print(json.dumps(result, indent=2))
        return
    out.print(summary_table(result))
    if result["pairings_skipped"]:
        out.print(skipped_table(result))


@cli.command()
def demo(
    run: Annotated[
        bool,
        typer.Option(
            "--run/--seed-only",
            help="Also start a worker with beat and watch it end the due pairings.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the worker.")] = float(
        DEMO_TIMEOUT_SECONDS
    ),
) -> None:
    """Seed a demo account with due and future pairings (and, with --run, watch them expire)."""
    from migrations import upgrade
    from worker.demo import SOON, seed_demo

    settings = get_settings()
    upgrade(settings.database_url, settings.schemas())
    with transaction(runtime.session_factory()) as session:
        seed = seed_demo(session, utcnow())
    out.print(
        f"seeded demo account {seed.account_id}: due pairings {seed.due_pairing_ids} "
        f"({seed.due_enrollments} enrollments), expiring in "
        f"{int(SOON.total_seconds())} s {seed.soon_pairing_ids}, "
        f"future {seed.future_pairing_ids}; admin user {seed.admin_id} (AccountAdmin: "
        f"`tep token create --account {seed.account_id} --user {seed.admin_id}` for the API)"
    )
    if not run:
        out.print("start a worker to expire them: celery -A worker worker -B --loglevel INFO")
        return
    watched = seed.due_pairing_ids + seed.soon_pairing_ids
    ended = _run_worker_until_ended(watched, timeout)
    out.print(
        pairings_table(seed.due_pairing_ids + seed.soon_pairing_ids + seed.future_pairing_ids)
    )
    if not ended:
        fail(f"the worker did not end pairings {watched} within {timeout:.0f} s", status=1)
    out.print(
        f"the worker ended {len(watched)} pairings; `tep sweep --dry-run` now finds nothing due "
        f"for account {seed.account_id}, and `tep sweep --as-of` a week ahead previews the rest."
    )


def _run_worker_until_ended(pairing_ids: list[int], timeout: float) -> bool:
    env = dict(os.environ)
    env.setdefault("TEP_SWEEP_INTERVAL_SECONDS", str(DEMO_SWEEP_INTERVAL_SECONDS))
    command = [
        sys.executable, "-m", "celery", "-A", "worker", "worker", "-B",
        "--loglevel", "INFO", "--concurrency", "1",
        "--schedule", os.path.join(os.getcwd(), "tep-demo-beat-schedule"),
    ]  # fmt: skip
    out.print(
        f"starting: {' '.join(command[2:])}  (beat every {env['TEP_SWEEP_INTERVAL_SECONDS']} s)"
    )
    worker = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            time.sleep(1)
            with transaction(runtime.session_factory(), commit=False) as session:
                pairings = session.scalars(
                    select(TemporaryEnrollmentPairing).where(
                        TemporaryEnrollmentPairing.id.in_(pairing_ids)
                    )
                ).all()
                views = lifecycle.pairing_views(session, pairings)
            if views and all(view.workflow_state == "ended" for view in views.values()):
                time.sleep(1)  # let the worker log the task's result before it is stopped
                return True
        return False
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def pairings_table(pairing_ids: list[int]) -> Table:
    table = Table(title="Demo pairings", title_justify="left")
    for column in ("pairing", "ending state", "pairing state", "ended at", "enrollments"):
        table.add_column(column, no_wrap=column != "enrollments")
    with transaction(runtime.session_factory(), commit=False) as session:
        pairings = session.scalars(
            select(TemporaryEnrollmentPairing)
            .where(TemporaryEnrollmentPairing.id.in_(pairing_ids))
            .order_by(TemporaryEnrollmentPairing.id)
        ).all()
        views = lifecycle.pairing_views(session, pairings)
        for pairing in pairings:
            view = views[pairing.id]
            states = session.scalars(
                select(Enrollment.workflow_state)
                .where(Enrollment.temporary_enrollment_pairing_id == pairing.id)
                .order_by(Enrollment.id)
            ).all()
            table.add_row(
                str(pairing.id),
                str(pairing.ending_enrollment_state),
                view.workflow_state,
                lifecycle.iso(view.ended_at) if view.ended_at else "",
                ", ".join(states),
            )
    return table


cli.command()(restore)  # tep restore PAIRING_ID [--end-at ISO]: worker/restore_cli.py


def complain(message: str) -> None:
    """One line on stderr, never wrapped (rich would wrap it at 80 columns off a terminal)."""
    print(f"tep: {' '.join(message.split())}", file=sys.stderr)


def main() -> None:
    """Entry point: run the CLI and turn every expected failure into one line."""
    try:
        cli(standalone_mode=False)
    except CliError as error:
        complain(str(error))
        raise SystemExit(error.status) from None
    except (SettingsError, lifecycle.LifecycleError) as error:
        complain(str(error))
        raise SystemExit(2) from None
    except (OperationalError, ProgrammingError) as error:
        message = str(error.orig).splitlines()[0] if error.orig else str(error)
        if "no such table" in message or "does not exist" in message:
            message += " (run `tep db upgrade` first)"
        complain(f"database error: {message}")
        raise SystemExit(1) from None
    except SQLAlchemyError as error:
        complain(f"database error: {error.__class__.__name__}: {error}")
        raise SystemExit(1) from None
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except typer.TyperException as error:  # usage errors: a bad option value, a missing argument
        format_message = getattr(error, "format_message", None)
        complain(format_message() if format_message else str(error))
        raise SystemExit(getattr(error, "exit_code", 2)) from None


if __name__ == "__main__":
    main()
