"""Wiring for events, notices and metrics: their beat entries and the worker's metrics endpoint."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery.signals import worker_ready

from worker.settings import Settings, get_settings

log = logging.getLogger("tep.worker")

DELIVER_WEBHOOKS_TASK = "tasks.deliver_webhooks"
SEND_NOTICES_TASK = "tasks.send_notices"


def events_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat entries for webhook delivery (when receivers are configured) and notices (when mail
    is on). A tick nobody picked up is superseded by the next one, as for the sweep."""
    schedule: dict[str, dict[str, Any]] = {}
    if settings.webhook_urls:
        interval = settings.webhook_interval_seconds
        schedule["deliver-webhooks"] = {
            "task": DELIVER_WEBHOOKS_TASK,
            "schedule": dt.timedelta(seconds=interval),
            "options": {"expires": max(interval, 1.0)},
        }
    if settings.smtp_url:
        interval = settings.notify_interval_seconds
        schedule["send-notices"] = {
            "task": SEND_NOTICES_TASK,
            "schedule": dt.timedelta(seconds=interval),
            "options": {"expires": max(interval, 1.0)},
        }
    return schedule


@worker_ready.connect
def _start_metrics_endpoint(**_: Any) -> None:
    """Serve /metrics from the worker's main process (once, not in each pool child)."""
    settings = get_settings()
    if settings.metrics_port is None:
        return
    from models import make_engine, make_sessionmaker
    from tasks.metrics import serve_metrics

    # An engine of its own: scrapes never take a connection the tasks need.
    factory = make_sessionmaker(
        make_engine(settings.database_url, settings.schemas()), read_only=True
    )
    try:
        serve_metrics(settings.metrics_port, factory, settings.webhook_url_list)
    except OSError as error:
        log.error("metrics: cannot listen on port %s: %s", settings.metrics_port, error)
