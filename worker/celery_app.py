"""The Celery app: `celery -A worker worker`, `celery -A worker beat`, or both with `-B`."""

from __future__ import annotations

import datetime as dt
import logging
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_ready,
)

import worker.metrics_server  # noqa: F401  # its worker_ready handler serves /metrics
from worker import logs, runtime
from worker.beat import events_beat_schedule
from worker.settings import REDELIVERING_BROKERS, Settings, parse_cron

SWEEP_TASK = "tasks.expire_due_pairings"
REMAKE_TIMERS_TASK = "tasks.remake_timers"

log = logging.getLogger("tep.worker")

# A process that only sends tasks (the API scheduling a timer) gives up on an unreachable broker
# after this long instead of holding up its request; the next tick schedules what it could not.
PRODUCER_CONNECT_TIMEOUT_SECONDS = 2.0

# Under an orchestrator's usual 30 s grace period (README, "Operating").
SOFT_SHUTDOWN_SECONDS = 20.0


# Time limits, ordered soft < hard < the broker's visibility timeout. A sweep commits batch by
# batch, so one that is stopped loses nothing; the limits only stop a wedged one. The visibility
# timeout must exceed the hard limit or Redis would hand a still-running late-acked sweep to a
# second worker, so both limits are derived from it: hard = half of it, soft = 5/6 of hard
# (25 and 30 minutes for the default hour).


def time_limits(visibility_timeout: float) -> tuple[float, float]:
    """(soft, hard) task time limits for a broker visibility timeout, in seconds."""
    hard = visibility_timeout / 2
    return hard * 5 / 6, hard


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


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    # Only Redis (and SQS) redeliver unacknowledged messages after a visibility timeout; other
    # transports reject the option.
    if settings.broker_url.startswith(REDELIVERING_BROKERS):
        visibility = settings.visibility_timeout_seconds
        return {
            "visibility_timeout": visibility,
            # kombu looks for messages older than the visibility timeout every interval x
            # throttle seconds (100 s by default); never look less often than the timeout itself.
            "unacked_restore_interval": min(10, max(1, int(visibility / 10))),
            "unacked_restore_throttle": 1 if visibility < 1000 else 10,
            # The lock around that look lapses after this long; a worker killed while holding
            # it would otherwise hold up every redelivery for kombu's default 5 minutes.
            "unacked_mutex_expire": int(min(300, max(1, visibility / 2))),
        }
    return {}


def create_app(settings: Settings) -> Celery:
    soft_limit, hard_limit = time_limits(settings.visibility_timeout_seconds)
    app = Celery(
        "tep",
        broker=settings.broker_url,
        backend=settings.result_backend,
        # Counts the deliveries of late-acknowledged messages and refuses one past the cap.
        task_cls="worker.redelivery:CappedDeliveryTask",
    )
    app.conf.update(
        include=["tasks.jobs", "tasks.delivery", "tasks.canvas_rest.jobs"],
        # JSON only: a pickled message is refused, never executed.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A message the worker cannot run (a body that is not [args, kwargs, embed], arguments
        # that do not fit the task) is refused and dropped rather than crash the worker.
        worker_consumer="worker.messages:CheckingConsumer",
        task_default_queue=settings.queue,
        timezone=settings.timezone,  # the zone TEP_NIGHTLY_CRON is read in
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
        # One message at a time per worker process: a sweep is long, and a prefetched second
        # sweep would only wait behind it (and be redelivered if the worker died).
        worker_prefetch_multiplier=1,
        task_soft_time_limit=soft_limit,
        task_time_limit=hard_limit,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Soft shutdown (a cold shutdown: SIGQUIT, Ctrl-C, or SIGTERM with REMAP_SIGTERM=SIGQUIT):
        # a running sweep gets this long to finish, then its unacknowledged message goes back to
        # the queue for another worker. Committed batches stay committed either way. A warm
        # shutdown (plain SIGTERM) waits for the sweep however long it takes.
        worker_soft_shutdown_timeout=SOFT_SHUTDOWN_SECONDS,
        # A task whose pool process died is failed, not put back: a message that kills its
        # process every time must not be redelivered forever. The next sweep picks up what it
        # left. (When the whole worker dies, Redis redelivers; worker/redelivery.py caps that.)
        task_reject_on_worker_lost=False,
        task_track_started=True,
        result_expires=dt.timedelta(days=7),
        result_extended=True,
    )
    return app


@lru_cache(maxsize=1)
def producer_app() -> Celery:
    """This process's :func:`make_producer`, from its settings."""
    from worker.settings import get_settings

    return make_producer(get_settings())


def make_producer(settings: Settings) -> Celery:
    """The app of a process that only sends tasks (the API's timers, tasks/timers.py): the
    worker's own configuration (broker, queue, serializer), with short connection timeouts."""
    app = create_app(settings)
    options = dict(app.conf.broker_transport_options or {})
    if settings.broker_url.startswith(REDELIVERING_BROKERS):
        # redis-py waits for the operating system's connect timeout (minutes) by default.
        options.update(
            socket_connect_timeout=PRODUCER_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=PRODUCER_CONNECT_TIMEOUT_SECONDS,
        )
    app.conf.update(
        broker_transport_options=options,
        broker_connection_timeout=PRODUCER_CONNECT_TIMEOUT_SECONDS,
        # It never reads a result; without this, sending would open the result backend (an
        # SQLite file in the working folder by default, or a Redis reply subscription).
        result_backend="disabled",
    )
    return app


@worker_process_init.connect
def _fresh_pool_after_fork(**_: Any) -> None:
    runtime.reset()


@worker_ready.connect
def _remake_timers(sender: Any = None, **_: Any) -> None:
    """A starting worker has the timers a killed one took with it made again (tasks/timers.py):
    by a task, so that the pool does the database work, not the consumer's start-up."""
    from worker.settings import get_settings

    if get_settings().timer_horizon_seconds is None:
        return
    app = getattr(sender, "app", None)
    if app is None:
        from worker import get_app

        app = get_app()
    try:
        app.send_task(REMAKE_TIMERS_TASK)
    except Exception as error:  # the next tick looks ahead anyway
        log.warning("could not ask for the timers to be made again: %s", error)


# The log (worker and beat): Celery sets up its handlers (stderr or --logfile, the level); these
# only change what a line looks like.


@after_setup_logger.connect
def _format_log(logger: logging.Logger | None = None, **_: Any) -> None:
    from celery.utils.log import get_multiprocessing_logger

    from worker.settings import get_settings

    # The sweep's summary is its own log line (tasks/lifecycle.py): Celery's success line for the
    # sweep task keeps the runtime, not the whole summary again.
    logging.getLogger("celery.app.trace").addFilter(logs.ShortSuccessLine([SWEEP_TASK]))
    if get_settings().log_format == "json":
        pool_logger = get_multiprocessing_logger()  # the pool's own errors
        logs.use_json([logger or logging.getLogger(), *([pool_logger] if pool_logger else [])])


@after_setup_task_logger.connect
def _format_task_log(logger: logging.Logger | None = None, **_: Any) -> None:
    from worker.settings import get_settings

    if logger is not None and get_settings().log_format == "json":
        logs.use_json([logger])
