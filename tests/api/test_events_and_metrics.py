"""The API's part in events and metrics: a created pairing is an event in the audit outbox, and
`/metrics` serves the same figures the worker does, to Prometheus's scrape token alone, naming
receivers without their credentials."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from models import StateChange, transaction, utcnow
from tasks import metric_totals
from tasks.lifecycle import ENROLLMENT, PAIRING
from tasks.metric_totals import Key, state_change_key
from tasks.metrics import render_metrics
from tests.api import helpers as h
from tests.api.conftest import METRICS_TOKEN, World
from tests.api.server import ApiServer

pytestmark = pytest.mark.postgres

DAY = dt.timedelta(days=1)


def test_creating_a_pairing_records_the_created_event(world: World) -> None:
    with world.client() as client:
        created = client.post(
            "/accounts/self/temporary_enrollment_pairings",
            json={"ending_enrollment_state": "inactive"},
        )
    assert created.status_code == 201, created.text
    pairing_id = created.json()["temporary_enrollment_pairing"]["id"]

    with transaction(world.factory, commit=False) as session:
        rows = session.execute(
            select(StateChange.from_state, StateChange.to_state, StateChange.reason,
                   StateChange.actor_id)
            .where(StateChange.temporary_enrollment_pairing_id == pairing_id)
        ).all()  # fmt: skip
    assert [tuple(row) for row in rows] == [("new", "active", "created", world.admin_id)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(base_url: str, token: str | None = METRICS_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{base_url}/metrics", headers=headers, timeout=30)


def test_metrics_endpoint_serves_what_the_database_says(world: World) -> None:
    with world.client() as client:  # something to count: a pairing ended early
        pairing = h.pairing(client)
        client.delete(f"/accounts/self/temporary_enrollment_pairings/{pairing['id']}")

    response = scrape(world.base_url)  # Prometheus, with the scrape token

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    served = samples(response.text)
    expected_body, _ = render_metrics(world.factory)
    assert served == samples(expected_body.decode())
    assert served[("tep_metrics_database_up", ())] == 1
    assert "/metrics" not in httpx.get(f"{world.base_url}/openapi.json").json()["paths"]


def test_metrics_show_nothing_without_the_scrape_token(world: World) -> None:
    """Every account's figures: not for anonymous callers (before: served to anyone), and not for
    an account's own API token either (it would see the other accounts' counts)."""
    anonymous = scrape(world.base_url, token=None)
    assert h.error(anonymous, 401) == "the metrics need TEP_METRICS_TOKEN"
    assert "tep_" not in anonymous.text
    assert h.error(scrape(world.base_url, token=world.token), 401)
    assert h.error(scrape(world.base_url, token=METRICS_TOKEN + "x"), 401)
    assert scrape(world.base_url).status_code == 200


def test_without_a_scrape_token_the_api_serves_no_metrics(sqlite_server: ApiServer) -> None:
    assert h.error(scrape(sqlite_server.base_url, token=None), 404)
    assert h.error(scrape(sqlite_server.base_url, token=METRICS_TOKEN), 404)


def test_receivers_are_named_without_userinfo_or_query_string(world: World) -> None:
    receivers = [
        "https://hook-user:hunter2@hooks.example.test:8443/tep?token=s3cret#frag",
        "https://hooks.example.test:8443/tep?token=other",  # the same receiver, another token
        "http://[::1]:9000/in",
    ]
    body, _ = render_metrics(world.factory, receivers)
    text = body.decode()
    for secret in ("hook-user", "hunter2", "s3cret", "other", "token=", "frag"):
        assert secret not in text
    labels = {
        dict(labels)["receiver"]
        for (name, labels) in samples(text)
        if name == "tep_webhook_events_undelivered"
    }
    assert labels == {
        "https://hooks.example.test:8443/tep #1",
        "https://hooks.example.test:8443/tep #2",
        "http://[::1]:9000/in",
    }


def test_the_api_s_changes_are_counted_as_they_commit(world: World) -> None:
    """The API's writers (a conclude, a delete, a deactivation that ends a pairing, its
    reactivation, a pairing deleted) move the kept totals as their audit rows say: the delta of
    each total is the delta of the audit table's aggregate. The figures are every account's,
    and other tests share this database: hence deltas."""
    with world.client() as client:
        course = h.course(client)
        url = f"/courses/{course['id']}/enrollments"
        provider, recipient = h.user(client), h.user(client)
        pairing = h.pairing(client, "inactive")
        made = h.ok(h.temporary(client, course["id"], recipient["id"], provider["id"],
                                pairing["id"], utcnow() + 3 * DAY))  # fmt: skip
        concluded = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        deleted = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        other = h.pairing(client)
        before = totals(world)

        h.ok(client.delete(f"{url}/{concluded['id']}"))
        h.ok(client.delete(f"{url}/{deleted['id']}", params={"task": "delete"}))
        h.ok(client.delete(f"{url}/{made['id']}", params={"task": "deactivate"}))
        h.ok(client.put(f"{url}/{made['id']}/reactivate"))
        h.ok(client.delete(f"/accounts/self/temporary_enrollment_pairings/{other['id']}"))

    after = totals(world)
    kept = {
        key: after[0].get(key, 0) - before[0].get(key, 0)
        for key in after[0].keys() | before[0].keys()
    }
    audited = {
        key: after[1].get(key, 0) - before[1].get(key, 0)
        for key in after[1].keys() | before[1].keys()
    }
    assert {k: n for k, n in kept.items() if n} == {k: n for k, n in audited.items() if n}
    assert kept[state_change_key(ENROLLMENT, "completed")] == 1
    assert kept[state_change_key(ENROLLMENT, "deleted")] == 1
    assert kept[state_change_key(ENROLLMENT, "inactive")] == 1
    assert kept[state_change_key(PAIRING, "ended")] == 1
    assert kept[state_change_key(PAIRING, "deleted")] == 1


def totals(world: World) -> tuple[dict[Key, int], dict[Key, int]]:
    """The kept totals of audit rows, and the same counted from the audit table."""
    with transaction(world.factory, commit=False) as session:
        kept = {
            key: n for key, n in metric_totals.read(session).items() if key[0].startswith("state_")
        }
        audited = {
            state_change_key(context_type, to_state): n
            for context_type, to_state, n in session.execute(
                select(StateChange.context_type, StateChange.to_state, func.count()).group_by(
                    StateChange.context_type, StateChange.to_state
                )
            )
        }
    return kept, audited
