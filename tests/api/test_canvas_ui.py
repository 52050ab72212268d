"""Canvas's own temporary-enrollment UI, replayed over real HTTP against `tep api`.

Each test sends exactly what the UI's api module sends
(`ui/shared/temporary-enrollment/react/api/enrollment.ts`, at Canvas commit 0e63cfcd): the same
paths and methods, every parameter in the query string and no body, encoded as
`ui/shared/query-string-encoding/index.ts` (`toQueryString`) encodes them, with the headers
`ui/shared/do-fetch-api-effect/index.ts` sends (`defaultFetchOptions` of
`ui/shared/util/xhr.ts`: `Accept: application/json+canvas-string-ids, application/json`,
`X-Requested-With: XMLHttpRequest`, `X-CSRF-Token`). It then reads from each answer what the UI
reads: `response.json.temporary_enrollment_pairing`, ids as strings (`types.ts` types them
`string`). doFetchApi throws on any answer that is not `ok`, so every call here must be a 2xx.

The UI authenticates with Canvas's session cookie; tep has tokens, so the token rides along as
`Authorization: Bearer`, the one header the UI does not send.

The UI's calls beside the api module are replayed too: the Roles API, where a role id for
`createEnrollment` comes from, the provider's own enrollments (TempEnrollAssign.tsx) and
Canvas's reactivate endpoint.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
import pytest

from models import utcnow
from tasks.lifecycle import iso
from tests.api import helpers as h
from tests.api.conftest import World

pytestmark = pytest.mark.postgres

# ui/shared/temporary-enrollment/react/types.ts
ITEMS_PER_PAGE = 100
# ui/shared/util/xhr.ts, defaultFetchOptions
UI_HEADERS = {
    "Accept": "application/json+canvas-string-ids, application/json",
    "X-Requested-With": "XMLHttpRequest",
    "X-CSRF-Token": "not-checked-by-tep",
}


def _serialize(key: str, value: Any, suffix: str, out: list[tuple[str, str]]) -> None:
    """`toQueryString`'s `serialize`: arrays as `[i]` (later `[]`), objects as `{k}` (later
    `[k]`), booleans and numbers by `toString()`, null as `null`."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _serialize(key, item, f"{suffix}[{i}]", out)
    elif isinstance(value, dict):
        for sub, item in value.items():
            _serialize(key, item, f"{suffix}{{{sub}}}", out)
    elif isinstance(value, bool):
        out.append((key + suffix, "true" if value else "false"))
    elif value is None:
        out.append((key + suffix, "null"))
    else:
        out.append((key + suffix, str(value)))


def to_query_string(params: dict[str, Any]) -> str:
    """`toQueryString` of `ui/shared/query-string-encoding/index.ts`, the way doFetchApi builds
    every URL: `{state: ['a']}` is `state%5B%5D=a`, `{enrollment: {user_id: '5'}}` is
    `enrollment%5Buser_id%5D=5`."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        _serialize(key, value, "", pairs)
    fixed = [
        (re.sub(r"\[\d+\]$", "[]", name).replace("{", "[").replace("}", "]"), value)
        for name, value in pairs
    ]
    return urlencode(fixed, quote_via=quote_plus)  # URLSearchParams.toString()


def to_iso_string(moment: dt.datetime) -> str:
    """JavaScript's `Date.prototype.toISOString()`: UTC, milliseconds, `Z`."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass
class Fetched:
    json: Any
    response: httpx.Response


@dataclasses.dataclass
class CanvasUi:
    """doFetchApi against one tep server, as one signed-in admin."""

    world: World

    def do_fetch_api(
        self, path: str, method: str = "GET", params: dict[str, Any] | None = None
    ) -> Fetched:
        query = to_query_string(params or {})
        url = f"{path}?{query}" if query else path
        headers = {**UI_HEADERS, "Authorization": f"Bearer {self.world.token}"}
        with httpx.Client(base_url=self.world.base_url, timeout=30) as client:
            response = client.request(method, url, headers=headers)  # no body, ever
        assert response.is_success, (
            f"doFetchApi received a bad response: {response.status_code} {response.text}"
        )
        # `text.length > 0 ? JSON.parse(text) : undefined`
        return Fetched(json=response.json() if response.content else None, response=response)

    # ui/shared/temporary-enrollment/react/api/enrollment.ts, one method per export

    def create_temporary_enrollment_pairing(
        self, account_id: str, ending_enrollment_state: str
    ) -> dict[str, Any]:
        fetched = self.do_fetch_api(
            f"/api/v1/accounts/{account_id}/temporary_enrollment_pairings",
            method="POST",
            params={"ending_enrollment_state": ending_enrollment_state},
        )
        pairing: dict[str, Any] = fetched.json["temporary_enrollment_pairing"]
        return pairing

    def get_temporary_enrollment_pairing(self, account_id: str, pairing_id: str) -> dict[str, Any]:
        fetched = self.do_fetch_api(
            f"/api/v1/accounts/{account_id}/temporary_enrollment_pairings/{pairing_id}",
            method="GET",
        )
        pairing: dict[str, Any] = fetched.json["temporary_enrollment_pairing"]
        return pairing

    def delete_enrollment(self, course_id: str, enrollment_id: str) -> None:
        self.do_fetch_api(
            f"/api/v1/courses/{course_id}/enrollments/{enrollment_id}",
            params={"task": "delete"},
            method="DELETE",
        )

    def create_enrollment(
        self,
        section_id: str,
        enrollment_user_id: str,
        user_id: str,
        pairing_id: str,
        limit_privileges_to_course_section: bool,
        start_date: dt.datetime,
        end_date: dt.datetime,
        role_id: str,
    ) -> None:
        self.do_fetch_api(
            f"/api/v1/sections/{section_id}/enrollments",
            params={
                "enrollment": {
                    "user_id": enrollment_user_id,
                    "temporary_enrollment_source_user_id": user_id,
                    "temporary_enrollment_pairing_id": pairing_id,
                    "limit_privileges_to_course_section": limit_privileges_to_course_section,
                    "start_at": to_iso_string(start_date),
                    "end_at": to_iso_string(end_date),
                    "role_id": role_id,
                }
            },
            method="POST",
        )

    def fetch_temporary_enrollments(self, user_id: str, is_recipient: bool) -> list[Any]:
        params: dict[str, Any] = {"state": ["current_and_future"], "per_page": ITEMS_PER_PAGE}
        if is_recipient:
            params["temporary_enrollments_for_recipient"] = True
            params["include"] = "temporary_enrollment_providers"
        else:
            params["temporary_enrollment_recipients_for_provider"] = True
        fetched = self.do_fetch_api(f"/api/v1/users/{user_id}/enrollments", params=params)
        if fetched.response.status_code == 204:
            return []
        enrollments: list[Any] = fetched.json
        return enrollments

    # Canvas's UI beside the api module

    def user_enrollments(self, user_id: str) -> list[Any]:
        """TempEnrollAssign.tsx: the provider's enrollments, to pick courses from."""
        fetched = self.do_fetch_api(
            f"/api/v1/users/{user_id}/enrollments",
            params={"state": ["active", "completed", "invited"]},
        )
        enrollments: list[Any] = fetched.json
        return enrollments

    def roles(self, account_id: str) -> list[Any]:
        """Canvas's Roles API (`GET /api/v1/accounts/:account_id/roles`), where a role id for
        `createEnrollment` comes from (the UI of commit 0e63cfcd gets the same list from the
        page's ENV, rendered by Canvas from that API's role JSON)."""
        fetched = self.do_fetch_api(f"/api/v1/accounts/{account_id}/roles")
        roles: list[Any] = fetched.json
        return roles

    def reactivate_enrollment(self, course_id: str, enrollment_id: str) -> dict[str, Any]:
        """Canvas's `PUT /api/v1/courses/:course_id/enrollments/:id/reactivate`
        (app/controllers/enrollments_api_controller.rb), as doFetchApi would send it."""
        fetched = self.do_fetch_api(
            f"/api/v1/courses/{course_id}/enrollments/{enrollment_id}/reactivate", method="PUT"
        )
        enrollment: dict[str, Any] = fetched.json
        return enrollment


def id_values(body: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(body, dict):
        for key, value in body.items():
            if re.search(r"(^|_)id$", key):
                yield key, value
            yield from id_values(value)
    elif isinstance(body, list):
        for item in body:
            yield from id_values(item)


def assert_string_ids(body: Any) -> None:
    found = list(id_values(body))
    assert found, body
    for key, value in found:
        assert value is None or isinstance(value, str), (key, value)


@dataclasses.dataclass
class Scene:
    """A course with a section, a provider teaching it and a recipient, made through tep's API."""

    ui: CanvasUi
    account_id: str
    course_id: str
    section_id: str
    provider_id: str
    recipient_id: str


@pytest.fixture
def scene(world: World) -> Scene:
    with world.client() as client:
        course = h.course(client, "Biology")
        section = h.ok(client.post(f"/courses/{course['id']}/sections"))
        provider, recipient = h.user(client, "Pat Provider"), h.user(client, "Sam Recipient")
        h.ok(h.enroll(client, course["id"], provider["id"], course_section_id=section["id"]))
    return Scene(
        CanvasUi(world),
        str(world.account_id),
        str(course["id"]),
        str(section["id"]),
        str(provider["id"]),
        str(recipient["id"]),
    )


def temporary_enrollment(world: World, scene: Scene, pairing_id: str) -> dict[str, Any]:
    """A temporary enrollment made the way tep takes it today (a `type`, not the UI's
    `role_id`), to replay the UI's reads and deletes against."""
    with world.client() as client:
        made = h.temporary(
            client,
            int(scene.course_id),
            int(scene.recipient_id),
            int(scene.provider_id),
            int(pairing_id),
            utcnow() + dt.timedelta(days=5),
            course_section_id=scene.section_id,
        )
        enrollment: dict[str, Any] = h.ok(made)
    return enrollment


# --------------------------------------------------------------------------------------------
# Pairings


@pytest.mark.parametrize("ending_state", ["deleted", "completed", "inactive"])
def test_create_then_get_a_pairing_as_the_ui_does(scene: Scene, ending_state: str) -> None:
    """TempEnrollModal: createTemporaryEnrollmentPairing(rootAccountId, endingState), then (when
    editing) getTemporaryEnrollmentPairing(rootAccountId, pairingId)."""
    ui = scene.ui
    created = ui.create_temporary_enrollment_pairing(scene.account_id, ending_state)
    assert isinstance(created["id"], str) and created["id"].isdigit()
    assert created["ending_enrollment_state"] == ending_state
    assert_string_ids(created)
    assert (created["root_account_id"], created["created_by_id"]) == (
        scene.account_id, str(ui.world.admin_id),
    )  # fmt: skip

    # The id comes back as the string it was read as, straight into the next URL.
    shown = ui.get_temporary_enrollment_pairing(scene.account_id, created["id"])
    assert shown == created


def test_the_pairing_call_s_answer_is_what_do_fetch_api_parses(scene: Scene) -> None:
    """doFetchApi parses a non-empty body as JSON and needs `ok`: create is a 201 with the
    pairing under its root key, and the answer's Content-Type is Canvas's `application/json`."""
    fetched = scene.ui.do_fetch_api(
        f"/api/v1/accounts/{scene.account_id}/temporary_enrollment_pairings",
        method="POST",
        params={"ending_enrollment_state": "completed"},
    )
    assert fetched.response.status_code == 201
    assert fetched.response.headers["content-type"] == "application/json"
    assert list(fetched.json) == ["temporary_enrollment_pairing"]
    assert fetched.response.request.content == b""  # every parameter was in the query string
    assert "ending_enrollment_state=completed" in str(fetched.response.request.url)


def test_delete_a_temporary_enrollment_as_the_ui_does(world: World, scene: Scene) -> None:
    """TempEnrollEdit/TempEnrollModal: deleteEnrollment(courseId, enrollmentId), `?task=delete`,
    with the ids the UI holds as strings."""
    pairing = scene.ui.create_temporary_enrollment_pairing(scene.account_id, "deleted")
    enrollment = temporary_enrollment(world, scene, pairing["id"])
    scene.ui.delete_enrollment(scene.course_id, str(enrollment["id"]))
    with world.client() as client:
        [gone] = h.ok(
            client.get(
                f"/courses/{scene.course_id}/enrollments",
                params={"state[]": "deleted", "user_id": scene.recipient_id},
            )
        )
    assert gone["id"] == enrollment["id"]
    # Its pairing had nothing else live: it ended, as the sweep would have ended it.
    shown = scene.ui.get_temporary_enrollment_pairing(scene.account_id, pairing["id"])
    assert shown["workflow_state"] == "ended"


# --------------------------------------------------------------------------------------------
# Creating and reading temporary enrollments as the UI does


def test_create_temporary_enrollments_as_the_ui_does(world: World, scene: Scene) -> None:
    """TempEnrollAssign: a pairing, then createEnrollment(sectionId, recipientId, providerId,
    pairingId, limitPrivileges, start, end, roleId) per section, with the role's id and no
    type; then fetchTemporaryEnrollments(recipientId, true) shows it."""
    ui = scene.ui
    [teacher] = [r for r in ui.roles(scene.account_id) if r["role"] == "TeacherEnrollment"]
    assert isinstance(teacher["id"], str)
    pairing = ui.create_temporary_enrollment_pairing(scene.account_id, "completed")
    start = utcnow().replace(microsecond=0)
    end = start + dt.timedelta(days=7)
    ui.create_enrollment(
        scene.section_id, scene.recipient_id, scene.provider_id, pairing["id"], False,
        start, end, teacher["id"],
    )  # fmt: skip
    [enrollment] = ui.fetch_temporary_enrollments(scene.recipient_id, True)
    assert (enrollment["role_id"], enrollment["type"]) == (teacher["id"], "TeacherEnrollment")
    assert enrollment["temporary_enrollment_pairing_id"] == pairing["id"]
    assert enrollment["limit_privileges_to_course_section"] is False
    assert enrollment["end_at"] == iso(end)


def test_fetch_temporary_enrollments_for_a_recipient(world: World, scene: Scene) -> None:
    """TempEnrollView/TempEnrollEdit: fetchTemporaryEnrollments(userId, true), with
    `state[]=current_and_future`, `per_page=100`, `temporary_enrollments_for_recipient=true` and
    `include=temporary_enrollment_providers` (a scalar, as the UI sends it)."""
    pairing = scene.ui.create_temporary_enrollment_pairing(scene.account_id, "inactive")
    made = temporary_enrollment(world, scene, pairing["id"])
    [enrollment] = scene.ui.fetch_temporary_enrollments(scene.recipient_id, True)
    assert_string_ids(enrollment)
    assert (enrollment["id"], enrollment["user_id"]) == (str(made["id"]), scene.recipient_id)
    assert enrollment["temporary_enrollment_pairing_id"] == pairing["id"]
    assert enrollment["temporary_enrollment_source_user_id"] == scene.provider_id
    assert enrollment["temporary_enrollment_provider"]["id"] == scene.provider_id
    assert enrollment["user"]["id"] == scene.recipient_id


def test_fetch_temporary_enrollments_for_a_provider(world: World, scene: Scene) -> None:
    """fetchTemporaryEnrollments(userId, false): `temporary_enrollment_recipients_for_provider`
    on the provider's own id lists the recipients' enrollments."""
    pairing = scene.ui.create_temporary_enrollment_pairing(scene.account_id, "deleted")
    made = temporary_enrollment(world, scene, pairing["id"])
    [enrollment] = scene.ui.fetch_temporary_enrollments(scene.provider_id, False)
    assert (enrollment["id"], enrollment["user_id"]) == (str(made["id"]), scene.recipient_id)
    # A user with no temporary enrollments gets an empty list (or a 204), never an error.
    with world.client() as client:
        nobody = str(h.user(client)["id"])
    assert scene.ui.fetch_temporary_enrollments(nobody, True) == []


def test_the_providers_own_enrollments_as_temp_enroll_assign_reads_them(scene: Scene) -> None:
    """TempEnrollAssign.tsx: `GET /api/v1/users/:id/enrollments?state[]=active&state[]=completed
    &state[]=invited`, the courses and sections the provider can hand out."""
    [own] = scene.ui.user_enrollments(scene.provider_id)
    assert (own["course_id"], own["course_section_id"]) == (scene.course_id, scene.section_id)
    assert own["user_id"] == scene.provider_id


def test_reactivate_an_inactive_enrollment(world: World, scene: Scene) -> None:
    """An inactive temporary enrollment made active again, by Canvas's reactivate endpoint."""
    pairing = scene.ui.create_temporary_enrollment_pairing(scene.account_id, "inactive")
    made = temporary_enrollment(world, scene, pairing["id"])
    # Another recipient's enrollment in the pairing keeps it live meanwhile (one recipient has
    # one temporary enrollment per provider, role and section: Canvas's unique index).
    with world.client() as client:
        other = str(h.user(client, "Robin Other")["id"])
    temporary_enrollment(world, dataclasses.replace(scene, recipient_id=other), pairing["id"])
    with world.client() as client:
        url = f"/courses/{scene.course_id}/enrollments/{made['id']}"
        deactivated = h.ok(client.delete(url, params={"task": "deactivate"}))
        assert deactivated["enrollment_state"] == "inactive"
    again = scene.ui.reactivate_enrollment(scene.course_id, str(made["id"]))
    assert (again["id"], again["enrollment_state"]) == (str(made["id"]), "active")
