"""What the pairings and enrollments endpoints do: defaults, validation, the delete semantics
(through the lifecycle code), the read-time check, and agreement with the sweep."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text, update

from models import Enrollment, StateChange, transaction, utcnow
from models import TemporaryEnrollmentPairing as Pairing
from tasks import lifecycle
from tests.api import helpers as h
from tests.api.conftest import World
from tests.processes import wait_until

pytestmark = pytest.mark.postgres

DAY = dt.timedelta(days=1)
PAIRINGS = "/accounts/self/temporary_enrollment_pairings"


def audit_count(world: World) -> int:
    with transaction(world.factory, commit=False) as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(StateChange)
                .where(StateChange.root_account_id == world.account_id)
            )
            or 0
        )


def setup_temporary(
    client: httpx.Client, ending_state: str = "completed", count: int = 1
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """A course, a pairing, and `count` temporary enrollments ending in a week."""
    course = h.course(client)
    provider, recipient = h.user(client, "Pro Vider"), h.user(client, "Re Cipient")
    pairing = h.pairing(client, ending_state)
    enrollments = [
        h.ok(
            h.temporary(
                client, course["id"], recipient["id"], provider["id"], pairing["id"],
                utcnow() + 7 * DAY, type=kind,
            )
        )
        for kind in ("TeacherEnrollment", "TaEnrollment", "DesignerEnrollment")[:count]
    ]  # fmt: skip
    return course, pairing, enrollments


# --------------------------------------------------------------------------------------------
# Pairings


def test_create_defaults_and_refuses_unknown_values_by_name(world: World) -> None:
    with world.client() as client:
        created = h.pairing_of(client.post(PAIRINGS), 201)
        assert (created["ending_enrollment_state"], created["workflow_state"]) == (
            "deleted",
            "active",
        )
        assert created["created_by_id"] == world.admin_id and created["created_at"].endswith("Z")
        message = h.error(client.post(PAIRINGS, data={"ending_enrollment_state": "gone"}), 400)
        assert "deleted, completed, inactive" in message
        assert "active" in h.error(client.post(PAIRINGS, data={"workflow_state": "ended"}), 400)
        shown = h.pairing_of(client.get(f"{PAIRINGS}/{created['id']}"))
        assert shown == created


def test_new_is_an_unsaved_pairing_of_the_account(world: World) -> None:
    with world.client() as client:
        new = h.pairing_of(client.get(f"{PAIRINGS}/new"))
        assert new["id"] is None and new["root_account_id"] == world.account_id
        assert h.pairings_of(client.get(PAIRINGS)) == []  # nothing was saved


def test_delete_ends_early_then_a_second_delete_returns_it_unchanged(world: World) -> None:
    with world.client() as client:
        course, pairing, enrollments = setup_temporary(client, "inactive", count=2)
        deleted = h.pairing_of(client.delete(f"{PAIRINGS}/{pairing['id']}"))
        assert (deleted["workflow_state"], deleted["deleted_by_id"]) == ("deleted", world.admin_id)
        assert deleted["ended_at"] is not None
        states = h.ok(
            client.get(f"/courses/{course['id']}/enrollments", params={"state[]": "inactive"})
        )
        assert sorted(e["id"] for e in states) == sorted(e["id"] for e in enrollments)
        audited = audit_count(world)
        assert audited == 4  # its creation, then two enrollments and the pairing

        again = client.delete(f"{PAIRINGS}/{pairing['id']}")
        assert h.pairing_of(again) == deleted
        assert audit_count(world) == audited
        # Deleted pairings leave the default list, and are listed when asked for.
        assert h.pairings_of(client.get(PAIRINGS)) == []
        asked = h.pairings_of(client.get(PAIRINGS, params={"workflow_state[]": "deleted"}))
        assert [p["id"] for p in asked] == [pairing["id"]]
        assert "not accepted" in h.error(client.get(PAIRINGS, params={"workflow_state": "x"}), 400)


def test_every_pairing_answer_is_under_its_root_key(world: World) -> None:
    """Canvas's `as_json` shape for show, new, create and delete; the list is an array of those."""
    with world.client() as client:
        created = client.post(PAIRINGS)
        assert created.status_code == 201
        [key] = created.json()
        assert key == "temporary_enrollment_pairing"
        pairing_id = created.json()[key]["id"]
        for response in (
            client.get(f"{PAIRINGS}/{pairing_id}"),
            client.get(f"{PAIRINGS}/new"),
            client.delete(f"{PAIRINGS}/{pairing_id}"),
        ):
            assert set(h.ok(response)) == {key}, response.text
            assert set(response.json()[key]) == set(created.json()[key])
        listed = h.ok(client.get(PAIRINGS, params={"include_deleted": "true"}))
        assert listed == [{key: h.pairing_of(client.get(f"{PAIRINGS}/{pairing_id}"))}]


def test_the_list_is_oldest_first_and_shows_deleted_ones_only_when_asked(world: World) -> None:
    with world.client() as client:
        first, second, third = (h.pairing(client) for _ in range(3))
        h.pairing_of(client.delete(f"{PAIRINGS}/{second['id']}"))
    # Two pairings created in the same instant are listed by id.
    with transaction(world.factory) as session:
        session.execute(
            update(Pairing)
            .where(Pairing.id.in_([first["id"], third["id"]]))
            .values(created_at=utcnow() - DAY)
        )

    def listed(**params: str) -> list[int]:
        with world.client() as client:
            return [p["id"] for p in h.pairings_of(client.get(PAIRINGS, params=params))]

    assert listed() == [first["id"], third["id"]]
    # first and third are a day older than second, and created in the same instant.
    assert listed(include_deleted="true") == [first["id"], third["id"], second["id"]]
    assert listed(include_deleted="false") == [first["id"], third["id"]]
    assert listed(**{"workflow_state[]": "deleted"}) == [second["id"]]
    assert listed(**{"workflow_state[]": "active", "include_deleted": "true"}) == [
        first["id"],
        third["id"],
        second["id"],
    ]
    with world.client() as client:
        bad = client.get(PAIRINGS, params={"include_deleted": "maybe"})
        assert "include_deleted must be true or false" in h.error(bad, 400)
        # Pages of wrapped pairings, with the Link header.
        page = client.get(PAIRINGS, params={"include_deleted": "true", "per_page": 2, "page": 2})
        assert [p["id"] for p in h.pairings_of(page)] == [second["id"]]
        assert (
            'rel="prev"' in page.headers["Link"] and "include_deleted=true" in page.headers["Link"]
        )


def test_deleting_an_ended_pairing_marks_it_deleted_and_keeps_its_end(world: World) -> None:
    with world.client() as client:
        _course, pairing, _enrollments = setup_temporary(client)
        lifecycle_as_of = utcnow() + 8 * DAY
        lifecycle.run_sweep(world.factory, as_of=lifecycle_as_of, account_id=world.account_id)
        ended = h.pairing_of(client.get(f"{PAIRINGS}/{pairing['id']}"))
        assert ended["workflow_state"] == "ended"
        deleted = h.pairing_of(client.delete(f"{PAIRINGS}/{pairing['id']}"))
        assert deleted["workflow_state"] == "deleted" and deleted["ended_at"] == ended["ended_at"]


def test_delete_of_a_pairing_with_an_unknown_ending_state_is_refused(world: World) -> None:
    with world.client() as client:
        _course, pairing, _ = setup_temporary(client)
    with transaction(world.factory) as session:
        session.execute(
            update(Pairing).where(Pairing.id == pairing["id"]).values(ending_enrollment_state="x")
        )
    with world.client() as client:
        assert "'x'" in h.error(client.delete(f"{PAIRINGS}/{pairing['id']}"), 422)
        assert h.pairing_of(client.get(f"{PAIRINGS}/{pairing['id']}"))["workflow_state"] == "active"


# --------------------------------------------------------------------------------------------
# Enrollments: validation


def test_enrollment_validation_messages(world: World) -> None:
    soon = utcnow() + DAY
    with world.client() as client:
        course, other_course = h.course(client), h.course(client)
        provider, recipient = h.user(client), h.user(client)
        pairing, ended = h.pairing(client), h.pairing(client)
        h.pairing_of(client.delete(f"{PAIRINGS}/{ended['id']}"))
        cid, pid, rid, sid = course["id"], pairing["id"], recipient["id"], provider["id"]
        other_section = h.ok(client.post(f"/courses/{other_course['id']}/sections"))

        def temp(**extra: Any) -> httpx.Response:
            fields = {
                "temporary_enrollment_source_user_id": sid,
                "temporary_enrollment_pairing_id": pid,
            }
            return h.enroll(client, cid, rid, **{**fields, **extra})

        cases: list[tuple[httpx.Response, int, str]] = [
            (temp(), 400, "enrollment[end_at] is required"),
            (temp(end_at=utcnow() - DAY), 422, "is not after"),
            (temp(end_at=soon, start_at=soon + DAY), 422, "is not after"),
            (temp(end_at="tomorrow"), 400, "not an ISO 8601"),
            (h.enroll(client, cid, rid, end_at=soon, temporary_enrollment_pairing_id=pid), 400,
             "temporary_enrollment_source_user_id] is required"),
            (h.enroll(client, cid, rid, end_at=soon, temporary_enrollment_source_user_id=sid), 400,
             "temporary_enrollment_pairing_id] is required"),
            (h.enroll(client, cid, 987654321), 404, "no user with id 987654321"),
            (temp(end_at=soon, temporary_enrollment_source_user_id=987654321), 404,
             "no user with id 987654321"),
            (temp(end_at=soon, temporary_enrollment_source_user_id=rid), 422, "own temporary"),
            (temp(end_at=soon, temporary_enrollment_pairing_id=987654321), 404,
             "no temporary enrollment pairing"),
            (temp(end_at=soon, temporary_enrollment_pairing_id=ended["id"]), 422,
             "is deleted; only an active pairing"),
            (h.enroll(client, cid, rid, type="GuestEnrollment"), 400, "StudentEnrollment"),
            (h.enroll(client, cid, rid, state="completed"), 400, "active, invited, inactive"),
            (h.enroll(client, 987654321, rid), 404, "no course"),
            (h.enroll(client, cid, rid, course_section_id=other_section["id"]), 404, "no section"),
            (client.post("/sections/987654321/enrollments",
                         data={"enrollment[user_id]": rid, "enrollment[type]": "TaEnrollment"}),
             404, "no section"),
            (client.post(f"/courses/{cid}/enrollments", data={"enrollment[type]": "TaEnrollment"}),
             400, "enrollment[user_id] is required"),
            (client.post(f"/courses/{cid}/enrollments", data={"enrollment[user_id]": "x"}),
             400, "must be an integer"),
        ]  # fmt: skip
        for response, status, message in cases:
            assert message in h.error(response, status), (response.request.content, message)
        # Nothing was half-written.
        everything = {"state[]": ["active", "invited", "inactive", "completed", "deleted"]}
        assert h.ok(client.get(f"/courses/{cid}/enrollments", params=everything)) == []


def test_section_enrollments_land_in_the_section(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        section = h.ok(
            client.post(f"/courses/{course['id']}/sections", data={"course_section[name]": "B"})
        )
        assert (section["name"], section["course_id"]) == ("B", course["id"])
        created = h.ok(
            client.post(
                f"/sections/{section['id']}/enrollments",
                data={
                    "enrollment[user_id]": h.user(client)["id"],
                    "enrollment[type]": "StudentEnrollment",
                },
            )
        )
        assert (created["course_id"], created["course_section_id"]) == (course["id"], section["id"])


# --------------------------------------------------------------------------------------------
# Enrollments: listing and the read-time check


def test_list_filters(world: World) -> None:
    with world.client() as client:
        course, _pairing, [temporary] = setup_temporary(client)
        student = h.ok(
            h.enroll(client, course["id"], h.user(client)["id"], type="StudentEnrollment")
        )
        invited = h.ok(h.enroll(client, course["id"], h.user(client)["id"], state="invited"))
        inactive = h.ok(h.enroll(client, course["id"], h.user(client)["id"], state="inactive"))
        url = f"/courses/{course['id']}/enrollments"

        def ids(**params: Any) -> list[int]:
            return [e["id"] for e in h.ok(client.get(url, params=params))]

        assert ids() == [temporary["id"], student["id"], invited["id"]]
        assert ids(**{"state[]": "inactive"}) == [inactive["id"]]
        assert ids(**{"type[]": ["StudentEnrollment", "TaEnrollment"]}) == [student["id"]]
        assert ids(user_id=student["user_id"]) == [student["id"]]
        assert ids(temporary_enrollments_for_recipient="true") == [temporary["id"]]
        provider = temporary["temporary_enrollment_source_user_id"]
        assert ids(user_id=provider, temporary_enrollment_recipients_for_provider="true") == [
            temporary["id"]
        ]
        assert "needs user_id" in h.error(
            client.get(url, params={"temporary_enrollment_recipients_for_provider": "true"}), 400
        )
        assert "not accepted" in h.error(client.get(url, params={"state[]": "gone"}), 400)
        assert "true or false" in h.error(
            client.get(url, params={"temporary_enrollments_for_recipient": "maybe"}), 400
        )


def test_a_past_end_at_shows_the_ending_state_before_the_worker_runs(world: World) -> None:
    with world.client() as client:
        course, pairing, [temporary] = setup_temporary(client, "completed", count=1)
        # Time passes: the enrollment's end is now behind us, and no sweep has run.
        with transaction(world.factory) as session:
            session.execute(
                update(Enrollment)
                .where(Enrollment.id == temporary["id"])
                .values(end_at=utcnow() - dt.timedelta(seconds=1))
            )
        url = f"/courses/{course['id']}/enrollments"
        assert h.ok(client.get(url)) == []  # not active any more
        [shown] = h.ok(client.get(url, params={"state[]": "completed"}))
        assert shown["enrollment_state"] == "completed"
        with transaction(world.factory, commit=False) as session:
            assert session.get(Enrollment, temporary["id"]).workflow_state == "active"  # type: ignore[union-attr]

        summary = lifecycle.run_sweep(world.factory, account_id=world.account_id)
        assert summary.enrollments_changed["completed"] == 1 and summary.pairings_ended == 1
        [after] = h.ok(client.get(url, params={"state[]": "completed"}))
        assert after["enrollment_state"] == "completed" and after["id"] == temporary["id"]
        assert h.pairing_of(client.get(f"{PAIRINGS}/{pairing['id']}"))["workflow_state"] == "ended"


# --------------------------------------------------------------------------------------------
# Enrollments: conclude, delete, deactivate


def test_delete_tasks(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        url = f"/courses/{course['id']}/enrollments"
        made = [h.ok(h.enroll(client, course["id"], h.user(client)["id"])) for _ in range(4)]
        results = [
            h.ok(client.delete(f"{url}/{made[0]['id']}")),  # default: conclude
            h.ok(client.delete(f"{url}/{made[1]['id']}", params={"task": "delete"})),
            h.ok(client.delete(f"{url}/{made[2]['id']}", params={"task": "inactivate"})),
        ]
        assert [r["enrollment_state"] for r in results] == ["completed", "deleted", "inactive"]
        assert results[0]["completed_at"] is not None
        assert "conclude, delete" in h.error(
            client.delete(f"{url}/{made[3]['id']}", params={"task": "destroy"}), 400
        )
        assert h.error(client.delete(f"{url}/987654321"), 404)
        assert h.error(client.delete(f"{url}/{made[1]['id']}"), 404)  # deleted: gone
        before = audit_count(world)
        again = h.ok(client.delete(f"{url}/{made[2]['id']}", params={"task": "deactivate"}))
        assert again["enrollment_state"] == "inactive" and audit_count(world) == before
        other = h.course(client)
        assert h.error(client.delete(f"/courses/{other['id']}/enrollments/{made[3]['id']}"), 404)


def test_deleting_a_due_enrollment_ends_its_pairing_with_the_rest_due(world: World) -> None:
    """Concluding one enrollment of a pairing whose other enrollment is already due leaves
    nothing live: the pairing ends, and the due one is expired with it (never left live in an
    ended pairing the sweep would no longer visit)."""
    with world.client() as client:
        course, pairing, [first, second] = setup_temporary(client, "deleted", count=2)
        with transaction(world.factory) as session:
            session.execute(
                update(Enrollment)
                .where(Enrollment.id == second["id"])
                .values(end_at=utcnow() - DAY)
            )
        h.ok(client.delete(f"/courses/{course['id']}/enrollments/{first['id']}"))
        assert h.pairing_of(client.get(f"{PAIRINGS}/{pairing['id']}"))["workflow_state"] == "ended"
    with transaction(world.factory, commit=False) as session:
        stored = session.get(Enrollment, second["id"])
        assert stored is not None and stored.workflow_state == "deleted"
        reasons = session.scalars(
            select(StateChange.reason)
            .where(StateChange.temporary_enrollment_pairing_id == pairing["id"])
            .order_by(StateChange.id)
        ).all()
    assert reasons == ["created", "enrollment_concluded", "expired", "expired"]


def test_an_enrollment_change_waits_for_its_pairings_lock(
    world: World, pg_api_engine: Engine
) -> None:
    """A sweep holds the pairing's row lock while it expires the pairing's enrollments: an API
    conclude of one of them waits for it, then sees the state the sweep left (not a stale one)."""
    with world.client() as client:
        course, pairing, [temporary] = setup_temporary(client, "inactive", count=1)
    url = f"{world.base_url}/api/v1/courses/{course['id']}/enrollments/{temporary['id']}"
    waiting_on_a_lock = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with pg_api_engine.connect() as sweep, pg_api_engine.connect() as observer:
        sweep.execute(select(Pairing.id).where(Pairing.id == pairing["id"]).with_for_update())
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.delete,
                url,
                params={"task": "conclude"},
                headers={"Authorization": f"Bearer {world.token}"},
                timeout=60,
            )
            wait_until(
                lambda: observer.execute(waiting_on_a_lock).scalar_one() > 0,
                30,
                "the API request to wait for the pairing's lock",
            )
            assert not pending.done()
            sweep.execute(
                update(Enrollment)
                .where(Enrollment.id == temporary["id"])
                .values(workflow_state="inactive")
            )
            sweep.commit()
            response = pending.result()
    assert h.ok(response)["enrollment_state"] == "completed"
    with transaction(world.factory, commit=False) as session:
        from_state = session.scalar(
            select(StateChange.from_state).where(
                StateChange.context_type == "Enrollment", StateChange.context_id == temporary["id"]
            )
        )
    assert from_state == "inactive"
