"""Fixtures for the hosted-Canvas connector: a live test Canvas (`tep api` on a PostgreSQL
database of its own) reached over HTTP through a fault proxy the test controls, and tep's own
database (the mirror) beside it.

* `canvas`: a fresh root account on the test Canvas (its admin and token), a fresh `FaultProxy`
  in front of it (`canvas.url`, `canvas.proxy`), the Canvas's database (`canvas.factory`, to
  assert what the Canvas holds) and seeding helpers. The helpers talk to the Canvas's API
  directly, never through the proxy: a test's faults hit only the connector's requests.
* `mirror_factory`: tep's own database for the connector (a fresh SQLite file, sessions made
  `through_canvas=True`, as worker/runtime.py makes them beside a hosted Canvas).
* `client`: a `CanvasClient` on `canvas.url` with a tiny backoff, so retries take milliseconds
  (its pacing pauses are capped at the same 0.05 s: `max_pause` defaults to `backoff_cap`).
* `throttled_canvas`: `canvas` with Canvas's leaky bucket on its proxy.

Without PostgreSQL the tests are skipped locally and fail under CI=true (tests/services.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from models import CourseSection, Enrollment, StateChange, make_engine, make_sessionmaker, utcnow
from tests import services
from tests.api.conftest import World, make_world, serve_api
from tests.api.server import ApiServer
from tests.canvas_rest.proxy import FaultProxy, LeakyBucket

if TYPE_CHECKING:
    from tasks.canvas_rest.client import CanvasClient

_logins = itertools.count(1)

# The client fixture's retry timing: milliseconds, so a test of eight attempts takes no time.
TEST_BACKOFF_BASE = 0.01
TEST_BACKOFF_CAP = 0.05


@pytest.fixture(scope="session")
def canvas_api_url() -> Iterator[str]:
    """The test Canvas's own scratch PostgreSQL database (not the API tests', not tep's)."""
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database("tep_canvas_rest") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def canvas_server(
    canvas_api_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """The test Canvas: a real `tep api` process on that database."""
    yield from serve_api(canvas_api_url, tmp_path_factory, "canvas-rest-api")


@pytest.fixture(scope="session")
def canvas_engine(canvas_api_url: str) -> Iterator[Engine]:
    engine = make_engine(canvas_api_url)
    yield engine
    engine.dispose()


@dataclasses.dataclass
class TestCanvas:
    """One root account on the test Canvas, behind a fault proxy of its own."""

    __test__ = False  # not a test class, whatever its name

    world: World = dataclasses.field(repr=False)  # its repr holds the token
    proxy: FaultProxy
    url: str  # the proxy's base URL (no /api/v1): what the connector is configured with
    token: str = dataclasses.field(repr=False)  # the root account's admin's token
    factory: sessionmaker[Session]  # the Canvas's own database

    @property
    def account_id(self) -> int:
        return self.world.account_id

    @property
    def admin_id(self) -> int:
        return self.world.admin_id

    def api(self, token: str | None = None) -> httpx.Client:
        """A plain client on the Canvas's API itself (not the proxy), base `/api/v1`."""
        return self.world.client(token)

    def _ok(self, response: httpx.Response, *statuses: int) -> Any:
        if response.status_code not in (statuses or (200,)):
            raise AssertionError(
                f"seeding the test Canvas: {response.request.method} {response.request.url.path}"
                f" answered {response.status_code}: {response.text}"
            )
        return response.json()

    # ---- seeding through the Canvas's API

    def add_user(self, name: str, email: str | None = None) -> int:
        """A user with a login in the root account (POST /accounts/:id/users), with an e-mail
        channel when `email` is given."""
        data = {"user[name]": name, "pseudonym[unique_id]": f"login{next(_logins)}-{name}"}
        if email is not None:
            data |= {
                "communication_channel[type]": "email",
                "communication_channel[address]": email,
            }
        with self.api() as api:
            user = self._ok(api.post(f"/accounts/{self.account_id}/users", data=data))
        return int(user["id"])

    def add_course(self, name: str) -> tuple[int, int]:
        """A course (POST /accounts/:id/courses) and its default section, which Canvas (and tep
        api) makes with it: (course_id, section_id)."""
        with self.api() as api:
            course = self._ok(
                api.post(f"/accounts/{self.account_id}/courses", data={"course[name]": name})
            )
        course_id = int(course["id"])
        with self.factory() as session:
            section_id = session.scalars(
                select(CourseSection.id)
                .where(CourseSection.course_id == course_id)
                .order_by(CourseSection.default_section.desc(), CourseSection.id)
            ).first()
        assert section_id is not None, f"course {course_id} has no section"
        return course_id, section_id

    def add_section(self, course_id: int, name: str) -> int:
        with self.api() as api:
            section = self._ok(
                api.post(f"/courses/{course_id}/sections", data={"course_section[name]": name})
            )
        return int(section["id"])

    def enroll(
        self,
        user_id: int,
        course_id: int,
        type: str = "TeacherEnrollment",
        *,
        section_id: int | None = None,
        state: str = "active",
        role_id: int | None = None,
        **extra: Any,
    ) -> int:
        """An enrollment (POST /courses/:id/enrollments); `extra` are more `enrollment[...]`
        parameters (datetimes as ISO 8601). Returns its id."""
        data: dict[str, Any] = {
            "enrollment[user_id]": user_id,
            "enrollment[enrollment_state]": state,
        }
        if role_id is not None:
            data["enrollment[role_id]"] = role_id
        else:
            data["enrollment[type]"] = type
        if section_id is not None:
            data["enrollment[course_section_id]"] = section_id
        for key, value in extra.items():
            data[f"enrollment[{key}]"] = (
                value.isoformat() if isinstance(value, dt.datetime) else value
            )
        with self.api() as api:
            made = self._ok(api.post(f"/courses/{course_id}/enrollments", data=data))
        return int(made["id"])

    def make_pairing(
        self,
        provider_id: int,
        recipient_id: int,
        course_ids: Sequence[int],
        ending_state: str = "deleted",
        end_at: dt.datetime | None = None,
        *,
        start_at: dt.datetime | None = None,
        state: str = "active",
    ) -> tuple[int, list[int]]:
        """A temporary enrollment pairing and the recipient's temporary enrollments, one per
        course, as Canvas's UI makes them (tests/api/test_canvas_ui.py replays it): POST
        /accounts/:id/temporary_enrollment_pairings, then per provider enrollment POST
        /sections/:section_id/enrollments with the provider's role and section, the pairing, the
        provider as source, start_at and end_at. A course the provider is not enrolled in gets
        them as a teacher first. `end_at` defaults to a day from now; one in the past makes the
        enrollments due (their `start_at` a week before it, as Canvas needs start < end).
        `state`: their `enrollment[enrollment_state]` (the UI sends none; `active` here, where
        tep api's default would be `invited`)."""
        now = utcnow().replace(microsecond=0)
        end = end_at or now + dt.timedelta(days=1)
        start = start_at or min(now, end - dt.timedelta(days=7))
        with self.api() as api:
            body = self._ok(
                api.post(
                    f"/accounts/{self.account_id}/temporary_enrollment_pairings",
                    data={"ending_enrollment_state": ending_state},
                ),
                201,
            )
            pairing_id = int(body["temporary_enrollment_pairing"]["id"])
            own = self._ok(
                api.get(
                    f"/users/{provider_id}/enrollments",
                    params=[("state[]", "active"), ("per_page", "100")],
                )
            )
        by_course: dict[int, list[dict[str, Any]]] = {}
        for item in own:
            by_course.setdefault(int(item["course_id"]), []).append(item)
        made: list[int] = []
        for course_id in course_ids:
            if course_id not in by_course:
                self.enroll(provider_id, course_id)
                with self.api() as api:
                    own = self._ok(
                        api.get(
                            f"/users/{provider_id}/enrollments",
                            params=[("state[]", "active"), ("per_page", "100")],
                        )
                    )
                by_course[course_id] = [e for e in own if int(e["course_id"]) == course_id]
            for provider_enrollment in by_course[course_id]:
                with self.api() as api:
                    enrollment = self._ok(
                        api.post(
                            f"/sections/{provider_enrollment['course_section_id']}/enrollments",
                            data={
                                "enrollment[user_id]": recipient_id,
                                "enrollment[enrollment_state]": state,
                                "enrollment[temporary_enrollment_source_user_id]": provider_id,
                                "enrollment[temporary_enrollment_pairing_id]": pairing_id,
                                "enrollment[limit_privileges_to_course_section]": "false",
                                "enrollment[start_at]": start.isoformat(),
                                "enrollment[end_at]": end.isoformat(),
                                "enrollment[role_id]": provider_enrollment["role_id"],
                            },
                        )
                    )
                made.append(int(enrollment["id"]))
        return pairing_id, made

    # ---- what the Canvas holds

    def enrollment(self, enrollment_id: int) -> Enrollment:
        with self.factory() as session:
            return session.get_one(Enrollment, enrollment_id)

    def state_changes(self, enrollment_id: int) -> list[StateChange]:
        """The Canvas's audit rows for one enrollment (tep api audits each change it makes)."""
        with self.factory() as session:
            return list(
                session.scalars(
                    select(StateChange)
                    .where(
                        StateChange.context_type == "Enrollment",
                        StateChange.context_id == enrollment_id,
                    )
                    .order_by(StateChange.id)
                )
            )

    def token_for(self, user_id: int) -> str:
        return self.world.token_for(user_id)


@pytest.fixture
def canvas(canvas_server: ApiServer, canvas_engine: Engine) -> Iterator[TestCanvas]:
    """A fresh root account on the test Canvas, behind a fresh fault proxy."""
    world = make_world(canvas_server.base_url, make_sessionmaker(canvas_engine))
    with FaultProxy(canvas_server.base_url) as proxy:
        yield TestCanvas(world, proxy, proxy.base_url, world.token, world.factory)


@pytest.fixture
def throttled_canvas(canvas: TestCanvas) -> TestCanvas:
    """`canvas` whose proxy throttles as Canvas does (a leaky bucket of 600, outflow 10 per
    second, up-front cost 50)."""
    canvas.proxy.bucket = LeakyBucket()
    return canvas


@pytest.fixture
def mirror_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """tep's own database beside the hosted Canvas: a fresh migrated SQLite file; its sessions
    work on a mirror (`through_canvas=True`)."""
    url = f"sqlite:///{tmp_path / 'mirror.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine, through_canvas=True)
    engine.dispose()


@pytest.fixture
def client(canvas: TestCanvas) -> Iterator[CanvasClient]:
    """The connector's client on the proxy, retrying in milliseconds."""
    from tasks.canvas_rest.client import CanvasClient

    with CanvasClient(
        canvas.url, canvas.token, backoff_base=TEST_BACKOFF_BASE, backoff_cap=TEST_BACKOFF_CAP
    ) as made:
        yield made
