"""CanvasClient over real HTTP, through the fault proxy, against the live test Canvas (`tep api`
on a database of its own): pages, every fault kind, a lost answer to a DELETE, concurrency,
exhausted retries, refusals, costs and Canvas's rate-limit headers."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from models import utcnow
from tasks.canvas_rest.client import (
    ANY_TEMPORARY,
    CONCLUDE,
    REMOVE,
    CanvasClient,
    CanvasPermissionError,
    CanvasRequestError,
    CanvasUnavailable,
    parse_body,
    permission_for,
)
from tests.canvas_rest.conftest import TEST_BACKOFF_BASE, TEST_BACKOFF_CAP, TestCanvas
from tests.canvas_rest.proxy import THROTTLE_BODY, FaultKind, LeakyBucket

pytestmark = pytest.mark.postgres


def fast_client(canvas: TestCanvas, token: str | None = None, **options: object) -> CanvasClient:
    settings: dict[str, object] = {
        "backoff_base": TEST_BACKOFF_BASE,
        "backoff_cap": TEST_BACKOFF_CAP,
    }
    settings.update(options)
    return CanvasClient(canvas.url, token or canvas.token, **settings)  # type: ignore[arg-type]


def pairings_path(canvas: TestCanvas) -> str:
    return f"/api/v1/accounts/{canvas.account_id}/temporary_enrollment_pairings"


def a_temporary_enrollment(canvas: TestCanvas, ending_state: str = "deleted") -> tuple[int, int]:
    """(course_id, enrollment_id) of a recipient's live temporary enrollment."""
    provider, recipient = canvas.add_user("Pat Provider"), canvas.add_user("Sam Recipient")
    course_id, _section = canvas.add_course("Biology")
    _pairing, [enrollment_id] = canvas.make_pairing(provider, recipient, [course_id], ending_state)
    return course_id, enrollment_id


# --------------------------------------------------------------------------------------------
# The fixtures and pages


def test_the_fixtures_reach_the_canvas_through_the_proxy(
    canvas: TestCanvas, client: CanvasClient
) -> None:
    provider = canvas.add_user("Pat Provider", "pat@example.edu")
    recipient = canvas.add_user("Sam Recipient")
    course_id, section_id = canvas.add_course("Biology")
    canvas.enroll(provider, course_id, section_id=section_id)
    end = utcnow().replace(microsecond=0) - dt.timedelta(hours=1)  # due
    pairing_id, [enrollment_id] = canvas.make_pairing(
        provider, recipient, [course_id], "inactive", end
    )
    shown = client.get(f"{pairings_path(canvas)}/{pairing_id}")
    assert shown.status == 200, shown.text
    assert shown.body["temporary_enrollment_pairing"]["ending_enrollment_state"] == "inactive"
    [enrollment] = list(
        client.get_all(
            f"/api/v1/users/{recipient}/enrollments",
            [("temporary_enrollments_for_recipient", True), ("state[]", ["inactive", "active"])],
        )
    )
    assert (enrollment["id"], enrollment["course_section_id"]) == (enrollment_id, section_id)
    row = canvas.enrollment(enrollment_id)
    assert (row.temporary_enrollment_pairing_id, row.end_at) == (pairing_id, end)
    assert [(r.method, r.status, r.fault) for r in canvas.proxy.requests] == [
        ("GET", 200, None),
        ("GET", 200, None),
    ]
    # Canvas's `state[]=a&state[]=b`, repeated as given.
    assert "state[]=inactive&state[]=active" in canvas.proxy.requests[1].path.replace(
        "%5B%5D", "[]"
    )


def test_every_page_is_followed_through_the_proxy(canvas: TestCanvas, client: CanvasClient) -> None:
    made = {canvas.add_user(f"User {n}") for n in range(7)}
    users = list(client.get_all(f"/api/v1/accounts/{canvas.account_id}/users", {"per_page": 2}))
    ids = [user["id"] for user in users]
    assert len(ids) == len(set(ids)) == 8  # the admin and the seven
    assert made | {canvas.admin_id} == set(ids)
    # Every page went through the proxy: its Link headers name the proxy, not the Canvas.
    pages = canvas.proxy.requests
    assert len(pages) == 4 and all(r.status == 200 for r in pages)
    assert all("per_page=2" in r.path for r in pages)
    assert client.cost.pages == 4 and client.cost.requests == 4


def test_a_link_to_another_host_is_not_sent_the_token(
    canvas: TestCanvas, client: CanvasClient
) -> None:
    with pytest.raises(CanvasRequestError) as raised:
        client.get("http://203.0.113.9:8080/api/v1/accounts/1/users?page=2")
    assert "refusing to send the Canvas token to http://203.0.113.9:8080" in str(raised.value)
    assert canvas.token not in str(raised.value)
    assert canvas.proxy.requests == [] and client.cost.requests == 0


# --------------------------------------------------------------------------------------------
# Faults: each is retried and the call succeeds


@pytest.mark.parametrize("kind", ["throttle", "error500", "slow", "drop_before", "drop_after"])
def test_each_fault_is_retried_until_the_call_succeeds(canvas: TestCanvas, kind: FaultKind) -> None:
    # A slow answer is one slower than the client's timeout.
    with fast_client(canvas, timeout=0.3) as client:
        canvas.proxy.add_fault(
            kind, times=2, match=r"^GET .*/temporary_enrollment_pairings", delay=1.0
        )
        answer = client.get(pairings_path(canvas))
    assert answer.status == 200 and answer.body == []
    expected_status = {"throttle": 403, "error500": 500, "slow": 200}.get(kind, "dropped")
    # A slow answer is logged when the proxy makes it, after the client gave up on it.
    log = sorted(
        ((r.status, r.fault) for r in canvas.proxy.wait_for_requests(3)), key=lambda e: e[1] or ""
    )
    assert log == sorted(
        [(expected_status, kind), (expected_status, kind), (200, None)], key=lambda e: e[1] or ""
    ), log
    assert (client.cost.requests, client.cost.retries) == (3, 2)
    assert client.cost.throttled == (2 if kind == "throttle" else 0)


def test_the_throttle_answer_is_canvas_s(canvas: TestCanvas) -> None:
    """request_throttle.rb `rate_limit_exceeded`: a 403, text, `X-Rate-Limit-Remaining: 0.0`
    and no `X-Request-Cost`."""
    canvas.proxy.add_fault("throttle")
    answer = httpx.get(
        canvas.url + pairings_path(canvas), headers={"Authorization": f"Bearer {canvas.token}"}
    )
    assert answer.status_code == 403 and answer.content == THROTTLE_BODY
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers["x-rate-limit-remaining"] == "0.0"
    assert "x-request-cost" not in answer.headers


def test_a_delete_whose_answer_is_lost_is_made_once(
    canvas: TestCanvas, client: CanvasClient
) -> None:
    """drop_after: Canvas deleted the enrollment and the answer was lost. The retry finds it
    deleted (Canvas: not found), and Canvas's audit holds one change."""
    course_id, enrollment_id = a_temporary_enrollment(canvas)
    canvas.proxy.add_fault("drop_after", match=r"^DELETE ")
    answer = client.request(
        "DELETE",
        f"/api/v1/courses/{course_id}/enrollments/{enrollment_id}",
        params={"task": "delete"},
    )
    assert answer.status == 404  # the caller records it as gone
    assert canvas.enrollment(enrollment_id).workflow_state == "deleted"
    [change] = canvas.state_changes(enrollment_id)
    assert (change.from_state, change.to_state) == ("active", "deleted")
    assert [(r.method, r.status) for r in canvas.proxy.requests] == [
        ("DELETE", "dropped"),
        ("DELETE", 404),
    ]


def test_a_conclude_whose_answer_is_lost_answers_with_the_state_on_retry(
    canvas: TestCanvas, client: CanvasClient
) -> None:
    course_id, enrollment_id = a_temporary_enrollment(canvas, "completed")
    canvas.proxy.add_fault("drop_after", match=r"^DELETE ")
    answer = client.request(
        "DELETE",
        f"/api/v1/courses/{course_id}/enrollments/{enrollment_id}",
        params={"task": "conclude"},
    )
    assert answer.status == 200 and answer.body["enrollment_state"] == "completed"
    assert len(canvas.state_changes(enrollment_id)) == 1


def test_an_unsafe_post_whose_answer_is_lost_is_not_sent_again_when_asked(
    canvas: TestCanvas, client: CanvasClient
) -> None:
    canvas.proxy.add_fault("drop_after", match=r"^POST ")
    with pytest.raises(CanvasUnavailable) as raised:
        client.request(
            "POST", pairings_path(canvas), data={"ending_enrollment_state": "completed"},
            retry_unsafe=False,
        )  # fmt: skip
    error = raised.value
    assert error.maybe_applied and error.attempts == 1
    assert str(error).startswith("Canvas may have applied POST /api/v1/accounts/")
    assert "check Canvas before retrying" in str(error) and "\n" not in str(error)
    # It was applied, once.
    [pairing] = client.get(pairings_path(canvas)).body
    assert pairing["temporary_enrollment_pairing"]["ending_enrollment_state"] == "completed"
    # Throttled, it is retried even so: Canvas throttles before anything runs.
    canvas.proxy.add_fault("throttle", match=r"^POST ")
    made = client.request("POST", pairings_path(canvas), data={}, retry_unsafe=False)
    assert made.status == 201
    assert len(client.get(pairings_path(canvas)).body) == 2


# --------------------------------------------------------------------------------------------
# Limits


def test_at_most_max_in_flight_requests_at_once(canvas: TestCanvas) -> None:
    canvas.proxy.add_fault("slow", times=12, delay=0.15)
    with fast_client(canvas, max_in_flight=2) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.get(pairings_path(canvas)).status, range(12)))
    assert answers == [200] * 12
    assert canvas.proxy.max_in_flight_seen == 2  # used, and never more


def test_canvas_unavailable_after_max_attempts(canvas: TestCanvas) -> None:
    canvas.proxy.add_fault("error500", times=3)
    with fast_client(canvas, max_attempts=3) as client:
        with pytest.raises(CanvasUnavailable) as raised:
            client.get(pairings_path(canvas))
        message = str(raised.value)
        assert message == (
            f"Canvas did not answer GET {pairings_path(canvas)} after 3 attempts (last: 500 "
            "An error occurred (fault proxy).): it is down, overloaded or throttling this token"
        )
        assert raised.value.attempts == 3 and canvas.token not in message
        assert (client.cost.requests, client.cost.retries) == (3, 2)
        # The next call, once Canvas is back, just works.
        assert client.get(pairings_path(canvas)).status == 200


def test_dropped_connections_exhaust_retries_with_a_clear_line(canvas: TestCanvas) -> None:
    canvas.proxy.add_fault("drop_before", times=2)
    with fast_client(canvas, max_attempts=2) as client, pytest.raises(CanvasUnavailable) as raised:
        client.get(pairings_path(canvas))
    assert "after 2 attempts (last: connection dropped (RemoteProtocolError: " in str(raised.value)


def test_the_bucket_s_headers_are_read_and_the_client_slows_as_it_drains(
    canvas: TestCanvas,
) -> None:
    """Canvas's bucket (600, 10 per second, 50 up front) with a cost of 100 a request: the
    headroom falls 100 a request; under the low-water mark (150 for two in flight) the client
    waits for the leak before each request, `(150 - remaining) / 10` seconds."""
    canvas.proxy.bucket = LeakyBucket(cost=100.0)
    pauses: list[float] = []
    with fast_client(canvas, sleep=pauses.append, max_pause=60.0) as client:
        for _ in range(5):
            assert client.get(pairings_path(canvas)).status == 200
        assert client.cost.lowest_remaining is not None
        # 600 - 5 * 100, and what leaked meanwhile (10 a second)
        assert 100.0 <= client.cost.lowest_remaining < 110.0
        assert client.cost.cost == pytest.approx(500.0)
        assert pauses == []  # above the mark until the fifth answer
        wait = client.pause_needed()
        assert 4.0 < wait <= 5.0  # (150 - 100) / 10
        client.get(pairings_path(canvas))
        assert len(pauses) == 1 and 4.0 < pauses[0] <= 5.0
        assert client.cost.paused == pytest.approx(pauses[0])


def test_a_full_bucket_throttles_and_the_client_waits_it_out(canvas: TestCanvas) -> None:
    """A bucket that one request fills (cost 700 of 600) and that leaks fast (1000 a second):
    the next requests are throttled by the bucket itself until it has leaked below the mark."""
    canvas.proxy.bucket = LeakyBucket(cost=700.0, outflow_per_second=1000.0)
    with fast_client(canvas) as client:
        assert client.get(pairings_path(canvas)).status == 200
        assert client.get(pairings_path(canvas)).status == 200
    assert client.cost.throttled >= 1 and canvas.proxy.bucket.throttled == client.cost.throttled
    throttled = [r for r in canvas.proxy.requests if r.status == 403]
    assert throttled and all(r.fault is None for r in throttled)
    assert client.cost.lowest_remaining is not None and client.cost.lowest_remaining < 0


def test_cost_totals(canvas: TestCanvas, client: CanvasClient) -> None:
    seen: list[float] = []
    for _ in range(3):
        answer = client.get(pairings_path(canvas))
        seen.append(float(answer.headers["x-request-cost"]))
    canvas.proxy.add_fault("throttle")
    client.get(pairings_path(canvas))
    totals = client.cost.as_dict()
    assert set(totals) == {
        "requests", "retries", "throttled", "pages", "cost", "seconds", "paused",
        "lowest_remaining",
    }  # fmt: skip
    assert (totals["requests"], totals["retries"], totals["throttled"]) == (5, 1, 1)
    assert totals["cost"] >= sum(seen) > 0
    assert totals["lowest_remaining"] == 0.0  # the throttle answer's
    assert totals["seconds"] > 0


def test_concurrent_callers_share_the_totals(canvas: TestCanvas, client: CanvasClient) -> None:
    barrier = threading.Barrier(4)

    def call(_: int) -> int:
        barrier.wait()
        return client.get(pairings_path(canvas)).status

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(call, range(4))) == [200] * 4
    assert client.cost.requests == 4


# --------------------------------------------------------------------------------------------
# Refusals: one line, the permission named, never the token


def test_a_bad_token_is_refused_with_one_line(canvas: TestCanvas) -> None:
    token = "7~" + "f" * 64
    with fast_client(canvas, token) as client, pytest.raises(CanvasPermissionError) as raised:
        client.get(pairings_path(canvas))
    error = raised.value
    assert str(error) == (
        "Canvas refused the token (401: Invalid access token.) for GET "
        f"{pairings_path(canvas)}: check TEP_CANVAS_TOKEN"
    )
    assert (error.status, error.method, error.permission) == (401, "GET", None)
    assert token not in str(error) and token not in repr(error.args)
    assert len(canvas.proxy.requests) == 1  # not retried


def test_a_user_without_the_permission_is_told_which_it_needs(canvas: TestCanvas) -> None:
    course_id, enrollment_id = a_temporary_enrollment(canvas)
    nobody = canvas.add_user("Not An Admin")
    token = canvas.token_for(nobody)
    with fast_client(canvas, token) as client:
        with pytest.raises(CanvasPermissionError) as listing:
            client.get(pairings_path(canvas))
        with pytest.raises(CanvasPermissionError) as deleting:
            client.request(
                "DELETE",
                f"/api/v1/courses/{course_id}/enrollments/{enrollment_id}",
                params={"task": "delete"},
            )
    assert str(listing.value) == (
        f"Canvas refused GET {pairings_path(canvas)} (401: user not authorized to perform that "
        f"action): the token's user needs {ANY_TEMPORARY} in the account"
    )
    assert listing.value.permission == ANY_TEMPORARY
    assert deleting.value.permission == REMOVE
    assert "remove_teacher_from_course" in str(deleting.value)
    for error in (listing.value, deleting.value):
        assert token not in str(error) and canvas.token not in str(error)
        assert "\n" not in str(error)
    assert canvas.enrollment(enrollment_id).workflow_state == "active"
    assert len(canvas.proxy.requests) == 2  # neither retried


def test_a_403_that_is_not_the_throttle_is_a_permission_error(
    canvas: TestCanvas, client: CanvasClient
) -> None:
    """A 403 without Canvas's throttle body is a refusal: not retried, permission named."""
    canvas.proxy.add_fault("respond", status=403)
    course_id, enrollment_id = a_temporary_enrollment(canvas)
    with pytest.raises(CanvasPermissionError) as raised:
        client.request("PUT", f"/api/v1/courses/{course_id}/enrollments/{enrollment_id}/reactivate")
    assert (raised.value.status, raised.value.permission) == (403, REMOVE)
    assert str(raised.value).startswith(
        f"Canvas refused PUT /api/v1/courses/{course_id}/enrollments/{enrollment_id}/reactivate "
        "(403: user not authorized to perform that action): the token's user needs remove_"
    )
    assert len(canvas.proxy.requests) == 1


# --------------------------------------------------------------------------------------------
# Pieces without a server


def test_the_permission_table() -> None:
    assert permission_for("POST", "/api/v1/accounts/1/temporary_enrollment_pairings") == (
        "temporary_enrollments_add"
    )
    assert permission_for("DELETE", "/api/v1/accounts/self/temporary_enrollment_pairings/9") == (
        "temporary_enrollments_delete"
    )
    assert permission_for("GET", "/api/v1/accounts/1/temporary_enrollment_pairings/9") == (
        ANY_TEMPORARY
    )
    enrollment = "/api/v1/courses/3/enrollments/4"
    assert permission_for("DELETE", enrollment, {"task": "deactivate"}) == REMOVE
    assert permission_for("DELETE", enrollment, {"task": "conclude"}) == CONCLUDE
    assert permission_for("DELETE", enrollment) == CONCLUDE  # Canvas's default task
    assert permission_for("PUT", enrollment + "/reactivate") == REMOVE
    assert (
        permission_for(
            "GET", "/api/v1/users/5/enrollments", {"temporary_enrollments_for_recipient": "true"}
        )
        == ANY_TEMPORARY
    )
    assert permission_for("GET", "/api/v1/users/5/enrollments") == "read_roster"
    assert permission_for("GET", "/api/v1/accounts/1/users") == "read_roster"
    assert permission_for("GET", "/api/v1/accounts/1") is None


def test_canvas_s_json_prefix_is_stripped() -> None:
    response = httpx.Response(
        200, headers={"content-type": "application/json"}, content=b'while(1);[{"id": 1}]'
    )
    assert parse_body(response)[0] == [{"id": 1}]
    throttled = httpx.Response(403, headers={"content-type": "text/plain"}, content=THROTTLE_BODY)
    assert parse_body(throttled) == (None, THROTTLE_BODY.decode())
