"""Celery tasks. Thin, like web views: parse arguments, handle retries, call the lifecycle.

The rules themselves live in :mod:`tasks.lifecycle` and are tested without a worker.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import shared_task
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from models import transaction, utcnow
from tasks import lifecycle, timers
from worker import runtime
from worker.settings import get_settings

log = logging.getLogger("tep.tasks")

# A lost database connection (restart, failover, a terminated backend) is retried with
# exponential backoff; the sweep is idempotent and commits per batch, so a retry redoes nothing.
RETRY_ON = (OperationalError, DBAPIError)
MAX_RETRIES = 8
RETRY_BACKOFF_MAX_SECONDS = 120
# The interval sweep sent by beat; after its sweep it looks ahead for timers (tasks/timers.py).
TRIGGER_BEAT = "beat"


def parse_as_of(value: str | None) -> dt.datetime | None:
    """`as_of` arrives as JSON: an ISO 8601 string with an offset (or None for now)."""
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise lifecycle.LifecycleError(f"as_of {value!r} is not an ISO 8601 date-time") from None
    return lifecycle.require_aware(moment)


@shared_task(
    name="tasks.expire_due_pairings",
    acks_late=True,  # idempotent: redelivery after a lost worker just finishes the job
    autoretry_for=RETRY_ON,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=MAX_RETRIES,
)
def expire_due_pairings(
    as_of: str | None = None,
    dry_run: bool = False,
    account_id: int | None = None,
    trigger: str = "celery",
    not_before: str | None = None,
) -> dict[str, Any]:
    """Expire every temporary enrollment due at `as_of` (default: now); returns the run summary.

    A timer (trigger `timer`) passes its moment as `not_before` and is never run before it. The
    beat's interval sweep then looks ahead and schedules the timers of its horizon."""
    if not_before is not None:
        moment = parse_as_of(not_before)
        if moment is not None:
            timers.wait_for(moment)
    factory = runtime.session_factory()
    summary = lifecycle.run_sweep(
        factory,
        as_of=parse_as_of(as_of),
        dry_run=bool(dry_run),
        account_id=account_id,
        batch_size=get_settings().batch_size,
        trigger=trigger,
    )
    result = summary.to_json()
    if trigger == TRIGGER_BEAT and as_of is None and not dry_run and account_id is None:
        try:
            scheduled = timers.look_ahead(factory, expire_due_pairings.app, as_of=summary.as_of)
        except SQLAlchemyError as error:  # the sweep is done; the next tick looks again
            log.warning("timers: could not look ahead: %s", str(error).splitlines()[0])
        else:
            result["timers_scheduled"] = len(scheduled)
    return result


@shared_task(
    name="tasks.remake_timers",
    autoretry_for=RETRY_ON,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=MAX_RETRIES,
)
def remake_timers() -> dict[str, Any]:
    """Sent when a worker starts: make again the timers a killed worker took with it."""
    scheduled = timers.remake(runtime.session_factory(), remake_timers.app)
    return {"timers_scheduled": len(scheduled)}


@shared_task(
    name="tasks.end_pairing",
    autoretry_for=RETRY_ON,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=MAX_RETRIES,
)
def end_pairing(
    pairing_id: int,
    as_of: str | None = None,
    actor_id: int | None = None,
    delete: bool = False,
) -> dict[str, Any]:
    """End one pairing now (its live enrollments get its ending state); idempotent."""
    moment = parse_as_of(as_of) or utcnow()
    with transaction(runtime.session_factory()) as session:
        pairing, changed = lifecycle.end_pairing(
            session, pairing_id, as_of=moment, actor_id=actor_id, delete=bool(delete)
        )
        return {
            "pairing_id": pairing.id,
            # As shown (tep's pairing end with Canvas's row): Canvas's row stays `active`.
            "workflow_state": lifecycle.pairing_state(session, pairing),
            "enrollments_changed": changed,
        }


@shared_task(
    name="tasks.restore_pairing",
    autoretry_for=RETRY_ON,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=MAX_RETRIES,
)
def restore_pairing(
    pairing_id: int, end_at: str | None = None, actor_id: int | None = None
) -> dict[str, Any]:
    """Undo the pairing's last change (see :mod:`tasks.restore`); `end_at` re-dates it."""
    from tasks import restore

    new_end_at = parse_as_of(end_at)
    with transaction(runtime.session_factory()) as session:
        result = restore.restore_pairing(
            session, pairing_id, as_of=utcnow(), end_at=new_end_at, actor_id=actor_id
        )
    log.info(
        "restored pairing %s to %s (undid run %s): %s",
        pairing_id,
        result.pairing_state,
        result.undone_run_id,
        result.enrollments_restored,
    )
    return result.to_json()
