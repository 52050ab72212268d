"""Issue 12, the API's part: hostile input, secrets, request limits, tokens, HTTP headers and the
read-time rule on writes. Each test here failed on the code before its fix."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import socket
import urllib.parse
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from api import create_app
from api.middleware import BodyLimit, redact_query
from models import ApiToken, Enrollment, Pseudonym, StateChange, User, transaction, utcnow
from tests.api import helpers as h
from tests.api.conftest import World, add_user
from tests.api.server import ApiServer
from tests.processes import wait_until
from worker.settings import SettingsError, load_settings

DAY = dt.timedelta(days=1)
PAIRINGS = "/accounts/self/temporary_enrollment_pairings"
BEYOND_64_BITS = [str(2**63), "9999999999999999999", "9" * 25]
# Digits that are not ASCII: superscript, circled, Arabic-Indic, fullwidth.
UNICODE_DIGITS = ["²", "①", "١٢", "\uff11\uff12"]


# --------------------------------------------------------------------------------------------
# 1. Text input


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user[name]", "Ada\nBcc: victim@example.test"),
        ("user[sortable_name]", "Lovelace,\rAda"),
        ("pseudonym[unique_id]", "ada\x1b[31m"),
        ("pseudonym[sis_user_id]", "sis\x7f1"),
        ("communication_channel[address]", "ada@example.test\n"),  # `$` took it
        ("communication_channel[address]", "ada@example.test\r\nBcc: x@example.test"),
        ("user[name]", "Ada\u2028Lovelace"),  # Unicode's line separator
        ("user[name]", "Ada\x85"),  # C1 next line
    ],
)
def test_user_names_logins_and_addresses_refuse_control_characters(
    world: World, field: str, value: str
) -> None:
    data = {"user[name]": "Ada Lovelace", "pseudonym[unique_id]": f"ada-{uuid.uuid4().hex}"}
    data[field] = value
    with world.client() as client:
        message = h.error(client.post("/accounts/self/users", data=data), 400)
    assert message.startswith(field) and "control characters" in message


@pytest.mark.postgres
def test_course_and_section_names_refuse_control_characters(world: World) -> None:
    with world.client() as client:
        for field in ("course[name]", "course[course_code]"):
            message = h.error(
                client.post("/accounts/self/courses", data={field: "Biology\n101"}), 400
            )
            assert message.startswith(field) and "control characters" in message
        course = h.course(client)
        message = h.error(
            client.post(
                f"/courses/{course['id']}/sections", json={"course_section": {"name": "A\tB"}}
            ),
            400,
        )
        assert message.startswith("course_section[name]")
        # Text without control characters is kept as given, non-ASCII letters included.
        made = h.course(client, "Biologie für Anfänger — Teil 1")
        assert made["name"] == "Biologie für Anfänger — Teil 1"


@pytest.mark.postgres
def test_an_address_must_match_whole(world: World) -> None:
    with world.client() as client:
        for address in ("ada@example", "ada@@example.test", "ada@example.test x"):
            data = {
                "user[name]": "Ada",
                "pseudonym[unique_id]": f"ada-{uuid.uuid4().hex}",
                "communication_channel[address]": address,
            }
            message = h.error(client.post("/accounts/self/users", data=data), 400)
            assert message.startswith("communication_channel[address]")


# --------------------------------------------------------------------------------------------
# 2. Secrets never shown


def access_log_line(server: ApiServer, probe: str) -> str:
    found: list[str] = []

    def logged() -> bool:
        found[:] = [line for line in server.log.splitlines() if probe in line]
        return bool(found)

    wait_until(logged, 10, f"the access log line of {probe}")
    return found[0]


@pytest.mark.postgres
def test_no_token_reaches_the_access_log(world: World, pg_server: ApiServer) -> None:
    in_query = f"query-secret-{uuid.uuid4().hex}"
    probe = f"probe-{uuid.uuid4().hex}"
    with world.client() as client:  # the good token in its header
        client.get(
            "/accounts/self",
            params={"access_token": in_query, "Password": "pw-" + in_query, "probe": probe},
        )
    with world.client(f"header-secret-{in_query}") as client:
        client.get("/accounts/self", params={"probe": probe + "-bad"})
    line = access_log_line(pg_server, probe)
    assert "access_token=[FILTERED]" in line and "Password=[FILTERED]" in line, line
    assert f"probe={probe}" in line  # the rest of the query is kept
    log = pg_server.log
    assert in_query not in log and world.token not in log


def test_redact_query_keeps_what_is_no_secret() -> None:
    assert redact_query("/a") == "/a"
    assert redact_query("/a?page=2&per_page=10") == "/a?page=2&per_page=10"
    assert (
        redact_query("/a?access%5Ftoken=x&api_key=y&state[]=active&client_secret")
        == "/a?access%5Ftoken=[FILTERED]&api_key=[FILTERED]&state[]=active&client_secret"
    )


# --------------------------------------------------------------------------------------------
# 3. Request limits


def raw_exchange(base_url: str, head: str, timeout: float = 15) -> bytes:
    """Send request headers (and no body) over a socket; read the answer until the server
    closes the connection. A server waiting for the body times out here."""
    url = urllib.parse.urlsplit(base_url)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no answer in {timeout} s: {answer!r}") from None
            if not data:
                return answer
            answer += data


@pytest.mark.postgres
def test_a_body_over_the_limit_is_413_before_it_is_read(world: World) -> None:
    """The Content-Length announces 50 MiB and none of it is sent: the answer comes at once."""
    head = (
        "POST /api/v1/accounts/self/courses HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Authorization: Bearer {world.token}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    )
    answer = raw_exchange(world.base_url, head)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"TEP_MAX_BODY_BYTES" in answer


@pytest.mark.postgres
def test_a_body_at_the_limit_is_read_and_one_byte_more_is_413(world: World) -> None:
    limit = 1024 * 1024  # the default TEP_MAX_BODY_BYTES
    with world.client() as client:
        name = "x" * 200
        body = b'{"course": {"name": "' + name.encode() + b'"}, "pad": "'
        body += b" " * (limit - len(body) - 2) + b'"}'
        assert len(body) == limit
        headers = {"Content-Type": "application/json"}
        made = h.ok(client.post("/accounts/self/courses", content=body, headers=headers))
        assert made["name"] == name
    head = (
        "POST /api/v1/accounts/self/courses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n"
    )
    assert raw_exchange(world.base_url, head).startswith(b"HTTP/1.1 413 ")


def test_the_body_limit_stops_reading_a_body_without_a_length() -> None:
    """A chunked body is counted as it comes: reading stops once it passes the limit, and the
    rest is never asked for (this one would never end)."""
    pulled = 0

    async def endless_receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    async def reads_everything(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        raise AssertionError("the whole body was read")

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(BodyLimit(reads_everything, max_bytes=1000)(scope, endless_receive, send))
    assert pulled == 11  # 1,100 bytes: the first chunk past 1,000
    assert sent[0]["status"] == 413 and b"1000 bytes" in sent[1]["body"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TEP_MAX_BODY_BYTES", "0", "greater than 0"),
        ("TEP_MAX_BODY_BYTES", "-5", "greater than 0"),
        ("TEP_MAX_BODY_BYTES", "1e9", "valid integer"),
        ("TEP_PUBLIC_URL", "ftp://tep.example.test", "not a public base URL"),
        ("TEP_PUBLIC_URL", "https://user:pw@tep.example.test", "not a public base URL"),
        ("TEP_PUBLIC_URL", "https://tep.example.test/?x=1", "not a public base URL"),
        ("TEP_PUBLIC_URL", "https://tep.example.test/\nX-Evil: 1", "not a public base URL"),
        ("TEP_METRICS_TOKEN", "short", "at least 32"),
    ],
)
def test_api_settings_are_validated(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert name in str(raised.value) and message in str(raised.value)
    if name == "TEP_METRICS_TOKEN":
        assert value not in str(raised.value)  # a secret is never echoed


def test_api_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TEP_MAX_BODY_BYTES", "TEP_PUBLIC_URL", "TEP_METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.max_body_bytes, settings.public_url, settings.metrics_token) == (
        1024 * 1024, "", "",
    )  # fmt: skip
    monkeypatch.setenv("TEP_PUBLIC_URL", " https://tep.example.test/prefix/ ")
    assert load_settings().public_url == "https://tep.example.test/prefix"


@pytest.mark.postgres
def test_echoed_values_are_cut_to_a_short_prefix(world: World) -> None:
    """In a body, values up to the body limit; in the query string, what the server's request
    line takes (uvicorn refuses longer lines itself)."""
    huge, long = "x" * 500_000, "9" * 10_000
    with world.client() as client:
        course = h.course(client)
        answers = [
            client.post(PAIRINGS, data={"ending_enrollment_state": huge}),
            client.post(PAIRINGS, json={"workflow_state": huge}),
            client.get(PAIRINGS, params={"page": long}),
            client.get(PAIRINGS, params={"include_deleted": long}),
            client.get(PAIRINGS, params={"workflow_state[]": long}),
            client.post(f"/courses/{course['id']}/enrollments", data={"enrollment[user_id]": huge}),
            client.post(
                f"/courses/{course['id']}/enrollments",
                json={"enrollment": {"user_id": 1, "end_at": huge}},
            ),
            client.post(
                "/accounts/self/users",
                data={
                    "user[name]": "A",
                    "pseudonym[unique_id]": "a",
                    "communication_channel[address]": "@" * 200,
                },
            ),
            client.post(
                PAIRINGS,
                content=f"{huge}=1&{huge}[a]=2",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
        ]
    for answer in answers:
        message = h.error(answer, 400)
        assert len(message) < 400, message[:500]
        assert huge[:101] not in message and long[:101] not in message
        assert "…" in message  # a prefix of the value, not none of it


@pytest.mark.postgres
def test_ids_beyond_64_bits_are_404_in_paths(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        for big in BEYOND_64_BITS:
            for method, path in [
                ("GET", f"/accounts/{big}"),
                ("GET", f"/accounts/{big}/roles"),
                ("GET", f"/accounts/{big}/users"),
                ("POST", f"/accounts/{big}/courses"),
                ("GET", f"/accounts/{big}/temporary_enrollment_pairings"),
                ("GET", f"/accounts/self/temporary_enrollment_pairings/{big}"),
                ("DELETE", f"/accounts/self/temporary_enrollment_pairings/{big}"),
                ("GET", f"/courses/{big}"),
                ("GET", f"/courses/{big}/enrollments"),
                ("POST", f"/courses/{big}/sections"),
                ("POST", f"/sections/{big}/enrollments"),
                ("DELETE", f"/courses/{course['id']}/enrollments/{big}"),
                ("PUT", f"/courses/{course['id']}/enrollments/{big}/reactivate"),
                ("GET", f"/users/{big}/enrollments"),
            ]:
                answer = client.request(method, path)
                assert answer.status_code == 404, (method, path, answer.text)
        assert h.error(client.get("/courses/0"), 404)


@pytest.mark.postgres
def test_ids_beyond_64_bits_are_400_in_parameters(world: World) -> None:
    with world.client() as client:
        course = h.course(client)
        someone = h.user(client)
        for big in BEYOND_64_BITS:
            for answer in (
                client.get(f"/courses/{course['id']}/enrollments", params={"user_id": big}),
                h.enroll(client, course["id"], big),
                h.enroll(client, course["id"], someone["id"], role_id=big),
                client.post("/accounts/self/admins", data={"user_id": big}),
                client.post("/accounts/self/admins", json={"user_id": int(big)}),
            ):
                assert answer.status_code == 400, answer.text
            # A search for a number no id can have is a search of the text alone.
            assert h.ok(client.get("/accounts/self/users", params={"search_term": big})) == []


@pytest.mark.postgres
@pytest.mark.parametrize("digits", UNICODE_DIGITS)
def test_numbers_are_ascii_digits_only(world: World, digits: str) -> None:
    with world.client() as client:
        course = h.course(client)
        for params in ({"page": digits}, {"per_page": digits}, {"user_id": digits}):
            answer = client.get(f"/courses/{course['id']}/enrollments", params=params)
            assert "ASCII digits" in h.error(answer, 400), params
        assert "ASCII digits" in h.error(h.enroll(client, course["id"], digits), 400)
        assert "ASCII digits" in h.error(client.get(f"/courses/{digits}"), 400)
        assert h.error(client.get(f"/accounts/{digits}"), 400)
        assert h.error(client.get(f"/users/{digits}/enrollments"), 400)
        # Never a 500, and never read as an id: a search of the text.
        found = client.get("/accounts/self/users", params={"search_term": digits * 3})
        assert h.ok(found) == []
        short = client.get("/accounts/self/users", params={"search_term": digits[0]})
        assert h.error(short, 400).startswith("search_term")


# --------------------------------------------------------------------------------------------
# 4. Tokens


def set_state(world: World, model: Any, user_id: int, state: str) -> None:
    with transaction(world.factory) as session:
        column = model.id if model is User else model.user_id
        session.execute(update(model).where(column == user_id).values(workflow_state=state))


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("model", "state"),
    [(User, "deleted"), (User, "suspended"), (Pseudonym, "deleted"), (Pseudonym, "suspended")],
)
def test_a_token_of_a_gone_user_or_login_is_401(world: World, model: Any, state: str) -> None:
    someone = add_user(world.factory, world.account_id, "Some Admin")
    world.grant(someone)
    token = world.token_for(someone)
    with world.client(token) as client:
        h.ok(client.get("/accounts/self"))
        set_state(world, model, someone, state)
        answer = client.get("/accounts/self")
        assert h.error(answer, 401) == "Invalid access token."
        assert "WWW-Authenticate" in answer.headers
        set_state(world, model, someone, "active" if model is Pseudonym else "registered")
        h.ok(client.get("/accounts/self"))


def last_used(world: World, secret: str) -> dt.datetime | None:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with transaction(world.factory, commit=False) as session:
        token = session.scalars(select(ApiToken).where(ApiToken.crypted_token == digest)).one()
        return token.last_used_at


@pytest.mark.postgres
def test_last_used_at_is_written_at_most_once_a_minute(world: World) -> None:
    token = world.token_for(world.admin_id)
    assert last_used(world, token) is None
    with world.client(token) as client:
        before = utcnow()
        h.ok(client.get("/accounts/self"))
        wait_until(lambda: last_used(world, token) is not None, 10, "last_used_at")
        first = last_used(world, token)
        assert first is not None and first >= before - dt.timedelta(seconds=1)
        for _ in range(3):
            h.ok(client.get("/accounts/self"))
        h.ok(client.get(PAIRINGS))
        assert last_used(world, token) == first  # within the minute: not written again
        digest = hashlib.sha256(token.encode()).hexdigest()
        with transaction(world.factory) as session:
            session.execute(
                update(ApiToken)
                .where(ApiToken.crypted_token == digest)
                .values(last_used_at=utcnow() - dt.timedelta(minutes=2))
            )
        h.ok(client.get("/accounts/self"))
        wait_until(lambda: (last_used(world, token) or before) >= before, 10, "last_used_at again")


# --------------------------------------------------------------------------------------------
# 7. HTTP: links, redirects, proxies, /docs


@pytest.mark.postgres
def test_links_and_urls_never_come_from_the_host_header(world: World) -> None:
    """The server has TEP_PUBLIC_URL: every absolute URL starts with it, whatever Host says."""
    with world.client() as client:
        client.headers["Host"] = "evil.example.test"
        course = h.course(client)
        for _ in range(3):
            h.enroll(client, course["id"], h.user(client)["id"], type="StudentEnrollment")
        listing = client.get(f"/courses/{course['id']}/enrollments", params={"per_page": 1})
        links = [link["url"] for link in listing.links.values()]
        assert len(links) == 4 and all(url.startswith(world.base_url) for url in links), links
        [enrollment] = h.ok(listing)
        assert enrollment["html_url"].startswith(world.base_url + "/courses/")
        assert enrollment["grades"]["html_url"].startswith(world.base_url + "/courses/")
        assert "evil" not in listing.headers["Link"] + listing.text


@pytest.mark.postgres
def test_a_trailing_slash_is_routed_not_redirected(world: World) -> None:
    with world.client() as client:
        client.headers["Host"] = "evil.example.test"
        for path in ("/accounts/self/", f"{PAIRINGS}/"):
            answer = client.get(path, follow_redirects=False)
            assert answer.status_code == 200 and "location" not in answer.headers, answer


def test_without_a_public_url_links_are_relative(sqlite_world: World, api_sqlite_url: str) -> None:
    app = create_app(database_url=api_sqlite_url)  # no public_url

    async def list_pairings() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://evil.example.test/api/v1",
            headers={"Authorization": f"Bearer {sqlite_world.token}"},
        ) as client:
            for _ in range(2):
                h.pairing_of(await client.post(PAIRINGS), 201)
            return await client.get(PAIRINGS, params={"per_page": 1, "x": "é"})

    listing = asyncio.run(list_pairings())
    assert listing.status_code == 200, listing.text
    link = listing.headers["Link"]
    assert "evil" not in link
    urls = re.findall(r"<([^>]*)>", link)
    assert urls and all(url.startswith(f"/api/v1{PAIRINGS}?") for url in urls), urls
    assert "x=%C3%A9" in urls[0] and "page=2" in link


@pytest.mark.postgres
def test_forwarded_headers_are_not_believed_by_default(world: World, pg_server: ApiServer) -> None:
    probe = f"probe-{uuid.uuid4().hex}"
    with world.client() as client:
        client.get(
            "/accounts/self",
            params={"probe": probe},
            headers={"X-Forwarded-For": "203.0.113.77", "X-Forwarded-Proto": "https"},
        )
    line = access_log_line(pg_server, probe)
    assert "203.0.113.77" not in line and "127.0.0.1" in line, line


@pytest.mark.postgres
def test_docs_load_nothing_from_a_cdn(world: World) -> None:
    page = httpx.get(f"{world.base_url}/docs", timeout=30)
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(asset.startswith("/docs/assets/") for asset in assets), assets
    assert "https://" not in page.text and "http://" not in page.text
    for asset in assets:
        assert httpx.get(f"{world.base_url}{asset}", timeout=30).status_code == 200, asset


# --------------------------------------------------------------------------------------------
# 8. Writes act on the state the read-time rule shows


def due_temporary(world: World, client: httpx.Client, ending_state: str) -> dict[str, Any]:
    """A temporary enrollment of a pairing ending in `ending_state`, past its end_at; no sweep
    has run, so it is stored live and shown ended."""
    course = h.course(client)
    provider, recipient = h.user(client), h.user(client)
    pairing = h.pairing(client, ending_state)
    made: dict[str, Any] = h.ok(
        h.temporary(
            client, course["id"], recipient["id"], provider["id"], pairing["id"],
            utcnow() + DAY, start_at=utcnow() - 2 * DAY,
        )
    )  # fmt: skip
    with transaction(world.factory) as session:
        session.execute(
            update(Enrollment)
            .where(Enrollment.id == made["id"])
            .values(end_at=utcnow() - dt.timedelta(seconds=1))
        )
    return made


def audit(world: World, enrollment_id: int) -> list[tuple[str, str, str]]:
    with transaction(world.factory, commit=False) as session:
        rows = session.execute(
            select(StateChange.from_state, StateChange.to_state, StateChange.reason)
            .where(
                StateChange.context_type == "Enrollment", StateChange.context_id == enrollment_id
            )
            .order_by(StateChange.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def stored_state(world: World, enrollment_id: int) -> str:
    with transaction(world.factory, commit=False) as session:
        return session.get_one(Enrollment, enrollment_id).workflow_state


@pytest.mark.postgres
@pytest.mark.parametrize("task", ["conclude", "delete", "deactivate"])
def test_an_enrollment_shown_deleted_is_not_found_by_its_writes(world: World, task: str) -> None:
    with world.client() as client:
        made = due_temporary(world, client, "deleted")
        url = f"/courses/{made['course_id']}/enrollments/{made['id']}"
        assert h.error(client.delete(url, params={"task": task}), 404)
        assert h.error(client.put(f"{url}/reactivate"), 404)
    assert stored_state(world, made["id"]) == "active" and audit(world, made["id"]) == []


@pytest.mark.postgres
def test_concluding_an_enrollment_shown_completed_changes_nothing_more(world: World) -> None:
    with world.client() as client:
        made = due_temporary(world, client, "completed")
        url = f"/courses/{made['course_id']}/enrollments/{made['id']}"
        answer = h.ok(client.delete(url, params={"task": "conclude"}))
    assert answer["enrollment_state"] == "completed"
    # What the sweep would have written, and nothing for the conclude: it found it concluded.
    assert audit(world, made["id"]) == [("active", "completed", "expired")]
    assert stored_state(world, made["id"]) == "completed"


@pytest.mark.postgres
def test_deactivating_an_enrollment_shown_completed_moves_it_on_from_completed(
    world: World,
) -> None:
    with world.client() as client:
        made = due_temporary(world, client, "completed")
        url = f"/courses/{made['course_id']}/enrollments/{made['id']}"
        answer = h.ok(client.delete(url, params={"task": "deactivate"}))
    assert answer["enrollment_state"] == "inactive"
    assert audit(world, made["id"]) == [
        ("active", "completed", "expired"),
        ("completed", "inactive", "enrollment_deactivated"),
    ]


@pytest.mark.postgres
def test_an_enrollment_shown_inactive_can_be_reactivated(world: World) -> None:
    """Before, the stored `active` answered `enrollment not inactive` for what read inactive."""
    with world.client() as client:
        made = due_temporary(world, client, "inactive")
        url = f"/courses/{made['course_id']}/enrollments/{made['id']}"
        [shown] = h.ok(
            client.get(f"/courses/{made['course_id']}/enrollments", params={"state[]": "inactive"})
        )
        assert shown["id"] == made["id"]
        h.ok(client.put(f"{url}/reactivate"))
    assert audit(world, made["id"]) == [
        ("active", "inactive", "expired"),
        ("inactive", "active", "reactivated"),
    ]
