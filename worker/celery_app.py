"""The Celery app: `celery -A worker worker`, `celery -A worker beat`, or both with `-B`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from worker import runtime
from worker.events import events_beat_schedule
from worker.settings import Settings, parse_cron

SWEEP_TASK = "tasks.expire_due_pairings"

# Time limits, ordered soft < hard < the broker's visibility timeout. A sweep commits batch by
# batch, so one that is stopped loses nothing; the limits only stop a wedged one. The visibility
# timeout must exceed the hard limit or Redis would hand a still-running late-acked sweep to a
# second worker.
SOFT_TIME_LIMIT_SECONDS = 25 * 60
HARD_TIME_LIMIT_SECONDS = 30 * 60
VISIBILITY_TIMEOUT_SECONDS = 60 * 60


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {}
    if settings.sweep_interval_seconds > 0:
        interval = settings.sweep_interval_seconds
        schedule["expire-due-pairings-every-interval"] = {
            "task": SWEEP_TASK,
            "schedule": dt.timedelta(seconds=interval),
            "kwargs": {"trigger": "beat"},
            # A tick nobody picked up within one interval is superseded by the next one; do not
            # let a stopped worker come back to a pile of identical sweeps.
            "options": {"expires": max(interval, 1.0)},
        }
    if settings.nightly_cron:
        schedule["expire-due-pairings-nightly"] = {
            "task": SWEEP_TASK,
            "schedule": parse_cron(settings.nightly_cron),
            "kwargs": {"trigger": "nightly"},
        }
    schedule.update(events_beat_schedule(settings))
    return schedule


def broker_transport_options(broker_url: str) -> dict[str, Any]:
    # Only Redis (and SQS) redeliver unacknowledged messages after a visibility timeout; other
    # transports reject the option.
    if broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        return {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
    return {}


def create_app(settings: Settings) -> Celery:
    app = Celery("tep", broker=settings.broker_url, backend=settings.result_backend)
    app.conf.update(
        include=["tasks", "tasks.delivery"],
        # JSON only: a pickled message is refused, never executed.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=settings.queue,
        timezone=settings.timezone,  # the zone TEP_NIGHTLY_CRON is read in
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
        # One message at a time per worker process: a sweep is long, and a prefetched second
        # sweep would only wait behind it (and be redelivered if the worker died).
        worker_prefetch_multiplier=1,
        task_soft_time_limit=SOFT_TIME_LIMIT_SECONDS,
        task_time_limit=HARD_TIME_LIMIT_SECONDS,
        broker_transport_options=broker_transport_options(settings.broker_url),
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # A task whose process died is failed, not put back: a message that kills its worker
        # every time must not be redelivered forever. The next sweep picks up what it left.
        task_reject_on_worker_lost=False,
        task_track_started=True,
        result_expires=dt.timedelta(days=7),
        result_extended=True,
    )
    return app


@worker_process_init.connect
def _fresh_pool_after_fork(**_: Any) -> None:
    runtime.reset()
