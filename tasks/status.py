"""What `tep status` reports: the operator's view of the service, read from the database."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from models import (
    DEFAULT_ENDING_ENROLLMENT_STATE,
    NOTICE_FAILED,
    NOTICE_PENDING,
    Account,
    Enrollment,
    Notice,
    SweepRun,
    TemporaryEnrollmentPairing,
)
from tasks import lifecycle, webhooks

DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)
RECENT_RUNS = 10
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


def recent_runs(session: Session, limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    runs = session.scalars(
        select(SweepRun).order_by(SweepRun.started_at.desc(), SweepRun.id.desc()).limit(limit)
    )
    result = []
    for run in runs:
        summary: dict[str, Any] = json.loads(run.summary)
        result.append(summary)
    return result


def collect_status(
    session: Session, now: dt.datetime, webhook_urls: Sequence[str]
) -> dict[str, Any]:
    runs = recent_runs(session)
    receivers = webhooks.undelivered_counts(session, webhook_urls)
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
        "last_runs": runs,
        # The latest run's skips: pairings left untouched until someone fixes their data.
        "skipped_pairings": runs[0]["pairings_skipped"] if runs else [],
        "webhooks": [
            {
                "url": url,
                "undelivered": counts["undelivered"],
                "failing": counts["failing"],
                "oldest_undelivered_at": _iso(counts["oldest_undelivered_at"]),
                "last_success_at": _iso(counts["last_success_at"]),
                "last_error": counts["last_error"],
            }
            for url, counts in receivers.items()
        ],
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
