"""What `tep status` reports: the operator's view of the service, read from the database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from models import (
    DEFAULT_ENDING_ENROLLMENT_STATE,
    NOTICE_FAILED,
    NOTICE_PENDING,
    Account,
    CanvasCommand,
    CanvasSync,
    Enrollment,
    Notice,
    SweepRun,
    TemporaryEnrollmentPairing,
)
from tasks import lifecycle, webhooks
from worker.notify_settings import receiver_labels

DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)
RECENT_RUNS = 10
# Rows read at most, and per query, to find them (idle runs are one row per streak).
RUNS_SCANNED = 1_000
RUNS_PAGE = 50
NOTICES_LISTED = 20


def _iso(moment: dt.datetime | None) -> str | None:
    return lifecycle.iso(moment) if moment is not None else None


def due_soon(session: Session, now: dt.datetime) -> list[dict[str, Any]]:
    """Live temporary enrollments of active pairings due by a week from now, per root account and
    ending state: already due (the sweep's backlog), within 24 hours, within 7 days."""
    ending = func.coalesce(
        TemporaryEnrollmentPairing.ending_enrollment_state, DEFAULT_ENDING_ENROLLMENT_STATE
    )

    def within(clause: Any) -> Any:
        return func.coalesce(func.sum(case((clause, 1), else_=0)), 0)

    rows = session.execute(
        lifecycle.join_due(
            select(
                Enrollment.root_account_id,
                Account.name,
                ending,
                within(Enrollment.end_at <= now),
                within((Enrollment.end_at > now) & (Enrollment.end_at <= now + DAY)),
                within(Enrollment.end_at > now),
            ),
            now + WEEK,
        )
        .join(Account, Account.id == Enrollment.root_account_id)
        .group_by(Enrollment.root_account_id, Account.name, ending)
        .order_by(Enrollment.root_account_id, ending)
    )
    return [
        {
            "root_account_id": root,
            "account": name,
            "ending_state": state,
            "due_now": int(now_),
            "next_24h": int(day),
            "next_7d": int(week),
        }
        for root, name, state, now_, day, week in rows
    ]


def recorded_runs(
    session: Session, *, since: dt.datetime | None = None, limit: int = RUNS_SCANNED
) -> Iterator[dict[str, Any]]:
    """The recorded runs' summaries, newest first (by start), a page at a time: at most `limit`,
    none started before `since`."""
    after: tuple[dt.datetime, str] | None = None
    read = 0
    while read < limit:
        stmt = select(SweepRun.started_at, SweepRun.id, SweepRun.summary)
        if since is not None:
            stmt = stmt.where(SweepRun.started_at >= since)
        if after is not None:
            stmt = stmt.where(
                or_(
                    SweepRun.started_at < after[0],
                    and_(SweepRun.started_at == after[0], SweepRun.id < after[1]),
                )
            )
        page = session.execute(
            stmt.order_by(SweepRun.started_at.desc(), SweepRun.id.desc()).limit(
                min(RUNS_PAGE, limit - read)
            )
        ).all()
        for _, _, summary in page:
            run: dict[str, Any] = json.loads(summary)
            # Runs recorded before runs cut short were recorded had only completed ones.
            run.setdefault("status", lifecycle.RUN_COMPLETED)
            yield run
        if len(page) < RUNS_PAGE:
            return
        read += len(page)
        after = (page[-1].started_at, page[-1].id)


def run_history(session: Session, limit: int = RECENT_RUNS) -> dict[str, Any]:
    """The last `limit` runs that changed something or did not complete, newest first; the idle
    runs since the newest of those (how many, and the last one); and the latest run of all,
    whose skipped pairings are the ones skipped now.

    Idle runs are recorded one row per streak (lifecycle.record_run), so the rows read here
    are about as many as the runs shown, whatever the beat interval.
    """
    runs: list[dict[str, Any]] = []
    latest: dict[str, Any] | None = None
    last_idle: dict[str, Any] | None = None
    idle_since: str | None = None
    idle_runs = 0
    for run in recorded_runs(session):
        latest = latest or run
        if lifecycle.is_idle_run(run):
            last_idle = last_idle or run
            if not runs:  # idle since the newest run listed
                idle_runs += int(run.get("idle_runs", 1))
                idle_since = run.get("idle_since", run["started_at"])
        elif len(runs) < limit:
            runs.append(run)
        if len(runs) == limit and last_idle is not None:
            break
    return {
        "last_runs": runs,
        "idle": None
        if last_idle is None
        else {
            "last_run_id": last_idle["run_id"],
            "last_trigger": last_idle["trigger"],
            "last_finished_at": last_idle["finished_at"],
            # Idle runs since the newest run listed (all of them when none is).
            "runs_since_last_listed": idle_runs,
            "since": idle_since,
        },
        "latest": latest,
    }


def canvas_outbox(session: Session, now: dt.datetime) -> dict[str, Any]:
    """Beside a hosted Canvas (tasks/canvas_rest/): the commands not yet confirmed by Canvas, how
    many have failed at least once, the oldest, the latest error; and each root account's last
    sync. All zeros and empty when tep writes Canvas's tables itself. Reads the outbox's partial
    index of open commands only."""
    open_ = CanvasCommand.finished_at.is_(None)
    waiting, failing, oldest = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((CanvasCommand.attempts > 0, 1), else_=0)), 0),
            func.min(CanvasCommand.created_at),
        ).where(open_)
    ).one()
    last_error = session.scalar(
        select(CanvasCommand.last_error)
        .where(open_, CanvasCommand.last_error.is_not(None))
        .order_by(CanvasCommand.id.desc())
        .limit(1)
    )
    refused_recently = (CanvasCommand.outcome == "refused", CanvasCommand.finished_at >= now - WEEK)
    refused = session.scalar(select(func.count()).where(*refused_recently))
    last_refusal = session.scalar(
        select(CanvasCommand.last_error)
        .where(*refused_recently)
        .order_by(CanvasCommand.finished_at.desc())
        .limit(1)
    )
    syncs = session.scalars(select(CanvasSync).order_by(CanvasSync.root_account_id)).all()
    return {
        "open_commands": int(waiting),
        "failing_commands": int(failing),
        "oldest_open_at": _iso(oldest),
        "last_error": last_error,
        # Answers Canvas gave that say no for good (the pairing stays open): the last 7 days.
        "refused_commands_7d": int(refused or 0),
        "last_refusal": last_refusal,
        "syncs": [
            {
                "root_account_id": sync.root_account_id,
                "synced_at": _iso(sync.synced_at),
                "full_synced_at": _iso(sync.full_synced_at),
                "summary": json.loads(sync.summary),
            }
            for sync in syncs
        ],
    }


def collect_status(
    session: Session, now: dt.datetime, webhook_urls: Sequence[str]
) -> dict[str, Any]:
    history = run_history(session)
    receivers = webhooks.undelivered_counts(session, webhook_urls)
    labels = receiver_labels(list(webhook_urls))
    unsent = session.scalars(
        select(Notice)
        .where(Notice.workflow_state.in_((NOTICE_PENDING, NOTICE_FAILED)))
        .order_by(Notice.id)
        .limit(NOTICES_LISTED)
    ).all()
    unsent_counts = dict(
        session.execute(
            select(Notice.workflow_state, func.count())
            .where(Notice.workflow_state.in_((NOTICE_PENDING, NOTICE_FAILED)))
            .group_by(Notice.workflow_state)
        ).all()
    )
    return {
        "as_of": lifecycle.iso(now),
        "due": due_soon(session, now),
        "due_now_total": lifecycle.count_due(session, now),
        "last_runs": history["last_runs"],
        "idle_runs": history["idle"],
        # The latest run's skips: pairings left untouched until someone fixes their data.
        "skipped_pairings": history["latest"]["pairings_skipped"] if history["latest"] else [],
        "webhooks": [
            {
                "url": labels[url],  # without the userinfo and query string a URL may hold
                "undelivered": counts["undelivered"],
                "failing": counts["failing"],
                "oldest_undelivered_at": _iso(counts["oldest_undelivered_at"]),
                "last_success_at": _iso(counts["last_success_at"]),
                "last_error": counts["last_error"],
            }
            for url, counts in receivers.items()
        ],
        "canvas": canvas_outbox(session, now),
        "notices_unsent": {
            "pending": int(unsent_counts.get(NOTICE_PENDING, 0)),
            "failed": int(unsent_counts.get(NOTICE_FAILED, 0)),
            "items": [
                {
                    "id": n.id,
                    "pairing_id": n.temporary_enrollment_pairing_id,
                    "kind": n.kind,
                    "threshold_seconds": n.threshold_seconds,
                    "state": n.workflow_state,
                    "attempts": n.attempts,
                    "next_attempt_at": _iso(n.next_attempt_at),
                    "last_error": n.last_error,
                }
                for n in unsent
            ],
        },
    }


# --------------------------------------------------------------------------------------------
# `tep status --check`: Nagios-style levels, one finding per reason.

OK = 0
WARNING = 1
CRITICAL = 2
LEVEL_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}

# How many intervals due work may wait, and the last sweep may be old, before the check says so.
# Timers expire each enrollment within a second of its end_at and the interval sweep catches any
# a timer missed, so due work older than two intervals is a backlog nothing is clearing; three
# intervals without a finished sweep is deploy/prometheus/alerts.yml's TepSweepNotRunning.
DUE_INTERVALS = 2
STALE_INTERVALS = 3
# With the interval sweep off (TEP_SWEEP_INTERVAL_SECONDS=0) the nightly run is the sweep.
NIGHTLY_PERIOD = DAY
# How far back failed and interrupted runs are looked for: the nightly run's period twice, so a
# failed nightly run is reported until the next one completes. At most FAILURES_SCANNED rows.
FAILURE_LOOKBACK = 2 * DAY
FAILURES_SCANNED = 10_000


@dataclasses.dataclass(frozen=True)
class Finding:
    level: int
    message: str

    def line(self) -> str:
        return f"{LEVEL_NAMES[self.level]}: {self.message}"


def check_level(findings: Sequence[Finding]) -> int:
    """The exit status for these findings: the worst level among them (OK when there are none)."""
    return max((finding.level for finding in findings), default=OK)


def check_status(
    session: Session, now: dt.datetime, sweep_interval: dt.timedelta | None
) -> list[Finding]:
    """What needs an operator now, worst first (empty when all is well):

    * CRITICAL: a run failed since the last good run that does its work (below); due
      enrollments not expired for more than DUE_INTERVALS sweep intervals (people keep access
      past its end); no sweep finished for STALE_INTERVALS intervals (beat or the worker is
      down), when the interval sweep is on;
    * CRITICAL, beside a hosted Canvas: commands to Canvas not confirmed for as long;
    * WARNING: a run was interrupted (stopped from outside: a restart, Ctrl-C) since the last
      good run that does its work; the latest run skipped pairings (bad data, left untouched).

    A failed or interrupted run is cleared by a later completed run of its own kind (trigger and
    account) or, but for the nightly run (which alone rebuilds the deadline index), by any later
    completed run over all accounts: such a run did the same work.
    """
    interval = sweep_interval if sweep_interval and sweep_interval.total_seconds() > 0 else None
    findings = _failures(session, now)
    due_for = DUE_INTERVALS * (interval or NIGHTLY_PERIOD)
    overdue = lifecycle.count_due(session, now - due_for)
    if overdue:
        findings.append(
            Finding(
                CRITICAL,
                f"{overdue:,} temporary enrollment(s) have been due for more than "
                f"{_duration(due_for)} and are not expired: the sweeps are failing, stopped or "
                "too slow",
            )
        )
    findings.extend(_canvas_backlog(session, now, due_for))
    latest = next(recorded_runs(session, limit=1), None)
    if interval is not None:
        stale = STALE_INTERVALS * interval
        if latest is None:
            findings.append(Finding(CRITICAL, "no sweep has run yet: is beat running?"))
        else:
            finished = dt.datetime.fromisoformat(latest["finished_at"])
            if now - finished > stale:
                findings.append(
                    Finding(
                        CRITICAL,
                        f"no sweep has finished for {_duration(now - finished)} (the last at "
                        f"{latest['finished_at']}; {STALE_INTERVALS} sweep intervals are "
                        f"{_duration(stale)}): is beat running?",
                    )
                )
    skipped = latest["pairings_skipped"] if latest else []
    if skipped:
        reasons = Counter(item["reason"] for item in skipped)
        listed = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(reasons.items()))
        findings.append(
            Finding(
                WARNING,
                f"the last sweep skipped {len(skipped):,} pairing(s) ({listed}): they are left "
                "untouched until their data is fixed; `tep status` lists them",
            )
        )
    return sorted(findings, key=lambda finding: -finding.level)


def _canvas_backlog(session: Session, now: dt.datetime, due_for: dt.timedelta) -> list[Finding]:
    """Beside a hosted Canvas: commands Canvas has not confirmed for as long as due work may
    wait. The enrollments are ended in tep's mirror but not yet in Canvas, where people keep
    access: as critical as a backlog of due work."""
    stale = session.execute(
        select(func.count(), func.min(CanvasCommand.created_at)).where(
            CanvasCommand.finished_at.is_(None), CanvasCommand.created_at < now - due_for
        )
    ).one()
    findings = []
    refused = session.execute(
        select(func.count(), func.max(CanvasCommand.finished_at)).where(
            CanvasCommand.outcome == "refused", CanvasCommand.finished_at >= now - DAY
        )
    ).one()
    if refused[0]:
        findings.append(
            Finding(
                WARNING,
                f"Canvas refused {refused[0]:,} command(s) in the last 24 h (the last at "
                f"{_iso(refused[1])}): those enrollments are not ended in Canvas; "
                "`tep status --json` shows the last error",
            )
        )
    if not stale[0]:
        return findings
    last_error = session.scalar(
        select(CanvasCommand.last_error)
        .where(CanvasCommand.finished_at.is_(None), CanvasCommand.last_error.is_not(None))
        .order_by(CanvasCommand.id.desc())
        .limit(1)
    )
    return [
        *findings,
        Finding(
            CRITICAL,
            f"{stale[0]:,} command(s) to Canvas not confirmed for more than "
            f"{_duration(due_for)} (the oldest since {_iso(stale[1])}): "
            + (f"the last error: {last_error}" if last_error else "is the worker sending them?"),
        ),
    ]


def _failures(session: Session, now: dt.datetime) -> list[Finding]:
    """The runs that failed or were interrupted since a later good run did their work: one
    finding per status, naming the newest such run."""
    good: set[tuple[str, int | None]] = set()
    all_accounts = False
    cut_short: dict[str, list[dict[str, Any]]] = {}
    nightly = (lifecycle.TRIGGER_NIGHTLY, None)
    for run in recorded_runs(session, since=now - FAILURE_LOOKBACK, limit=FAILURES_SCANNED):
        kind = (run["trigger"], run["account_id"])
        if run["status"] == lifecycle.RUN_COMPLETED:
            good.add(kind)
            all_accounts = all_accounts or run["account_id"] is None
            if all_accounts and nightly in good:
                break  # every older run's work has been done again since
            continue
        if run["trigger"] == lifecycle.TRIGGER_NIGHTLY:
            cleared = kind in good or nightly in good
        else:
            cleared = kind in good or all_accounts
        if not cleared:
            cut_short.setdefault(run["status"], []).append(run)
    findings = []
    for status, level in ((lifecycle.RUN_FAILED, CRITICAL), (lifecycle.RUN_INTERRUPTED, WARNING)):
        runs = cut_short.get(status)
        if not runs:
            continue
        newest = runs[0]
        findings.append(
            Finding(
                level,
                f"{len(runs):,} sweep run(s) {status} since a good run did their work; the "
                f"newest: {newest['trigger']} run {newest['run_id']} started "
                f"{newest['started_at']}: {newest.get('error') or status}",
            )
        )
    return findings


def _duration(delta: dt.timedelta) -> str:
    """`45 s`, `12 min`, `5 h`, `3 days`: rounded down, for a one-line message."""
    seconds = int(delta.total_seconds())
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
