"""Restoring a pairing through a hosted Canvas (tasks/canvas_rest/restore.py), over real HTTP
against the test Canvas: reactivate, enroll again, completed refused, a new end_at required."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import CanvasCommand, Enrollment, PairingEnd, StateChange, utcnow
from tasks import lifecycle
from tasks import restore as mirror_restore
from tasks.canvas_rest import commands
from tasks.canvas_rest.client import CanvasClient
from tasks.canvas_rest.restore import RestoreRefused, restore_through_canvas
from tests.canvas_rest.conftest import TestCanvas
from tests.canvas_rest.test_commands import (
    HOUR,
    Scene,
    canvas_changes,
    canvas_state,
    command_rows,
    ended_pairings,
    make_scene,
    mirror_from_canvas,
    sweep,
)

pytestmark = pytest.mark.postgres


def ended_in_canvas(
    canvas: TestCanvas, mirror: sessionmaker[Session], client: CanvasClient, state: str
) -> Scene:
    """A pairing of `state` expired by tep's sweep on the mirror and confirmed by the Canvas."""
    scene = make_scene(canvas, (state,))
    mirror_from_canvas(canvas, mirror)
    sweep(mirror)
    delivered = commands.deliver_commands(mirror, client, worker_id="sweep")
    assert delivered.pairings_ended == 1, delivered
    return scene


def restore_commands(mirror: sessionmaker[Session], run_id: str) -> list[CanvasCommand]:
    with mirror() as session:
        return list(
            session.scalars(
                select(CanvasCommand)
                .where(CanvasCommand.run_id == run_id)
                .order_by(CanvasCommand.id)
            )
        )


def test_restoring_inactive_enrollments_reactivates_them_in_canvas(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = ended_in_canvas(canvas, mirror_factory, client, "inactive")
    pairing_id = scene.pairings["inactive"]
    assert ended_pairings(mirror_factory) == {pairing_id}

    # Their end_at (an hour from now) has not passed: no new one is needed.
    result = restore_through_canvas(mirror_factory, client, pairing_id, actor_id=canvas.admin_id)

    assert result.commands == 2 and result.pending == 0
    assert result.delivery is not None and result.delivery.outcomes[commands.CONFIRMED] == 2
    assert result.restored.pairing_state == "active"
    assert result.restored.enrollments_restored == {"active": 2}
    for enrollment_id in scene.enrollments["inactive"]:
        assert canvas_state(canvas, enrollment_id) == "active"
        assert canvas_changes(canvas, enrollment_id) == [
            ("active", "inactive", "enrollment_deactivated"),
            ("inactive", "active", "reactivated"),
        ]
    made = restore_commands(mirror_factory, result.restored.run_id)
    assert [(c.kind, c.outcome, c.canvas_state) for c in made] == [
        ("reactivate", "confirmed", "active")
    ] * 2
    with mirror_factory() as session:
        for enrollment_id in scene.enrollments["inactive"]:
            assert session.get_one(Enrollment, enrollment_id).workflow_state == "active"
        restored = session.scalars(
            select(StateChange).where(StateChange.run_id == result.restored.run_id)
        ).all()
        # The pairing reopened in tep (its end removed, audited), every row confirmed by Canvas
        # where Canvas had something to confirm.
        assert session.get(PairingEnd, pairing_id) is None
        assert sorted((c.context_type, c.from_state, c.to_state) for c in restored) == [
            ("Enrollment", "inactive", "active"),
            ("Enrollment", "inactive", "active"),
            ("TemporaryEnrollmentPairing", "ended", "active"),
        ]
        for change in restored:
            if change.context_type == lifecycle.ENROLLMENT:
                assert change.canvas_confirmed_at is not None
                assert change.actor_id == canvas.admin_id

    # The restored pairing expires again at its end_at, through Canvas again.
    again = sweep(mirror_factory)
    assert again.enrollments_changed == {"deleted": 0, "completed": 0, "inactive": 2}
    assert commands.deliver_commands(mirror_factory, client, worker_id="w").pairings_ended == 1
    for enrollment_id in scene.enrollments["inactive"]:
        assert canvas_state(canvas, enrollment_id) == "inactive"


def test_restoring_deleted_enrollments_enrolls_them_again(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = ended_in_canvas(canvas, mirror_factory, client, "deleted")
    pairing_id = scene.pairings["deleted"]
    new_end_at = utcnow().replace(microsecond=0) + 3 * HOUR

    result = restore_through_canvas(mirror_factory, client, pairing_id, end_at=new_end_at)

    made = restore_commands(mirror_factory, result.restored.run_id)
    assert [(c.kind, c.outcome) for c in made] == [("enroll", "confirmed")] * 2, [
        (c.kind, c.outcome, c.last_error) for c in made
    ]
    assert result.pending == 0
    with mirror_factory() as session:
        for command in made:
            new_id = command.new_enrollment_id
            assert new_id is not None
            assert canvas_state(canvas, new_id) == "active"
            shown = session.get_one(Enrollment, new_id)
            assert shown.workflow_state == "active" and shown.end_at == new_end_at
            old = canvas.enrollment(command.enrollment_id)
            new = canvas.enrollment(new_id)
            assert (new.user_id, new.role_id, new.course_section_id) == (
                old.user_id,
                old.role_id,
                old.course_section_id,
            )
            assert new.temporary_enrollment_pairing_id == pairing_id
            assert (
                new.temporary_enrollment_source_user_id == old.temporary_enrollment_source_user_id
            )
            assert new.end_at == new_end_at
        assert session.get(PairingEnd, pairing_id) is None


def test_restoring_deleted_enrollments_sends_what_canvas_needs(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    """What the re-enrollment asks Canvas for, whatever the test Canvas makes of it."""
    scene = ended_in_canvas(canvas, mirror_factory, client, "deleted")
    pairing_id = scene.pairings["deleted"]
    new_end_at = utcnow().replace(microsecond=0) + 3 * HOUR
    canvas.proxy.clear_requests()

    result = restore_through_canvas(mirror_factory, client, pairing_id, end_at=new_end_at)

    posts = [r for r in canvas.proxy.requests if r.method == "POST"]
    assert len(posts) == 2
    sections = {canvas.enrollment(e).course_section_id for e in scene.enrollments["deleted"]}
    assert {r.path for r in posts} == {f"/api/v1/sections/{s}/enrollments" for s in sections}
    made = restore_commands(mirror_factory, result.restored.run_id)
    assert all(c.finished_at is not None for c in made)
    for command in made:
        old = canvas.enrollment(command.enrollment_id)
        payload = json.loads(command.payload or "{}")
        assert payload == {
            "course_section_id": old.course_section_id,
            "user_id": old.user_id,
            "role_id": old.role_id,
            "enrollment_state": "active",
            "start_at": lifecycle.iso(old.start_at) if old.start_at else None,
            "end_at": lifecycle.iso(new_end_at),
            "limit_privileges_to_course_section": False,
            "temporary_enrollment_source_user_id": old.temporary_enrollment_source_user_id,
            "temporary_enrollment_pairing_id": pairing_id,
        }
    with mirror_factory() as session:
        # Canvas's answer, whatever it was, is what the mirror shows: an enrollment Canvas did
        # not make again stays deleted there.
        for command in made:
            shown = session.get_one(Enrollment, command.new_enrollment_id or command.enrollment_id)
            expected = "active" if command.outcome in commands.SETTLED else "deleted"
            assert shown.workflow_state == expected, command.last_error


def test_restoring_completed_enrollments_is_refused(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = ended_in_canvas(canvas, mirror_factory, client, "completed")
    pairing_id = scene.pairings["completed"]
    canvas.proxy.clear_requests()

    with pytest.raises(RestoreRefused) as refused:
        restore_through_canvas(mirror_factory, client, pairing_id, end_at=utcnow() + 3 * HOUR)

    message = str(refused.value)
    assert "\n" not in message
    assert "no endpoint to un-conclude" in message and "nothing was restored" in message
    assert canvas.proxy.requests == []
    assert ended_pairings(mirror_factory) == {pairing_id}
    assert len(command_rows(mirror_factory)) == 2  # the sweep's, and no more
    with mirror_factory() as session:
        assert (
            session.scalar(
                select(StateChange.id).where(StateChange.reason == mirror_restore.REASON_RESTORED)
            )
            is None
        )
    for enrollment_id in scene.enrollments["completed"]:
        assert canvas_state(canvas, enrollment_id) == "completed"


def test_a_new_end_at_is_required_where_the_old_one_has_passed(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = ended_in_canvas(canvas, mirror_factory, client, "inactive")
    pairing_id = scene.pairings["inactive"]
    later = utcnow() + 2 * HOUR  # the enrollments' end_at (an hour from now) has passed then
    canvas.proxy.clear_requests()

    with pytest.raises(mirror_restore.RestoreNeedsEndAt) as needs:
        restore_through_canvas(mirror_factory, client, pairing_id, as_of=later)
    assert "--end-at" in str(needs.value) and "nothing was restored" in str(needs.value)
    with pytest.raises(mirror_restore.RestoreNeedsEndAt):
        restore_through_canvas(mirror_factory, client, pairing_id, as_of=later, end_at=later)

    assert canvas.proxy.requests == []
    assert len(command_rows(mirror_factory)) == 2
    assert ended_pairings(mirror_factory) == {pairing_id}
    for enrollment_id in scene.enrollments["inactive"]:
        assert canvas_state(canvas, enrollment_id) == "inactive"


def test_a_new_end_at_reactivates_then_redates_through_canvas(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    """Inactive enrollments with a new end_at: PUT .../reactivate, then Canvas's create to move
    the end date (the only way Canvas's API changes an enrollment's dates)."""
    scene = ended_in_canvas(canvas, mirror_factory, client, "inactive")
    pairing_id = scene.pairings["inactive"]
    new_end_at = utcnow().replace(microsecond=0) + 5 * HOUR
    canvas.proxy.clear_requests()

    result = restore_through_canvas(mirror_factory, client, pairing_id, end_at=new_end_at)

    made = restore_commands(mirror_factory, result.restored.run_id)
    assert sorted(c.kind for c in made) == ["enroll", "enroll", "reactivate", "reactivate"]
    sent = [(r.method, r.path.rsplit("/", 1)[-1]) for r in canvas.proxy.requests]
    # Each enrollment's reactivation goes before its re-dating (one open command per enrollment
    # at a time).
    for enrollment_id in scene.enrollments["inactive"]:
        mine = [c for c in made if c.enrollment_id == enrollment_id]
        assert [c.kind for c in mine] == ["reactivate", "enroll"]
        assert mine[0].outcome == commands.CONFIRMED
        assert mine[0].finished_at is not None and mine[1].finished_at is not None
        assert mine[0].finished_at <= mine[1].finished_at
        assert canvas_state(canvas, enrollment_id) == "active"
        # Canvas moves the date (Course#enroll_user sets end_at on the row it reuses); the test
        # Canvas refuses a second enrollment of the same slot instead, and says why.
        assert mine[1].outcome in (commands.CONFIRMED, commands.REFUSED)
        if mine[1].outcome == commands.REFUSED:
            assert mine[1].last_error and "\n" not in mine[1].last_error
    with mirror_factory() as session:
        for enrollment_id in scene.enrollments["inactive"]:
            shown = session.get_one(Enrollment, enrollment_id)
            assert (shown.workflow_state, shown.end_at) == ("active", new_end_at)
    assert sent.count(("PUT", "reactivate")) == 2 and sent.count(("POST", "enrollments")) == 2


def test_a_restore_waits_for_canvas_to_answer_the_change_it_undoes(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = make_scene(canvas, ("inactive",))
    mirror_from_canvas(canvas, mirror_factory)
    sweep(mirror_factory)  # decided, not sent
    pairing_id = scene.pairings["inactive"]

    with pytest.raises(RestoreRefused) as refused:
        restore_through_canvas(mirror_factory, client, pairing_id)
    assert "2 change(s) Canvas has not confirmed yet" in str(refused.value)
    assert canvas.proxy.requests == []

    commands.deliver_commands(mirror_factory, client, worker_id="w")
    result = restore_through_canvas(mirror_factory, client, pairing_id)
    assert result.pending == 0 and result.restored.pairing_state == "active"
    for enrollment_id in scene.enrollments["inactive"]:
        assert canvas_state(canvas, enrollment_id) == "active"


def test_a_restore_canvas_cannot_take_now_stays_in_the_outbox(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = ended_in_canvas(canvas, mirror_factory, client, "inactive")
    pairing_id = scene.pairings["inactive"]
    canvas.proxy.add_fault("error500", times=100, match="^PUT ")
    with CanvasClient(canvas.url, canvas.token, max_attempts=2, backoff_cap=0.002) as flaky:
        result = restore_through_canvas(mirror_factory, flaky, pairing_id)
    # Restored in tep (committed, audited), waiting for Canvas.
    assert result.restored.pairing_state == "active"
    assert result.commands == 2 and result.pending == 2
    assert result.delivery is not None and result.delivery.retry_later == 2
    for enrollment_id in scene.enrollments["inactive"]:
        assert canvas_state(canvas, enrollment_id) == "inactive"

    canvas.proxy.clear_faults()
    later = commands.deliver_commands(
        mirror_factory, client, worker_id="beat", as_of=utcnow() + dt.timedelta(hours=1)
    )
    assert later.outcomes[commands.CONFIRMED] == 2
    for enrollment_id in scene.enrollments["inactive"]:
        assert canvas_state(canvas, enrollment_id) == "active"
        assert len(canvas_changes(canvas, enrollment_id)) == 2  # deactivated, reactivated
