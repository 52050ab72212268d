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
    """Put a pairing and its enrollments back to the states before its last change."""
    from models import transaction, utcnow
    from tasks.lifecycle import iso
    from tasks.restore import restore_pairing

    new_end_at = parse_iso(end_at, "--end-at") if end_at is not None else None
    with transaction(database()) as session:
        result = restore_pairing(session, pairing_id, as_of=utcnow(), end_at=new_end_at)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    counts = ", ".join(f"{count(n)} -> {state}" for state, n in result.enrollments_restored.items())
    out().print(
        f"pairing {pairing_id} restored to {result.pairing_state} "
        f"(undid {result.undone_reason} run {result.undone_run_id}); "
        f"enrollments: {counts or 'none'}"
        + (f"; they now end at {iso(result.end_at)}" if result.end_at else ""),
        highlight=False,
    )
