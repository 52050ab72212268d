"""`tep prune`: remove the rows of tep's own tables that nothing needs any more."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from worker.cli.shared import count, database, out


def prune(
    older_than: Annotated[
        int | None,
        typer.Option(
            "--older-than",
            min=1,
            metavar="DAYS",
            help="Keep idle runs, sent notices and unconfigured webhook receivers this many "
            "days (default TEP_RETENTION_DAYS).",
        ),
    ] = None,
    audit_older_than: Annotated[
        int | None,
        typer.Option(
            "--audit-older-than",
            min=1,
            metavar="DAYS",
            help="Also remove audit rows older than DAYS, except what a restore, a webhook "
            "receiver or the notices could still need.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be removed; remove nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Remove old idle runs, sent notices and unconfigured webhook receivers, in batches."""
    from models import utcnow
    from tasks.retention import prune as prune_rows
    from worker.settings import get_settings

    settings = get_settings()
    report = prune_rows(
        database(),
        now=utcnow(),
        retention_days=older_than if older_than is not None else settings.retention_days,
        webhook_urls=settings.webhook_url_list,
        audit_older_than_days=audit_older_than,
        dry_run=dry_run,
    )
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    lines = [
        f"{verb} {count(report.idle_runs)} idle sweep run(s), {count(report.notices)} sent or "
        f"skipped notice(s), {count(report.webhook_receivers)} unconfigured webhook "
        f"receiver(s) with {count(report.webhook_deliveries)} delivery row(s), all from before "
        f"{report.cutoff:%Y-%m-%d %H:%M} UTC"
    ]
    if report.audit_cutoff is not None:
        lines.append(
            f"{verb} {count(report.audit_rows)} audit row(s) from before "
            f"{report.audit_cutoff:%Y-%m-%d %H:%M} UTC; kept "
            f"{count(report.audit_kept_for_restore)} a restore could still need and "
            f"{count(report.audit_kept_for_webhooks)} not yet delivered to every webhook receiver"
        )
    for line in lines:
        out().print(line, highlight=False, soft_wrap=True)
