"""Two real Celery workers beside the test Canvas (a live `tep api` behind the fault proxy), on
tep's mirror in a scratch PostgreSQL database: `tasks.sync_canvas`, then
`tasks.expire_due_pairings`, then several `tasks.send_canvas_commands` at once in both workers,
with throttle answers, 500s and lost answers at the proxy. Each due enrollment must be changed in
the Canvas exactly once (the Canvas's own audit table), every command finish, every pairing end.

Time is never frozen around the workers. The Canvas's enrollments end an hour from now and the
sweep is sent `as_of` two hours from now (an argument of the task, as `tep sweep --as-of` takes
one): tep decides them due while the Canvas still shows them live, so each DELETE really changes
the Canvas's row. (Past their `end_at`, the test Canvas would show them ended itself, its
read-time rule, and a DELETE of a deleted one would find nothing to change.)

Each worker consumes the shared queue and one of its own, so that both are sure to run
deliveries at once: three sends go to each worker's own queue, and the sweep's own send (a sweep
that changed something enqueues one) to the shared queue. The first two DELETEs are slow, so that
the deliveries overlap while one of them is still waiting for Canvas.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from migrations import upgrade
from models import (
    CanvasCommand,
    PairingEnd,
    StateChange,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from tasks import lifecycle
from tasks.canvas_rest import commands
from tests import services
from tests.canvas_rest.conftest import TestCanvas
from tests.processes import celery_worker, client_app, service_env, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.integration]

SYNC = "tasks.sync_canvas"
SWEEP = "tasks.expire_due_pairings"
SEND = "tasks.send_canvas_commands"
RESULT_TIMEOUT_SECONDS = 90
HOUR = dt.timedelta(hours=1)
ENDING_STATES = ("deleted", "completed", "inactive")
PAIRINGS = 6
COURSES = 5
SENDS_PER_WORKER = 3
# The DELETE faults. Fewer than the client's 8 attempts in all (and few throttles: after each,
# the client waits for the bucket the answer shows empty), so no command can run out of
# retries and wait in the outbox for a later tick (tests/canvas_rest/test_commands.py covers
# that); each is answered by the proxy itself or (drop_after) after the Canvas made the change.
DELETE_FAULTS = {"throttle": 2, "error500": 2, "drop_after": 3}
SLOW_DELETES, SLOW_SECONDS = 2, 2.0
# Words in a worker's log that would mean something went wrong.
BAD_WORDS = ("Traceback", " ERROR/")


@pytest.fixture
def mirror_url() -> Iterator[str]:
    """tep's own database (the mirror the workers sync and sweep): scratch PostgreSQL, migrated."""
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database("tep_canvas_workers") as url:
        upgrade(url)
        yield url


@pytest.fixture
def mirror_engine(mirror_url: str) -> Iterator[Engine]:
    engine = make_engine(mirror_url)
    yield engine
    engine.dispose()


def seed(canvas: TestCanvas) -> dict[int, tuple[str, list[int]]]:
    """A provider teaching COURSES courses; PAIRINGS recipients taking them over, each in a
    pairing of their own, ending states in turn, ending an hour from now: {pairing: (ending
    state, enrollment ids)}."""
    end_at = utcnow().replace(microsecond=0) + HOUR
    provider = canvas.add_user("Pat Provider", "pat@example.edu")
    courses = [canvas.add_course(f"Course {n}")[0] for n in range(COURSES)]
    for course_id in courses:
        canvas.enroll(provider, course_id)
    scene: dict[int, tuple[str, list[int]]] = {}
    for n in range(PAIRINGS):
        state = ENDING_STATES[n % len(ENDING_STATES)]
        recipient = canvas.add_user(f"Recipient {n}", f"r{n}@example.edu")
        pairing, made = canvas.make_pairing(provider, recipient, courses, state, end_at)
        scene[pairing] = (state, made)
    return scene


def test_two_workers_change_each_due_enrollment_in_canvas_once_through_faults(
    canvas: TestCanvas, redis_url: str, mirror_url: str, mirror_engine: Engine, tmp_path: Path
) -> None:
    scene = seed(canvas)
    expected = {e: state for state, made in scene.values() for e in made}
    paths = {f"/api/v1/courses/{canvas.enrollment(e).course_id}/enrollments/{e}" for e in expected}
    queue = services.unique_queue()
    own = {name: services.unique_queue() for name in ("first", "second")}
    env = service_env(
        mirror_url,
        redis_url,
        queue,
        TEP_CANVAS_URL=canvas.url,
        TEP_CANVAS_TOKEN=canvas.token,
    )
    app = client_app(redis_url, queue)

    with (
        celery_worker(env, tmp_path, "-Q", f"{queue},{own['first']}", name="first",
                      concurrency=2) as first,
        celery_worker(env, tmp_path, "-Q", f"{queue},{own['second']}", name="second",
                      concurrency=2) as second,
    ):  # fmt: skip
        # The sync, through a throttle answer and a 500 of its own. (One throttle: its answer
        # shows the bucket empty, and the client then waits 15 s for it to refill.)
        canvas.proxy.add_fault("throttle", times=1, match="^GET ")
        canvas.proxy.add_fault("error500", times=1, match="^GET ")
        synced = app.send_task(SYNC).get(timeout=RESULT_TIMEOUT_SECONDS)
        assert synced["enrollments"]["new"] == len(expected), synced
        assert synced["pairings"]["new"] == PAIRINGS and synced["throttled"] >= 1, synced
        assert canvas.proxy.pending_faults == 0

        canvas.proxy.add_fault("slow", times=SLOW_DELETES, match="^DELETE ", delay=SLOW_SECONDS)
        for kind, times in DELETE_FAULTS.items():
            canvas.proxy.add_fault(kind, times=times, match="^DELETE ")  # type: ignore[arg-type]
        as_of = lifecycle.iso(utcnow() + 2 * HOUR)
        swept = app.send_task(SWEEP, kwargs={"as_of": as_of}).get(timeout=RESULT_TIMEOUT_SECONDS)
        assert swept["enrollments_changed_total"] == len(expected), swept
        assert swept["pairings_ended"] == 0  # not before Canvas has answered

        sends = [
            app.send_task(SEND, queue=own[name])
            for name in ("first", "second")
            for _ in range(SENDS_PER_WORKER)
        ]
        summaries = [result.get(timeout=RESULT_TIMEOUT_SECONDS) for result in sends]

        def outbox_empty() -> bool:  # the sweep's own send may still be finishing
            with make_sessionmaker(mirror_engine, read_only=True)() as session:
                return not session.scalar(
                    select(func.count()).where(CanvasCommand.finished_at.is_(None))
                )

        wait_until(outbox_empty, RESULT_TIMEOUT_SECONDS, "the outbox to empty")

    # Both workers delivered at once: several processes claimed commands, none twice.
    assert all("claimed" in s for s in summaries), summaries
    claimers = {s["worker_id"] for s in summaries if s["claimed"]}
    assert len(claimers) >= 2, summaries
    assert sum(s["retry_later"] for s in summaries) == 0, summaries
    assert canvas.proxy.pending_faults == 0

    # The Canvas: each enrollment changed once, to its pairing's ending state.
    for enrollment_id, state in expected.items():
        changes = [(c.from_state, c.to_state) for c in canvas.state_changes(enrollment_id)]
        assert changes == [("active", state)], (enrollment_id, changes)
        assert canvas.enrollment(enrollment_id).workflow_state == state

    # The proxy: each DELETE was answered by the Canvas as sent once; every other DELETE is a
    # fault's (answered by the proxy, or its answer lost after the Canvas made the change).
    deletes = [r for r in canvas.proxy.requests if r.method == "DELETE"]
    faults_by_path: defaultdict[str, list[str | None]] = defaultdict(list)
    for request in deletes:
        faults_by_path[request.path.split("?")[0]].append(request.fault)
    assert set(faults_by_path) == paths
    for path, faults in faults_by_path.items():
        assert sum(1 for f in faults if f in (None, "slow")) == 1, (path, faults)
    assert Counter(r.fault for r in deletes if r.fault not in (None, "slow")) == DELETE_FAULTS
    assert len(deletes) == len(expected) + sum(DELETE_FAULTS.values())

    # The mirror: every command finished with Canvas showing the change, each audit row
    # confirmed, every pairing ended.
    with make_sessionmaker(mirror_engine, read_only=True)() as session:
        rows = list(session.scalars(select(CanvasCommand)))
        confirmed = {
            enrollment_id: moment
            for enrollment_id, moment in session.execute(
                select(StateChange.context_id, StateChange.canvas_confirmed_at).where(
                    StateChange.context_type == lifecycle.ENROLLMENT
                )
            )
        }
        ended = set(session.scalars(select(PairingEnd.temporary_enrollment_pairing_id)))
    assert sorted(c.enrollment_id for c in rows) == sorted(expected)
    for command in rows:
        assert command.finished_at is not None and command.lease_owner is None, command.id
        assert command.outcome in (commands.CONFIRMED, commands.ALREADY, commands.GONE)
        assert command.canvas_state == expected[command.enrollment_id]
    assert set(confirmed) == set(expected) and all(confirmed.values())
    assert ended == set(scene)

    for log in (first.log, second.log):
        assert not [word for word in BAD_WORDS if word in log], log
