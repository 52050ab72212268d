"""Canvas's wire format beyond the objects' shapes: string ids on request, ids accepted as strings
in every parameter, and every write endpoint's parameters read from the query string (where
Canvas's UI puts them)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from api import create_app
from api.wire import stringify_ids, wants_string_ids
from models import utcnow
from tasks.lifecycle import iso
from tests.api import helpers as h
from tests.api.conftest import World

pytestmark = pytest.mark.postgres

# What Canvas's UI sends (ui/shared/util/xhr.ts, defaultFetchOptions, used by doFetchApi).
UI_ACCEPT = "application/json+canvas-string-ids, application/json"
STRING_IDS = {"Accept": UI_ACCEPT}
PAIRINGS = "/accounts/self/temporary_enrollment_pairings"
ID_KEY = re.compile(r"(^|_)id$")
# Keys Canvas's stringify rule matches whose values are strings to begin with (a user's logins).
STRING_VALUED_IDS = {"login_id", "sis_user_id", "integration_id"}


# --------------------------------------------------------------------------------------------
# The transformation itself (pure logic)


def test_stringify_ids_is_canvas_s_recursively_stringify_ids() -> None:
    given = {
        "id": 1,
        "user_id": 22,
        "sis_user_id": "abc",  # already a string: left alone
        "login_id": "someone",
        "deleted_by_id": None,  # null stays null
        "is_id": True,  # Ruby's Integer excludes true/false
        "course_ids": [3, "4", None],
        "ids": [5],
        "identity": 6,  # not an id key
        "idx": 7,
        "grid": 8,  # ends in "id" but not "_id"
        "ID": 13,  # Canvas's expressions ignore case
        "lti_ID": 14,
        "userId": 15,  # but need a `_` or the start before `id`
        "nested": {"id": 9, "items": [{"pairing_id": 10, "count": 11}]},
        "user_id_hash": {"id": 12},  # a hash under an *_id key is only descended into
    }
    assert stringify_ids(given) == {
        "id": "1",
        "user_id": "22",
        "sis_user_id": "abc",
        "login_id": "someone",
        "deleted_by_id": None,
        "is_id": True,
        "course_ids": ["3", "4", None],
        "ids": ["5"],
        "identity": 6,
        "idx": 7,
        "grid": 8,
        "ID": "13",
        "lti_ID": "14",
        "userId": 15,
        "nested": {"id": "9", "items": [{"pairing_id": "10", "count": 11}]},
        "user_id_hash": {"id": "12"},
    }
    assert stringify_ids([{"id": 1}, [{"root_account_id": 2}], 3]) == [
        {"id": "1"},
        [{"root_account_id": "2"}],
        3,
    ]
    assert given["id"] == 1  # a copy: the input is untouched


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (UI_ACCEPT, True),
        ("application/json+canvas-string-ids", True),
        ("text/html, application/json+canvas-string-ids;q=0.9", True),
        ("application/json", False),
        ("*/*", False),
        (None, False),
    ],
)
def test_string_ids_are_asked_for_by_the_media_type_anywhere_in_accept(
    accept: str | None, wanted: bool
) -> None:
    assert wants_string_ids(accept) is wanted


# --------------------------------------------------------------------------------------------
# Over HTTP: every answer


def id_values(body: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of an `id`/`*_id` key, at any depth."""
    if isinstance(body, dict):
        for key, value in body.items():
            if ID_KEY.search(key):
                yield key, value
            yield from id_values(value)
    elif isinstance(body, list):
        for item in body:
            yield from id_values(item)


def both(client: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[Any, Any]:
    """One GET answered with numbers and with strings; both must be the same object."""
    numbers = client.request(method, url, **kwargs)
    strings = client.request(method, url, headers=STRING_IDS, **kwargs)
    assert numbers.status_code == strings.status_code == 200, (numbers.text, strings.text)
    assert (
        strings.headers["content-type"] == numbers.headers["content-type"] == ("application/json")
    )
    assert int(strings.headers["content-length"]) == len(strings.content)
    return numbers.json(), strings.json()


def assert_string_ids(numbers: Any, strings: Any) -> None:
    found = list(id_values(strings))
    assert found, strings
    for key, value in found:
        assert value is None or isinstance(value, str), (key, value, strings)
    assert all(
        value is None or isinstance(value, int) or key in STRING_VALUED_IDS
        for key, value in id_values(numbers)
    ), numbers
    assert strings == stringify_ids(numbers)


def test_every_answer_has_string_ids_when_asked_and_numbers_otherwise(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        section = h.ok(client.post(f"/courses/{course['id']}/sections"))
        provider, recipient = h.user(client), h.user(client)
        pairing = h.pairing(client)
        temporary = h.ok(
            h.temporary(
                client, course["id"], recipient["id"], provider["id"], pairing["id"],
                utcnow() + dt.timedelta(days=3),
            )
        )  # fmt: skip
        gets = [
            "/accounts/self",
            f"/courses/{course['id']}",
            f"/courses/{course['id']}/enrollments",
            f"/users/{recipient['id']}/enrollments?include[]=temporary_enrollment_providers",
            f"/users/{recipient['id']}/enrollments?temporary_enrollments_for_recipient=true",
            "/accounts/self/roles",
            "/accounts/self/users",
            PAIRINGS,
            f"{PAIRINGS}/new",
            f"{PAIRINGS}/{pairing['id']}",
        ]
        for url in gets:
            numbers, strings = both(client, "GET", url)
            assert_string_ids(numbers, strings)
        [listed] = client.get(PAIRINGS, headers=STRING_IDS).json()
        shown = listed["temporary_enrollment_pairing"]
        assert (shown["id"], shown["root_account_id"], shown["created_by_id"]) == (
            str(pairing["id"]), str(world.account_id), str(world.admin_id),
        )  # fmt: skip
        assert shown["deleted_by_id"] is None
        new = client.get(f"{PAIRINGS}/new", headers=STRING_IDS).json()
        assert new["temporary_enrollment_pairing"]["id"] is None

        # Writes too: every object a POST or DELETE answers.
        writes = [
            client.post(PAIRINGS, headers=STRING_IDS),
            client.post("/accounts/self/courses", headers=STRING_IDS),
            client.post(f"/courses/{course['id']}/sections", headers=STRING_IDS),
            client.post(
                "/accounts/self/users",
                params={"user[name]": "Str Ing", "pseudonym[unique_id]": f"s-{world.account_id}"},
                headers=STRING_IDS,
            ),
            client.post(
                f"/sections/{section['id']}/enrollments",
                params={"enrollment[user_id]": provider["id"], "enrollment[type]": "TaEnrollment"},
                headers=STRING_IDS,
            ),
            client.delete(
                f"/courses/{course['id']}/enrollments/{temporary['id']}", headers=STRING_IDS
            ),
            client.delete(f"{PAIRINGS}/{pairing['id']}", headers=STRING_IDS),
        ]
        for response in writes:
            assert response.status_code in (200, 201), response.text
            assert response.headers["content-type"] == "application/json"
            found = list(id_values(response.json()))
            assert found and all(v is None or isinstance(v, str) for _k, v in found), found
        ended = writes[-1].json()["temporary_enrollment_pairing"]
        assert ended["deleted_by_id"] == str(world.admin_id)

        # Errors keep their shape (they carry no ids), and the 404 is still a 404.
        missing = client.get(f"{PAIRINGS}/987654321", headers=STRING_IDS)
        assert "no temporary enrollment pairing" in h.error(missing, 404)
        # Without the header, numbers.
        assert isinstance(h.pairing(client)["id"], int)


def test_string_ids_follow_the_link_header_pages(world: World) -> None:
    """A paginated list keeps its Link header, and every page has string ids."""
    with world.client() as client:
        created = [str(h.pairing(client)["id"]) for _ in range(3)]
        first = client.get(PAIRINGS, params={"per_page": 2}, headers=STRING_IDS)
        second = client.get(first.links["next"]["url"], headers=STRING_IDS)
    pages = [h.pairings_of(first), h.pairings_of(second)]
    assert [p["id"] for page in pages for p in page] == created


# --------------------------------------------------------------------------------------------
# Ids accepted as strings, in every kind of parameter


def test_ids_are_accepted_as_strings_in_json_bodies_query_strings_and_forms(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        section = h.ok(client.post(f"/courses/{course['id']}/sections"))
        provider, a, b, c = (h.user(client) for _ in range(4))
        pairing = h.pairing(client)
        end_at = (utcnow() + dt.timedelta(days=2)).isoformat()
        by_json = h.ok(
            client.post(
                f"/courses/{course['id']}/enrollments",
                json={
                    "enrollment": {
                        "user_id": str(a["id"]),
                        "type": "TeacherEnrollment",
                        "course_section_id": str(section["id"]),
                        "temporary_enrollment_source_user_id": str(provider["id"]),
                        "temporary_enrollment_pairing_id": str(pairing["id"]),
                        "end_at": end_at,
                    }
                },
            )
        )
        assert (by_json["user_id"], by_json["course_section_id"]) == (a["id"], section["id"])
        assert by_json["temporary_enrollment_pairing_id"] == pairing["id"]
        by_number = h.ok(
            client.post(
                f"/courses/{course['id']}/enrollments",
                json={"enrollment": {"user_id": b["id"], "type": "TaEnrollment"}},
            )
        )
        assert by_number["user_id"] == b["id"]
        by_form = h.ok(h.enroll(client, course["id"], c["id"]))  # a form sends only strings
        assert by_form["user_id"] == c["id"]
        listed = h.ok(
            client.get(f"/courses/{course['id']}/enrollments", params={"user_id": str(a["id"])})
        )
        assert [e["id"] for e in listed] == [by_json["id"]]
        # Path ids are strings by nature; the account's own id works as well as `self`.
        shown = client.get(
            f"/accounts/{world.account_id}/temporary_enrollment_pairings/{pairing['id']}"
        )
        assert h.pairing_of(shown)["id"] == pairing["id"]
        # Not an id: a 400 naming the parameter.
        bad = client.post(
            f"/courses/{course['id']}/enrollments",
            json={"enrollment": {"user_id": "12abc", "type": "TaEnrollment"}},
        )
        assert "enrollment[user_id]" in h.error(bad, 400)


# --------------------------------------------------------------------------------------------
# Every write endpoint reads its parameters from the query string, as Canvas's UI sends them
# (ui/shared/do-fetch-api-effect/index.ts puts `params` in the URL for every method)


def write_calls(world: World, client: httpx.Client) -> dict[str, Callable[[], None]]:
    """One call per write endpoint, every parameter in the query string and no body."""
    course = h.course(client)
    section = h.ok(client.post(f"/courses/{course['id']}/sections"))
    provider, recipient = h.user(client), h.user(client)
    end_at = (utcnow() + dt.timedelta(days=4)).replace(microsecond=0)
    ui_end_at = end_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def create_pairing() -> None:
        made = h.pairing_of(
            client.post(PAIRINGS, params={"ending_enrollment_state": "completed"}), 201
        )
        assert made["ending_enrollment_state"] == "completed"
        refused = client.post(PAIRINGS, params={"ending_enrollment_state": "expired"})
        assert "deleted, completed, inactive" in h.error(refused, 400)

    def delete_pairing() -> None:
        made = h.pairing(client)
        gone = h.pairing_of(client.delete(f"{PAIRINGS}/{made['id']}"))
        assert gone["workflow_state"] == "deleted"

    def create_course() -> None:
        made = h.ok(client.post("/accounts/self/courses", params={"course[name]": "By Query"}))
        assert made["name"] == "By Query"

    def create_section() -> None:
        url = f"/courses/{course['id']}/sections"
        made = h.ok(client.post(url, params={"course_section[name]": "Lab Q"}))
        assert (made["name"], made["course_id"]) == ("Lab Q", course["id"])

    def create_user() -> None:
        made = h.ok(
            client.post(
                "/accounts/self/users",
                params={
                    "user[name]": "Quinn Query",
                    "pseudonym[unique_id]": f"q{world.account_id}",
                },
            )
        )
        assert (made["name"], made["login_id"]) == ("Quinn Query", f"q{world.account_id}")

    def temporary_params(pairing_id: int, type: str = "TeacherEnrollment") -> dict[str, Any]:
        # One enrollment per user, type, role and section (Canvas's unique index): each call
        # that enrolls the recipient in `section` uses a type of its own.
        return {
            "enrollment[user_id]": str(recipient["id"]),
            "enrollment[type]": type,
            "enrollment[enrollment_state]": "active",
            "enrollment[temporary_enrollment_source_user_id]": str(provider["id"]),
            "enrollment[temporary_enrollment_pairing_id]": str(pairing_id),
            "enrollment[end_at]": ui_end_at,
        }

    def create_course_enrollment() -> None:
        pairing = h.pairing(client)
        made = h.ok(
            client.post(
                f"/courses/{course['id']}/enrollments",
                params={
                    **temporary_params(pairing["id"]),
                    "enrollment[course_section_id]": section["id"],
                },
            )
        )
        assert (made["course_section_id"], made["temporary_enrollment_pairing_id"]) == (
            section["id"], pairing["id"],
        )  # fmt: skip
        assert made["end_at"] == iso(end_at)

    def create_section_enrollment() -> None:
        pairing = h.pairing(client)
        made = h.ok(
            client.post(
                f"/sections/{section['id']}/enrollments",
                params=temporary_params(pairing["id"], "TaEnrollment"),
            )
        )
        assert (made["course_section_id"], made["enrollment_state"]) == (section["id"], "active")

    def delete_enrollment() -> None:
        made = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        url = f"/courses/{course['id']}/enrollments/{made['id']}"
        assert h.ok(client.delete(url, params={"task": "delete"}))["enrollment_state"] == "deleted"

    def reactivate_enrollment() -> None:
        made = h.ok(h.enroll(client, course["id"], h.user(client)["id"], state="inactive"))
        url = f"/courses/{course['id']}/enrollments/{made['id']}/reactivate"
        assert h.ok(client.put(url))["enrollment_state"] == "active"

    def create_admin() -> None:
        someone = h.user(client)
        query = {"user_id": str(someone["id"]), "role": "AccountAdmin"}
        made = h.ok(client.post("/accounts/self/admins", params=query))
        assert (made["user"]["id"], made["role"]) == (someone["id"], "AccountAdmin")

    return {
        "POST /api/v1/accounts/{account_id}/temporary_enrollment_pairings": create_pairing,
        "DELETE /api/v1/accounts/{account_id}/temporary_enrollment_pairings/{id}": delete_pairing,
        "POST /api/v1/accounts/{account_id}/courses": create_course,
        "POST /api/v1/courses/{course_id}/sections": create_section,
        "POST /api/v1/accounts/{account_id}/users": create_user,
        "POST /api/v1/courses/{course_id}/enrollments": create_course_enrollment,
        "POST /api/v1/sections/{section_id}/enrollments": create_section_enrollment,
        "DELETE /api/v1/courses/{course_id}/enrollments/{id}": delete_enrollment,
        "PUT /api/v1/courses/{course_id}/enrollments/{id}/reactivate": reactivate_enrollment,
        "POST /api/v1/accounts/{account_id}/admins": create_admin,
    }


def write_routes() -> set[str]:
    app = create_app(database_url="sqlite://")
    return {
        f"{method} {route.path}"
        for route in app.state.api_routes  # as declared (FastAPI nests included routers)
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
        if method not in ("GET", "HEAD")
    }


def test_every_write_endpoint_takes_its_parameters_from_the_query_string(world: World) -> None:
    with world.client() as client:
        calls = write_calls(world, client)
        # A new write endpoint must be added here: Canvas's UI sends it nothing but a query.
        assert set(calls) == write_routes()
        for name, call in calls.items():
            try:
                call()
            except AssertionError as failure:
                raise AssertionError(f"{name}: {failure}") from failure
