"""Lifecycle webhooks: the audit table as outbox, delivered to a real HTTP receiver on loopback."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import WebhookDelivery, WebhookReceiver, utcnow
from tasks import events, lifecycle, webhooks
from tests import factories as f
from tests.receivers import webhook_receiver

SECRET = "s3cret-for-tests"
DAY = dt.timedelta(days=1)


def seed_changes(session: Session, factory: sessionmaker[Session]) -> dict[str, int]:
    """Two pairings created (audited), one ended by a sweep, one deleted early."""
    now = utcnow()
    root = f.account(session)
    due, due_enrollments = f.temporary_pairing(session, root, [now - DAY, now - DAY])
    deleted, _ = f.temporary_pairing(session, root, [now + DAY], ending_state="inactive")
    events.record_pairing_created(session, due, actor_id=None)
    events.record_pairing_created(session, deleted, actor_id=None)
    session.commit()
    lifecycle.run_sweep(factory, as_of=now)
    with factory.begin() as writer:
        lifecycle.end_pairing(writer, deleted.id, as_of=now, delete=True)
    return {"due": due.id, "deleted": deleted.id, "enrollments": len(due_enrollments)}


def test_every_change_is_one_signed_event(factory: sessionmaker[Session], session: Session) -> None:
    ids = seed_changes(session, factory)

    with webhook_receiver() as receiver:
        reports = webhooks.deliver_webhooks(factory, [receiver.url], SECRET)
        again = webhooks.deliver_webhooks(factory, [receiver.url], SECRET)

    got = receiver.all()
    assert all(d.signature_ok(SECRET) for d in got)
    assert not any(d.signature_ok("another secret") for d in got)
    bodies = [d.event for d in got]
    assert [(b["type"], b["data"]["pairing_id"]) for b in bodies] == [
        ("pairing.created", ids["due"]),
        ("pairing.created", ids["deleted"]),
        ("enrollment.expired", ids["due"]),
        ("enrollment.expired", ids["due"]),
        ("pairing.ended", ids["due"]),
        ("enrollment.expired", ids["deleted"]),
        ("pairing.deleted", ids["deleted"]),
    ]
    assert len({b["id"] for b in bodies}) == len(bodies)
    assert all(set(b) == {"id", "type", "occurred_at", "data"} for b in bodies)
    assert all(b["occurred_at"].endswith("Z") for b in bodies)
    expired = bodies[2]["data"]
    assert {"root_account_id", "pairing_id", "enrollment_id", "user_id", "course_id"} <= set(
        expired
    )
    assert (expired["from_state"], expired["to_state"], expired["reason"]) == (
        "active",
        "deleted",
        "expired",
    )
    deleted_enrollment = bodies[5]["data"]
    assert (deleted_enrollment["to_state"], deleted_enrollment["reason"]) == (
        "inactive",
        "pairing_deleted",
    )
    assert got[0].headers["x-tep-event-id"] == bodies[0]["id"]
    assert reports[0].delivered == 7 and reports[0].failed == 0
    assert again[0].delivered == 0  # nothing is sent twice to a receiver that answered


def test_a_receiver_failing_three_times_still_gets_every_event(
    factory: sessionmaker[Session], session: Session
) -> None:
    seed_changes(session, factory)
    with factory() as reader:
        expected = [e.id for e in events.load_events(reader)]
    now = utcnow()

    with webhook_receiver(fail_first=3) as receiver:
        runs = []
        # Each run stops at its first failure; later runs step past the backoff without waiting.
        for step in range(6):
            runs.append(
                webhooks.deliver_webhooks(
                    factory, [receiver.url], SECRET, now=now + step * dt.timedelta(hours=1)
                )[0]
            )

    seen = collections.Counter(d.event["id"] for d in receiver.all())
    accepted = [d.event["id"] for d in receiver.accepted()]
    assert sorted(accepted) == sorted(expected)  # every event, each accepted once
    duplicates = {event_id for event_id, n in seen.items() if n > 1}
    assert sum(seen[i] - 1 for i in duplicates) == 3  # the three failed attempts, resent
    # A redelivery is the same event: same id, same body, so the receiver can drop it.
    for event_id in duplicates:
        bodies = {d.body for d in receiver.all() if d.event["id"] == event_id}
        assert len(bodies) == 1
    assert sum(r.failed for r in runs) == 3
    assert sum(r.delivered for r in runs) == len(expected)


def test_one_run_at_a_time_per_receiver(factory: sessionmaker[Session], session: Session) -> None:
    seed_changes(session, factory)
    now = utcnow()
    with webhook_receiver() as receiver:
        with factory.begin() as writer:
            receiver_id = webhooks.ensure_receivers(writer, [receiver.url], now)[receiver.url]
            assert webhooks.claim(writer, receiver_id, "another-run", now) is not None
        busy = webhooks.deliver_webhooks(factory, [receiver.url], SECRET, now=now)[0]
        assert busy.busy and receiver.all() == []
        # A lease left by a run that died expires; the next run takes over.
        later = now + webhooks.LEASE + dt.timedelta(seconds=1)
        report = webhooks.deliver_webhooks(factory, [receiver.url], SECRET, now=later)[0]
    assert report.delivered == 7 and len(receiver.all()) == 7


def test_settled_events_move_the_low_water_mark_and_are_forgotten(
    factory: sessionmaker[Session], session: Session
) -> None:
    seed_changes(session, factory)
    with webhook_receiver() as receiver:
        webhooks.deliver_webhooks(factory, [receiver.url], SECRET)
        session.commit()
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 7
        # Once every delivered event is older than SETTLE, its row is no longer needed.
        later = utcnow() + webhooks.SETTLE + dt.timedelta(minutes=1)
        webhooks.deliver_webhooks(factory, [receiver.url], SECRET, now=later)
        session.commit()
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
        with factory() as reader:
            last = events.load_events(reader)[-1].state_change_id
        low = session.scalar(select(WebhookReceiver.low_water_state_change_id))
        assert low == last
        # New changes after the mark are still delivered.
        root = f.account(session)
        pairing, _ = f.temporary_pairing(session, root, [utcnow() + DAY])
        events.record_pairing_created(session, pairing)
        session.commit()
        webhooks.deliver_webhooks(factory, [receiver.url], SECRET, now=later)
    assert [d.event["type"] for d in receiver.all()][-1] == "pairing.created"
    assert len(receiver.all()) == 8


def test_a_dead_receiver_does_not_touch_the_sweep(
    factory: sessionmaker[Session], session: Session
) -> None:
    with webhook_receiver() as receiver:
        dead_url = receiver.url  # closed when the block ends: connections are refused
    ids = seed_changes(session, factory)
    report = webhooks.deliver_webhooks(factory, [dead_url], SECRET)[0]
    assert report.failed == 1 and report.delivered == 0 and report.last_error
    with factory() as reader:
        counts = webhooks.undelivered_counts(reader, [dead_url])[dead_url]
        shown, _ = f.shown_pairing(reader, ids["due"])
    assert counts["undelivered"] == 7 and counts["failing"] == 1
    assert shown == "ended"


def test_event_types_from_audit_rows() -> None:
    t = events.event_type
    assert t("Enrollment", "active", "completed") == "enrollment.expired"
    assert t("Enrollment", "deleted", "active") is None  # part of a pairing.restored
    assert t("TemporaryEnrollmentPairing", "new", "active") == "pairing.created"
    assert t("TemporaryEnrollmentPairing", "active", "ended") == "pairing.ended"
    assert t("TemporaryEnrollmentPairing", "active", "deleted") == "pairing.deleted"
    assert t("TemporaryEnrollmentPairing", "ended", "active") == "pairing.restored"
    assert webhooks.backoff(1) == dt.timedelta(seconds=5)
    assert webhooks.backoff(3) == dt.timedelta(seconds=20)
    assert webhooks.backoff(50) == dt.timedelta(hours=1)


def test_a_run_stops_at_its_limit_and_says_there_is_more(
    factory: sessionmaker[Session], session: Session
) -> None:
    seed_changes(session, factory)
    with webhook_receiver() as receiver:
        first = webhooks.deliver_webhooks(factory, [receiver.url], SECRET, max_events=3)[0]
        rest = webhooks.deliver_webhooks(factory, [receiver.url], SECRET)[0]
    assert (first.delivered, first.more) == (3, True)
    assert (rest.delivered, rest.more) == (4, False)
    assert len({d.event["id"] for d in receiver.all()}) == len(receiver.all()) == 7


def test_a_hanging_receiver_does_not_hold_up_a_sweep(
    factory: sessionmaker[Session], session: Session
) -> None:
    seed_changes(session, factory)
    now = utcnow()
    root = f.account(session)
    later, _ = f.temporary_pairing(session, root, [now - DAY])
    session.commit()

    # A client that waits as long as the receiver holds on, so the test does not race a timeout.
    patient = httpx.Client(timeout=600)
    with webhook_receiver(hold=True) as receiver:
        delivery = threading.Thread(
            target=webhooks.deliver_webhooks,
            args=(factory, [receiver.url], SECRET),
            kwargs={"client": patient},
        )
        delivery.start()
        assert receiver.holding.wait(timeout=60)  # a POST is in flight, unanswered
        # The sweep commits while the delivery waits on the receiver: no lock is held across it.
        summary = lifecycle.run_sweep(factory, as_of=now)
        assert delivery.is_alive()
        receiver.release.set()
        delivery.join(timeout=60)
    patient.close()

    assert summary.pairings_ended == 1
    with factory() as reader:
        assert f.shown_pairing(reader, later.id)[0] == "ended"


def with_credentials(url: str) -> str:
    """The receiver's URL as a receiver that wants Basic auth and a token would be configured."""
    return url.replace("http://", "http://hook-user:pw-Zq7%2Fx@") + "?token=tok-Wv9&v=2"


def test_receivers_are_logged_and_reported_without_credentials(
    factory: sessionmaker[Session], session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs each request with its URL at INFO (the worker's level), the delivery logs
    each failure, and the task's result (logged and stored by Celery) lists every receiver:
    each names the receiver by its label."""
    seed_changes(session, factory)
    caplog.set_level(logging.INFO)
    with webhook_receiver() as dead:
        dead_url = with_credentials(dead.url)  # closed when the block ends: refused
    with webhook_receiver() as receiver:
        live_url = with_credentials(receiver.url)
        reports = webhooks.deliver_webhooks(factory, [live_url, dead_url], SECRET)
        got = receiver.all()

    assert len(got) == 7  # the credentials and token were sent: only their display is cut
    assert got[0].headers["authorization"].startswith("Basic ")
    results = [report.to_json() for report in reports]
    assert [r["receiver"] for r in results] == [receiver.url, dead.url]
    assert results[1]["failed"] == 1
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"HTTP Request: POST {receiver.url} " in logged
    assert f"to {dead.url} failed" in logged
    for secret in ("hook-user", "pw-Zq7", "tok-Wv9", "v=2"):
        assert secret not in logged
        assert secret not in repr(results)
