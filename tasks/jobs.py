"""The Celery tasks (named `tasks.*`). Thin, like web views: parse arguments, handle retries,
call the lifecycle.

The rules themselves live in :mod:`tasks.lifecycle` and are tested without a worker.

Every task reads its arguments through :mod:`tasks.arguments` before any work: a bad one fails
the task at once (no retry), logged at ERROR with the task's id. A database error is retried only
when the database was out of reach (:func:`is_connection_error`); a data or schema error would
fail the same way on every retry, so it fails at once.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from celery.signals import task_failure
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from models import transaction, utcnow
from tasks import arguments, lifecycle, timers
from tasks.arguments import ArgumentError
from worker import runtime
from worker.settings import get_settings

log = logging.getLogger("tep.tasks")

MAX_RETRIES = 8
RETRY_BACKOFF_MAX_SECONDS = 120
# The interval sweep sent by beat; after its sweep it looks ahead for timers (tasks/timers.py).
TRIGGER_BEAT = "beat"
# tep.temporary_enrollment_sweep_runs.trigger is varchar(64).
TRIGGER_MAX_LENGTH = 64

# PostgreSQL's SQLSTATEs (and their classes) for a connection the server refused or dropped:
# class 08 (connection exception), and an administrator's or a crash's shutdown, or a server
# still starting up (57P01, 57P02, 57P03). Not 57014 (a statement timeout: the same statement
# would time out again) nor anything about the data or the schema.
PG_CONNECTION_SQLSTATE_CLASSES = ("08",)
PG_CONNECTION_SQLSTATES = ("57P01", "57P02", "57P03")
# SQLite's: the database is held by another connection for now.
SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED")


class DatabaseUnavailable(Exception):
    """The database was out of reach (refused, dropped or held the connection): worth a retry.
    Its message is the driver's first line."""


def is_connection_error(error: DBAPIError) -> bool:
    """Whether `error` says the database was out of reach, not that the statement was wrong.

    A connection SQLAlchemy invalidated (a terminated backend, a closed socket) is one. Otherwise
    it is read from the driver's error: psycopg gives no SQLSTATE when the client never had or
    lost its connection (refused, unknown host, a server gone mid-query), and the server's own
    connection states listed above; SQLite says busy or locked."""
    if error.connection_invalidated:
        return True
    if not isinstance(error, OperationalError):
        return False  # DataError, IntegrityError, ProgrammingError: the statement is at fault
    orig = error.orig
    if isinstance(orig, sqlite3.Error):
        return getattr(orig, "sqlite_errorname", None) in SQLITE_UNAVAILABLE
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:
        return True
    return sqlstate in PG_CONNECTION_SQLSTATES or sqlstate[:2] in PG_CONNECTION_SQLSTATE_CLASSES


@contextmanager
def retried_if_unavailable() -> Iterator[None]:
    """Turns a database error :func:`is_connection_error` accepts into
    :class:`DatabaseUnavailable`, which the tasks retry (`RETRY_ON`); any other passes as is."""
    try:
        yield
    except DBAPIError as error:
        if not is_connection_error(error):
            raise
        text = str(error.orig if error.orig is not None else error)
        raise DatabaseUnavailable(text.splitlines()[0] if text else type(error).__name__) from error


# Retried with exponential backoff: the sweep is idempotent and commits per batch, so a retry
# redoes nothing. Every task runs its database work inside `retried_if_unavailable()`.
RETRY_ON = (DatabaseUnavailable,)
# Failed at once, logged at ERROR with the task id (below) and not again by Celery with a
# traceback: Celery logs the `throws` of a task as expected, in one line at INFO.
REFUSED = (ArgumentError,)


@task_failure.connect
def _log_refused_arguments(
    sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
) -> None:
    if isinstance(exception, ArgumentError):
        name = getattr(sender, "name", "?")
        log.error("refused task %s[%s]: %s; it is not retried", name, task_id, exception)


@shared_task(
    name="tasks.expire_due_pairings",
    acks_late=True,  # idempotent: redelivery after a lost worker just finishes the job
    autoretry_for=RETRY_ON,
    throws=REFUSED,
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
    moment = arguments.optional_moment(as_of, "as_of")
    dry_run = arguments.parse_flag(dry_run, "dry_run")
    account_id = arguments.optional_id(account_id, "account_id")
    trigger = arguments.parse_text(trigger, "trigger", TRIGGER_MAX_LENGTH)
    earliest = arguments.optional_moment(not_before, "not_before")

    if earliest is not None:
        timers.wait_for(earliest)
    factory = runtime.session_factory()
    with retried_if_unavailable():
        summary = lifecycle.run_sweep(
            factory,
            as_of=moment,
            dry_run=dry_run,
            account_id=account_id,
            batch_size=get_settings().batch_size,
            trigger=trigger,
        )
    result = summary.to_json()
    if trigger == TRIGGER_BEAT and moment is None and not dry_run and account_id is None:
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
    throws=REFUSED,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=MAX_RETRIES,
)
def remake_timers() -> dict[str, Any]:
    """Sent when a worker starts: make again the timers a killed worker took with it."""
    with retried_if_unavailable():
        scheduled = timers.remake(runtime.session_factory(), remake_timers.app)
    return {"timers_scheduled": len(scheduled)}


@shared_task(
    name="tasks.end_pairing",
    autoretry_for=RETRY_ON,
    throws=REFUSED,
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
    pairing_id = arguments.parse_id(pairing_id, "pairing_id")
    moment = arguments.optional_moment(as_of, "as_of") or utcnow()
    actor_id = arguments.optional_id(actor_id, "actor_id")
    delete = arguments.parse_flag(delete, "delete")

    with retried_if_unavailable(), transaction(runtime.session_factory()) as session:
        pairing, changed = lifecycle.end_pairing(
            session, pairing_id, as_of=moment, actor_id=actor_id, delete=delete
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
    throws=REFUSED,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    max_retries=MAX_RETRIES,
)
def restore_pairing(
    pairing_id: int, end_at: str | None = None, actor_id: int | None = None
) -> dict[str, Any]:
    """Undo the pairing's last change (see :mod:`tasks.restore`); `end_at` re-dates it."""
    from tasks import restore

    pairing_id = arguments.parse_id(pairing_id, "pairing_id")
    new_end_at = arguments.optional_moment(end_at, "end_at")
    actor_id = arguments.optional_id(actor_id, "actor_id")

    if get_settings().through_canvas:
        # Through Canvas: the mirror's restore and its commands commit together; the commands go
        # at once to Canvas, and those it does not answer now stay in the outbox.
        from tasks.canvas_rest.client import CanvasClient
        from tasks.canvas_rest.restore import restore_through_canvas

        with CanvasClient.from_settings(get_settings()) as client, retried_if_unavailable():
            through = restore_through_canvas(
                runtime.session_factory(),
                client,
                pairing_id,
                end_at=new_end_at,
                actor_id=actor_id,
                worker_id=f"restore:{restore_pairing.request.id}"[:64],
            )
        log.info(
            "restored pairing %s to %s (undid run %s): %s; %s Canvas command(s) pending",
            pairing_id,
            through.restored.pairing_state,
            through.restored.undone_run_id,
            through.restored.enrollments_restored,
            through.pending,
        )
        return through.to_json()
    with retried_if_unavailable(), transaction(runtime.session_factory()) as session:
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
