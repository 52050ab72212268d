"""`tep status`: what falls due soon, how the last runs went, and what is waiting to be sent."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from models import transaction, utcnow
from tasks.status import collect_status
from worker import runtime
from worker.settings import get_settings

out = Console()


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Due work, the last sweep runs, skipped pairings, undelivered webhooks and notices."""
    settings = get_settings()
    with transaction(runtime.session_factory(), commit=False) as session:
        report = collect_status(session, utcnow(), settings.webhook_url_list)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for table in tables(report, mail_on=bool(settings.smtp_url)):
        out.print(table)


def short(iso: str) -> str:
    """`2026-11-26T14:28:31.162751Z` as `11-26 14:28:31` (UTC), to keep the table narrow."""
    return iso[5:19].replace("T", " ")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(
            column, justify="right" if column.startswith(("due", "within", "#")) else "left"
        )
    return table


def tables(report: dict[str, Any], *, mail_on: bool) -> list[Table | str]:
    shown: list[Table | str] = []
    due = _table(
        f"Due temporary enrollments (as of {report['as_of']})",
        "account", "ending state", "due now", "within 24 h", "within 7 days",
    )  # fmt: skip
    for row in report["due"]:
        due.add_row(
            f"{row['root_account_id']} {row['account']}",
            row["ending_state"],
            str(row["due_now"]),
            str(row["next_24h"]),
            str(row["next_7d"]),
        )
    shown.append(due if report["due"] else "Nothing falls due in the next 7 days.")

    runs = _table(
        "Last sweep runs (UTC)",
        "started",
        "trigger",
        "as of",
        "changed",
        "# ended",
        "# skipped",
        "took",
    )
    for run in report["last_runs"]:
        changed = " ".join(f"{s}:{n}" for s, n in run["enrollments_changed"].items() if n)
        runs.add_row(
            short(run["started_at"]),
            run["trigger"],
            short(run["as_of"]),
            changed or "0",
            str(run["pairings_ended"]),
            str(len(run["pairings_skipped"])),
            f"{run['duration_seconds']:.2f} s",
        )
    shown.append(runs if report["last_runs"] else "No sweep has run yet.")

    if report["skipped_pairings"]:
        skipped = _table(
            "Skipped by the last run (left untouched: fix the data)",
            "pairing", "root account", "reason", "detail",
        )  # fmt: skip
        for item in report["skipped_pairings"]:
            skipped.add_row(
                str(item["pairing_id"]),
                str(item["root_account_id"]),
                item["reason"],
                item["detail"],
            )
        shown.append(skipped)

    if report["webhooks"]:
        hooks = _table("Webhooks", "receiver", "# undelivered", "# failing", "oldest", "last error")
        for hook in report["webhooks"]:
            hooks.add_row(
                hook["url"],
                str(hook["undelivered"]),
                str(hook["failing"]),
                hook["oldest_undelivered_at"] or "",
                hook["last_error"] or "",
            )
        shown.append(hooks)
    else:
        shown.append("Webhooks: none configured (TEP_WEBHOOK_URLS).")

    unsent = report["notices_unsent"]
    if unsent["items"]:
        table = _table(
            f"Notices not sent ({unsent['pending']} pending, {unsent['failed']} failed)",
            "notice", "pairing", "kind", "state", "# attempts", "next attempt", "last error",
        )  # fmt: skip
        for item in unsent["items"]:
            table.add_row(
                str(item["id"]),
                str(item["pairing_id"]),
                item["kind"],
                item["state"],
                str(item["attempts"]),
                item["next_attempt_at"] or "",
                item["last_error"] or "",
            )
        shown.append(table)
    else:
        shown.append(
            "Notices: all sent." if mail_on else "Notices: mail is off (TEP_SMTP_URL is not set)."
        )
    return shown
