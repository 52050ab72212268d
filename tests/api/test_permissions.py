"""Canvas's permissions over real HTTP: who may call the pairings API (the temporary-enrollment
permissions, through `account_users`, built-in and custom roles and their `role_overrides`), who
may call the rest (an admin of the account), Canvas's 401 for everyone else, scopes narrowing a
token further, and making admins (`POST /accounts/:id/admins`, `tep admin grant`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from models import Account, AccountUser, transaction, utcnow
from tasks import permissions
from tests.api import canvas_data as canvas
from tests.api import helpers as h
from tests.api.conftest import World
from tests.api.test_sqlite_and_cli import tep

PAIRINGS = "/accounts/self/temporary_enrollment_pairings"
# What Canvas renders for render_unauthorized_action on an API request
# (lib/authentication_methods.rb render_json_unauthorized).
UNAUTHORIZED = {
    "status": "unauthorized",
    "errors": [{"message": "user not authorized to perform that action"}],
}
ADD, EDIT, DELETE = (
    permissions.TEMPORARY_ENROLLMENTS_ADD,
    permissions.TEMPORARY_ENROLLMENTS_EDIT,
    permissions.TEMPORARY_ENROLLMENTS_DELETE,
)


def refused(response: httpx.Response) -> None:
    """Canvas's 401 for a signed-in user without the permission: its exact body, and no
    WWW-Authenticate (the token itself is good, so canvasapi raises Unauthorized)."""
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.json() == UNAUTHORIZED
    assert "www-authenticate" not in response.headers


def pairing_calls(client: httpx.Client, existing: int) -> dict[str, Callable[[], httpx.Response]]:
    """One call per pairing endpoint; `existing` is a pairing of the account (for show and
    delete: each delete call deletes it, so the caller recreates it when that matters)."""
    return {
        "index": lambda: client.get(PAIRINGS),
        "show": lambda: client.get(f"{PAIRINGS}/{existing}"),
        "new": lambda: client.get(f"{PAIRINGS}/new"),
        "create": lambda: client.post(PAIRINGS),
        "delete": lambda: client.delete(f"{PAIRINGS}/{existing}"),
    }


def allowed_pairing_calls(world: World, token: str) -> set[str]:
    """The pairing endpoints the token may call; every refusal must be Canvas's 401."""
    allowed = set()
    with world.client() as admin:
        for name in ("index", "show", "new", "create", "delete"):
            existing = h.pairing(admin)["id"]  # a fresh one each time: delete deletes it
            with world.client(token) as client:
                response = pairing_calls(client, existing)[name]()
            if response.status_code in (200, 201):
                allowed.add(name)
            else:
                refused(response)
    return allowed


EVERY_PAIRING_CALL = {"index", "show", "new", "create", "delete"}


def test_an_account_admin_holds_every_pairing_permission(world: World) -> None:
    assert allowed_pairing_calls(world, world.token) == EVERY_PAIRING_CALL


def test_a_user_with_no_account_role_gets_canvas_s_401_everywhere_but_their_own_list(
    world: World,
) -> None:
    stranger = world.add_user("No Role")
    token = world.token_for(stranger)
    assert allowed_pairing_calls(world, token) == set()
    with world.client() as admin:
        course = h.course(admin)
        enrollment = h.ok(h.enroll(admin, course["id"], stranger, state="inactive"))
        section = h.ok(admin.post(f"/courses/{course['id']}/sections"))
        # A temporary enrollment of the stranger's, which only a temporary-enrollment
        # permission shows.
        h.ok(
            h.temporary(
                admin, course["id"], stranger, world.admin_id, h.pairing(admin)["id"],
                utcnow() + dt.timedelta(days=1), course_section_id=section["id"],
            )
        )  # fmt: skip
    cid, eid = course["id"], enrollment["id"]
    with world.client(token) as client:
        for response in (
            client.get("/accounts/self"),
            client.get(f"/courses/{cid}"),
            client.get(f"/courses/{cid}/enrollments"),
            h.enroll(client, cid, stranger, type="StudentEnrollment"),
            client.post(
                f"/sections/{section['id']}/enrollments", data={"enrollment[user_id]": stranger}
            ),
            client.delete(f"/courses/{cid}/enrollments/{eid}"),
            client.put(f"/courses/{cid}/enrollments/{eid}/reactivate"),
            client.post("/accounts/self/courses"),
            client.post(f"/courses/{cid}/sections"),
            client.post(
                "/accounts/self/users",
                data={"user[name]": "X", "pseudonym[unique_id]": f"x{world.account_id}"},
            ),
            client.get("/accounts/self/roles"),
            client.get("/accounts/self/users"),
            client.post("/accounts/self/admins", data={"user_id": stranger}),
            client.get(f"/users/{world.admin_id}/enrollments"),
            client.get(
                f"/users/{stranger}/enrollments", params={"temporary_enrollments_for_recipient": 1}
            ),
        ):
            refused(response)
        # Canvas lets a user list their own enrollments.
        [own] = h.ok(client.get("/users/self/enrollments", params={"state[]": "inactive"}))
        assert own["id"] == eid
        # With the temporary-enrollment filter and nothing to show, an empty list (Canvas
        # returns `Enrollment.none` before it checks the permission).
        nothing = {"temporary_enrollment_recipients_for_provider": "true"}
        assert h.ok(client.get("/users/self/enrollments", params=nothing)) == []
        # A 404 stays a 404: the object's absence is checked before the permission.
        assert h.error(client.get("/courses/987654321"), 404)
    # Nothing was written by the refused calls.
    every: dict[str, Any] = {
        "state[]": ["active", "invited", "inactive", "completed"],
        "user_id": stranger,
    }
    with world.client() as admin:
        listed = h.ok(admin.get(f"/courses/{cid}/enrollments", params=every))
    # The inactive one and the temporary one, nothing more.
    assert len(listed) == 2 and listed[0]["id"] == eid


@pytest.mark.parametrize(
    ("enabled", "expected"),
    [
        ((), set()),  # a custom account role holds none of them by default
        ((ADD,), {"index", "show", "new", "create"}),
        ((EDIT,), {"index", "show", "new"}),
        ((DELETE,), {"index", "show", "new", "delete"}),
        ((ADD, DELETE), EVERY_PAIRING_CALL),
    ],
)
def test_a_custom_account_role_holds_what_its_overrides_enable(
    world: World, enabled: tuple[str, ...], expected: set[str]
) -> None:
    coordinator = world.add_user("Coordinator")
    role = canvas.custom_role(world.factory, world.account_id, name="Coordinator")
    canvas.account_user(world.factory, world.account_id, coordinator, role)
    for permission in enabled:
        canvas.override(world.factory, world.account_id, role, permission)
    # An override turned off counts for nothing.
    for permission in {ADD, EDIT, DELETE} - set(enabled):
        canvas.override(world.factory, world.account_id, role, permission, enabled=False)
    assert allowed_pairing_calls(world, world.token_for(coordinator)) == expected


def test_overrides_apply_to_self_and_descendants_as_canvas_s(world: World) -> None:
    """An override at the root account for the descendants only does not apply in the root;
    an AccountAdmin's default can be turned off by an override too (its base type is in
    `available_to`, so it is not locked)."""
    user = world.add_user("Below Only")
    role = canvas.custom_role(world.factory, world.account_id)
    canvas.account_user(world.factory, world.account_id, user, role)
    canvas.override(world.factory, world.account_id, role, ADD, applies_to_self=False)
    assert allowed_pairing_calls(world, world.token_for(user)) == set()

    admin_role = session_role(world, "AccountAdmin")
    canvas.override(world.factory, world.account_id, admin_role, DELETE, enabled=False)
    assert allowed_pairing_calls(world, world.token) == {"index", "show", "new", "create"}


def session_role(world: World, name: str) -> int:
    with transaction(world.factory, commit=False) as session:
        account = session.get_one(Account, world.account_id)
        return permissions.account_role(session, account, name=name).id


def test_a_sub_account_admin_cannot_act_on_the_root_account_s_pairings(world: World) -> None:
    sub = canvas.sub_account(world.factory, world.account_id)
    sub_admin = world.add_user("Sub Admin")
    world.grant(sub_admin, account_id=sub)
    token = world.token_for(sub_admin)
    assert allowed_pairing_calls(world, token) == set()
    with world.client() as admin:
        existing = h.pairing(admin)["id"]
    with world.client(token) as client:
        # Not through the sub-account's path either: the pairings are the root account's.
        refused(client.get(f"/accounts/{sub}/temporary_enrollment_pairings"))
        refused(client.get(f"/accounts/{sub}/temporary_enrollment_pairings/{existing}"))
        refused(client.post(f"/accounts/{sub}/temporary_enrollment_pairings"))
        # But the sub-account's own courses are theirs to manage.
        course = h.ok(client.post(f"/accounts/{sub}/courses", data={"course[name]": "Sub"}))
        student = world.add_user("Student")
        h.ok(h.enroll(client, course["id"], student, type="StudentEnrollment"))
        refused(client.get("/accounts/self"))
        with world.client() as admin:
            root_course = h.course(admin)
        refused(client.get(f"/courses/{root_course['id']}/enrollments"))


def test_a_deleted_account_user_row_counts_for_nothing(world: World) -> None:
    former = world.add_user("Former Admin")
    row = world.grant(former)
    token = world.token_for(former)
    with world.client(token) as client:
        h.ok(client.get(PAIRINGS))
        with transaction(world.factory) as session:
            session.get_one(AccountUser, row).workflow_state = "deleted"
        refused(client.get(PAIRINGS))
        refused(client.get("/accounts/self"))


def test_scopes_still_narrow_an_admin_s_token_and_never_grant(world: World) -> None:
    scope = "url:GET|/api/v1/accounts/:account_id/temporary_enrollment_pairings"
    with world.client(world.token_for(world.admin_id, scope)) as client:
        h.pairings_of(client.get(PAIRINGS))
        assert h.error(client.post(PAIRINGS), 401) == "Insufficient scopes on access token."
    stranger = world.add_user("Scoped Stranger")
    with world.client(world.token_for(stranger, scope)) as client:
        refused(client.get(PAIRINGS))


@pytest.mark.filterwarnings("ignore::UserWarning")  # canvasapi warns about plain HTTP
def test_canvasapi_raises_unauthorized_for_the_401(world: World) -> None:
    from canvasapi import Canvas
    from canvasapi.exceptions import Unauthorized

    stranger = world.add_user("Api Stranger")
    canvas_client = Canvas(world.base_url, world.token_for(stranger))
    with pytest.raises(Unauthorized):
        canvas_client.get_account(world.account_id)


# --------------------------------------------------------------------------------------------
# Making admins


def test_post_admins_makes_an_admin_whose_token_then_works(world: World) -> None:
    newcomer = world.add_user("New Admin")
    token = world.token_for(newcomer)
    with world.client(token) as client:
        refused(client.get(PAIRINGS))
    with world.client() as client:
        made = h.ok(client.post("/accounts/self/admins", data={"user_id": newcomer}))
        assert (made["role"], made["user"]["id"], made["workflow_state"]) == (
            "AccountAdmin", newcomer, "active",
        )  # fmt: skip
        again = h.ok(client.post("/accounts/self/admins", data={"user_id": newcomer}))
        assert again["id"] == made["id"]  # first_or_initialize: no second row
        custom = canvas.custom_role(world.factory, world.account_id, name="Helper")
        by_id = h.ok(client.post("/accounts/self/admins", data={"user_id": newcomer,
                                                                "role_id": custom}))  # fmt: skip
        assert (by_id["role"], by_id["role_id"]) == ("Helper", custom)
        bad = client.post("/accounts/self/admins", data={"user_id": newcomer, "role": "Nope"})
        assert "no account role named 'Nope'" in h.error(bad, 400)
        course_role = session_role_id(world, "TeacherEnrollment")
        not_account = client.post(
            "/accounts/self/admins", data={"user_id": newcomer, "role_id": course_role}
        )
        assert "is not an account role" in h.error(not_account, 400)
        assert "no user with id" in h.error(
            client.post("/accounts/self/admins", data={"user_id": 987654321}), 404
        )
    with world.client(token) as client:
        assert allowed_pairing_calls(world, token) == EVERY_PAIRING_CALL


def session_role_id(world: World, name: str) -> int:
    with transaction(world.factory, commit=False) as session:
        account = session.get_one(Account, world.account_id)
        role = permissions.role_by_name(session, account, name, course_role=True)
        assert role is not None
        return role.id


def test_making_an_admin_needs_manage_account_memberships_and_the_role_s_permissions(
    world: World,
) -> None:
    """`AccountUser` policy `create`: `manage_account_memberships`, and only roles whose
    permissions the granting user holds too (`is_subset_of?`)."""
    target = world.add_user("Target")
    plain = world.add_user("Plain Custom")
    plain_role = canvas.custom_role(world.factory, world.account_id)
    canvas.account_user(world.factory, world.account_id, plain, plain_role)
    with world.client(world.token_for(plain)) as client:
        refused(client.post("/accounts/self/admins", data={"user_id": target}))

    manager = world.add_user("Manager")
    manager_role = canvas.custom_role(world.factory, world.account_id, name="Admin manager")
    canvas.account_user(world.factory, world.account_id, manager, manager_role)
    canvas.override(
        world.factory, world.account_id, manager_role, permissions.MANAGE_ACCOUNT_MEMBERSHIPS
    )
    with world.client(world.token_for(manager)) as client:
        # Not AccountAdmin: it holds the temporary-enrollment permissions the manager lacks.
        refused(client.post("/accounts/self/admins", data={"user_id": target}))
        made = h.ok(
            client.post("/accounts/self/admins", data={"user_id": target, "role_id": plain_role})
        )
        assert made["role_id"] == plain_role


def test_tep_admin_grant(sqlite_world: World, api_sqlite_url: str) -> None:
    user = sqlite_world.add_user("Cli Admin")
    token = sqlite_world.token_for(user)
    with sqlite_world.client(token) as client:
        refused(client.get(PAIRINGS))
    account = str(sqlite_world.account_id)
    result = tep("admin", "grant", "--account", account, "--user", str(user),
                 database_url=api_sqlite_url)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"user {user} is now AccountAdmin of account {account}" in result.stderr
    with sqlite_world.client(token) as client:
        h.pairings_of(client.get(PAIRINGS))
        h.pairing(client)
    again = tep("admin", "grant", "--account", account, "--user", str(user),
                database_url=api_sqlite_url)  # fmt: skip
    assert "already is AccountAdmin" in again.stderr
    for args, message in (
        (["--role", "Nope"], "no account role named 'Nope'"),
        (["--role", "TeacherEnrollment"], "no account role named 'TeacherEnrollment'"),
    ):
        failed = tep("admin", "grant", "--account", account, "--user", str(user), *args,
                     database_url=api_sqlite_url)  # fmt: skip
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr
    missing = tep("admin", "grant", "--account", "987654321", "--user", str(user),
                  database_url=api_sqlite_url)  # fmt: skip
    assert missing.returncode == 2 and "no account with id 987654321" in missing.stderr
    with transaction(sqlite_world.factory, commit=False) as session:
        rows = session.scalars(select(AccountUser).where(AccountUser.user_id == user)).all()
        assert [(r.account_id, r.workflow_state) for r in rows] == [
            (sqlite_world.account_id, "active")
        ]


def test_tep_admin_grant_refuses_on_canvas_s_database(
    sqlite_world: World, api_sqlite_url: str
) -> None:
    import os
    import subprocess
    import sys

    from tests.processes import PROJECT_ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    env.update(TEP_DATABASE_URL=api_sqlite_url, TEP_CANVAS_TABLES="existing")
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "admin", "grant",
         "--account", str(sqlite_world.account_id), "--user", str(sqlite_world.admin_id)],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Canvas owns its admins here" in result.stderr


def test_token_create_says_when_the_user_holds_no_role(
    sqlite_world: World, api_sqlite_url: str
) -> None:
    nobody = sqlite_world.add_user("Nobody")
    result = tep("token", "create", "--account", str(sqlite_world.account_id),
                 "--user", str(nobody), database_url=api_sqlite_url)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "holds no account role" in result.stderr and "tep admin grant" in result.stderr
    admin = tep("token", "create", "--account", str(sqlite_world.account_id),
                "--user", str(sqlite_world.admin_id), database_url=api_sqlite_url)  # fmt: skip
    assert "holds no account role" not in admin.stderr


def test_permissions_on_sqlite(sqlite_world: World) -> None:
    """The same rules on the embedded database."""
    user = sqlite_world.add_user("Sqlite Coordinator")
    role = canvas.custom_role(sqlite_world.factory, sqlite_world.account_id)
    canvas.account_user(sqlite_world.factory, sqlite_world.account_id, user, role)
    canvas.override(sqlite_world.factory, sqlite_world.account_id, role, EDIT)
    assert allowed_pairing_calls(sqlite_world, sqlite_world.token_for(user)) == {
        "index", "show", "new",
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# The override walk itself (tasks/permissions.py), account by account


def holds(world: World, user_id: int, account_id: int) -> bool:
    with transaction(world.factory, commit=False) as session:
        return permissions.holds(session, user_id, account_id, [ADD])


def test_overrides_walk_from_the_root_down_as_canvas_s(world: World) -> None:
    """RoleOverride.uncached_permission_for / enabled_for?: an override applies to its account
    (`applies_to_self`) and below (`applies_to_descendants`); below the account the role is held
    in, an override may add but never take away; above it, a lower override wins."""
    root = world.account_id
    sub = canvas.sub_account(world.factory, root)
    subsub = canvas.sub_account(world.factory, sub)

    def holder(account_id: int) -> tuple[int, int]:
        user = world.add_user("Holder")
        role = canvas.custom_role(world.factory, root)
        canvas.account_user(world.factory, account_id, user, role)
        return user, role

    below_only, role = holder(root)
    canvas.override(world.factory, root, role, ADD, applies_to_self=False)
    assert (holds(world, below_only, root), holds(world, below_only, sub)) == (False, True)

    self_only, role = holder(root)
    canvas.override(world.factory, root, role, ADD, applies_to_descendants=False)
    assert (holds(world, self_only, root), holds(world, self_only, sub)) == (True, False)

    # Held in the sub-account, enabled at the root: it applies there and below, not above.
    in_sub, role = holder(sub)
    canvas.override(world.factory, root, role, ADD)
    assert [holds(world, in_sub, a) for a in (root, sub, subsub)] == [False, True, True]

    # Held at the root and enabled there: an override below cannot take it away.
    kept, role = holder(root)
    canvas.override(world.factory, root, role, ADD)
    canvas.override(world.factory, sub, role, ADD, enabled=False)
    assert (holds(world, kept, sub), holds(world, kept, subsub)) == (True, True)

    # Held in the sub-account: its own account's override, lower than the root's, wins.
    revoked, role = holder(sub)
    canvas.override(world.factory, root, role, ADD)
    canvas.override(world.factory, sub, role, ADD, enabled=False)
    assert (holds(world, revoked, sub), holds(world, revoked, subsub)) == (False, False)
