"""`tep sweep`: expire the temporary enrollments that are due, in this process."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from worker.cli.shared import (
    SIGINT_EXIT,
    SIGTERM_EXIT,
    Terminated,
    count,
    database,
    fail,
    id_option,
    out,
    parse_iso,
)

if TYPE_CHECKING:
    from rich.table import Table
    from sqlalchemy.orm import Session, sessionmaker

# Below this many due enrollments a progress bar would only flicker.
PROGRESS_BAR_MIN_DUE = 5000
# A real sweep as of a moment further ahead than this ends enrollments before their end date and
# records them as ended in the future: it needs --yes. (Clocks may disagree by a little.)
AHEAD_WITHOUT_YES = dt.timedelta(minutes=1)


def sweep(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO 8601 moment to sweep as of (default now).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; write nothing.")
    ] = False,
    account: Annotated[
        int | None, id_option("--account", help="Only this root account's pairings.")
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Run a real sweep with --as-of more than a minute ahead (ends enrollments early).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Expire the temporary enrollments that are due, in this process."""
    moment = parse_iso(as_of, "--as-of") if as_of is not None else None
    if moment is not None and not dry_run and not yes:
        ahead = moment - dt.datetime.now(dt.UTC)
        if ahead > AHEAD_WITHOUT_YES:
            fail(
                f"--as-of {as_of} is {_duration(ahead)} ahead: a real sweep would end "
                "enrollments before their end date; preview it with --dry-run, or add --yes"
            )
    from models import transaction, utcnow
    from tasks import lifecycle
    from worker.settings import get_settings

    factory = database()
    settings = get_settings()
    kwargs: dict[str, Any] = {
        "as_of": moment,
        "dry_run": dry_run,
        "account_id": account,
        "batch_size": settings.batch_size,
        "trigger": "cli",
    }
    total = 0
    if not as_json and out().is_terminal:
        with transaction(factory, commit=False) as session:
            total = lifecycle.count_due(session, moment or utcnow(), account)
    try:
        result = _run_sweep(factory, kwargs, total)
    except (KeyboardInterrupt, Terminated) as stop:
        # run_sweep recorded the run as interrupted, with what its committed batches changed.
        terminated = isinstance(stop, Terminated)
        fail(
            f"sweep interrupted ({'SIGTERM' if terminated else 'SIGINT'}): "
            + (
                "a dry run writes nothing"
                if dry_run
                else "what its committed batches changed stays changed; `tep status` shows "
                "the run as interrupted"
            ),
            status=SIGTERM_EXIT if terminated else SIGINT_EXIT,
        )

    if as_json:
        print(json.dumps(result, indent=2))
        return
    out().print(summary_table(result))
    if result["pairings_skipped"]:
        out().print(skipped_table(result))


def _duration(span: dt.timedelta) -> str:
    """`7 days` / `3 h` / `12 min`: how far ahead, roughly, for the refusal's message."""
    seconds = span.total_seconds()
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 60:.0f} min"


def _run_sweep(factory: sessionmaker[Session], kwargs: dict[str, Any], due: int) -> dict[str, Any]:
    """The sweep's summary; with a progress bar when `due` enrollments are enough to watch."""
    from tasks import lifecycle

    if due < PROGRESS_BAR_MIN_DUE:
        return lifecycle.run_sweep(factory, **kwargs).to_json()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("expiring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out(), transient=True) as progress:
        bar = progress.add_task("sweep", total=due)

        def advance(summary: lifecycle.RunSummary) -> None:
            progress.update(bar, completed=summary.enrollments_changed_total)

        return lifecycle.run_sweep(factory, on_batch=advance, **kwargs).to_json()


def summary_table(summary: dict[str, Any]) -> Table:
    from rich.table import Table

    title = "Sweep (dry run: nothing was written)" if summary["dry_run"] else "Sweep"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("run id", summary["run_id"])
    table.add_row("as of", summary["as_of"])
    if summary["account_id"] is not None:
        table.add_row("account", str(summary["account_id"]))
    for state, changed in summary["enrollments_changed"].items():
        table.add_row(f"enrollments -> {state}", count(changed))
    table.add_row("pairings ended", count(summary["pairings_ended"]))
    table.add_row("pairings skipped", count(len(summary["pairings_skipped"])))
    table.add_row("duration", f"{summary['duration_seconds']:.2f} s")
    return table


def skipped_table(summary: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(title="Skipped pairings (not changed; fix the data)", title_justify="left")
    for column in ("pairing", "root account", "reason", "detail"):
        table.add_column(column)
    for item in summary["pairings_skipped"]:
        table.add_row(
            str(item["pairing_id"]), str(item["root_account_id"]), item["reason"], item["detail"]
        )
    return table
