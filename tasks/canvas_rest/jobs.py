"""The Celery tasks beside a hosted Canvas (named `tasks.*`, like every other): thin, as in
:mod:`tasks.jobs`. They read the settings, make a client, call the connector, report.

* `tasks.sync_canvas` (beat, every TEP_CANVAS_SYNC_INTERVAL_SECONDS) brings tep's mirror up to
  what Canvas holds (:mod:`tasks.canvas_rest.sync`).
* `tasks.send_canvas_commands` (beat, every 15 s (worker/beat.py), and at once after a
  sweep that decided something) sends the outbox the sweep wrote
  (:mod:`tasks.canvas_rest.commands`).

Canvas being out of reach or throttling past the client's retries is not a task failure: the
commands keep their place in the outbox and the next tick sends them. A token Canvas refuses
(401, or a 403 naming a permission) is: it is logged in one line at ERROR, not retried, and
every tick says so again until someone fixes the token.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import shared_task
from celery.signals import task_success

from tasks import arguments
from tasks.canvas_rest.client import CanvasClient, CanvasPermissionError, CanvasUnavailable
from tasks.jobs import RETRY_BACKOFF_MAX_SECONDS, RETRY_ON, retried_if_unavailable
from tasks.lifecycle import LifecycleError
from worker import runtime
from worker.beat import SEND_CANVAS_COMMANDS_TASK, SYNC_CANVAS_TASK
from worker.settings import get_settings

log = logging.getLogger("tep.canvas")

SWEEP_TASK = "tasks.expire_due_pairings"
OFF = {"canvas": "off (TEP_CANVAS_URL is not set)"}


def worker_id() -> str:
    """Who holds a command's lease: host and process, as an operator reads it in `tep status`."""
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


def _refused(task: str, error: Exception) -> dict[str, Any]:
    log.error("%s stopped: %s", task, error)
    return {"stopped": str(error)}


@shared_task(
    name=SYNC_CANVAS_TASK,
    autoretry_for=RETRY_ON,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=3,  # beat starts a fresh sync every interval anyway
)
def sync_canvas(full: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Bring tep's mirror up to what the hosted Canvas holds; returns the sync's summary."""
    from tasks.canvas_rest import sync

    full = arguments.parse_flag(full, "full")
    dry_run = arguments.parse_flag(dry_run, "dry_run")
    settings = get_settings()
    if not settings.through_canvas:
        return OFF
    try:
        with CanvasClient.from_settings(settings) as client, retried_if_unavailable():
            summary = sync.sync_canvas(
                runtime.session_factory(),
                client,
                account_ids=settings.canvas_account_id_list or None,
                dry_run=dry_run,
                full=full or None,
            )
    except (CanvasPermissionError, LifecycleError) as error:
        # A token Canvas refuses, or TEP_CANVAS_ACCOUNT_IDS naming no root account it shows:
        # every sync would fail alike until someone fixes the settings.
        return _refused(SYNC_CANVAS_TASK, error)
    except CanvasUnavailable as error:
        log.warning(
            "%s: Canvas is unavailable, the next sync tries again: %s", SYNC_CANVAS_TASK, error
        )
        return {"unavailable": str(error)}
    return summary.as_dict()


@shared_task(
    name=SEND_CANVAS_COMMANDS_TASK,
    autoretry_for=RETRY_ON,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=3,
)
def send_canvas_commands() -> dict[str, Any]:
    """Send the outbox's open commands to Canvas (leased: overlapping runs send each once)."""
    from tasks.canvas_rest import commands

    settings = get_settings()
    if not settings.through_canvas:
        return OFF
    try:
        with CanvasClient.from_settings(settings) as client, retried_if_unavailable():
            summary = commands.deliver_commands(
                runtime.session_factory(), client, worker_id=worker_id()
            )
    except CanvasPermissionError as error:
        return _refused(SEND_CANVAS_COMMANDS_TASK, error)
    return summary.as_dict()


@task_success.connect
def _send_after_a_sweep(sender: Any = None, result: Any = None, **_: Any) -> None:
    """A sweep that decided changes has them sent at once, not at the next tick. Fired once the
    task returned, so every batch (and its commands) has committed."""
    if getattr(sender, "name", None) != SWEEP_TASK or not isinstance(result, dict):
        return
    if result.get("dry_run") or not get_settings().through_canvas:
        return
    if result.get("enrollments_changed_total"):
        try:
            send_canvas_commands.delay()
        except Exception as error:  # a broker hiccup must not fail a sweep that is done
            log.warning("could not enqueue the Canvas commands after a sweep: %s", error)
