"""`tep status`: what falls due soon, how the last runs went, and what is waiting to be sent;
with `--check`, whether anything needs an operator, as a Nagios-style check."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from worker.cli.shared import CliError, count, database, out

if TYPE_CHECKING:
    from rich.table import Table

    from tasks.status import Finding


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Check only: one line per problem and exit 1 (WARNING) or 2 (CRITICAL); "
            "OK and exit 0 when there is none.",
        ),
    ] = False,
) -> None:
    """Due work, the last sweep runs, skipped pairings, undelivered webhooks and notices."""
    if check:
        raise typer.Exit(run_check(as_json=as_json))
    from models import transaction, utcnow
    from tasks.status import collect_status
    from worker.settings import get_settings

    settings = get_settings()
    with transaction(database(), commit=False) as session:
        report = collect_status(session, utcnow(), settings.webhook_url_list)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for table in tables(report, mail_on=bool(settings.smtp_url)):
        out().print(table)


def run_check(*, as_json: bool) -> int:
    """Print the check's findings on stdout (a monitor reads the first line); its exit status.

    A database or setting tep cannot use is itself CRITICAL, said the same way, so that a
    monitor shows why rather than a bare exit status."""
    import datetime as dt

    from sqlalchemy.exc import SQLAlchemyError

    from models import transaction, utcnow
    from tasks.status import CRITICAL, LEVEL_NAMES, Finding, check_level, check_status
    from worker.cli.shared import database_error
    from worker.settings import SettingsError, get_settings

    findings: list[Finding]
    try:
        interval = dt.timedelta(seconds=get_settings().sweep_interval_seconds)
        with transaction(database(), commit=False) as session:
            findings = check_status(session, utcnow(), interval)
    except (SettingsError, CliError) as error:
        findings = [Finding(CRITICAL, str(error))]
    except SQLAlchemyError as error:
        findings = [Finding(CRITICAL, f"cannot read tep's database: {database_error(error)}")]
    level = check_level(findings)
    if as_json:
        report = {
            "status": LEVEL_NAMES[level],
            "exit_status": level,
            "findings": [{"level": LEVEL_NAMES[f.level], "message": f.message} for f in findings],
        }
        print(json.dumps(report, indent=2))
    else:
        for line in check_lines(findings):
            print(line)
    return level


def check_lines(findings: list[Finding]) -> list[str]:
    if not findings:
        return ["OK: the sweeps run, nothing is overdue, no pairing is skipped"]
    return [" ".join(finding.line().split()) for finding in findings]


def short(iso: str) -> str:
    """`2026-11-26T14:28:31.162751Z` as `11-26 14:28:31` (UTC), to keep the table narrow."""
    return iso[5:19].replace("T", " ")


def _table(title: str, *columns: str) -> Table:
    from rich.table import Table

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
            count(row["due_now"]),
            count(row["next_24h"]),
            count(row["next_7d"]),
        )
    shown.append(due if report["due"] else "Nothing falls due in the next 7 days.")

    runs = _table(
        "Last sweep runs that changed something or did not complete (UTC)",
        "started",
        "trigger",
        "as of",
        "changed",
        "# ended",
        "# skipped",
        "took",
        "status",
    )
    for run in report["last_runs"]:
        changed = " ".join(f"{s}:{count(n)}" for s, n in run["enrollments_changed"].items() if n)
        runs.add_row(
            short(run["started_at"]),
            run["trigger"],
            short(run["as_of"]),
            changed or "0",
            count(run["pairings_ended"]),
            count(len(run["pairings_skipped"])),
            f"{run['duration_seconds']:.2f} s",
            # A run cut short says by what (its counts are what its committed batches did).
            f"{run['status']}: {run['error']}" if run.get("error") else run["status"],
        )
    idle = report["idle_runs"]
    if report["last_runs"]:
        shown.append(runs)
    elif idle is None:
        shown.append("No sweep has run yet.")
    if idle is not None:
        since = "since the last run listed" if report["last_runs"] else "in all"
        shown.append(
            f"Idle runs (nothing to change): {count(idle['runs_since_last_listed'])} {since}; "
            f"the last finished {short(idle['last_finished_at'])} ({idle['last_trigger']})."
        )

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
                count(hook["undelivered"]),
                count(hook["failing"]),
                hook["oldest_undelivered_at"] or "",
                hook["last_error"] or "",
            )
        shown.append(hooks)
    else:
        shown.append("Webhooks: none configured (TEP_WEBHOOK_URLS).")

    canvas = report.get("canvas")
    if canvas and (canvas["open_commands"] or canvas["syncs"] or canvas["refused_commands_7d"]):
        line = (
            f"Canvas commands not yet confirmed: {count(canvas['open_commands'])} "
            f"({count(canvas['failing_commands'])} failed at least once"
            + (
                f"; the oldest since {short(canvas['oldest_open_at'])}"
                if canvas["oldest_open_at"]
                else ""
            )
            + ")"
            + (f"; the last error: {canvas['last_error']}" if canvas["last_error"] else "")
            + "."
        )
        shown.append(line)
        if canvas["refused_commands_7d"]:
            shown.append(
                f"Canvas refused {count(canvas['refused_commands_7d'])} command(s) in the last "
                f"7 days (those enrollments are not ended in Canvas); the last: "
                f"{canvas['last_refusal']}"
            )
        if canvas["syncs"]:
            syncs = _table("Canvas syncs", "root account", "last sync", "last full sync")
            for sync in canvas["syncs"]:
                syncs.add_row(
                    str(sync["root_account_id"]),
                    short(sync["synced_at"]),
                    short(sync["full_synced_at"]) if sync["full_synced_at"] else "",
                )
            shown.append(syncs)

    unsent = report["notices_unsent"]
    if unsent["items"]:
        table = _table(
            f"Notices not sent ({count(unsent['pending'])} pending, "
            f"{count(unsent['failed'])} failed)",
            "notice", "pairing", "kind", "state", "# attempts", "next attempt", "last error",
        )  # fmt: skip
        for item in unsent["items"]:
            table.add_row(
                str(item["id"]),
                str(item["pairing_id"]),
                item["kind"],
                item["state"],
                count(item["attempts"]),
                item["next_attempt_at"] or "",
                item["last_error"] or "",
            )
        shown.append(table)
    else:
        shown.append(
            "Notices: all sent." if mail_on else "Notices: mail is off (TEP_SMTP_URL is not set)."
        )
    return shown
