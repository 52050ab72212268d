"""The API in `existing` mode (TEP_CANVAS_TABLES=existing, issue 10 point 7): on Canvas's own
database Canvas owns users, courses and sections, so creating them is refused (403, saying so),
while the pairings and enrollments endpoints work.

`tep api` is served with TEP_CANVAS_TABLES=existing on a managed database (SQLite, then
PostgreSQL): the refusal depends on the mode the app is given (worker/cli/serve.py passes the
setting to `create_app`), not on the tables, and the managed database lets the test arrange
Canvas's objects as Canvas would have made them (tasks/canvas_objects.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from api import create_app
from models import (
    CANVAS_TABLES_EXISTING,
    Account,
    Course,
    CourseSection,
    Enrollment,
    EnrollmentState,
    User,
    make_engine,
    make_sessionmaker,
    transaction,
    utcnow,
)
from tasks.canvas_objects import create_course
from tests.api import helpers as h
from tests.api.conftest import World, add_user, make_world, serve_api
from tests.api.server import ApiServer

PAIRINGS = "/accounts/self/temporary_enrollment_pairings"


EXISTING = {"TEP_CANVAS_TABLES": CANVAS_TABLES_EXISTING}


@pytest.fixture(scope="session")
def existing_sqlite_server(
    api_sqlite_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serve_api(api_sqlite_url, tmp_path_factory, "api-existing-sqlite", EXISTING)


@pytest.fixture(scope="session")
def existing_pg_server(
    api_postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serve_api(api_postgres_url, tmp_path_factory, "api-existing-pg", EXISTING)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def existing_world(request: pytest.FixtureRequest) -> Iterator[tuple[World, httpx.Client]]:
    """A fresh root account, and a client of `tep api` served in `existing` mode on its
    database."""
    backend = request.param
    url = request.getfixturevalue("api_sqlite_url" if backend == "sqlite" else "api_postgres_url")
    server: ApiServer = request.getfixturevalue(
        f"existing_{'pg' if backend == 'postgres' else backend}_server"
    )
    engine = make_engine(url)
    world = make_world(server.base_url, make_sessionmaker(engine))
    with world.client() as client:
        yield world, client
    engine.dispose()


def canvas_course(world: World) -> tuple[int, int]:
    """A course and its default section, as Canvas would have made them."""
    with transaction(world.factory) as session:
        account = session.get(Account, world.account_id)
        assert account is not None
        course, section = create_course(session, account, "Made in Canvas")
        return course.id, section.id


def counts(world: World) -> tuple[int, int, int]:
    with transaction(world.factory, commit=False) as session:
        return (
            session.scalar(select(func.count()).select_from(User)) or 0,
            session.scalar(select(func.count()).select_from(Course)) or 0,
            session.scalar(select(func.count()).select_from(CourseSection)) or 0,
        )


def test_creating_users_courses_and_sections_is_refused_with_403(
    existing_world: tuple[World, httpx.Client],
) -> None:
    world, client = existing_world
    course_id, _section_id = canvas_course(world)
    before = counts(world)
    refusals = {
        "users": client.post(
            "/accounts/self/users",
            data={"user[name]": "New Person", "pseudonym[unique_id]": "new@example.edu"},
        ),
        "courses": client.post("/accounts/self/courses", data={"course[name]": "New"}),
        "sections": client.post(
            f"/courses/{course_id}/sections", data={"course_section[name]": "B"}
        ),
    }
    for what, response in refusals.items():
        message = h.error(response, 403)
        assert f"Canvas owns {what} here" in message and "TEP_CANVAS_TABLES=existing" in message
    assert counts(world) == before  # nothing written

    # The refusal comes after authentication: no token is still a 401, not a 403.
    anonymous = client.post("/accounts/self/courses", headers={"Authorization": ""})
    assert h.error(anonymous, 401) == "user authorization required"
    # Reading Canvas's objects is fine.
    assert h.ok(client.get(f"/courses/{course_id}"))["id"] == course_id
    assert h.ok(client.get("/accounts/self"))["root_account_id"] is None  # a root, as Canvas shows


def test_enrollments_and_pairings_work(existing_world: tuple[World, httpx.Client]) -> None:
    world, client = existing_world
    course_id, section_id = canvas_course(world)
    provider = add_user(world.factory, world.account_id, "Pro Vider")
    recipient = add_user(world.factory, world.account_id, "Re Cipient")
    student = add_user(world.factory, world.account_id, "Stu Dent")

    pairing = h.pairing_of(
        client.post(PAIRINGS, data={"ending_enrollment_state": "completed"}), 201
    )
    temporary = h.ok(
        h.temporary(
            client, course_id, recipient, provider, pairing["id"], utcnow() + dt.timedelta(days=2)
        )
    )
    assert temporary["course_section_id"] == section_id
    regular = h.ok(
        client.post(
            f"/sections/{section_id}/enrollments",
            data={"enrollment[user_id]": student, "enrollment[type]": "StudentEnrollment"},
        )
    )
    with transaction(world.factory, commit=False) as session:
        for enrollment_id in (temporary["id"], regular["id"]):
            stored = session.get(Enrollment, enrollment_id)
            assert stored is not None and stored.uuid and stored.role_id
            assert session.get(EnrollmentState, enrollment_id) is not None

    listed = h.ok(client.get(f"/courses/{course_id}/enrollments"))
    assert sorted(e["id"] for e in listed) == sorted([temporary["id"], regular["id"]])
    concluded = h.ok(client.delete(f"/courses/{course_id}/enrollments/{regular['id']}"))
    assert concluded["enrollment_state"] == "completed"

    deleted = h.pairing_of(client.delete(f"{PAIRINGS}/{pairing['id']}"))
    assert (deleted["workflow_state"], deleted["deleted_by_id"]) == ("deleted", world.admin_id)
    completed = h.ok(
        client.get(f"/courses/{course_id}/enrollments", params={"state[]": "completed"})
    )
    assert sorted(e["id"] for e in completed) == sorted([temporary["id"], regular["id"]])
    assert [
        p["id"] for p in h.pairings_of(client.get(PAIRINGS, params={"workflow_state[]": "deleted"}))
    ] == [pairing["id"]]


def test_a_course_without_a_section_is_not_given_one(
    existing_world: tuple[World, httpx.Client],
) -> None:
    """Canvas makes a course's default section; in existing mode tep does not write one."""
    world, client = existing_world
    course_id, section_id = canvas_course(world)
    with transaction(world.factory) as session:
        section = session.get(CourseSection, section_id)
        assert section is not None
        section.workflow_state = "deleted"
    student = add_user(world.factory, world.account_id, "Stu Dent")
    before = counts(world)
    response = h.enroll(client, course_id, student)
    assert "Canvas owns sections here" in h.error(response, 422)
    assert counts(world) == before


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="managed or existing"):
        create_app(database_url="sqlite://", canvas_tables="Existing")
