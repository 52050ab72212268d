"""The outbox beside a hosted Canvas (tasks/canvas_rest/commands.py), over real HTTP: a sweep on
tep's mirror decides, deliver_commands makes each change in the test Canvas (a live `tep api`,
behind the fault proxy), and the Canvas's own audit table shows each change made exactly once.

The test Canvas's enrollments end an hour from now, and the mirror is swept as of two hours from
now: tep decides them due while the Canvas still shows them live, so each DELETE really changes
the Canvas's row (and its audit table says so).

`mirror_from_canvas` seeds the mirror from the Canvas's database (what sync.py does over the API).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import ColumnElement, Engine, Table, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from models import (
    Account,
    CanvasCommand,
    CommunicationChannel,
    Course,
    CourseSection,
    Enrollment,
    EnrollmentState,
    EnrollmentTerm,
    PairingEnd,
    Pseudonym,
    Role,
    StateChange,
    TemporaryEnrollmentPairing,
    User,
    make_engine,
    make_sessionmaker,
    transaction,
    utcnow,
)
from tasks import deadlines, lifecycle
from tasks.canvas_rest import commands
from tasks.canvas_rest.client import CanvasClient, CanvasPermissionError
from tests import services
from tests.canvas_rest.conftest import TEST_BACKOFF_BASE, TEST_BACKOFF_CAP, TestCanvas
from tests.conftest import empty_tables

pytestmark = pytest.mark.postgres

HOUR = dt.timedelta(hours=1)


# --------------------------------------------------------------------------------------------
# The mirror: seeded from the Canvas's own rows (until sync.py does it over the API)

# Canvas's tables the mirror holds, parents first: how each one's rows of a root account are
# found (`users`: the users with a login in it).
_MIRRORED: tuple[tuple[Any, str], ...] = (
    (Account, "id"),
    (EnrollmentTerm, "root_account_id"),
    (Role, "root_account_id"),
    (User, "users"),
    (Pseudonym, "account_id"),
    (CommunicationChannel, "users"),
    (Course, "root_account_id"),
    (CourseSection, "root_account_id"),
    (TemporaryEnrollmentPairing, "root_account_id"),
    (Enrollment, "root_account_id"),
    (EnrollmentState, "root_account_id"),
)


def mirror_from_canvas(canvas: TestCanvas, mirror_factory: sessionmaker[Session]) -> list[int]:
    """Copy the Canvas's rows of its root account into the mirror, with Canvas's ids, and index
    the deadlines, as a sync would leave the mirror. Returns the enrollment ids."""
    root = canvas.account_id
    copied: list[tuple[Table, list[dict[str, Any]]]] = []
    with canvas.factory() as source:
        users = list(source.scalars(select(Pseudonym.user_id).where(Pseudonym.account_id == root)))
        for model, key in _MIRRORED:
            table: Table = model.__table__
            where: ColumnElement[bool] = (
                (table.c.id if model is User else table.c.user_id).in_(users)
                if key == "users"
                else table.c[key] == root
            )
            rows = [dict(row) for row in source.execute(select(table).where(where)).mappings()]
            copied.append((table, rows))
    with transaction(mirror_factory) as session:
        for table, rows in copied:
            if rows:
                session.connection().execute(insert(table), rows)
        enrollment_ids = list(
            session.scalars(select(Enrollment.id).where(Enrollment.root_account_id == root))
        )
        deadlines.track(session, enrollment_ids)
    return enrollment_ids


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def postgres_mirror_url() -> Iterator[str]:
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database("tep_canvas_mirror") as url:
        upgrade(url)
        yield url


@pytest.fixture
def pg_mirror_factory(postgres_mirror_url: str) -> Iterator[sessionmaker[Session]]:
    """tep's mirror on PostgreSQL (the sweep's one-statement path, SKIP LOCKED claims)."""
    engine: Engine = make_engine(postgres_mirror_url)
    try:
        yield make_sessionmaker(engine, through_canvas=True)
    finally:
        empty_tables(engine)
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_mirror(
    request: pytest.FixtureRequest, mirror_factory: sessionmaker[Session]
) -> sessionmaker[Session]:
    """The mirror on each backend."""
    if request.param == "sqlite":
        return mirror_factory
    factory: sessionmaker[Session] = request.getfixturevalue("pg_mirror_factory")
    return factory


@dataclasses.dataclass
class Scene:
    """One pairing per ending state in the Canvas, each in two courses, ending an hour from now."""

    pairings: dict[str, int]  # ending state -> pairing id
    enrollments: dict[str, list[int]]  # ending state -> its enrollment ids
    courses: list[int]
    recipient: int

    @property
    def all_enrollments(self) -> list[int]:
        return [e for ids in self.enrollments.values() for e in ids]


def make_scene(
    canvas: TestCanvas, states: tuple[str, ...] = ("deleted", "completed", "inactive")
) -> Scene:
    end_at = utcnow().replace(microsecond=0) + HOUR
    provider = canvas.add_user("Pat Provider", "pat@example.edu")
    recipient = canvas.add_user("Sam Recipient", "sam@example.edu")
    courses = [canvas.add_course(name)[0] for name in ("Biology", "Chemistry")]
    for course_id in courses:
        canvas.enroll(provider, course_id)
    pairings: dict[str, int] = {}
    enrollments: dict[str, list[int]] = {}
    for state in states:
        # One recipient per pairing: Canvas allows one enrollment per user, role and section.
        who = recipient if state == states[0] else canvas.add_user(f"Recipient {state}")
        pairings[state], enrollments[state] = canvas.make_pairing(
            provider, who, courses, state, end_at
        )
    return Scene(pairings, enrollments, courses, recipient)


def sweep(mirror: sessionmaker[Session]) -> lifecycle.RunSummary:
    """The sweep on the mirror, as of two hours from now (after the Canvas's end_at)."""
    return lifecycle.run_sweep(mirror, as_of=utcnow() + 2 * HOUR)


def canvas_changes(canvas: TestCanvas, enrollment_id: int) -> list[tuple[str, str, str]]:
    """The Canvas's own audit rows of one enrollment: (from, to, reason)."""
    return [(c.from_state, c.to_state, c.reason) for c in canvas.state_changes(enrollment_id)]


def canvas_state(canvas: TestCanvas, enrollment_id: int) -> str:
    """The enrollment's state as the Canvas's API shows it (its course's list, every state)."""
    row = canvas.enrollment(enrollment_id)
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("user_id", row.user_id),
        *(("state[]", state) for state in commands.EVERY_STATE),
    ]
    with canvas.api() as api:
        answer = api.get(f"/courses/{row.course_id}/enrollments", params=params)
    assert answer.status_code == 200, answer.text
    [shown] = [e for e in answer.json() if e["id"] == enrollment_id]
    return str(shown["enrollment_state"])


def command_rows(mirror: sessionmaker[Session]) -> list[CanvasCommand]:
    with mirror() as session:
        return list(session.scalars(select(CanvasCommand).order_by(CanvasCommand.id)))


def ended_pairings(mirror: sessionmaker[Session]) -> set[int]:
    with mirror() as session:
        return set(session.scalars(select(PairingEnd.temporary_enrollment_pairing_id)))


def deletes_sent(canvas: TestCanvas) -> Counter[str]:
    """DELETE requests the proxy passed to the Canvas, by path (faults it answered itself and
    connections it dropped before the Canvas saw them left out)."""
    return Counter(
        r.path.split("?")[0]
        for r in canvas.proxy.requests
        if r.method == "DELETE" and r.fault not in ("throttle", "error500", "drop_before")
    )


def assert_each_changed_once(canvas: TestCanvas, scene: Scene) -> None:
    """Every enrollment of the scene is in its pairing's ending state in the Canvas, changed
    once (one audit row in the Canvas's own table)."""
    for state, ids in scene.enrollments.items():
        for enrollment_id in ids:
            assert canvas.enrollment(enrollment_id).workflow_state == state
            changes = canvas_changes(canvas, enrollment_id)
            assert len(changes) == 1, (enrollment_id, changes)
            assert changes[0][:2] == ("active", state)


def assert_delivered(mirror: sessionmaker[Session], scene: Scene) -> None:
    with mirror() as session:
        confirmed = session.scalars(
            select(StateChange.canvas_confirmed_at).where(
                StateChange.context_type == lifecycle.ENROLLMENT
            )
        ).all()
        assert len(confirmed) == len(scene.all_enrollments)
        assert all(moment is not None for moment in confirmed)
    assert ended_pairings(mirror) == set(scene.pairings.values())
    assert all(c.finished_at is not None and c.lease_owner is None for c in command_rows(mirror))


# --------------------------------------------------------------------------------------------
# The decision: one command per changed enrollment, no pairing end yet


def test_a_sweep_on_the_mirror_writes_one_command_per_due_enrollment_and_ends_no_pairing(
    canvas: TestCanvas, any_mirror: sessionmaker[Session]
) -> None:
    scene = make_scene(canvas)
    mirror_from_canvas(canvas, any_mirror)
    summary = sweep(any_mirror)

    assert summary.enrollments_changed == {"deleted": 2, "completed": 2, "inactive": 2}
    assert summary.pairings_ended == 0  # not until Canvas has answered
    assert ended_pairings(any_mirror) == set()
    with any_mirror() as session:
        audit = {
            c.context_id: c
            for c in session.scalars(
                select(StateChange).where(StateChange.context_type == lifecycle.ENROLLMENT)
            )
        }
    rows = command_rows(any_mirror)
    assert sorted(c.enrollment_id for c in rows) == sorted(scene.all_enrollments)
    kinds = {"deleted": "delete", "completed": "conclude", "inactive": "deactivate"}
    for command in rows:
        change = audit[command.enrollment_id]
        assert command.kind == kinds[command.to_state]
        assert command.state_change_id == change.id
        assert (command.from_state, command.to_state) == ("active", change.to_state)
        assert command.run_id == summary.run_id == change.run_id
        assert command.temporary_enrollment_pairing_id == scene.pairings[command.to_state]
        assert command.root_account_id == canvas.account_id
        assert command.course_id in scene.courses
        assert (command.attempts, command.finished_at, command.lease_owner) == (0, None, None)
        assert change.canvas_confirmed_at is None
    # Nothing has gone to the Canvas yet, and a second sweep decides nothing again.
    assert canvas.proxy.requests == []
    again = sweep(any_mirror)
    assert again.enrollments_changed_total == 0 and again.pairings_ended == 0
    assert len(command_rows(any_mirror)) == len(rows)


def test_a_dry_run_writes_no_command(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session]
) -> None:
    make_scene(canvas, ("deleted",))
    mirror_from_canvas(canvas, mirror_factory)
    summary = lifecycle.run_sweep(mirror_factory, as_of=utcnow() + 2 * HOUR, dry_run=True)
    assert summary.enrollments_changed_total == 2
    assert command_rows(mirror_factory) == []


def test_ending_a_pairing_early_waits_for_canvas(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = make_scene(canvas, ("completed",))
    mirror_from_canvas(canvas, mirror_factory)
    pairing_id = scene.pairings["completed"]
    with transaction(mirror_factory) as session:
        _pairing, changed = lifecycle.end_pairing(session, pairing_id, as_of=utcnow())
        assert changed == {"completed": 2}
        assert lifecycle.pairing_state(session, _pairing) == "active"  # Canvas has not answered
    assert [c.kind for c in command_rows(mirror_factory)] == ["conclude", "conclude"]

    summary = commands.deliver_commands(mirror_factory, client, worker_id="w1")
    assert summary.outcomes[commands.CONFIRMED] == 2 and summary.pairings_ended == 1
    assert ended_pairings(mirror_factory) == {pairing_id}
    with mirror_factory() as session:
        reasons = session.execute(
            select(StateChange.context_type, StateChange.to_state, StateChange.reason).order_by(
                StateChange.id
            )
        ).all()
    assert reasons == [
        ("Enrollment", "completed", "pairing_ended"),
        ("Enrollment", "completed", "pairing_ended"),
        ("TemporaryEnrollmentPairing", "ended", "pairing_ended"),
    ]
    for enrollment_id in scene.all_enrollments:
        assert canvas_changes(canvas, enrollment_id) == [
            ("active", "completed", "enrollment_concluded")
        ]


# --------------------------------------------------------------------------------------------
# Delivery


def test_delivery_ends_every_enrollment_in_canvas_once_then_the_pairings(
    canvas: TestCanvas, any_mirror: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = make_scene(canvas)
    mirror_from_canvas(canvas, any_mirror)
    run = sweep(any_mirror)

    summary = commands.deliver_commands(any_mirror, client, worker_id="w1")

    assert summary.claimed == 6 and summary.outcomes[commands.CONFIRMED] == 6
    assert summary.pairings_ended == 3 and summary.requests == 6 and summary.retry_later == 0
    assert_each_changed_once(canvas, scene)
    for state, ids in scene.enrollments.items():
        for enrollment_id in ids:
            # As Canvas's API shows it (a deleted one only with state[]=deleted).
            assert canvas_state(canvas, enrollment_id) == state
    assert_delivered(any_mirror, scene)
    assert {c.canvas_state for c in command_rows(any_mirror)} == {
        "deleted",
        "completed",
        "inactive",
    }
    with any_mirror() as session:
        ends = session.execute(
            select(StateChange.context_id, StateChange.run_id, StateChange.reason).where(
                StateChange.context_type == lifecycle.PAIRING
            )
        ).all()
    # Each pairing's end is audited under the sweep that decided it, so a restore undoes both.
    assert sorted(ends) == sorted((pid, run.run_id, "expired") for pid in scene.pairings.values())
    # Nothing is left to send.
    assert commands.deliver_commands(any_mirror, client, worker_id="w1").claimed == 0


@pytest.mark.parametrize(
    ("fault", "times", "delay"),
    [
        ("throttle", 3, 0.0),
        ("error500", 3, 0.0),
        ("slow", 2, 0.2),
        ("drop_before", 2, 0.0),
        ("drop_after", 3, 0.0),
    ],
)
def test_faults_still_end_each_enrollment_once(
    canvas: TestCanvas,
    mirror_factory: sessionmaker[Session],
    client: CanvasClient,
    fault: str,
    times: int,
    delay: float,
) -> None:
    scene = make_scene(canvas)
    mirror_from_canvas(canvas, mirror_factory)
    sweep(mirror_factory)
    canvas.proxy.add_fault(fault, times=times, match="^DELETE ", delay=delay)  # type: ignore[arg-type]

    summary = commands.deliver_commands(mirror_factory, client, worker_id="w1")

    assert canvas.proxy.pending_faults == 0
    assert summary.finished == 6 and summary.retry_later == 0 and summary.pairings_ended == 3
    assert_each_changed_once(canvas, scene)
    assert_delivered(mirror_factory, scene)
    outcomes = Counter(c.outcome for c in command_rows(mirror_factory))
    if fault == "drop_after":
        # The change was made and its answer lost: the client's retry finds a deleted one gone
        # (404) and the others in their state already, and counts them as the change they are.
        assert outcomes[commands.REFUSED] == outcomes[commands.ENDED_BY_CANVAS] == 0
        assert outcomes[commands.CONFIRMED] + outcomes[commands.GONE] == 6
    else:
        assert outcomes == {commands.CONFIRMED: 6}


def test_a_timeout_after_canvas_made_the_change_is_not_a_second_change(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session]
) -> None:
    """The client gives up on a slow answer and sends again while the first request is still on
    its way: Canvas gets both, changes the enrollment once."""
    scene = make_scene(canvas, ("completed",))
    mirror_from_canvas(canvas, mirror_factory)
    sweep(mirror_factory)
    canvas.proxy.add_fault("slow", times=1, match="^DELETE ", delay=1.0)
    with CanvasClient(
        canvas.url,
        canvas.token,
        timeout=0.4,
        backoff_base=TEST_BACKOFF_BASE,
        backoff_cap=TEST_BACKOFF_CAP,
    ) as impatient:
        summary = commands.deliver_commands(mirror_factory, impatient, worker_id="w1")
    assert summary.finished == 2 and summary.retry_later == 0
    # The slow request reaches the Canvas after the retry did: both are answered.
    deadline = utcnow() + dt.timedelta(seconds=10)
    while sum(deletes_sent(canvas).values()) < 3:
        assert utcnow() < deadline, canvas.proxy.requests
        threading.Event().wait(0.05)
    assert sorted(deletes_sent(canvas).values()) == [1, 2]
    assert_each_changed_once(canvas, scene)
    assert_delivered(mirror_factory, scene)


def test_canvas_out_of_reach_leaves_commands_for_later(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session]
) -> None:
    scene = make_scene(canvas, ("inactive",))
    mirror_from_canvas(canvas, mirror_factory)
    sweep(mirror_factory)
    canvas.proxy.add_fault("error500", times=100, match="^DELETE ")
    with CanvasClient(
        canvas.url, canvas.token, max_attempts=2, backoff_base=0.001, backoff_cap=0.002
    ) as client:
        started = utcnow()
        summary = commands.deliver_commands(mirror_factory, client, worker_id="w1")
        assert summary.retry_later == 2 and summary.finished == 0 and summary.requests == 4
        for command in command_rows(mirror_factory):
            assert command.attempts == 1 and command.finished_at is None
            assert command.lease_owner is None and command.lease_until is None
            assert command.next_attempt_at is not None
            assert command.next_attempt_at >= started + dt.timedelta(
                seconds=commands.RETRY_BASE_SECONDS / 2
            )
            assert command.last_error is not None and "500" in command.last_error
            assert "\n" not in command.last_error and canvas.token not in command.last_error
        # Not due again yet: a run now sends nothing.
        assert commands.deliver_commands(mirror_factory, client, worker_id="w1").claimed == 0
        assert ended_pairings(mirror_factory) == set()

        canvas.proxy.clear_faults()
        later = commands.deliver_commands(
            mirror_factory, client, worker_id="w1", as_of=utcnow() + HOUR
        )
    assert later.outcomes[commands.CONFIRMED] == 2 and later.pairings_ended == 1
    assert_each_changed_once(canvas, scene)
    assert [c.attempts for c in command_rows(mirror_factory)] == [2, 2]


def test_a_404_is_recorded_as_gone(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    """Deleted in Canvas after the last sync (by someone, or Canvas's own job): tep's DELETE
    finds nothing, records it gone, and the pairing still ends."""
    scene = make_scene(canvas, ("deleted", "completed"))
    mirror_from_canvas(canvas, mirror_factory)
    deleted_in_canvas = [scene.enrollments["deleted"][0], scene.enrollments["completed"][0]]
    with canvas.api() as api:
        for enrollment_id in deleted_in_canvas:
            course_id = canvas.enrollment(enrollment_id).course_id
            answer = api.delete(f"/courses/{course_id}/enrollments/{enrollment_id}?task=delete")
            assert answer.status_code == 200, answer.text
    sweep(mirror_factory)

    summary = commands.deliver_commands(mirror_factory, client, worker_id="w1")

    assert summary.outcomes[commands.GONE] == 2 and summary.outcomes[commands.CONFIRMED] == 2
    assert summary.pairings_ended == 2
    by_enrollment = {c.enrollment_id: c for c in command_rows(mirror_factory)}
    with mirror_factory() as session:
        for enrollment_id in deleted_in_canvas:
            assert by_enrollment[enrollment_id].outcome == commands.GONE
            assert by_enrollment[enrollment_id].canvas_state == "deleted"
            # The mirror shows what Canvas shows.
            assert session.get_one(Enrollment, enrollment_id).workflow_state == "deleted"
    for enrollment_id in deleted_in_canvas:  # only the Canvas-side delete: nothing of tep's
        assert canvas_changes(canvas, enrollment_id) == [
            ("active", "deleted", "enrollment_deleted")
        ]
    assert ended_pairings(mirror_factory) == set(scene.pairings.values())


def test_an_enrollment_canvas_already_concluded_is_already(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = make_scene(canvas, ("completed",))
    mirror_from_canvas(canvas, mirror_factory)
    concluded, other = scene.enrollments["completed"]
    with canvas.api() as api:
        course_id = canvas.enrollment(concluded).course_id
        answer = api.delete(f"/courses/{course_id}/enrollments/{concluded}?task=conclude")
        assert answer.status_code == 200, answer.text
    # tep tells `already` from its own change by whole seconds, as Canvas writes timestamps:
    # decide in a later second than Canvas's conclude.
    next_second = utcnow().replace(microsecond=0) + dt.timedelta(seconds=1)
    threading.Event().wait((next_second - utcnow()).total_seconds() + 0.01)
    sweep(mirror_factory)  # the mirror still shows it active: tep decides it

    summary = commands.deliver_commands(mirror_factory, client, worker_id="w1")

    assert summary.outcomes[commands.ALREADY] == 1 and summary.outcomes[commands.CONFIRMED] == 1
    by_enrollment = {c.enrollment_id: c for c in command_rows(mirror_factory)}
    assert by_enrollment[concluded].outcome == commands.ALREADY
    assert by_enrollment[other].outcome == commands.CONFIRMED
    # Canvas's own conclude is the only change to it.
    assert canvas_changes(canvas, concluded) == [("active", "completed", "enrollment_concluded")]
    assert canvas_changes(canvas, other) == [("active", "completed", "enrollment_concluded")]
    assert ended_pairings(mirror_factory) == {scene.pairings["completed"]}


def test_an_enrollment_canvas_shows_ended_otherwise_is_ended_by_canvas(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    """Its section deleted in Canvas after the last sync: Canvas shows the enrollment `deleted`
    (lib/api/v1/user.rb `enrollment_json`), not the `completed` tep asked for."""
    scene = make_scene(canvas, ("completed",))
    mirror_from_canvas(canvas, mirror_factory)
    gone_with_section, other = scene.enrollments["completed"]
    section_id = canvas.enrollment(gone_with_section).course_section_id
    with transaction(canvas.factory) as session:
        session.execute(
            update(CourseSection)
            .where(CourseSection.id == section_id)
            .values(workflow_state="deleted")
        )
    sweep(mirror_factory)

    summary = commands.deliver_commands(mirror_factory, client, worker_id="w1")

    assert summary.outcomes[commands.ENDED_BY_CANVAS] == 1
    assert summary.outcomes[commands.CONFIRMED] == 1 and summary.pairings_ended == 1
    by_enrollment = {c.enrollment_id: c for c in command_rows(mirror_factory)}
    assert by_enrollment[gone_with_section].outcome == commands.ENDED_BY_CANVAS
    assert by_enrollment[gone_with_section].canvas_state == "deleted"
    assert by_enrollment[other].canvas_state == "completed"
    with mirror_factory() as session:
        assert session.get_one(Enrollment, gone_with_section).workflow_state == "deleted"
        assert session.get_one(Enrollment, other).workflow_state == "completed"
        confirmed = session.scalars(
            select(StateChange.canvas_confirmed_at).where(
                StateChange.context_id == gone_with_section,
                StateChange.context_type == lifecycle.ENROLLMENT,
            )
        ).one()
    assert confirmed is not None
    assert ended_pairings(mirror_factory) == {scene.pairings["completed"]}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_workers_at_once_send_each_command_once(
    canvas: TestCanvas,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    mirror: sessionmaker[Session] = request.getfixturevalue(
        "mirror_factory" if backend == "sqlite" else "pg_mirror_factory"
    )
    end_at = utcnow().replace(microsecond=0) + HOUR
    provider = canvas.add_user("Pat Provider")
    courses = [canvas.add_course(f"Course {n}")[0] for n in range(4)]
    for course_id in courses:
        canvas.enroll(provider, course_id)
    made: list[int] = []
    for n, state in enumerate(("deleted", "completed", "inactive", "deleted")):
        made += canvas.make_pairing(provider, canvas.add_user(f"R{n}"), courses, state, end_at)[1]
    mirror_from_canvas(canvas, mirror)
    sweep(mirror)
    canvas.proxy.add_fault("slow", times=4, match="^DELETE ", delay=0.05)

    summaries: list[commands.DeliverySummary] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        try:
            with CanvasClient(
                canvas.url,
                canvas.token,
                backoff_base=TEST_BACKOFF_BASE,
                backoff_cap=TEST_BACKOFF_CAP,
            ) as own:
                start.wait()
                summaries.append(commands.deliver_commands(mirror, own, worker_id=name, limit=100))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    sent = deletes_sent(canvas)
    assert len(sent) == len(made) == 16 and set(sent.values()) == {1}, sent
    assert sum(s.claimed for s in summaries) == 16
    assert sum(s.finished for s in summaries) == 16
    assert sum(s.pairings_ended for s in summaries) == 4
    assert all(c.outcome == commands.CONFIRMED for c in command_rows(mirror))
    for enrollment_id in made:
        assert len(canvas_changes(canvas, enrollment_id)) == 1


def test_a_token_canvas_refuses_stops_the_run_and_releases_the_leases(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session]
) -> None:
    scene = make_scene(canvas, ("deleted", "inactive"))
    mirror_from_canvas(canvas, mirror_factory)
    sweep(mirror_factory)
    nobody = canvas.token_for(canvas.add_user("Not An Admin"))
    with (
        CanvasClient(canvas.url, nobody, backoff_base=0.001, backoff_cap=0.002) as refused,
        pytest.raises(CanvasPermissionError) as stopped,
    ):
        commands.deliver_commands(mirror_factory, refused, worker_id="w1")
    message = str(stopped.value)
    assert "\n" not in message and nobody not in message
    assert "DELETE /api/v1/courses/" in message
    for command in command_rows(mirror_factory):
        # Untouched: as the sweep wrote it, free for the next run.
        assert command.lease_owner is None and command.lease_until is None
        assert command.attempts == 0 and command.finished_at is None
        assert command.outcome is None and command.next_attempt_at is None
    for enrollment_id in scene.all_enrollments:
        assert canvas_changes(canvas, enrollment_id) == []
    # At most the requests in flight went out before the run stopped.
    assert sum(deletes_sent(canvas).values()) <= 2

    with CanvasClient(canvas.url, canvas.token) as good:
        summary = commands.deliver_commands(mirror_factory, good, worker_id="w2")
    assert summary.outcomes[commands.CONFIRMED] == 4
    assert_each_changed_once(canvas, scene)


def test_a_lapsed_lease_is_taken_over_and_a_held_one_is_not(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    make_scene(canvas, ("inactive",))
    mirror_from_canvas(canvas, mirror_factory)
    sweep(mirror_factory)
    now = utcnow()
    with transaction(mirror_factory) as session:
        first, second = session.scalars(select(CanvasCommand.id).order_by(CanvasCommand.id)).all()
        session.execute(
            update(CanvasCommand)
            .where(CanvasCommand.id == first)
            .values(lease_owner="dead-worker", lease_until=now - dt.timedelta(seconds=1))
        )
        session.execute(
            update(CanvasCommand)
            .where(CanvasCommand.id == second)
            .values(lease_owner="busy-worker", lease_until=now + HOUR)
        )
    summary = commands.deliver_commands(mirror_factory, client, worker_id="w1")
    assert summary.claimed == 1 and summary.outcomes[commands.CONFIRMED] == 1
    with mirror_factory() as session:
        held = session.get_one(CanvasCommand, second)
        assert (held.lease_owner, held.finished_at) == ("busy-worker", None)
        assert session.scalar(select(func.count()).select_from(PairingEnd)) == 0


def test_deleting_a_pairing_of_a_hosted_canvas_is_refused_and_changes_nothing(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session]
) -> None:
    """tep never deletes a pairing in Canvas; marking the mirror's row alone would be undone by
    the next sync. One line says where to do it, and nothing is written."""
    scene = make_scene(canvas, ("inactive",))
    mirror_from_canvas(canvas, mirror_factory)
    pairing_id = scene.pairings["inactive"]
    refused = pytest.raises(lifecycle.LifecycleError, match="delete it in Canvas")
    with refused, transaction(mirror_factory) as session:
        lifecycle.end_pairing(
            session, pairing_id, as_of=utcnow(), actor_id=canvas.admin_id, delete=True
        )
    with mirror_factory() as session:
        assert session.scalar(select(func.count()).select_from(CanvasCommand)) == 0
        assert session.scalar(select(func.count()).select_from(StateChange)) == 0
        assert session.get_one(TemporaryEnrollmentPairing, pairing_id).workflow_state == "active"
    for enrollment_id in scene.all_enrollments:
        assert canvas_changes(canvas, enrollment_id) == []
