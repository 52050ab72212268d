"""What the API writes to Canvas's tables beyond the enrollment row itself, on SQLite and on
PostgreSQL: what Canvas's own callbacks would have written (DESIGN.md section 4).

* A created enrollment gets a uuid, the built-in role of its type (`role_id`), and its
  `enrollment_states` row; its user is touched; a temporary one is in tep's deadline index.
* Each DELETE task (conclude, delete, deactivate, inactivate) changes only what Canvas's
  `Enrollment#conclude` / `#destroy` / `#deactivate` change on the row (the state, `updated_at`,
  and `completed_at` for conclude), rewrites the `enrollment_states` row (state, current,
  `lock_version + 1`) and touches the user, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, update

from models import (
    Enrollment,
    EnrollmentDeadline,
    EnrollmentState,
    Role,
    User,
    transaction,
    utcnow,
)
from tests.api import helpers as h
from tests.api.conftest import World

DAY = dt.timedelta(days=1)
# Long before anything the tests do: a touch of `users.updated_at` moves it past this.
LONG_AGO = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)

TASKS = {
    "conclude": "completed",
    "delete": "deleted",
    "deactivate": "inactive",
    "inactivate": "inactive",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_world(request: pytest.FixtureRequest) -> World:
    """A fresh root account on the SQLite-backed server, then on the PostgreSQL-backed one."""
    name = "sqlite_world" if request.param == "sqlite" else "world"
    world: World = request.getfixturevalue(name)
    return world


def enrollment_row(world: World, enrollment_id: int) -> dict[str, Any]:
    """Every column of Canvas's enrollment row, as stored."""
    with transaction(world.factory, commit=False) as session:
        return dict(
            session.execute(select(Enrollment.__table__).where(Enrollment.id == enrollment_id))
            .mappings()
            .one()
        )


def cache_row(world: World, enrollment_id: int) -> dict[str, Any]:
    """The enrollment's `enrollment_states` row."""
    with transaction(world.factory, commit=False) as session:
        return dict(
            session.execute(
                select(EnrollmentState.__table__).where(
                    EnrollmentState.enrollment_id == enrollment_id
                )
            )
            .mappings()
            .one()
        )


def age_user(world: World, user_id: int) -> None:
    """Set the user's `updated_at` far back, so that a touch is visible."""
    with transaction(world.factory) as session:
        session.execute(update(User).where(User.id == user_id).values(updated_at=LONG_AGO))


def user_updated_at(world: World, user_id: int) -> dt.datetime:
    with transaction(world.factory, commit=False) as session:
        moment = session.scalar(select(User.updated_at).where(User.id == user_id))
    assert moment is not None
    return moment


def built_in_role_id(world: World, enrollment_type: str) -> int:
    with transaction(world.factory, commit=False) as session:
        role_id = session.scalar(
            select(Role.id).where(
                Role.root_account_id == world.account_id,
                Role.workflow_state == "built_in",
                Role.name == enrollment_type,
                Role.base_role_type == enrollment_type,
            )
        )
    assert role_id is not None, f"no built-in {enrollment_type} role in the account"
    return role_id


# --------------------------------------------------------------------------------------------
# Create


@pytest.mark.parametrize("enrollment_type", ["TeacherEnrollment", "StudentEnrollment"])
def test_a_created_enrollment_has_its_built_in_role_uuid_and_cache_row(
    any_world: World, enrollment_type: str
) -> None:
    with any_world.client() as client:
        course = h.course(client)
        student = h.user(client)
        age_user(any_world, student["id"])
        created = h.ok(h.enroll(client, course["id"], student["id"], type=enrollment_type))

    role_id = built_in_role_id(any_world, enrollment_type)
    assert (created["role_id"], created["role"]) == (role_id, enrollment_type)
    row = enrollment_row(any_world, created["id"])
    assert row["role_id"] == role_id and row["uuid"]
    cache = cache_row(any_world, created["id"])
    assert cache["state"] == "active" and cache["state_is_current"] is True
    assert cache["lock_version"] == 0 and cache["access_is_current"] is False
    assert cache["state_valid_until"] is None  # no end date: nothing changes its state by date
    assert cache["root_account_id"] == any_world.account_id
    assert user_updated_at(any_world, student["id"]) > LONG_AGO


def test_a_created_temporary_enrollment_is_valid_until_its_end_and_indexed(
    any_world: World,
) -> None:
    end_at = (utcnow() + 3 * DAY).replace(microsecond=0)
    with any_world.client() as client:
        course = h.course(client)
        provider, recipient = h.user(client), h.user(client)
        pairing = h.pairing(client, "completed")
        age_user(any_world, recipient["id"])
        created = h.ok(
            h.temporary(
                client, course["id"], recipient["id"], provider["id"], pairing["id"], end_at
            )
        )

    assert created["role_id"] == built_in_role_id(any_world, "TeacherEnrollment")
    cache = cache_row(any_world, created["id"])
    assert (cache["state"], cache["state_is_current"], cache["lock_version"]) == ("active", True, 0)
    assert cache["state_valid_until"] == end_at  # Canvas's 5-minute job reads this
    assert user_updated_at(any_world, recipient["id"]) > LONG_AGO
    with transaction(any_world.factory, commit=False) as session:
        deadline = session.get(EnrollmentDeadline, created["id"])
        assert deadline is not None
        assert (deadline.temporary_enrollment_pairing_id, deadline.end_at) == (
            pairing["id"],
            end_at,
        )


def test_a_second_enrollment_of_the_same_user_role_and_section_reuses_the_row(
    any_world: World,
) -> None:
    """Canvas's unique index allows one per user, type, role and section, whatever its state,
    and Canvas's `Course#enroll_user` (app/models/course.rb) reuses that row: a deleted
    enrollment comes back, same id, in the state asked for, audited."""
    with any_world.client() as client:
        course = h.course(client)
        student = h.user(client)
        first = h.ok(h.enroll(client, course["id"], student["id"]))
        h.ok(client.delete(f"/courses/{course['id']}/enrollments/{first['id']}"))
        again = h.ok(h.enroll(client, course["id"], student["id"]))
        assert again["id"] == first["id"] and again["enrollment_state"] == "active"
        assert enrollment_row(any_world, first["id"])["workflow_state"] == "active"
        # Another type is another role: another row.
        other = h.ok(h.enroll(client, course["id"], student["id"], type="TaEnrollment"))
        assert other["id"] != first["id"]


# --------------------------------------------------------------------------------------------
# DELETE tasks


@pytest.mark.parametrize("task", list(TASKS))
def test_each_delete_task_writes_the_cache_touches_the_user_and_nothing_else(
    any_world: World, task: str
) -> None:
    with any_world.client() as client:
        course = h.course(client)
        student = h.user(client)
        created = h.ok(h.enroll(client, course["id"], student["id"]))
        before, cache_before = (
            enrollment_row(any_world, created["id"]),
            cache_row(any_world, created["id"]),
        )
        age_user(any_world, student["id"])
        url = f"/courses/{course['id']}/enrollments/{created['id']}"
        shown = h.ok(client.delete(url, params={"task": task}))

    to_state = TASKS[task]
    assert shown["enrollment_state"] == to_state
    after = enrollment_row(any_world, created["id"])
    changed = {column for column in before if before[column] != after[column]}
    expected = {"workflow_state", "updated_at"} | (
        {"completed_at"} if task == "conclude" else set()
    )
    assert changed == expected, (task, changed)
    assert after["workflow_state"] == to_state
    assert after["updated_at"] > before["updated_at"]
    if task == "conclude":
        assert after["completed_at"] is not None and shown["completed_at"] is not None

    cache = cache_row(any_world, created["id"])
    assert (cache["state"], cache["state_is_current"]) == (to_state, True)
    assert cache["lock_version"] == cache_before["lock_version"] + 1
    assert cache["state_valid_until"] is None and cache["access_is_current"] is False
    assert cache["updated_at"] is not None and cache["updated_at"] >= after["updated_at"]
    assert user_updated_at(any_world, student["id"]) > LONG_AGO


def test_a_task_asking_for_the_state_it_is_in_writes_nothing(any_world: World) -> None:
    with any_world.client() as client:
        course = h.course(client)
        created = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        url = f"/courses/{course['id']}/enrollments/{created['id']}"
        h.ok(client.delete(url, params={"task": "deactivate"}))
        row, cache = enrollment_row(any_world, created["id"]), cache_row(any_world, created["id"])
        h.ok(client.delete(url, params={"task": "inactivate"}))
    assert enrollment_row(any_world, created["id"]) == row
    assert cache_row(any_world, created["id"]) == cache


def test_a_task_on_a_temporary_enrollment_leaves_the_deadline_index(any_world: World) -> None:
    with any_world.client() as client:
        course = h.course(client)
        provider, recipient = h.user(client), h.user(client)
        pairing = h.pairing(client, "inactive")
        created = [
            h.ok(
                h.temporary(
                    client, course["id"], recipient["id"], provider["id"], pairing["id"],
                    utcnow() + 3 * DAY, type=kind,
                )
            )
            for kind in ("TeacherEnrollment", "TaEnrollment")
        ]  # fmt: skip
        url = f"/courses/{course['id']}/enrollments"
        h.ok(client.delete(f"{url}/{created[0]['id']}", params={"task": "conclude"}))
        with transaction(any_world.factory, commit=False) as session:
            assert session.get(EnrollmentDeadline, created[0]["id"]) is None
            assert session.get(EnrollmentDeadline, created[1]["id"]) is not None
        assert (
            h.pairing_of(
                client.get(f"/accounts/self/temporary_enrollment_pairings/{pairing['id']}")
            )["workflow_state"]
            == "active"
        )  # one live enrollment left
        h.ok(client.delete(f"{url}/{created[1]['id']}", params={"task": "delete"}))
        ended = h.pairing_of(
            client.get(f"/accounts/self/temporary_enrollment_pairings/{pairing['id']}")
        )
    assert ended["workflow_state"] == "ended" and ended["ended_at"] is not None
    with transaction(any_world.factory, commit=False) as session:
        assert session.get(EnrollmentDeadline, created[1]["id"]) is None
    assert cache_row(any_world, created[1]["id"])["state"] == "deleted"
