"""Celery tasks that deliver what the lifecycle recorded: webhooks and email notices.

Thin, like the sweep task: read settings, call tasks.webhooks / tasks.notices, report. Both are
idempotent and safe to overlap (leases in the database), so beat, a post-sweep trigger and a
manual `celery call` may all run them at once.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import task_success

from tasks import notices, webhooks
from tasks.jobs import RETRY_BACKOFF_MAX_SECONDS, RETRY_ON, retried_if_unavailable
from worker import runtime
from worker.beat import DELIVER_WEBHOOKS_TASK, SEND_NOTICES_TASK
from worker.settings import get_settings

log = logging.getLogger("tep.tasks")

SWEEP_TASK = "tasks.expire_due_pairings"
# An unreachable SMTP server: retry after 30 s, 60 s, ... up to 30 min apart; beat keeps going.
SMTP_RETRY_BACKOFF_SECONDS = 30
SMTP_RETRY_BACKOFF_MAX_SECONDS = 1800
SMTP_MAX_RETRIES = 6


@shared_task(
    name=DELIVER_WEBHOOKS_TASK,
    autoretry_for=RETRY_ON,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=3,  # beat starts a fresh run every few seconds anyway
)
def deliver_webhooks() -> list[dict[str, Any]]:
    """POST the lifecycle events each configured receiver has not accepted yet."""
    settings = get_settings()
    with retried_if_unavailable():
        reports = webhooks.deliver_webhooks(
            runtime.session_factory(), settings.webhook_url_list, settings.webhook_secret
        )
    if any(report.more for report in reports):
        deliver_webhooks.delay()  # a backlog: carry on now rather than at the next tick
    return [report.to_json() for report in reports]


@shared_task(
    name=SEND_NOTICES_TASK,
    autoretry_for=(*RETRY_ON, notices.SmtpUnavailable),
    retry_backoff=SMTP_RETRY_BACKOFF_SECONDS,
    retry_backoff_max=SMTP_RETRY_BACKOFF_MAX_SECONDS,
    max_retries=SMTP_MAX_RETRIES,
)
def send_notices() -> dict[str, Any]:
    """Plan the pre-expiry and access-ended notices that are due, and email the pending ones."""
    settings = get_settings()
    if settings.smtp is None:
        return {"mail": "off (TEP_SMTP_URL is not set)"}
    with retried_if_unavailable():
        report = notices.run_notices(
            runtime.session_factory(),
            settings.smtp,
            settings.mail_from,
            settings.notice_thresholds,
        )
    return report.to_json()


@task_success.connect
def _deliver_after_a_sweep(sender: Any = None, result: Any = None, **_: Any) -> None:
    """A sweep that changed something starts a delivery at once instead of at the next tick.

    `task_success` fires after the task returned, when every batch of the sweep has committed,
    so the delivery sees all of its events. Enqueuing is all the sweep's worker does.
    """
    if getattr(sender, "name", None) != SWEEP_TASK or not isinstance(result, dict):
        return
    if result.get("dry_run") or not get_settings().webhook_urls:
        return
    if result.get("enrollments_changed_total") or result.get("pairings_ended"):
        try:
            deliver_webhooks.delay()
        except Exception as error:  # a broker hiccup must not fail a sweep that is done
            log.warning("could not enqueue webhook delivery after sweep: %s", error)
