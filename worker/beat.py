"""Beat entries for webhook delivery, mail notices and a hosted Canvas's sync and outbox (the
sweep's own are in celery_app)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from worker.settings import Settings

DELIVER_WEBHOOKS_TASK = "tasks.deliver_webhooks"
SEND_NOTICES_TASK = "tasks.send_notices"
# Beside a hosted Canvas (tasks/canvas_rest/jobs.py, which names them too).
SYNC_CANVAS_TASK = "tasks.sync_canvas"
SEND_CANVAS_COMMANDS_TASK = "tasks.send_canvas_commands"
SEND_CANVAS_COMMANDS_INTERVAL_SECONDS = 15.0


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
    if settings.through_canvas:
        interval = settings.canvas_sync_interval_seconds
        schedule["sync-canvas"] = {
            "task": SYNC_CANVAS_TASK,
            "schedule": dt.timedelta(seconds=interval),
            "options": {"expires": max(interval, 1.0)},
        }
        interval = SEND_CANVAS_COMMANDS_INTERVAL_SECONDS
        schedule["send-canvas-commands"] = {
            "task": SEND_CANVAS_COMMANDS_TASK,
            "schedule": dt.timedelta(seconds=interval),
            "options": {"expires": interval},
        }
    return schedule
