"""`tep restore PAIRING_ID [--end-at ISO]`: undo a pairing's last change, in this process."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from worker.cli.shared import MAX_ID, count, database, out, parse_iso


def restore(
    pairing_id: Annotated[
        int, typer.Argument(min=1, max=MAX_ID, help="The temporary enrollment pairing's id.")
    ],
    end_at: Annotated[
        str | None,
        typer.Option(
            "--end-at",
            help=(
                "ISO 8601 end date for the restored enrollments (the sweep expires them then); "
                "needed, and in the future, when their own end date has passed."
            ),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Put a pairing and its enrollments back to the states before its last change.

    Beside a hosted Canvas (TEP_CANVAS_URL), through Canvas: the commands are sent at once, and
    any Canvas does not answer now stay in the outbox for the worker."""
    from models import transaction, utcnow
    from tasks.lifecycle import iso
    from tasks.restore import restore_pairing
    from worker.settings import get_settings

    new_end_at = parse_iso(end_at, "--end-at") if end_at is not None else None
    factory = database()
    pending: int | None = None
    if get_settings().through_canvas:
        from tasks.canvas_rest.client import CanvasClient, CanvasPermissionError
        from tasks.canvas_rest.restore import restore_through_canvas
        from worker.cli.shared import fail

        try:
            with CanvasClient.from_settings(get_settings()) as client:
                through = restore_through_canvas(
                    factory, client, pairing_id, end_at=new_end_at, worker_id="tep restore"
                )
        except CanvasPermissionError as error:
            fail(f"restored in tep, but Canvas refused the commands: {error}", status=1)
        result, pending, shown = through.restored, through.pending, through.to_json()
    else:
        with transaction(factory) as session:
            result = restore_pairing(session, pairing_id, as_of=utcnow(), end_at=new_end_at)
        shown = result.to_json()
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    counts = ", ".join(f"{count(n)} -> {state}" for state, n in result.enrollments_restored.items())
    out().print(
        f"pairing {pairing_id} restored to {result.pairing_state} "
        f"(undid {result.undone_reason} run {result.undone_run_id}); "
        f"enrollments: {counts or 'none'}"
        + (f"; they now end at {iso(result.end_at)}" if result.end_at else "")
        + (
            f"; Canvas: {count(pending)} command(s) not answered yet (the worker sends them)"
            if pending
            else "; Canvas confirmed every change"
            if pending == 0
            else ""
        ),
        highlight=False,
    )
