"""A real worker and beat on Redis and PostgreSQL sending webhooks, mail and metrics to real
receivers on loopback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from models import make_sessionmaker, utcnow
from tasks import events, metrics
from tests import factories as f
from tests import services
from tests.processes import celery_beat, celery_worker, client_app, service_env, wait_until
from tests.receivers import free_port, smtp_server, webhook_receiver
from tests.test_notices import pairing_with_people

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

SECRET = "integration-secret"
DAY = dt.timedelta(days=1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_sweep_through_the_worker_is_announced_mailed_and_measured(
    postgres_database_url: str,
    redis_url: str,
    pg_engine: Engine,
    pg_session: Session,
    tmp_path: Path,
) -> None:
    now = utcnow()
    root = f.account(pg_session)
    due = pairing_with_people(pg_session, root, [now - DAY, now - DAY])
    soon = pairing_with_people(pg_session, root, [now + DAY / 2], n=1)
    events.record_pairing_created(pg_session, due)
    events.record_pairing_created(pg_session, soon)
    pg_session.commit()
    port = free_port()

    with webhook_receiver() as hooks, smtp_server() as (mailbox, smtp_url):
        env = service_env(
            postgres_database_url,
            redis_url,
            services.unique_queue(),
            TEP_WEBHOOK_URLS=hooks.url,
            TEP_WEBHOOK_SECRET=SECRET,
            # No delivery tick during the test: the sweep itself must start the delivery.
            TEP_WEBHOOK_INTERVAL_SECONDS="3600",
            TEP_SMTP_URL=smtp_url,
            TEP_MAIL_FROM="tep@school.example",
            TEP_NOTIFY_INTERVAL_SECONDS="1",
            TEP_METRICS_PORT=str(port),
        )
        app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])
        with celery_worker(env, tmp_path) as worker:
            summary = app.send_task("tasks.expire_due_pairings").get(timeout=60)
            assert summary["pairings_ended"] == 1
            wait_until(lambda: len(hooks.accepted()) == 5, 60, "5 webhook events", worker)

            with celery_beat(env, tmp_path):
                wait_until(lambda: len(mailbox.all()) == 2, 60, "2 notices", worker)

            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            body, _ = metrics.render_metrics(make_sessionmaker(pg_engine), [hooks.url])

    received = [d.event for d in hooks.accepted()]
    assert all(d.signature_ok(SECRET) for d in hooks.accepted())
    assert sorted(e["type"] for e in received) == [
        "enrollment.expired",
        "enrollment.expired",
        "pairing.created",
        "pairing.created",
        "pairing.ended",
    ]
    subjects = sorted(m.message["Subject"] for m in mailbox.all())
    assert subjects[0].startswith("Temporary access ends in 1 day")
    assert subjects[1].startswith("Temporary access has ended")

    assert scraped.status_code == 200
    worker_view = samples(scraped.text)
    api_view = samples(body.decode())
    assert worker_view == api_view  # the worker and the API serve the same numbers
    assert worker_view[("tep_enrollments_changed_total", (("ending_state", "completed"),))] == 2
    assert worker_view[("tep_pairings_ended_total", ())] == 1
    assert worker_view[("tep_webhook_events_undelivered", (("receiver", hooks.url),))] == 0
    assert worker_view[("tep_notices", (("kind", "ended"), ("state", "sent")))] == 1
