"""Delivering lifecycle events to the configured webhook receivers: at least once, signed.

Each receiver has a low-water mark in the audit table (everything at or below it is done) and a
`WebhookDelivery` row per event above it that was tried. A run, per receiver:

1. takes the receiver's lease (a short transaction; two runs never work on one receiver at once,
   and no transaction stays open across HTTP requests, so a sweep is never held up by one);
2. POSTs the events not yet delivered, in audit order, each with a short timeout; the first
   failure stops that receiver's run (a receiver that is down costs one timeout per run), and the
   failed event is retried after an exponential backoff;
3. records outcomes every few events, moves the low-water mark past what is settled, and gives
   the lease back.

A crash between a POST and its record means the event is sent again, with the same id: receivers
deduplicate by `id`. Delivery only reads the audit table, so it cannot undo or slow a sweep.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from sqlalchemy import Insert, and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased, sessionmaker

from models import (
    StateChange,
    WebhookDelivery,
    WebhookReceiver,
    make_sessionmaker,
    transaction,
    utcnow,
)
from tasks.events import Event, event_from_row, event_rows_query, is_event
from worker.notify_settings import receiver_label, receiver_labels

log = logging.getLogger("tep.webhooks")

SIGNATURE_HEADER = "X-TEP-Signature"
USER_AGENT = "tep-webhooks/1"

# Short, so that a slow or dead receiver costs a run seconds, not minutes.
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 5.0
# Retry a failed event after 5 s, 10 s, 20 s, ... at most an hour apart, for as long as it takes
# (at-least-once: an event is never given up on; `tep status` shows what is waiting).
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 3600.0
# A run stops taking new events after this long or this many per receiver, so that it finishes
# well inside its lease and never holds a worker process for long (sweeps may share the pool);
# the task then enqueues the next run at once.
RUN_MAX_SECONDS = 20.0
RUN_MAX_EVENTS = 2000
LEASE = dt.timedelta(minutes=5)
# Outcomes are written every this many events: fewer, shorter write transactions.
RECORD_EVERY = 50
# How old an audit row must be before no transaction that started earlier can still commit rows
# with smaller ids (ids are taken at insert, commits come later). A batch transaction lasts far
# less than the sweep's hard time limit (30 min); twice that is the margin. Only rows this old
# move the low-water mark; newer ones are always checked one by one, so none is ever missed.
SETTLE = dt.timedelta(hours=1)


class LabelUrls(logging.Filter):
    """httpx logs every request at INFO (the worker's level) with its whole URL, credentials
    and query string included: this writes each URL in a record as its receiver label."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                receiver_label(str(arg)) if isinstance(arg, httpx.URL) else arg
                for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(LabelUrls())


def sign(secret: str, body: bytes) -> str:
    """The `X-TEP-Signature` value: `sha256=` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> dt.timedelta:
    """How long to wait after the `attempts`-th failed attempt."""
    seconds = BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0)
    return dt.timedelta(seconds=min(seconds, BACKOFF_MAX_SECONDS))


def body_of(event: Event) -> bytes:
    return json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True).encode()


def reader(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions like `factory`'s that only read: on SQLite they do not take the write lock, so
    reading the outbox never makes a sweep wait."""
    bind = factory.kw.get("bind")
    return make_sessionmaker(bind, read_only=True) if bind is not None else factory


def insert_or_skip(session: Session, table: Any) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` for the session's database (PostgreSQL or SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


@dataclasses.dataclass
class ReceiverReport:
    receiver: str  # its label (receiver_labels): the task's result is logged and stored
    delivered: int = 0
    failed: int = 0
    busy: bool = False  # another run held the receiver's lease
    more: bool = False  # stopped at the run's limits with events still waiting
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Outcome:
    state_change_id: int
    delivered: bool
    attempted: bool
    status: int | None = None
    error: str | None = None


def ensure_receivers(session: Session, urls: Sequence[str], now: dt.datetime) -> dict[str, int]:
    """Receiver rows for `urls`, created on first sight.

    A new receiver starts at the settled part of the outbox: it is sent the events of the last
    SETTLE and everything after, not the whole history of the service.
    """
    known = _receiver_ids(session, urls)
    missing = [url for url in urls if url not in known]
    if missing:
        start = starting_point(session, now)
        session.execute(
            insert_or_skip(session, WebhookReceiver),
            [
                {
                    "url": url,
                    "low_water_state_change_id": start or 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for url in missing
            ],
        )
        known = _receiver_ids(session, urls)
    return known


def starting_point(session: Session, now: dt.datetime) -> int:
    """The low-water mark a new receiver starts at: the last settled event."""
    start = session.scalar(
        select(func.max(StateChange.id)).where(StateChange.created_at <= now - SETTLE)
    )
    return start or 0


def _receiver_ids(session: Session, urls: Sequence[str]) -> dict[str, int]:
    rows = session.execute(
        select(WebhookReceiver.url, WebhookReceiver.id).where(WebhookReceiver.url.in_(urls))
    )
    return {url: id_ for url, id_ in rows}


def claim(session: Session, receiver_id: int, owner: str, now: dt.datetime) -> int | None:
    """Take the receiver's lease; its low-water mark when taken, None when another run has it."""
    taken = (
        session.connection()
        .execute(
            update(WebhookReceiver)
            .where(
                WebhookReceiver.id == receiver_id,
                or_(WebhookReceiver.leased_until.is_(None), WebhookReceiver.leased_until < now),
            )
            .values(leased_until=now + LEASE, lease_owner=owner)
        )
        .rowcount
    )
    if not taken:
        return None
    return session.scalar(
        select(WebhookReceiver.low_water_state_change_id).where(WebhookReceiver.id == receiver_id)
    )


def due_events(
    session: Session, receiver_id: int, after_id: int, now: dt.datetime, limit: int
) -> list[Any]:
    """The next events for a receiver: never tried, or failed and past their backoff."""
    tried = aliased(WebhookDelivery)
    stmt = (
        event_rows_query()
        .outerjoin(
            tried,
            and_(tried.receiver_id == receiver_id, tried.state_change_id == StateChange.id),
        )
        .where(
            StateChange.id > after_id,
            or_(
                tried.state_change_id.is_(None),
                and_(
                    tried.delivered_at.is_(None),
                    or_(tried.next_attempt_at.is_(None), tried.next_attempt_at <= now),
                ),
            ),
        )
        .order_by(StateChange.id)
        .limit(limit)
    )
    return list(session.execute(stmt))


def post_event(
    client: httpx.Client, url: str, secret: str, event: Event
) -> tuple[int | None, str | None]:
    """POST one event; returns (HTTP status, error), error None when the receiver took it."""
    body = body_of(event)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body),
        "X-TEP-Event-Id": event.id,
        "X-TEP-Event-Type": event.type,
    }
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as error:
        return None, f"{error.__class__.__name__}: {error}"[:500]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


def record(
    session: Session, receiver_id: int, outcomes: Sequence[Outcome], now: dt.datetime
) -> None:
    """Write what happened to each event (the caller holds the receiver's lease)."""
    tried = {
        row.state_change_id: row
        for row in session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.receiver_id == receiver_id,
                WebhookDelivery.state_change_id.in_([o.state_change_id for o in outcomes]),
            )
        )
    }
    for outcome in outcomes:
        row = tried.get(outcome.state_change_id)
        if row is None:
            row = WebhookDelivery(
                receiver_id=receiver_id,
                state_change_id=outcome.state_change_id,
                attempts=0,
                created_at=now,
            )
            session.add(row)
        if outcome.attempted:
            row.attempts += 1
            row.last_status = outcome.status
            row.last_error = outcome.error
        if outcome.delivered:
            row.delivered_at = now
            row.next_attempt_at = None
        else:
            row.next_attempt_at = now + backoff(row.attempts)
        row.updated_at = now
    attempted = [o for o in outcomes if o.attempted]
    if attempted:
        values: dict[str, Any] = {"updated_at": now}
        if any(o.delivered for o in attempted):
            values["last_success_at"] = now
        failures = [o for o in attempted if not o.delivered]
        if failures:
            values.update(last_failure_at=now, last_error=failures[-1].error)
        session.execute(
            update(WebhookReceiver).where(WebhookReceiver.id == receiver_id).values(**values)
        )


def advance_low_water(session: Session, receiver_id: int, low: int, now: dt.datetime) -> int:
    """Move the receiver's low-water mark past the settled, delivered events and forget their
    delivery rows; returns the new mark."""
    delivered = exists().where(
        WebhookDelivery.receiver_id == receiver_id,
        WebhookDelivery.state_change_id == StateChange.id,
        WebhookDelivery.delivered_at.is_not(None),
    )
    first_open = session.scalar(
        select(func.min(StateChange.id)).where(
            StateChange.id > low,
            or_(StateChange.created_at > now - SETTLE, and_(is_event(), ~delivered)),
        )
    )
    if first_open is not None:
        new_low: int = first_open - 1
    else:
        last = session.scalar(select(func.max(StateChange.id)).where(StateChange.id > low))
        new_low = last if last is not None else low
    if new_low > low:
        session.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.receiver_id == receiver_id,
                WebhookDelivery.state_change_id <= new_low,
            )
        )
    return max(new_low, low)


def release(session: Session, receiver_id: int, owner: str, low: int, now: dt.datetime) -> None:
    new_low = advance_low_water(session, receiver_id, low, now)
    session.execute(
        update(WebhookReceiver)
        .where(WebhookReceiver.id == receiver_id, WebhookReceiver.lease_owner == owner)
        .values(
            low_water_state_change_id=new_low, leased_until=None, lease_owner=None, updated_at=now
        )
    )


def deliver_to(
    factory: sessionmaker[Session],
    client: httpx.Client,
    url: str,
    receiver_id: int,
    secret: str,
    now: dt.datetime,
    *,
    label: str,
    max_events: int,
    clock: Callable[[], float],
) -> ReceiverReport:
    report = ReceiverReport(receiver=label)
    owner = str(uuid.uuid4())
    with transaction(factory) as session:
        low = claim(session, receiver_id, owner, now)
    if low is None:
        report.busy = True
        return report
    started = clock()
    read = reader(factory)
    try:
        after = low
        while True:
            room = max_events - report.delivered - report.failed
            with read() as session:
                rows = due_events(session, receiver_id, after, now, min(RECORD_EVERY, room) or 1)
            if not rows:
                break
            if room <= 0 or clock() - started > RUN_MAX_SECONDS:
                report.more = True
                break
            outcomes: list[Outcome] = []
            failed = False
            for row in rows:
                after = row.id
                event = event_from_row(row)
                if event is None:  # an audit row of no known type: nothing to send
                    outcomes.append(Outcome(row.id, delivered=True, attempted=False))
                    continue
                status, error = post_event(client, url, secret, event)
                outcomes.append(Outcome(row.id, error is None, True, status, error))
                if error is not None:
                    report.failed += 1
                    report.last_error = error
                    log.warning("webhook %s to %s failed: %s", event.id, label, error)
                    failed = True
                    break
                report.delivered += 1
            with transaction(factory) as session:
                record(session, receiver_id, outcomes, now)
            if failed:
                break
    finally:
        with transaction(factory) as session:
            release(session, receiver_id, owner, low, now)
    return report


def deliver_webhooks(
    factory: sessionmaker[Session],
    urls: Sequence[str],
    secret: str,
    *,
    now: dt.datetime | None = None,
    client: httpx.Client | None = None,
    max_events: int = RUN_MAX_EVENTS,
    clock: Callable[[], float] = time.monotonic,
) -> list[ReceiverReport]:
    """Send every receiver the events it has not had yet (one run; idempotent, at-least-once).

    `now` (default: the current time) decides which failed events are past their backoff; tests
    pass it to step through retries without waiting.
    """
    if not urls:
        return []
    now = now or utcnow()
    with transaction(factory) as session:
        receivers = ensure_receivers(session, urls, now)
    labels = receiver_labels(list(urls))
    own_client = client is None
    http = client or httpx.Client(
        timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )
    try:
        return [
            deliver_to(
                factory,
                http,
                url,
                receivers[url],
                secret,
                now,
                label=labels[url],
                max_events=max_events,
                clock=clock,
            )
            for url in urls
        ]
    finally:
        if own_client:
            http.close()


def undelivered_counts(session: Session, urls: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per configured receiver: events not yet delivered, how many of them failed, the oldest
    one's time and the last error (for `tep status` and the metrics)."""
    result: dict[str, dict[str, Any]] = {}
    for url in urls:
        receiver = session.scalar(select(WebhookReceiver).where(WebhookReceiver.url == url))
        low = receiver.low_water_state_change_id if receiver else starting_point(session, utcnow())
        rid = receiver.id if receiver else -1
        tried = aliased(WebhookDelivery)
        base = (
            select(StateChange.id, StateChange.created_at, tried.attempts)
            .outerjoin(
                tried, and_(tried.receiver_id == rid, tried.state_change_id == StateChange.id)
            )
            .where(StateChange.id > low, is_event(), tried.delivered_at.is_(None))
        )
        sub = base.subquery()
        pending, failing, oldest = session.execute(
            select(
                func.count(),
                func.count(sub.c.attempts),
                func.min(sub.c.created_at),
            ).select_from(sub)
        ).one()
        result[url] = {
            "undelivered": int(pending),
            "failing": int(failing),
            "oldest_undelivered_at": oldest,
            "last_error": receiver.last_error if receiver else None,
            "last_success_at": receiver.last_success_at if receiver else None,
        }
    return result
