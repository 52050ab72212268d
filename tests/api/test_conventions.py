"""Canvas's API conventions over real HTTP: tokens and scopes, `self`, root-account isolation,
parameters from the query string, a form or JSON for every method, pagination, error bodies."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import httpx
import pytest
from sqlalchemy import select, update

from models import ApiToken, StateChange, transaction, utcnow
from tests.api import helpers as h
from tests.api.conftest import World

pytestmark = pytest.mark.postgres

LIST_PAIRINGS_SCOPE = "url:GET|/api/v1/accounts/:account_id/temporary_enrollment_pairings"


def links(response: httpx.Response) -> dict[str, str]:
    return {str(rel): link["url"] for rel, link in response.links.items()}


def page_of(url: str) -> tuple[str, str]:
    query = httpx.URL(url).params
    return query["page"], query["per_page"]


# --------------------------------------------------------------------------------------------
# Authentication and authorization


def test_missing_and_bad_tokens_are_401_with_www_authenticate(world: World) -> None:
    url = f"{world.base_url}/api/v1/accounts/self"
    missing = httpx.get(url)
    assert h.error(missing, 401) == "user authorization required"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    bad = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert h.error(bad, 401) == "Invalid access token."
    assert "WWW-Authenticate" in bad.headers
    basic = httpx.get(url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert h.error(basic, 401) == "user authorization required"


def test_revoked_and_expired_tokens_are_refused(world: World) -> None:
    revoked, expired = world.token_for(world.admin_id), world.token_for(world.admin_id)
    with transaction(world.factory) as session:
        for secret, values in (
            (revoked, {"workflow_state": "deleted"}),
            (expired, {"expires_at": utcnow() - dt.timedelta(seconds=1)}),
        ):
            digest = hashlib.sha256(secret.encode()).hexdigest()
            session.execute(
                update(ApiToken).where(ApiToken.crypted_token == digest).values(**values)
            )
    for secret in (revoked, expired):
        with world.client(secret) as client:
            assert h.error(client.get("/accounts/self"), 401) == "Invalid access token."


def test_only_a_hash_of_the_token_is_stored(world: World) -> None:
    with transaction(world.factory, commit=False) as session:
        stored = session.scalars(select(ApiToken).where(ApiToken.user_id == world.admin_id)).one()
        assert stored.crypted_token == hashlib.sha256(world.token.encode()).hexdigest()
        assert world.token not in (stored.crypted_token, stored.token_hint)
        assert world.token.startswith(stored.token_hint)


def test_a_scoped_token_may_call_only_its_endpoints(world: World) -> None:
    scoped = world.token_for(world.admin_id, LIST_PAIRINGS_SCOPE)
    with world.client() as admin:
        pairing = h.pairing(admin)
    with world.client(scoped) as client:
        assert [
            p["id"]
            for p in h.pairings_of(client.get("/accounts/self/temporary_enrollment_pairings"))
        ] == [pairing["id"]]
        refused = client.get(f"/accounts/self/temporary_enrollment_pairings/{pairing['id']}")
        assert h.error(refused, 401) == "Insufficient scopes on access token."
        assert "WWW-Authenticate" not in refused.headers
        assert h.error(client.post("/accounts/self/temporary_enrollment_pairings"), 401)


def test_another_root_accounts_objects_are_404(world: World, other_world: World) -> None:
    with other_world.client() as theirs:
        their_course = h.course(theirs)
        their_pairing = h.pairing(theirs)
        their_user = h.user(theirs)
    with world.client() as client:
        mine = h.course(client)
        for path in (
            f"/accounts/{other_world.account_id}",
            f"/accounts/{other_world.account_id}/temporary_enrollment_pairings",
            f"/accounts/self/temporary_enrollment_pairings/{their_pairing['id']}",
            f"/courses/{their_course['id']}",
            f"/courses/{their_course['id']}/enrollments",
        ):
            assert h.error(client.get(path), 404), path
        assert h.error(
            client.delete(f"/accounts/self/temporary_enrollment_pairings/{their_pairing['id']}"),
            404,
        )
        assert "no user" in h.error(h.enroll(client, mine["id"], their_user["id"]), 404)
        provider, recipient = h.user(client), h.user(client)
        attempt = h.temporary(
            client, mine["id"], recipient["id"], provider["id"], their_pairing["id"],
            utcnow() + dt.timedelta(days=1),
        )  # fmt: skip
        assert "no temporary enrollment pairing" in h.error(attempt, 404)
    with other_world.client() as theirs:  # untouched
        shown = theirs.get(f"/accounts/self/temporary_enrollment_pairings/{their_pairing['id']}")
        assert h.pairing_of(shown)["workflow_state"] == "active"


def test_self_and_the_accounts_own_id_are_the_same_account(world: World) -> None:
    with world.client() as client:
        assert h.ok(client.get("/accounts/self")) == h.ok(
            client.get(f"/accounts/{world.account_id}")
        )
        assert h.ok(client.get("/accounts/self"))["id"] == world.account_id


# --------------------------------------------------------------------------------------------
# Parameters: query string, form and JSON, for every method


def test_parameters_come_from_query_form_or_json_and_the_body_wins(world: World) -> None:
    with world.client() as client:
        url = "/accounts/self/temporary_enrollment_pairings"
        by_query = h.pairing_of(
            client.post(url, params={"ending_enrollment_state": "inactive"}), 201
        )
        by_json = h.pairing_of(client.post(url, json={"ending_enrollment_state": "completed"}), 201)
        body_wins = h.pairing_of(
            client.post(
                url,
                params={"ending_enrollment_state": "inactive"},
                data={"ending_enrollment_state": "completed"},
            ),
            201,
        )
    assert [p["ending_enrollment_state"] for p in (by_query, by_json, body_wins)] == [
        "inactive",
        "completed",
        "completed",
    ]


def test_nested_parameters_as_form_brackets_or_json_objects(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        a, b = h.user(client), h.user(client)
        by_form = h.ok(h.enroll(client, course["id"], a["id"], type="TaEnrollment"))
        by_json = h.ok(
            client.post(
                f"/courses/{course['id']}/enrollments",
                json={"enrollment": {"user_id": b["id"], "type": "StudentEnrollment"}},
            )
        )
    assert (by_form["user_id"], by_form["type"], by_form["enrollment_state"]) == (
        a["id"], "TaEnrollment", "active",
    )  # fmt: skip
    assert (by_json["user_id"], by_json["type"], by_json["enrollment_state"]) == (
        b["id"], "StudentEnrollment", "invited",
    )  # fmt: skip


@pytest.mark.parametrize("where", ["query", "form", "json"])
def test_a_deletes_task_may_come_from_anywhere(world: World, where: str) -> None:
    with world.client() as client:
        course = h.course(client)
        enrollment = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        url = f"/courses/{course['id']}/enrollments/{enrollment['id']}"
        task = {"task": "deactivate"}
        if where == "query":
            response = client.delete(url, params=task)
        elif where == "form":
            response = client.request("DELETE", url, data=task)
        else:
            response = client.request("DELETE", url, json=task)
    assert h.ok(response)["enrollment_state"] == "inactive"


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        ("{not json", {"Content-Type": "application/json"}, "not valid JSON"),
        ("[1, 2]", {"Content-Type": "application/json"}, "must be an object"),
        ("<xml/>", {"Content-Type": "application/xml"}, "not supported"),
        ("a=1&a[b]=2", {"Content-Type": "application/x-www-form-urlencoded"}, "a value and a hash"),
    ],
)
def test_unreadable_bodies_are_400(
    world: World, content: str, headers: dict[str, str], message: str
) -> None:
    with world.client() as client:
        response = client.post(
            "/accounts/self/temporary_enrollment_pairings", content=content, headers=headers
        )
    assert message in h.error(response, 400)


# --------------------------------------------------------------------------------------------
# Pagination


def test_pagination_links_and_order(world: World) -> None:
    with world.client() as client:
        created = [h.pairing(client)["id"] for _ in range(7)]
        first = client.get("/accounts/self/temporary_enrollment_pairings", params={"per_page": 3})
        assert [p["id"] for p in h.pairings_of(first)] == created[:3]
        rels = links(first)
        assert list(rels) == ["current", "next", "first", "last"]
        assert page_of(rels["next"]) == ("2", "3") and page_of(rels["last"]) == ("3", "3")

        middle = client.get(rels["next"])
        assert [p["id"] for p in h.pairings_of(middle)] == created[3:6]
        assert list(links(middle)) == ["current", "next", "prev", "first", "last"]

        last = client.get(links(middle)["next"])
        assert [p["id"] for p in h.pairings_of(last)] == created[6:]
        assert list(links(last)) == ["current", "prev", "first", "last"]

        default = client.get("/accounts/self/temporary_enrollment_pairings")
        assert len(h.pairings_of(default)) == 7 and page_of(links(default)["current"]) == (
            "1",
            "10",
        )
        clamped = client.get("/accounts/self/temporary_enrollment_pairings?per_page=1000")
        assert page_of(links(clamped)["current"]) == ("1", "100")


def test_filters_survive_in_the_links(world: World) -> None:
    with world.client() as client:
        for _ in range(3):
            h.pairing(client)
        response = client.get(
            "/accounts/self/temporary_enrollment_pairings",
            params={"workflow_state[]": "active", "per_page": 2},
        )
        assert httpx.URL(links(response)["next"]).params["workflow_state[]"] == "active"


@pytest.mark.parametrize("query", ["page=0", "page=abc", "per_page=0", "per_page=-3", "page=1e3"])
def test_bad_page_parameters_are_400(world: World, query: str) -> None:
    with world.client() as client:
        response = client.get(f"/accounts/self/temporary_enrollment_pairings?{query}")
    assert query.split("=")[0] in h.error(response, 400)


# --------------------------------------------------------------------------------------------
# Errors in Canvas's shape, whoever raises them


def test_framework_errors_come_in_canvas_shape(world: World) -> None:
    with world.client() as client:
        assert "course_id" in h.error(client.get("/courses/abc"), 400)
        assert "account_id" in h.error(client.get("/accounts/nobody"), 400)
        assert h.error(client.get("/no/such/route"), 404)
        pairings = "/accounts/self/temporary_enrollment_pairings"
        for method, path, allow in (
            ("PUT", "/accounts/self", "GET"),
            ("PUT", f"{pairings}/5", "DELETE, GET"),
            ("DELETE", f"{pairings}/new", "GET"),  # `new` is not an id
            ("OPTIONS", f"{pairings}/new", "GET"),
            ("PATCH", pairings, "GET, POST"),
        ):
            not_allowed = client.request(method, path)
            assert h.error(not_allowed, 405) and not_allowed.headers["Allow"] == allow, path


def test_the_openapi_document_describes_every_endpoint(world: World) -> None:
    document = httpx.get(f"{world.base_url}/openapi.json").json()
    operations = {
        f"{method.upper()} {path}": spec
        for path, item in document["paths"].items()
        for method, spec in item.items()
    }
    assert set(operations) == {
        "GET /api/v1/accounts/{account_id}/temporary_enrollment_pairings",
        "POST /api/v1/accounts/{account_id}/temporary_enrollment_pairings",
        "GET /api/v1/accounts/{account_id}/temporary_enrollment_pairings/new",
        "GET /api/v1/accounts/{account_id}/temporary_enrollment_pairings/{id}",
        "DELETE /api/v1/accounts/{account_id}/temporary_enrollment_pairings/{id}",
        "POST /api/v1/courses/{course_id}/enrollments",
        "POST /api/v1/sections/{section_id}/enrollments",
        "GET /api/v1/courses/{course_id}/enrollments",
        "DELETE /api/v1/courses/{course_id}/enrollments/{id}",
        "PUT /api/v1/courses/{course_id}/enrollments/{id}/reactivate",
        "GET /api/v1/users/{user_id}/enrollments",
        "GET /api/v1/accounts/{account_id}/roles",
        "GET /api/v1/accounts/{account_id}/users",
        "POST /api/v1/accounts/{account_id}/admins",
        "GET /api/v1/accounts/{account_id}",
        "GET /api/v1/courses/{course_id}",
        "POST /api/v1/accounts/{account_id}/courses",
        "POST /api/v1/courses/{course_id}/sections",
        "GET /api/v1/courses/{course_id}/sections",
        "POST /api/v1/accounts/{account_id}/users",
        "GET /api/v1/users/{user_id}",
        "GET /api/v1/accounts/{account_id}/permissions",
    }
    listing = operations["GET /api/v1/courses/{course_id}/enrollments"]
    names = {p["name"] for p in listing["parameters"]}
    assert {"state[]", "type[]", "user_id", "page", "per_page"} <= names
    assert "Link" in listing["responses"]["200"]["headers"]
    create = operations["POST /api/v1/courses/{course_id}/enrollments"]["requestBody"]["content"]
    assert "enrollment[temporary_enrollment_pairing_id]" in json.dumps(
        create["application/x-www-form-urlencoded"]
    )
    for spec in operations.values():
        assert {"200", "201"} & set(spec["responses"]) and "401" in spec["responses"]


def test_audit_rows_name_the_token_user(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        enrollment = h.ok(h.enroll(client, course["id"], h.user(client)["id"]))
        h.ok(client.delete(f"/courses/{course['id']}/enrollments/{enrollment['id']}"))
    with transaction(world.factory, commit=False) as session:
        row = session.scalars(
            select(StateChange).where(StateChange.context_id == enrollment["id"])
        ).one()
        assert (row.actor_id, row.temporary_enrollment_pairing_id, row.to_state) == (
            world.admin_id, None, "completed",
        )  # fmt: skip
