"""The sync from a hosted Canvas into tep's mirror (tasks/canvas_rest/sync.py), over real HTTP:
the test Canvas is a live `tep api` on its own database behind the fault proxy
(tests/canvas_rest/conftest.py); the mirror is tep's own SQLite database.

Canvas's answers the test Canvas does not give (the `null` pairing list of one Canvas release, a
listing without deleted enrollments, an item that cannot be read) come from the proxy's
`respond` fault.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from models import (
    CanvasCommand,
    CanvasSync,
    CommunicationChannel,
    Course,
    CourseSection,
    Enrollment,
    EnrollmentDeadline,
    EnrollmentState,
    PairingEnd,
    Role,
    StateChange,
    TemporaryEnrollmentPairing,
    User,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from tasks import lifecycle
from tasks.canvas_rest import commands
from tasks.canvas_rest.client import CanvasClient, CanvasPermissionError
from tasks.canvas_rest.sync import (
    REASON_DELETED_BY_CANVAS,
    REASON_ENDED_BY_CANVAS,
    REASON_REOPENED_BY_CANVAS,
    EnrollmentItem,
    Malformed,
    SyncSummary,
    sync_canvas,
)
from tests import services
from tests.canvas_rest.conftest import TEST_BACKOFF_BASE, TEST_BACKOFF_CAP, TestCanvas

Factory = sessionmaker[Session]


# --------------------------------------------------------------------------------------------
# Helpers


def _client(url: str, token: str) -> CanvasClient:
    return CanvasClient(url, token, backoff_base=TEST_BACKOFF_BASE, backoff_cap=TEST_BACKOFF_CAP)


@pytest.fixture
def other_mirror(tmp_path: Path) -> Iterator[Factory]:
    """A second mirror database, to compare two syncs of the same Canvas."""
    url = f"sqlite:///{tmp_path / 'other-mirror.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine, through_canvas=True)
    engine.dispose()


@pytest.fixture
def pg_mirror() -> Iterator[Factory]:
    """tep's database on PostgreSQL (as deployed), where the sync takes the pairings' row locks
    and binds ids as arrays."""
    with services.scratch_postgres_database("tep_canvas_mirror") as url:
        upgrade(url)
        engine = make_engine(url)
        yield make_sessionmaker(engine, through_canvas=True)
        engine.dispose()


@dataclasses.dataclass
class Seeded:
    provider: int
    recipient: int
    courses: list[int]
    sections: list[int]
    pairing: int
    enrollments: list[int]


def seed(canvas: TestCanvas, ending_state: str = "completed", courses: int = 2) -> Seeded:
    """A provider teaching `courses` courses and a recipient taking them over for a day."""
    provider = canvas.add_user("Pat Provider", "pat@example.edu")
    recipient = canvas.add_user("Rui Recipient", "rui@example.edu")
    made = [canvas.add_course(f"Biology {100 + n}") for n in range(courses)]
    pairing, enrollments = canvas.make_pairing(
        provider, recipient, [course for course, _ in made], ending_state
    )
    return Seeded(
        provider, recipient, [c for c, _ in made], [s for _, s in made], pairing, enrollments
    )


def mirror_dump(factory: Factory) -> dict[str, Any]:
    """What the mirror holds of Canvas's rows, comparable between two mirrors."""
    with factory() as session:

        def rows(model: Any, *columns: str) -> list[tuple[Any, ...]]:
            return sorted(
                tuple(getattr(row, c) for c in columns) for row in session.scalars(select(model))
            )

        return {
            "pairings": rows(
                TemporaryEnrollmentPairing,
                "id",
                "workflow_state",
                "ending_enrollment_state",
                "created_by_id",
            ),
            "enrollments": rows(
                Enrollment,
                "id",
                "user_id",
                "course_id",
                "course_section_id",
                "role_id",
                "workflow_state",
                "end_at",
                "temporary_enrollment_pairing_id",
                "temporary_enrollment_source_user_id",
            ),
            "users": rows(User, "id", "name", "sortable_name"),
            "channels": rows(CommunicationChannel, "user_id", "path", "workflow_state"),
            "courses": rows(Course, "id", "name", "workflow_state"),
            "sections": rows(CourseSection, "id", "course_id", "name"),
            "roles": rows(Role, "id", "name", "base_role_type"),
            "states": rows(EnrollmentState, "enrollment_id", "state"),
            "deadlines": rows(EnrollmentDeadline, "enrollment_id", "end_at"),
            "ends": rows(PairingEnd, "temporary_enrollment_pairing_id"),
            "audit": rows(StateChange, "context_type", "context_id", "to_state", "reason"),
        }


def count(factory: Factory, model: Any) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def audit_rows(factory: Factory, reason: str) -> list[StateChange]:
    with factory() as session:
        return list(
            session.scalars(
                select(StateChange).where(StateChange.reason == reason).order_by(StateChange.id)
            )
        )


PAIRING_LIST = r"^GET /api/v1/accounts/\w+/temporary_enrollment_pairings(\?|$)"


def respond(canvas: TestCanvas, match: str, body: Any) -> None:
    """The proxy answers the next request `match` finds with `body` (200, JSON) itself."""
    canvas.proxy.add_fault("respond", match=match, status=200, body=json.dumps(body))


# --------------------------------------------------------------------------------------------
# A first sync, and a second one with nothing changed


def test_a_first_sync_mirrors_what_tep_needs_with_canvas_ids(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    world = seed(canvas)
    extra_section = canvas.add_section(world.courses[0], "Lab section")

    summary = sync_canvas(mirror_factory, client)

    [account] = summary.accounts
    assert (account.account_id, account.full, account.pairings_source) == (
        canvas.account_id, True, "list"
    )  # fmt: skip
    assert (summary.total("pairings").new, summary.total("enrollments").new) == (1, 2)
    assert summary.total("courses").new == 2 and summary.total("sections").new == 3
    assert summary.ended_by_canvas == 0 and summary.skipped == 0 and account.error is None
    assert summary.requests == account.requests >= 7 and summary.cost > 0
    with mirror_factory() as session:
        pairing = session.get_one(TemporaryEnrollmentPairing, world.pairing)
        assert (pairing.root_account_id, pairing.workflow_state) == (canvas.account_id, "active")
        assert (pairing.ending_enrollment_state, pairing.created_by_id) == (
            "completed", canvas.admin_id
        )  # fmt: skip
        for enrollment_id, course_id, section_id in zip(
            world.enrollments, world.courses, world.sections, strict=True
        ):
            mirrored = session.get_one(Enrollment, enrollment_id)
            in_canvas = canvas.enrollment(enrollment_id)
            assert (mirrored.user_id, mirrored.course_id, mirrored.course_section_id) == (
                world.recipient, course_id, section_id
            )  # fmt: skip
            assert mirrored.end_at == in_canvas.end_at and mirrored.end_at is not None
            assert mirrored.role_id == in_canvas.role_id  # Canvas's role id
            assert mirrored.temporary_enrollment_pairing_id == world.pairing
            assert mirrored.temporary_enrollment_source_user_id == world.provider
            assert mirrored.workflow_state == "active"
            # What Canvas's callbacks keep, and tep's deadline index, which the sweep reads.
            assert session.get_one(EnrollmentState, enrollment_id).state == "active"
            deadline = session.get_one(EnrollmentDeadline, enrollment_id)
            assert deadline.end_at == in_canvas.end_at
        role = session.get_one(Role, canvas.enrollment(world.enrollments[0]).role_id)
        assert (role.name, role.workflow_state) == ("TeacherEnrollment", "built_in")
        recipient = session.get_one(User, world.recipient)
        assert recipient.name == "Rui Recipient"
        channels = session.scalars(
            select(CommunicationChannel.path).where(
                CommunicationChannel.user_id == world.recipient,
                CommunicationChannel.workflow_state == "active",
            )
        ).all()
        assert channels == ["rui@example.edu"]
        assert session.get_one(User, world.provider).name == "Pat Provider"
        # The pairing's creator, read once (GET /users/:id), with the address notices copy.
        creator = session.scalars(
            select(CommunicationChannel.path).where(CommunicationChannel.user_id == canvas.admin_id)
        ).all()
        assert session.get_one(User, canvas.admin_id).name == "Admin" and creator == []
        names = {c.id: c.name for c in session.scalars(select(Course))}
        assert names == {world.courses[0]: "Biology 100", world.courses[1]: "Biology 101"}
        assert session.get_one(CourseSection, extra_section).name == "Lab section"
        record = session.get_one(CanvasSync, canvas.account_id)
        assert record.full_synced_at == summary.as_of
        assert json.loads(record.summary)["requests"] == account.requests
    json.dumps(summary.as_dict())  # JSON-able


def test_a_second_sync_with_nothing_changed_writes_nothing_and_costs_less(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    seed(canvas)
    first = sync_canvas(mirror_factory, client)
    before = mirror_dump(mirror_factory)
    with mirror_factory() as session:
        versions = {
            row[0]: row[1]
            for row in session.execute(
                select(EnrollmentState.enrollment_id, EnrollmentState.lock_version)
            )
        }

    second = sync_canvas(mirror_factory, client)

    assert second.changes == 0 and second.ended_by_canvas == 0, second.as_dict()
    assert not second.accounts[0].full  # the full read of a minute ago is recent
    assert mirror_dump(mirror_factory) == before
    with mirror_factory() as session:
        assert versions == {
            row[0]: row[1]
            for row in session.execute(
                select(EnrollmentState.enrollment_id, EnrollmentState.lock_version)
            )
        }
    # Courses, sections and the pairing's creator are not read again.
    assert second.requests < first.requests, (first.requests, second.requests)
    assert second.cost < first.cost


# --------------------------------------------------------------------------------------------
# Changes made in Canvas directly


def test_enrollments_created_in_canvas_after_a_sync_are_picked_up(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    world = seed(canvas, courses=1)
    sync_canvas(mirror_factory, client)
    # Through Canvas's API: another course for the same recipient in the same pairing, and a
    # new recipient with a pairing of their own.
    course, section = canvas.add_course("Chemistry 200")
    canvas.enroll(world.provider, course)
    end_at = utcnow().replace(microsecond=0) + dt.timedelta(days=3)
    same = canvas.enroll(
        world.recipient,
        course,
        section_id=section,
        temporary_enrollment_source_user_id=world.provider,
        temporary_enrollment_pairing_id=world.pairing,
        start_at=utcnow().replace(microsecond=0),
        end_at=end_at,
    )
    newcomer = canvas.add_user("Noa Newcomer", "noa@example.edu")
    pairing, [theirs] = canvas.make_pairing(world.provider, newcomer, [course], "inactive")

    summary = sync_canvas(mirror_factory, client)

    assert summary.total("enrollments").new == 2 and summary.total("pairings").new == 1
    with mirror_factory() as session:
        assert session.get_one(Enrollment, same).end_at == end_at
        assert session.get_one(Enrollment, theirs).temporary_enrollment_pairing_id == pairing
        assert session.get_one(Course, course).name == "Chemistry 200"
        assert session.get_one(User, newcomer).name == "Noa Newcomer"
        assert {same, theirs} <= set(session.scalars(select(EnrollmentDeadline.enrollment_id)))
        # A pairing made in Canvas since the last sync is news: its `pairing.created` row.
        created = session.scalars(
            select(StateChange.context_id).where(StateChange.reason == "created")
        ).all()
        assert created == [pairing]


def test_enrollments_ended_in_canvas_are_recorded_ended_by_canvas(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    world = seed(canvas, ending_state="deleted")
    first_id, second_id = world.enrollments
    sync_canvas(mirror_factory, client)

    with canvas.api() as api:
        concluded = api.delete(
            f"/courses/{world.courses[0]}/enrollments/{first_id}", params={"task": "conclude"}
        )
        assert concluded.status_code == 200, concluded.text
    summary = sync_canvas(mirror_factory, client)

    assert summary.ended_by_canvas == 1 and summary.pairings_ended == 0
    with mirror_factory() as session:
        mirrored = session.get_one(Enrollment, first_id)
        assert mirrored.workflow_state == "completed" and mirrored.completed_at is not None
        assert session.get_one(EnrollmentState, first_id).state == "completed"
        # No longer due work for the sweep; the pairing's other enrollment still is.
        indexed = set(session.scalars(select(EnrollmentDeadline.enrollment_id)))
        assert indexed == {second_id}
        assert session.get(PairingEnd, world.pairing) is None
    [row] = audit_rows(mirror_factory, REASON_ENDED_BY_CANVAS)
    assert (row.context_id, row.from_state, row.to_state) == (first_id, "active", "completed")
    assert row.run_id == summary.run_id and row.canvas_confirmed_at is not None
    assert row.actor_id is None

    # The last live one ended in Canvas too: the pairing has nothing live, and ends by the
    # lifecycle's rule in the same sync.
    with canvas.api() as api:
        deleted = api.delete(
            f"/courses/{world.courses[1]}/enrollments/{second_id}", params={"task": "delete"}
        )
        assert deleted.status_code == 200, deleted.text
    last = sync_canvas(mirror_factory, client)

    assert (last.ended_by_canvas, last.pairings_ended) == (1, 1)
    with mirror_factory() as session:
        assert session.get_one(Enrollment, second_id).workflow_state == "deleted"
        assert session.get(PairingEnd, world.pairing) is not None
        assert session.scalars(select(EnrollmentDeadline)).all() == []
        ended = session.scalars(
            select(StateChange).where(
                StateChange.context_type == "TemporaryEnrollmentPairing",
                StateChange.to_state == "ended",
            )
        ).one()
        assert ended.run_id == last.run_id
    # Nothing was sent to Canvas: the sync only reads.
    assert {method for method, *_ in canvas.proxy.requests} == {"GET"}


def test_an_enrollment_canvas_no_longer_lists_was_deleted(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    """Current Canvas hides deleted enrollments from a recipient's listing (the `active`
    scope of `Enrollment.temporary_enrollments_for_recipient`)."""
    world = seed(canvas, courses=1)
    sync_canvas(mirror_factory, client)
    respond(canvas, rf"^GET /api/v1/users/{world.recipient}/enrollments", [])
    summary = sync_canvas(mirror_factory, client)

    assert summary.total("enrollments").vanished == 1 and summary.ended_by_canvas == 1
    [row] = audit_rows(mirror_factory, REASON_ENDED_BY_CANVAS)
    assert (row.context_id, row.to_state) == (world.enrollments[0], "deleted")


def test_the_first_sync_imports_history_without_announcing_it(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    """Pairings whose enrollments ended before tep was there come in as Canvas shows them: no
    ends recorded, no audit rows (an audited end would mail an `ended` notice)."""
    world = seed(canvas, courses=1)
    # The same recipient's older pairing, over: another course, deactivated in Canvas.
    course, _section = canvas.add_course("History 100")
    old, [ended] = canvas.make_pairing(world.provider, world.recipient, [course], "inactive")
    with canvas.api() as api:
        path = f"/courses/{course}/enrollments/{ended}"
        assert api.delete(path, params={"task": "deactivate"}).status_code == 200

    summary = sync_canvas(mirror_factory, client)

    assert summary.total("enrollments").new == 2 and summary.total("pairings").new == 2
    assert summary.pairings_ended == 0
    assert count(mirror_factory, StateChange) == 0 and count(mirror_factory, PairingEnd) == 0
    with mirror_factory() as session:
        assert session.get_one(Enrollment, ended).workflow_state == "inactive"
        assert session.get_one(TemporaryEnrollmentPairing, old).workflow_state == "active"
    assert sync_canvas(mirror_factory, client).changes == 0


def test_a_sync_leaves_alone_what_tep_decided_and_canvas_has_not_answered(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    """The sweep expired an enrollment on the mirror and wrote its command; Canvas still shows
    it active until the command is sent: a sync must not put the mirror back."""
    world = seed(canvas, ending_state="deleted", courses=1)
    [enrollment_id] = world.enrollments
    sync_canvas(mirror_factory, client)
    swept = lifecycle.run_sweep(mirror_factory, as_of=utcnow() + dt.timedelta(days=2))
    assert swept.enrollments_changed_total == 1

    waiting = sync_canvas(mirror_factory, client)

    assert waiting.changes == 0 and waiting.ended_by_canvas == 0, waiting.as_dict()
    with mirror_factory() as session:
        assert session.get_one(Enrollment, enrollment_id).workflow_state == "deleted"
        [command] = session.scalars(select(CanvasCommand)).all()
        assert command.finished_at is None

    delivered = commands.deliver_commands(mirror_factory, client, worker_id="test")
    assert delivered.claimed == 1
    assert canvas.enrollment(enrollment_id).workflow_state == "deleted"
    after = sync_canvas(mirror_factory, client)

    assert after.changes == 0 and after.ended_by_canvas == 0, after.as_dict()
    assert audit_rows(mirror_factory, REASON_ENDED_BY_CANVAS) == []


def test_a_pairing_deleted_in_canvas_is_mirrored_deleted(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    world = seed(canvas, courses=1)
    sync_canvas(mirror_factory, client)
    with canvas.api() as api:
        deleted = api.delete(
            f"/accounts/{canvas.account_id}/temporary_enrollment_pairings/{world.pairing}"
        )
        assert deleted.status_code in (200, 204), deleted.text

    summary = sync_canvas(mirror_factory, client)

    assert summary.total("pairings").changed == 1
    with mirror_factory() as session:
        pairing = session.get_one(TemporaryEnrollmentPairing, world.pairing)
        assert (pairing.workflow_state, pairing.deleted_by_id) == ("deleted", canvas.admin_id)
        assert session.scalars(select(EnrollmentDeadline)).all() == []
    [row] = audit_rows(mirror_factory, REASON_DELETED_BY_CANVAS)
    assert (row.context_id, row.from_state, row.to_state) == (world.pairing, "active", "deleted")


def test_a_pairing_canvas_gives_a_live_enrollment_again_is_open_again(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    world = seed(canvas, ending_state="inactive", courses=1)
    [enrollment_id] = world.enrollments
    path = f"/courses/{world.courses[0]}/enrollments/{enrollment_id}"
    sync_canvas(mirror_factory, client)
    with canvas.api() as api:
        assert api.delete(path, params={"task": "deactivate"}).status_code == 200
    ended = sync_canvas(mirror_factory, client)
    assert (ended.ended_by_canvas, ended.pairings_ended) == (1, 1)

    with canvas.api() as api:
        assert api.put(f"{path}/reactivate").status_code == 200
    reopened = sync_canvas(mirror_factory, client)

    assert reopened.total("enrollments").changed == 1 and reopened.ended_by_canvas == 0
    with mirror_factory() as session:
        assert session.get_one(Enrollment, enrollment_id).workflow_state == "active"
        assert session.get(PairingEnd, world.pairing) is None
        assert session.get(EnrollmentDeadline, enrollment_id) is not None
    [row] = audit_rows(mirror_factory, REASON_REOPENED_BY_CANVAS)
    assert (row.context_id, row.from_state, row.to_state) == (world.pairing, "ended", "active")


# --------------------------------------------------------------------------------------------
# Pages, Canvas's `null` list, unreadable items, faults


def test_every_page_is_read(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    provider = canvas.add_user("Pat Provider")
    course, _section = canvas.add_course("Big course")
    recipients = [canvas.add_user(f"Recipient {n}", f"r{n}@example.edu") for n in range(5)]
    made = [canvas.make_pairing(provider, r, [course])[1][0] for r in recipients]

    summary = sync_canvas(mirror_factory, client, per_page=2)

    assert summary.total("enrollments").new == 5 and summary.total("pairings").new == 5
    assert summary.accounts[0].recipients_listed == 5
    with mirror_factory() as session:
        assert set(session.scalars(select(Enrollment.id))) == set(made)
        addresses = session.scalars(
            select(CommunicationChannel.path).where(CommunicationChannel.user_id.in_(recipients))
        ).all()
        assert sorted(addresses) == [f"r{n}@example.edu" for n in range(5)]
    paths = [path for _, path, *_ in canvas.proxy.requests]
    for listed in ("/temporary_enrollment_pairings?", "/users?"):
        pages = {re.search(r"[?&]page=(\d+)", p) for p in paths if listed in p}
        assert {m.group(1) for m in pages if m} >= {"2", "3"}, paths


def test_a_null_pairing_list_falls_back_to_the_recipients_enrollments(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    """app/controllers/temporary_enrollment_pairings_api_controller.rb#index renders
    `@temporary_enrollment_pairing.as_json` (unset: `null`) in the release this works around."""
    world = seed(canvas)
    other = canvas.add_user("Other Recipient")
    second, _ = canvas.make_pairing(world.provider, other, [world.courses[0]], "inactive")
    respond(canvas, PAIRING_LIST, None)

    summary = sync_canvas(mirror_factory, client)

    assert canvas.proxy.pending_faults == 0 and summary.accounts[0].pairings_source == "users"
    assert summary.total("pairings").new == 2 and summary.total("enrollments").new == 3
    with mirror_factory() as session:
        states = {
            row[0]: row[1]
            for row in session.execute(
                select(
                    TemporaryEnrollmentPairing.id,
                    TemporaryEnrollmentPairing.ending_enrollment_state,
                )
            )
        }
        assert states == {world.pairing: "completed", second: "inactive"}
    shown = [p for _, p, *_ in canvas.proxy.requests if "/temporary_enrollment_pairings/" in p]
    assert len(shown) == 2  # each pairing read once by id


def test_items_canvas_sends_that_cannot_be_read_are_skipped_and_counted(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    world = seed(canvas, courses=1)
    respond(
        canvas,
        PAIRING_LIST,
        [
            {"temporary_enrollment_pairing": {"id": world.pairing, "workflow_state": "active"}},
            {"temporary_enrollment_pairing": {"id": "not an id"}},
            42,
        ],
    )
    summary = sync_canvas(mirror_factory, client)

    assert summary.skipped == 2 and len(summary.accounts[0].warnings) == 2
    assert summary.total("pairings").new == 1 and summary.total("enrollments").new == 1
    with pytest.raises(Malformed, match="course_id"):
        EnrollmentItem.read({"id": 1, "user_id": 2, "type": "StudentEnrollment",
                             "enrollment_state": "active"})  # fmt: skip
    with pytest.raises(Malformed, match="enrollment_state"):
        EnrollmentItem.read({"id": 1, "type": "StudentEnrollment", "enrollment_state": "gone"})


def test_throttling_and_server_errors_during_a_sync_end_with_the_same_mirror(
    canvas: TestCanvas, mirror_factory: Factory, other_mirror: Factory, client: CanvasClient
) -> None:
    seed(canvas)
    calm = sync_canvas(other_mirror, client)
    canvas.proxy.clear_requests()
    canvas.proxy.add_fault("throttle", times=3)
    canvas.proxy.add_fault("error500", times=2, match=r"/users/\d+/enrollments")
    canvas.proxy.add_fault("drop_after", times=1, match=r"/courses/\d+")
    canvas.proxy.add_fault("drop_before", times=1, match=r"temporary_enrollment_pairings")

    faulted = sync_canvas(mirror_factory, client)

    assert canvas.proxy.pending_faults == 0
    assert faulted.retries >= 7 and faulted.throttled >= 3
    assert faulted.as_dict()["pairings"] == calm.as_dict()["pairings"]
    calm_dump, faulted_dump = mirror_dump(other_mirror), mirror_dump(mirror_factory)
    assert faulted_dump == calm_dump


def test_a_dry_run_reports_and_writes_nothing(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    world = seed(canvas, courses=1)
    preview = sync_canvas(mirror_factory, client, dry_run=True)

    assert preview.dry_run and preview.total("enrollments").new == 1
    assert count(mirror_factory, Enrollment) == 0 and count(mirror_factory, CanvasSync) == 0

    sync_canvas(mirror_factory, client)
    before = mirror_dump(mirror_factory)
    with canvas.api() as api:
        ended = api.delete(f"/courses/{world.courses[0]}/enrollments/{world.enrollments[0]}")
        assert ended.status_code == 200, ended.text
    preview = sync_canvas(mirror_factory, client, dry_run=True)

    assert (preview.ended_by_canvas, preview.pairings_ended) == (1, 1)
    assert mirror_dump(mirror_factory) == before


def test_a_refused_token_stops_the_sync(canvas: TestCanvas, mirror_factory: Factory) -> None:
    nobody = canvas.world.add_user("Not an admin")
    with (
        _client(canvas.url, canvas.token_for(nobody)) as client,
        pytest.raises(CanvasPermissionError) as refused,
    ):
        sync_canvas(mirror_factory, client)
    assert refused.value.status == 401 and "\n" not in str(refused.value)
    assert count(mirror_factory, CanvasSync) == 0


def test_the_summary_of_several_accounts_adds_up(
    canvas: TestCanvas, mirror_factory: Factory, client: CanvasClient
) -> None:
    seed(canvas, courses=1)
    summary = sync_canvas(mirror_factory, client, account_ids=[canvas.account_id], full=True)
    as_json: dict[str, Any] = summary.as_dict()
    assert isinstance(summary, SyncSummary) and as_json["accounts"][0]["full"] is True
    assert as_json["enrollments"]["new"] == 1 and as_json["requests"] == summary.requests


def test_a_mirror_on_postgresql(
    canvas: TestCanvas, pg_mirror: Factory, mirror_factory: Factory, client: CanvasClient
) -> None:
    world = seed(canvas)
    first = sync_canvas(pg_mirror, client)
    assert first.total("enrollments").new == 2
    with canvas.api() as api:
        path = f"/courses/{world.courses[0]}/enrollments/{world.enrollments[0]}"
        assert api.delete(path, params={"task": "conclude"}).status_code == 200
    second = sync_canvas(pg_mirror, client)
    assert second.ended_by_canvas == 1
    assert sync_canvas(pg_mirror, client).changes == 0
    # The same Canvas read once into SQLite holds the same rows (without the history: it never
    # saw the enrollment live).
    sync_canvas(mirror_factory, client)
    on_pg, on_sqlite = mirror_dump(pg_mirror), mirror_dump(mirror_factory)
    assert on_pg.pop("audit") == [
        ("Enrollment", world.enrollments[0], "completed", "ended_by_canvas")
    ]
    assert on_sqlite.pop("audit") == []
    assert on_pg == on_sqlite
