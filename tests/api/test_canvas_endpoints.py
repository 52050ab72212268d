"""The endpoints issue 11 adds beside the pairings API, over real HTTP: enrollments created with
`enrollment[role_id]` as Canvas does, Canvas's enrollment JSON, a user's enrollments with the
synthetic states and the temporary-enrollment filters, reactivate, the Roles API and the
account's users (app/controllers/enrollments_api_controller.rb, role_overrides_controller.rb,
users_controller.rb; lib/api/v1/user.rb, lib/api/v1/role.rb)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from sqlalchemy import select, update

from models import (
    Course,
    Enrollment,
    EnrollmentDeadline,
    EnrollmentState,
    PairingEnd,
    Role,
    StateChange,
    transaction,
    utcnow,
)
from tests.api import canvas_data as canvas
from tests.api import helpers as h
from tests.api.conftest import World

DAY = dt.timedelta(days=1)


def built_in(world: World, name: str) -> int:
    with transaction(world.factory, commit=False) as session:
        role_id = session.scalar(
            select(Role.id).where(
                Role.root_account_id == world.account_id,
                Role.workflow_state == "built_in",
                Role.name == name,
            )
        )
    assert role_id is not None
    return role_id


def enroll_with(
    client: httpx.Client, section_id: int, user_id: int, **fields: Any
) -> httpx.Response:
    data = {"enrollment[user_id]": user_id, **{f"enrollment[{k}]": v for k, v in fields.items()}}
    return client.post(f"/sections/{section_id}/enrollments", data=data)


# --------------------------------------------------------------------------------------------
# Create with a role, as Canvas's create decides the role and type


def test_role_id_decides_the_type_and_canvas_s_messages_refuse_the_rest(
    world: World, other_world: World
) -> None:
    substitute = canvas.custom_role(
        world.factory, world.account_id, base="TeacherEnrollment", name="Substitute Teacher"
    )
    retired = canvas.custom_role(
        world.factory, world.account_id, base="TaEnrollment", name="Retired TA", state="inactive"
    )
    gone = canvas.custom_role(
        world.factory, world.account_id, base="TaEnrollment", name="Gone", state="deleted"
    )
    foreign = canvas.custom_role(
        other_world.factory, other_world.account_id, base="TeacherEnrollment", name="Foreign"
    )
    with world.client() as client:
        course = h.course(client)
        section = h.ok(client.post(f"/courses/{course['id']}/sections"))
        sid = section["id"]
        made = h.ok(enroll_with(client, sid, h.user(client)["id"], role_id=substitute,
                                limit_privileges_to_course_section="true"))  # fmt: skip
        assert (made["type"], made["role"], made["role_id"]) == (
            "TeacherEnrollment", "Substitute Teacher", substitute,
        )  # fmt: skip
        assert made["limit_privileges_to_course_section"] is True
        # With a type that is the role's base type, as Canvas accepts it.
        h.ok(enroll_with(client, sid, h.user(client)["id"], role_id=substitute,
                         type="TeacherEnrollment"))  # fmt: skip
        # Neither a type nor a role: a student, in the built-in role.
        student = h.ok(enroll_with(client, sid, h.user(client)["id"]))
        assert (student["type"], student["role"], student["role_id"]) == (
            "StudentEnrollment", "StudentEnrollment", built_in(world, "StudentEnrollment"),
        )  # fmt: skip
        # A built-in role by id, and the deprecated role name.
        ta = h.ok(enroll_with(client, sid, h.user(client)["id"],
                              role_id=built_in(world, "TaEnrollment")))  # fmt: skip
        assert ta["type"] == "TaEnrollment"
        by_name = h.ok(enroll_with(client, sid, h.user(client)["id"], role="Substitute Teacher"))
        assert by_name["role_id"] == substitute

        someone = h.user(client)["id"]
        cases: list[tuple[dict[str, Any], str]] = [
            (dict(role_id=substitute, type="StudentEnrollment"),
             "The specified type must match the base type for the role"),
            (dict(role_id=retired),
             "Cannot create an enrollment with this role because it is inactive."),
            (dict(role_id=gone), "Invalid role"),
            (dict(role_id=foreign), "Invalid role"),  # another root account's: unknown here
            (dict(role_id=built_in(other_world, "TeacherEnrollment")), "Invalid role"),
            (dict(role_id=built_in(world, "AccountAdmin")), "Invalid role"),  # not a course role
            (dict(role_id=987654321), "Invalid role"),
            (dict(role="Nobody's Role"), "Invalid role"),
            (dict(type="GuestEnrollment"), "Invalid type"),
        ]  # fmt: skip
        for fields, message in cases:
            assert h.error(enroll_with(client, sid, someone, **fields), 400).startswith(message)
        everything = {"state[]": ["active", "invited", "inactive"], "user_id": someone}
        assert h.ok(client.get(f"/courses/{course['id']}/enrollments", params=everything)) == []


def test_the_answer_carries_canvas_s_enrollment_fields(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        provider, recipient = h.user(client, "Pat Provider"), h.user(client, "Sam Recipient")
        pairing = h.pairing(client)
        made = h.ok(
            h.temporary(client, course["id"], recipient["id"], provider["id"], pairing["id"],
                        utcnow() + DAY, limit_privileges_to_course_section="false")
        )  # fmt: skip
        base = world.base_url
        assert made["html_url"] == f"{base}/courses/{course['id']}/users/{recipient['id']}"
        assert made["associated_user_id"] is None
        assert made["limit_privileges_to_course_section"] is False
        assert (made["role"], made["role_id"]) == (
            "TeacherEnrollment", built_in(world, "TeacherEnrollment"),
        )  # fmt: skip
        user = made["user"]
        assert (user["id"], user["name"], user["login_id"], user["short_name"]) == (
            recipient["id"], "Sam Recipient", recipient["login_id"], "Sam Recipient",
        )  # fmt: skip
        assert {"sortable_name", "sis_user_id", "integration_id", "created_at"} <= set(user)
        assert "temporary_enrollment_provider" not in made and "grades" not in made
        student = h.ok(h.enroll(client, course["id"], h.user(client)["id"],
                                type="StudentEnrollment"))  # fmt: skip
        assert student["grades"] == {
            "html_url": f"{base}/courses/{course['id']}/grades/{student['user_id']}"
        }
        listed = h.ok(
            client.get(
                f"/courses/{course['id']}/enrollments",
                params={"include[]": "temporary_enrollment_providers", "user_id": recipient["id"]},
            )
        )
        assert listed[0]["temporary_enrollment_provider"]["id"] == provider["id"]


# --------------------------------------------------------------------------------------------
# A user's enrollments


def test_a_user_s_enrollments_by_state_with_canvas_s_synthetic_states(world: World) -> None:
    with world.client() as client:
        user = h.user(client)["id"]
        by_state = {}
        for state in ("active", "invited", "inactive"):
            course = h.course(client, f"{state} course")
            by_state[state] = h.ok(h.enroll(client, course["id"], user, state=state))["id"]
        for task, state in (("conclude", "completed"), ("delete", "deleted")):
            course = h.course(client, f"{state} course")
            made = h.ok(h.enroll(client, course["id"], user, type="StudentEnrollment"))
            client.delete(f"/courses/{course['id']}/enrollments/{made['id']}",
                          params={"task": task})  # fmt: skip
            by_state[state] = made["id"]
        url = f"/users/{user}/enrollments"

        def ids(*states: str) -> set[int]:
            params: dict[str, Any] = {"state[]": list(states), "per_page": 100} if states else {}
            return {e["id"] for e in h.ok(client.get(url, params=params))}

        def of(*states: str) -> set[int]:
            return {by_state[s] for s in states}

        assert ids() == of("active", "invited")  # Canvas's default
        assert ids("current_and_invited") == of("active", "invited")
        assert ids("current_and_future") == of("active", "invited")
        assert ids("current_and_concluded") == of("active", "completed")
        assert ids("current_future_and_restricted") == of("active", "invited", "inactive")
        assert ids("deleted", "completed") == of("deleted", "completed")
        assert ids("pending_active") == set()  # tep shows an enrollment's own state
        query = {"state[]": ["completed", "deleted", "active"], "type[]": "StudentEnrollment"}
        students = {e["id"] for e in h.ok(client.get(url, params=query))}
        assert students == of("completed", "deleted")
        assert "not accepted" in h.error(client.get(url, params={"state[]": "current"}), 400)

        # Paginated, by type then id.
        first = client.get(url, params={"state[]": "current_future_and_restricted",
                                        "per_page": 2})  # fmt: skip
        following = h.ok(client.get(first.links["next"]["url"]))
        assert len(h.ok(first)) == 2 and len(following) == 1
        # Nobody's enrollments: an empty list; unknown users and another account's: 404.
        assert h.ok(client.get(f"/users/{h.user(client)['id']}/enrollments")) == []
        assert "no user" in h.error(client.get("/users/987654321/enrollments"), 404)


def test_self_and_the_read_time_rule(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        provider = h.user(client)["id"]
        pairing = h.pairing(client, "completed")
        made = h.ok(h.temporary(client, course["id"], world.admin_id, provider, pairing["id"],
                                utcnow() + DAY))  # fmt: skip
        # Time passes: the end is behind us, no sweep has run.
        with transaction(world.factory) as session:
            session.execute(
                update(Enrollment).where(Enrollment.id == made["id"])
                .values(end_at=utcnow() - dt.timedelta(minutes=1))
            )  # fmt: skip
        assert h.ok(client.get("/users/self/enrollments")) == []  # no longer active
        [shown] = h.ok(client.get("/users/self/enrollments",
                                  params={"state[]": "current_and_concluded"}))  # fmt: skip
        assert (shown["id"], shown["enrollment_state"]) == (made["id"], "completed")
        with transaction(world.factory, commit=False) as session:
            stored = session.get_one(Enrollment, made["id"])
            assert stored.workflow_state == "active"  # nothing written by the read


def test_temporary_enrollments_for_the_recipient_and_the_provider(world: World) -> None:
    with world.client() as client:
        course, done_course = h.course(client), h.course(client, "Concluded")
        provider, recipient = h.user(client, "Pro Vider"), h.user(client, "Re Cipient")
        pairing = h.pairing(client)
        made = h.ok(h.temporary(client, course["id"], recipient["id"], provider["id"],
                                pairing["id"], utcnow() + DAY))  # fmt: skip
        regular = h.ok(h.enroll(client, course["id"], recipient["id"], type="StudentEnrollment"))
        in_done = h.ok(h.temporary(client, done_course["id"], recipient["id"], provider["id"],
                                   pairing["id"], utcnow() + DAY))  # fmt: skip
        with transaction(world.factory) as session:
            session.execute(
                update(Course).where(Course.id == done_course["id"])
                .values(workflow_state="completed")
            )  # fmt: skip
        for_recipient = {"temporary_enrollments_for_recipient": "true",
                         "include": "temporary_enrollment_providers"}  # fmt: skip
        [mine] = h.ok(client.get(f"/users/{recipient['id']}/enrollments", params=for_recipient))
        assert mine["id"] == made["id"] and mine["id"] not in (regular["id"], in_done["id"])
        assert mine["temporary_enrollment_provider"]["name"] == "Pro Vider"
        assert mine["user"]["name"] == "Re Cipient"
        for_provider = {"temporary_enrollment_recipients_for_provider": "true"}
        [given] = h.ok(client.get(f"/users/{provider['id']}/enrollments", params=for_provider))
        assert given["id"] == made["id"] and "temporary_enrollment_provider" not in given
        # Given but false: nothing, as Canvas's temporary_enrollment_conditions answers.
        off = {"temporary_enrollments_for_recipient": "false"}
        assert h.ok(client.get(f"/users/{recipient['id']}/enrollments", params=off)) == []
        # States filter them too (every state when none is given).
        h.ok(client.delete(f"/courses/{course['id']}/enrollments/{made['id']}",
                           params={"task": "deactivate"}))  # fmt: skip
        current = {**for_recipient, "state[]": "current_and_future"}
        assert h.ok(client.get(f"/users/{recipient['id']}/enrollments", params=current)) == []
        [inactive] = h.ok(client.get(f"/users/{recipient['id']}/enrollments",
                                     params=for_recipient))  # fmt: skip
        assert inactive["enrollment_state"] == "inactive"


def test_the_temporary_filters_need_a_temporary_enrollment_permission(world: World) -> None:
    """Canvas authorizes each enrollment by its course's account: a plain admin role of the
    account lists nothing but gets the 401 when there was something to list."""
    with world.client() as client:
        course = h.course(client)
        provider, recipient = h.user(client), h.user(client)
        pairing = h.pairing(client)
        h.ok(h.temporary(client, course["id"], recipient["id"], provider["id"], pairing["id"],
                         utcnow() + DAY))  # fmt: skip
    plain = world.add_user("Plain")
    role = canvas.custom_role(world.factory, world.account_id)
    canvas.account_user(world.factory, world.account_id, plain, role)
    params = {"temporary_enrollments_for_recipient": "true"}
    url = f"/users/{recipient['id']}/enrollments"
    with world.client(world.token_for(plain)) as client:
        denied = client.get(url, params=params)
        assert denied.status_code == 401 and denied.json()["status"] == "unauthorized"
        h.ok(client.get(url))  # an admin of the account may list the user's enrollments
    canvas.override(world.factory, world.account_id, role, "temporary_enrollments_edit")
    with world.client(world.token_for(plain)) as client:
        assert len(h.ok(client.get(url, params=params))) == 1


# --------------------------------------------------------------------------------------------
# Reactivate


def test_reactivate_only_from_inactive_audited_and_coherent(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        active = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        url = f"/courses/{course['id']}/enrollments"
        for state in ("active",):
            assert h.error(client.put(f"{url}/{active['id']}/reactivate"), 400) == (
                "enrollment not inactive"
            ), state
        concluded = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        h.ok(client.delete(f"{url}/{concluded['id']}"))
        assert h.error(client.put(f"{url}/{concluded['id']}/reactivate"), 400) == (
            "enrollment not inactive"
        )
        deleted = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        h.ok(client.delete(f"{url}/{deleted['id']}", params={"task": "delete"}))
        assert h.error(client.put(f"{url}/{deleted['id']}/reactivate"), 404)

        # An ended pairing's only enrollment, deactivated by hand, then reactivated.
        provider, recipient = h.user(client), h.user(client)
        pairing = h.pairing(client, "inactive")
        made = h.ok(h.temporary(client, course["id"], recipient["id"], provider["id"],
                                pairing["id"], utcnow() + 3 * DAY))  # fmt: skip
        h.ok(client.delete(f"{url}/{made['id']}", params={"task": "deactivate"}))
        assert h.pairing_of(client.get(
            f"/accounts/self/temporary_enrollment_pairings/{pairing['id']}"
        ))["workflow_state"] == "ended"  # fmt: skip
        with transaction(world.factory, commit=False) as session:
            lock_version = session.get_one(EnrollmentState, made["id"]).lock_version
        again = h.ok(client.put(f"{url}/{made['id']}/reactivate"))
        assert (again["id"], again["enrollment_state"]) == (made["id"], "active")
        shown = h.pairing_of(
            client.get(f"/accounts/self/temporary_enrollment_pairings/{pairing['id']}")
        )
        assert (shown["workflow_state"], shown["ended_at"]) == ("active", None)
    with transaction(world.factory, commit=False) as session:
        cache = session.get_one(EnrollmentState, made["id"])
        assert (cache.state, cache.lock_version) == ("active", lock_version + 1)
        assert session.get(PairingEnd, pairing["id"]) is None
        # Back in tep's deadline index: the sweep will end it at its end_at.
        assert session.get(EnrollmentDeadline, made["id"]) is not None
        audit = session.execute(
            select(StateChange.context_type, StateChange.from_state, StateChange.to_state,
                   StateChange.reason, StateChange.actor_id)
            .where(StateChange.temporary_enrollment_pairing_id == pairing["id"],
                   StateChange.reason == "reactivated")
            .order_by(StateChange.id)
        ).all()  # fmt: skip
        assert [tuple(row) for row in audit] == [
            ("Enrollment", "inactive", "active", "reactivated", world.admin_id),
            ("TemporaryEnrollmentPairing", "ended", "active", "reactivated", world.admin_id),
        ]


# --------------------------------------------------------------------------------------------
# Roles


def test_the_roles_api_lists_built_in_and_custom_roles_as_canvas_renders_them(
    world: World,
) -> None:
    custom = canvas.custom_role(world.factory, world.account_id, name="Coordinator")
    canvas.override(world.factory, world.account_id, custom, "temporary_enrollments_add")
    course_role = canvas.custom_role(
        world.factory, world.account_id, base="TeacherEnrollment", name="Substitute"
    )
    inactive = canvas.custom_role(world.factory, world.account_id, name="Old", state="inactive")
    sub = canvas.sub_account(world.factory, world.account_id)
    below = canvas.custom_role(world.factory, sub, name="Sub role")
    with world.client() as client:
        roles = h.ok(client.get("/accounts/self/roles", params={"per_page": 100}))
        by_name = {role["role"]: role for role in roles}
        assert list(by_name) == [
            "AccountAdmin", "StudentEnrollment", "TeacherEnrollment", "TaEnrollment",
            "DesignerEnrollment", "ObserverEnrollment", "Coordinator", "Substitute",
        ]  # fmt: skip
        admin = by_name["AccountAdmin"]
        assert (admin["label"], admin["base_role_type"], admin["workflow_state"]) == (
            "Account Admin", "AccountMembership", "built_in",
        )  # fmt: skip
        assert admin["is_account_role"] is True and "account" not in admin
        assert admin["permissions"]["temporary_enrollments_add"] == {
            "enabled": True, "locked": False, "readonly": False, "explicit": False,
            "applies_to_self": True, "applies_to_descendants": True,
            "group": "manage_temporary_enrollments",
        }  # fmt: skip
        teacher = by_name["TeacherEnrollment"]
        assert (teacher["label"], teacher["base_role_type"], teacher["is_account_role"]) == (
            "Teacher", "TeacherEnrollment", False,
        )  # fmt: skip
        assert teacher["permissions"]["temporary_enrollments_add"]["locked"] is True
        coordinator = by_name["Coordinator"]
        assert (coordinator["id"], coordinator["account"]["id"]) == (custom, world.account_id)
        add = coordinator["permissions"]["temporary_enrollments_add"]
        assert (add["enabled"], add["explicit"], add["prior_default"]) == (True, True, False)
        assert coordinator["permissions"]["temporary_enrollments_delete"]["enabled"] is False
        assert by_name["Substitute"]["id"] == course_role

        [old] = h.ok(client.get("/accounts/self/roles", params={"state[]": "inactive"}))
        assert old["id"] == inactive
        own = [r["id"] for r in h.ok(client.get(f"/accounts/{sub}/roles",
                                                params={"per_page": 100}))]  # fmt: skip
        assert below in own and custom not in own
        query: dict[str, Any] = {"show_inherited": "true", "per_page": 100}
        inherited = h.ok(client.get(f"/accounts/{sub}/roles", params=query))
        assert {below, custom, course_role} <= {r["id"] for r in inherited}
        page = client.get("/accounts/self/roles", params={"per_page": 3})
        assert len(h.ok(page)) == 3 and 'rel="next"' in page.headers["Link"]


# --------------------------------------------------------------------------------------------
# The account's users


def test_the_account_s_users_with_temporary_enrollment_filters_and_search(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        provider = h.user(client, "Paula Provider")
        recipient = h.user(client, "Robin Recipient")
        bystander = h.user(client, "Bea Bystander")
        pairing = h.pairing(client)
        h.ok(h.temporary(client, course["id"], recipient["id"], provider["id"], pairing["id"],
                         utcnow() + DAY))  # fmt: skip

        def names(**params: Any) -> list[str]:
            listed = h.ok(client.get("/accounts/self/users", params={**params, "per_page": 100}))
            return [user["name"] for user in listed]

        assert names() == ["Admin", "Bea Bystander", "Paula Provider", "Robin Recipient"]
        assert names(temporary_enrollment_recipients="true") == ["Robin Recipient"]
        assert names(temporary_enrollment_providers="true") == ["Paula Provider"]
        both = names(temporary_enrollment_recipients="true", temporary_enrollment_providers="1")
        assert both == ["Paula Provider", "Robin Recipient"]
        assert names(search_term="bystand") == ["Bea Bystander"]
        assert names(search_term=bystander["login_id"].upper()) == ["Bea Bystander"]
        # A number matches the user with that id, and (as text) logins that contain it: the
        # helper's logins carry a timestamp, whose digits may hold the id.
        by_id = h.ok(
            client.get("/accounts/self/users", params={"search_term": str(provider["id"])})
        )
        assert provider["id"] in [user["id"] for user in by_id]
        others = [user for user in by_id if user["id"] != provider["id"]]
        assert all(str(provider["id"]) in user["login_id"] for user in others), others
        assert names(search_term="rob", temporary_enrollment_recipients="true") == [
            "Robin Recipient"
        ]
        assert "3 or more characters" in h.error(
            client.get("/accounts/self/users", params={"search_term": "ab"}), 400
        )
        page = client.get("/accounts/self/users", params={"per_page": 2})
        assert len(h.ok(page)) == 2 and 'rel="next"' in page.headers["Link"]
        # Once its enrollment has ended, the recipient is no longer listed.
        h.pairing_of(client.delete(f"/accounts/self/temporary_enrollment_pairings/{pairing['id']}"))
        assert names(temporary_enrollment_recipients="true") == []


def test_a_new_root_account_has_canvas_s_built_in_roles(world: World) -> None:
    """Role::BASE_TYPES, each named like its base type, belonging to no account
    (`Account#create_built_in_roles`)."""
    with transaction(world.factory, commit=False) as session:
        rows = session.execute(
            select(Role.name, Role.base_role_type, Role.account_id).where(
                Role.root_account_id == world.account_id
            )
        ).all()
        assert sorted(tuple(row) for row in rows) == sorted(
            (name, name, None)
            for name in (
                "AccountAdmin", "AccountMembership", "StudentEnrollment", "TeacherEnrollment",
                "TaEnrollment", "DesignerEnrollment", "ObserverEnrollment", "NoPermissions",
            )
        )  # fmt: skip
