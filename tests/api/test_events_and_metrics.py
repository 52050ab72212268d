"""The API's part in events and metrics: a created pairing is an event in the audit outbox, and
`/metrics` serves the same figures the worker does."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from models import StateChange, transaction
from tasks.metrics import render_metrics
from tests.api import helpers as h
from tests.api.conftest import World

pytestmark = pytest.mark.postgres


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


def test_metrics_endpoint_serves_what_the_database_says(world: World) -> None:
    with world.client() as client:  # something to count: a pairing ended early
        pairing = h.pairing(client)
        client.delete(f"/accounts/self/temporary_enrollment_pairings/{pairing['id']}")

    response = httpx.get(f"{world.base_url}/metrics", timeout=30)  # no token: a scrape

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    served = samples(response.text)
    expected_body, _ = render_metrics(world.factory)
    assert served == samples(expected_body.decode())
    assert served[("tep_metrics_database_up", ())] == 1
    assert "/metrics" not in httpx.get(f"{world.base_url}/openapi.json").json()["paths"]
