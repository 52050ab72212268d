"""The API driven by the real `canvasapi` package, as a Canvas client written to Canvas's
documentation would drive it, against `tep api` on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from canvasapi import Canvas
from canvasapi.exceptions import BadRequest, InvalidAccessToken, ResourceDoesNotExist
from sqlalchemy import select

from models import CommunicationChannel, StateChange, transaction, utcnow
from tests.api.conftest import World

pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore::UserWarning")]

STUDENTS = 23
PER_PAGE = 5


def requester(canvas: Canvas) -> Any:
    return canvas._Canvas__requester


def pairing_request(canvas: Canvas, method: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
    """A pairing call through canvasapi's own requester, read as Canvas answers it: canvasapi
    (3.6) has no pairing class, so a client reads the object under its root key."""
    body = requester(canvas).request(method, endpoint, **kwargs).json()
    assert set(body) == {"temporary_enrollment_pairing"}, body
    pairing: dict[str, Any] = body["temporary_enrollment_pairing"]
    return pairing


def audit(
    world: World, context_type: str, context_id: int
) -> list[tuple[str, str, str, int | None]]:
    with transaction(world.factory, commit=False) as session:
        rows = session.execute(
            select(
                StateChange.from_state,
                StateChange.to_state,
                StateChange.reason,
                StateChange.actor_id,
            )
            .where(StateChange.context_type == context_type, StateChange.context_id == context_id)
            .order_by(StateChange.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_canvasapi_creates_pages_concludes_and_deletes(world: World) -> None:
    canvas = Canvas(world.base_url, world.token)
    account = canvas.get_account(world.account_id)
    assert account.id == world.account_id

    course = account.create_course(course={"name": "Biology 101", "course_code": "BIO101"})
    assert canvas.get_course(course.id).name == "Biology 101"
    section = course.create_course_section(course_section={"name": "Lab A"})
    provider = account.create_user(
        pseudonym={"unique_id": f"pat-{world.account_id}@example.edu"},
        user={"name": "Pat Provider"},
    )
    recipient = account.create_user(
        pseudonym={"unique_id": f"sam-{world.account_id}"},
        user={"name": "Sam Substitute"},
        communication_channel={"type": "email", "address": "sam@example.org"},
    )
    assert (provider.sortable_name, recipient.login_id) == (
        "Provider, Pat",
        f"sam-{world.account_id}",
    )
    with transaction(world.factory, commit=False) as session:
        channels = session.execute(
            select(
                CommunicationChannel.user_id,
                CommunicationChannel.path,
                CommunicationChannel.path_type,
            )
            .where(CommunicationChannel.user_id.in_([provider.id, recipient.id]))
            .order_by(CommunicationChannel.user_id)
        ).all()
    assert [tuple(c) for c in channels] == [
        (provider.id, f"pat-{world.account_id}@example.edu", "email"),
        (recipient.id, "sam@example.org", "email"),
    ]

    teacher = course.enroll_user(
        provider, enrollment={"type": "TeacherEnrollment", "enrollment_state": "active"}
    )
    assert (teacher.enrollment_state, teacher.course_section_id != section.id) == ("active", True)

    pairing = pairing_request(
        canvas,
        "POST",
        f"accounts/{world.account_id}/temporary_enrollment_pairings",
        ending_enrollment_state="completed",
    )
    assert (pairing["workflow_state"], pairing["created_by_id"]) == ("active", world.admin_id)

    end_at = (utcnow() + dt.timedelta(days=7)).replace(microsecond=0)
    temporary = course.enroll_user(
        recipient,
        enrollment={
            "type": "TeacherEnrollment",
            "enrollment_state": "active",
            "end_at": end_at,
            "temporary_enrollment_source_user_id": provider.id,
            "temporary_enrollment_pairing_id": pairing["id"],
        },
    )
    assert temporary.temporary_enrollment_pairing_id == pairing["id"]
    assert temporary.end_at_date == end_at

    students = []
    for n in range(STUDENTS):
        student = account.create_user(
            pseudonym={"unique_id": f"student{n}-{world.account_id}"}, user={"name": f"Student {n}"}
        )
        students.append(
            section.enroll_user(
                student, enrollment={"type": "StudentEnrollment", "enrollment_state": "active"}
            )
        )

    # Every enrollment, page by page: canvasapi follows the Link header's `next`.
    listed = list(course.get_enrollments(per_page=PER_PAGE))
    expected = [teacher.id, temporary.id, *(s.id for s in students)]
    assert [e.id for e in listed] == expected
    assert len(expected) > 4 * PER_PAGE  # several pages were followed

    only_students = list(course.get_enrollments(type=["StudentEnrollment"], per_page=PER_PAGE))
    assert len(only_students) == STUDENTS
    for_recipient = list(
        course.get_enrollments(user_id=recipient.id, temporary_enrollments_for_recipient=True)
    )
    assert [e.id for e in for_recipient] == [temporary.id]
    for_provider = list(
        course.get_enrollments(
            user_id=provider.id, temporary_enrollment_recipients_for_provider=True
        )
    )
    assert [e.user_id for e in for_provider] == [recipient.id]

    # Conclude a student: audited, even though it belongs to no pairing.
    concluded = students[0].deactivate("conclude")
    assert concluded.enrollment_state == "completed"
    assert audit(world, "Enrollment", students[0].id) == [
        ("active", "completed", "enrollment_concluded", world.admin_id)
    ]
    assert [e.id for e in course.get_enrollments(state=["completed"])] == [students[0].id]

    # Deleting the pairing ends its temporary enrollment now, in its ending state.
    deleted = pairing_request(
        canvas,
        "DELETE",
        f"accounts/{world.account_id}/temporary_enrollment_pairings/{pairing['id']}",
    )
    assert (deleted["workflow_state"], deleted["deleted_by_id"]) == ("deleted", world.admin_id)
    [after] = course.get_enrollments(user_id=recipient.id, state=["completed"])
    assert after.id == temporary.id
    assert audit(world, "Enrollment", temporary.id) == [
        ("active", "completed", "pairing_deleted", world.admin_id)
    ]


def test_canvasapi_concluding_the_last_temporary_enrollment_ends_its_pairing(world: World) -> None:
    canvas = Canvas(world.base_url, world.token)
    account = canvas.get_account(world.account_id)
    course = account.create_course(course={"name": "Chemistry"})
    provider = account.create_user(pseudonym={"unique_id": "prov"}, user={"name": "Prov Ider"})
    recipient = account.create_user(pseudonym={"unique_id": "reci"}, user={"name": "Reci Pient"})
    pairing = pairing_request(
        canvas, "POST", f"accounts/{world.account_id}/temporary_enrollment_pairings"
    )
    assert pairing["ending_enrollment_state"] == "deleted"
    end_at = utcnow() + dt.timedelta(days=3)
    enrollments = [
        course.enroll_user(
            recipient,
            enrollment={
                "type": kind,
                "enrollment_state": "active",
                "end_at": end_at,
                "temporary_enrollment_source_user_id": provider.id,
                "temporary_enrollment_pairing_id": pairing["id"],
            },
        )
        for kind in ("TeacherEnrollment", "TaEnrollment")
    ]
    show = f"accounts/self/temporary_enrollment_pairings/{pairing['id']}"

    assert enrollments[0].deactivate("deactivate").enrollment_state == "inactive"
    assert pairing_request(canvas, "GET", show)["workflow_state"] == "active"
    assert enrollments[1].deactivate("conclude").enrollment_state == "completed"
    ended = pairing_request(canvas, "GET", show)
    assert ended["workflow_state"] == "ended" and ended["ended_at"] is not None
    assert audit(world, "TemporaryEnrollmentPairing", pairing["id"]) == [
        ("new", "active", "created", world.admin_id),  # the pairing.created event
        ("active", "ended", "expired", None),
    ]

    # A deleted enrollment is gone, as in Canvas: deleting it again is a 404.
    assert enrollments[0].deactivate("delete").enrollment_state == "deleted"
    with pytest.raises(ResourceDoesNotExist):
        enrollments[0].deactivate("delete")


def test_canvasapi_sees_canvas_errors(world: World) -> None:
    canvas = Canvas(world.base_url, world.token)
    with pytest.raises(BadRequest, match="deleted, completed, inactive"):
        requester(canvas).request(
            "POST",
            "accounts/self/temporary_enrollment_pairings",
            ending_enrollment_state="expired",
        )
    with pytest.raises(ResourceDoesNotExist):
        canvas.get_course(987654321)
    with pytest.raises(InvalidAccessToken):
        Canvas(world.base_url, "not-a-token").get_account(world.account_id)
