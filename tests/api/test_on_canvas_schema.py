"""Permissions, roles and a user's enrollments on Canvas's real schema (tests/canvas_schema), with
`tep api` served in `existing` mode: the rows are arranged as Canvas leaves them (the test plays
Canvas: root account, built-in roles, logins with Canvas's own columns, `account_users`,
`role_overrides`), and tep only reads them.

Also: tep never creates a role in Canvas's tables; a root account whose built-in roles are
missing is an error it reports (422), not rows it invents.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api import known_scopes
from api.auth import create_token
from models import (
    CANVAS_TABLES_EXISTING,
    DUMMY_ROOT_ACCOUNT_ID,
    Account,
    AccountUser,
    EnrollmentTerm,
    Role,
    transaction,
    utcnow,
)
from tasks import canvas_objects, permissions
from tests import factories as f
from tests.api import canvas_data as canvas
from tests.api import helpers as h
from tests.api.conftest import serve_api
from tests.api.server import ApiServer
from tests.api.test_permissions import EVERY_PAIRING_CALL, UNAUTHORIZED

pytestmark = [pytest.mark.postgres, pytest.mark.canvas]

PAIRINGS = "/accounts/self/temporary_enrollment_pairings"
_n = itertools.count(1)


@pytest.fixture(scope="session")
def canvas_server(
    canvas_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serve_api(
        canvas_database_url,
        tmp_path_factory,
        "api-canvas",
        {"TEP_CANVAS_TABLES": CANVAS_TABLES_EXISTING},
    )


class Canvas:
    """A root account on Canvas's schema, made as Canvas makes one, and clients of tep's API."""

    def __init__(self, server: ApiServer, factory: sessionmaker[Session]) -> None:
        self.server = server
        self.factory = factory
        with transaction(factory) as session:
            self.root = f.account(session).id  # with its term and built-in roles, as Canvas's

    def user(self, name: str = "Someone") -> int:
        with transaction(self.factory) as session:
            return f.user(session, session.get_one(Account, self.root), name=name).id

    def admin(
        self, user_id: int, role: str = "AccountAdmin", account_id: int | None = None
    ) -> None:
        with transaction(self.factory) as session:
            account = session.get_one(Account, account_id or self.root)
            role_id = permissions.account_role(session, account, name=role).id
        canvas.account_user(self.factory, account_id or self.root, user_id, role_id)

    def client(self, user_id: int) -> httpx.Client:
        with transaction(self.factory) as session:
            _token, secret = create_token(
                session, account_id=self.root, user_id=user_id, known_scopes=known_scopes()
            )
        return httpx.Client(
            base_url=f"{self.server.base_url}/api/v1",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )


@pytest.fixture
def cv(canvas_server: ApiServer, canvas_factory: sessionmaker[Session]) -> Canvas:
    return Canvas(canvas_server, canvas_factory)


def pairing_calls_allowed(cv: Canvas, admin: httpx.Client, client: httpx.Client) -> set[str]:
    allowed = set()
    for name in sorted(EVERY_PAIRING_CALL):
        existing = h.pairing(admin)["id"]
        response = {
            "index": lambda: client.get(PAIRINGS),
            "show": lambda: client.get(f"{PAIRINGS}/{existing}"),  # noqa: B023
            "new": lambda: client.get(f"{PAIRINGS}/new"),
            "create": lambda: client.post(PAIRINGS),
            "delete": lambda: client.delete(f"{PAIRINGS}/{existing}"),  # noqa: B023
        }[name]()
        if response.status_code in (200, 201):
            allowed.add(name)
        else:
            assert (response.status_code, response.json()) == (401, UNAUTHORIZED), name
    return allowed


def test_permissions_come_from_canvas_s_account_users_and_role_overrides(cv: Canvas) -> None:
    admin_id = cv.user("Ada Admin")
    cv.admin(admin_id)
    coordinator = cv.user("Coordinator")
    role = canvas.custom_role(cv.factory, cv.root, name="Coordinator")
    canvas.account_user(cv.factory, cv.root, coordinator, role)
    stranger = cv.user("Stranger")
    sub = canvas.sub_account(cv.factory, cv.root)
    sub_admin = cv.user("Sub Admin")
    cv.admin(sub_admin, account_id=sub)
    with cv.client(admin_id) as admin:
        assert pairing_calls_allowed(cv, admin, admin) == EVERY_PAIRING_CALL
        for user in (coordinator, stranger, sub_admin):
            with cv.client(user) as client:
                assert pairing_calls_allowed(cv, admin, client) == set(), user
        canvas.override(cv.factory, cv.root, role, permissions.TEMPORARY_ENROLLMENTS_ADD)
        with cv.client(coordinator) as client:
            assert pairing_calls_allowed(cv, admin, client) == {"index", "show", "new", "create"}
        # Canvas's own `locked` column is there (DEFAULT false), and tep's inserts leave it so.
        with transaction(cv.factory, commit=False) as session:
            assert (
                session.connection()
                .exec_driver_sql("SELECT bool_or(locked) FROM role_overrides")
                .scalar_one()
                is False
            )

        # The enrollment and user endpoints need an admin of the account.
        with cv.client(stranger) as client:
            assert client.get("/accounts/self/roles").json() == UNAUTHORIZED
        with cv.client(coordinator) as client:
            assert h.ok(client.get("/accounts/self/roles"))


def test_a_user_s_temporary_enrollments_as_canvas_s_ui_reads_them(cv: Canvas) -> None:
    admin_id = cv.user("Ada Admin")
    cv.admin(admin_id)
    with transaction(cv.factory) as session:
        root = session.get_one(Account, cv.root)
        section = f.course(session, root)
        provider = f.user(session, root, name="Pat Provider").id
        recipient = f.user(session, root, name="Sam Recipient").id
        f.enrollment(session, root, user_id=provider, section=section)
        section_id = section.id
    with cv.client(admin_id) as client:
        roles = h.ok(client.get("/accounts/self/roles"))
        [teacher] = [r for r in roles if r["role"] == "TeacherEnrollment"]
        pairing = h.pairing(client, "completed")
        end = (utcnow() + dt.timedelta(days=7)).replace(microsecond=0)
        made = h.ok(
            client.post(
                f"/sections/{section_id}/enrollments",
                params={
                    "enrollment[user_id]": recipient,
                    "enrollment[temporary_enrollment_source_user_id]": provider,
                    "enrollment[temporary_enrollment_pairing_id]": pairing["id"],
                    "enrollment[limit_privileges_to_course_section]": "false",
                    "enrollment[start_at]": utcnow().isoformat(),
                    "enrollment[end_at]": end.isoformat(),
                    "enrollment[role_id]": teacher["id"],
                },
            )
        )
        assert (made["type"], made["role_id"]) == ("TeacherEnrollment", teacher["id"])
        query: dict[str, Any] = {
            "state[]": "current_and_future",
            "per_page": 100,
            "temporary_enrollments_for_recipient": "true",
            "include": "temporary_enrollment_providers",
        }
        [shown] = h.ok(client.get(f"/users/{recipient}/enrollments", params=query))
        assert shown["id"] == made["id"]
        assert shown["temporary_enrollment_provider"]["id"] == provider
        given: dict[str, Any] = {
            "state[]": "current_and_future",
            "temporary_enrollment_recipients_for_provider": 1,
        }
        provided = h.ok(client.get(f"/users/{provider}/enrollments", params=given))
        assert [e["id"] for e in provided] == [made["id"]]
        own = {"state[]": ["active", "completed", "invited"]}
        [taught] = h.ok(client.get(f"/users/{provider}/enrollments", params=own))
        assert taught["course_section_id"] == section_id
        assert h.ok(client.get(f"/users/{cv.user()}/enrollments")) == []
        listed = h.ok(
            client.get("/accounts/self/users", params={"temporary_enrollment_recipients": "true"})
        )
        assert [u["id"] for u in listed] == [recipient]
        # Admins are Canvas's here.
        refused = client.post("/accounts/self/admins", data={"user_id": recipient})
        assert "Canvas owns admins here" in h.error(refused, 403)


def test_tep_creates_no_roles_or_terms_in_canvas_s_tables(cv: Canvas) -> None:
    """A root account whose built-in roles are missing (not as Canvas makes one): enrolling is a
    422 naming what is missing, and no role is written."""
    with transaction(cv.factory) as session:
        bare = Account(
            name=f"Bare {next(_n)}", root_account_id=DUMMY_ROOT_ACCOUNT_ID,
            uuid=canvas_objects.canvas_uuid(),
        )  # fmt: skip
        session.add(bare)
        session.flush()
        session.add(EnrollmentTerm(root_account_id=bare.id, name="Default Term"))
        session.flush()
        course, _section = canvas_objects.create_course(session, bare, "No roles")
        user = f.user(session, bare, name="Lone Admin").id
        student = f.user(session, bare, name="Stu Dent").id
        bare_id, course_id = bare.id, course.id
        with pytest.raises(canvas_objects.CanvasObjectError, match="has no built-in role"):
            canvas_objects.built_in_role(session, bare.id, "StudentEnrollment")
        with pytest.raises(permissions.RoleError, match="has no built-in AccountAdmin"):
            permissions.account_role(session, bare)
    before = _roles(cv.factory)
    # An admin row as Canvas might hold it, in a role of another root account: not this one's.
    with transaction(cv.factory, commit=False) as session:
        other_admin = session.scalar(
            select(Role.id).where(Role.name == "AccountAdmin", Role.workflow_state == "built_in")
        )
    assert other_admin is not None
    canvas.account_user(cv.factory, bare_id, user, other_admin)
    with transaction(cv.factory) as session:
        _token, secret = create_token(
            session, account_id=bare_id, user_id=user, known_scopes=known_scopes()
        )
    with httpx.Client(
        base_url=f"{cv.server.base_url}/api/v1", headers={"Authorization": f"Bearer {secret}"}
    ) as client:
        response = h.enroll(client, course_id, student, type="StudentEnrollment")
        assert "has no built-in role StudentEnrollment" in h.error(response, 422)
        assert h.ok(client.get("/accounts/self/roles")) == []
    assert _roles(cv.factory) == before
    with transaction(cv.factory, commit=False) as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(AccountUser)
                .where(AccountUser.account_id == bare_id)
            )
            == 1
        )


def _roles(factory: sessionmaker[Session]) -> int:
    with transaction(factory, commit=False) as session:
        return session.scalar(select(func.count()).select_from(Role)) or 0
