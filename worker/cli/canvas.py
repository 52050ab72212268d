"""`tep canvas check|sync|send`: beside a hosted Canvas, through its REST API
(tasks/canvas_rest/; README "Running beside a hosted Canvas")."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from worker.cli.shared import count, database, fail, out

if TYPE_CHECKING:
    from tasks.canvas_rest.client import CanvasClient

canvas_cli = typer.Typer(help="Beside a hosted Canvas: check, sync, send.", no_args_is_help=True)


def _client() -> CanvasClient:
    from tasks.canvas_rest.client import CanvasClient
    from worker.settings import get_settings

    settings = get_settings()
    if not settings.through_canvas:
        fail("TEP_CANVAS_URL is not set: tep is not running beside a hosted Canvas", status=2)
    return CanvasClient.from_settings(settings)


def _stopped(error: Exception) -> None:
    """A token Canvas refuses, or a Canvas out of reach: one line, exit status 1."""
    fail(str(error), status=1)


@canvas_cli.command("check")
def check() -> None:
    """Check the Canvas URL, the token, its permissions, what it sees, the rate-limit headroom.

    One line per finding. Exit status 0 when all is well, 1 for a warning, 2 for a problem."""
    from tasks.canvas_rest import check as checks
    from worker.settings import get_settings

    # Its own client, which fails fast: an operator waits for the answer.
    findings = checks.check_settings(get_settings())
    for finding in findings:
        print(f"{finding.level}: {finding.text}")
    code = checks.exit_code(findings)
    if code:
        raise typer.Exit(code)


@canvas_cli.command("sync")
def sync(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read Canvas and report; write nothing.")
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Read every recipient's enrollments, not only some.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Bring tep's mirror up to what the hosted Canvas holds, in this process."""
    from tasks.canvas_rest import sync as syncing
    from tasks.canvas_rest.client import CanvasPermissionError, CanvasUnavailable
    from worker.settings import get_settings

    settings = get_settings()
    factory = database()
    try:
        with _client() as client:
            summary = syncing.sync_canvas(
                factory,
                client,
                account_ids=settings.canvas_account_id_list or None,
                dry_run=dry_run,
                full=full or None,
            )
    except (CanvasPermissionError, CanvasUnavailable) as error:
        _stopped(error)
    result = summary.as_dict()
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_flat("Canvas sync (dry run: nothing was written)" if dry_run else "Canvas sync", result)


@canvas_cli.command("send")
def send(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Send the outbox's open commands to Canvas now (the worker does it on its own too)."""
    from tasks.canvas_rest import commands
    from tasks.canvas_rest.client import CanvasPermissionError
    from tasks.canvas_rest.jobs import worker_id

    factory = database()
    try:
        with _client() as client:
            summary = commands.deliver_commands(factory, client, worker_id=worker_id())
    except CanvasPermissionError as error:
        _stopped(error)
    result = summary.as_dict()
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_flat("Canvas commands sent", result)


def _print_flat(title: str, result: dict[str, Any]) -> None:
    """A summary as a two-column table: nested mappings flattened to `a.b` rows."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in _flatten(result):
        shown = count(value) if isinstance(value, int) and not isinstance(value, bool) else value
        table.add_row(name, str(shown))
    out().print(table)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        rows: list[tuple[str, Any]] = []
        for key, inner in value.items():
            rows.extend(_flatten(inner, f"{prefix}{key}."))
        return rows
    if isinstance(value, list):
        return [(prefix.rstrip("."), json.dumps(value))]
    return [(prefix.rstrip("."), "" if value is None else value)]
