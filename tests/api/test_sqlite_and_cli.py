"""`tep api` on the embedded SQLite default, and the `tep token create` / `tep api` commands."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import select

from models import ApiToken, transaction, utcnow
from tests.api import helpers as h
from tests.api.conftest import World
from tests.processes import PROJECT_ROOT

PAIRINGS = "/accounts/self/temporary_enrollment_pairings"


def test_a_temporary_enrollment_round_trip_on_sqlite(sqlite_world: World) -> None:
    with sqlite_world.client() as client:
        course = h.course(client)
        provider, recipient = h.user(client), h.user(client)
        pairing = h.pairing(client, "inactive")
        temporary = h.ok(
            h.temporary(
                client, course["id"], recipient["id"], provider["id"], pairing["id"],
                utcnow() + dt.timedelta(days=2),
            )
        )  # fmt: skip
        for _ in range(4):
            h.ok(h.enroll(client, course["id"], h.user(client)["id"], type="StudentEnrollment"))
        url = f"/courses/{course['id']}/enrollments"
        first = client.get(url, params={"per_page": 2})
        seen = [e["id"] for e in h.ok(first)]
        following = first.links.get("next", {}).get("url")
        while following:
            page = client.get(following)
            seen += [e["id"] for e in h.ok(page)]
            following = page.links.get("next", {}).get("url")
        assert len(seen) == 5 and seen[0] == temporary["id"]

        deleted = h.pairing_of(client.delete(f"{PAIRINGS}/{pairing['id']}"))
        assert deleted["workflow_state"] == "deleted"
        [ended] = h.ok(client.get(url, params={"state[]": "inactive"}))
        assert ended["id"] == temporary["id"]
        assert (
            h.ok(client.request("DELETE", f"{url}/{seen[1]}", data={"task": "conclude"}))[
                "enrollment_state"
            ]
            == "completed"
        )


def tep(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    env["TEP_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_token_create_prints_the_token_alone_on_its_last_line(
    sqlite_world: World, api_sqlite_url: str
) -> None:
    scope = "url:GET|/api/v1/accounts/:account_id/temporary_enrollment_pairings"
    result = tep(
        "token", "create", "--account", str(sqlite_world.account_id),
        "--user", str(sqlite_world.admin_id), "--scope", scope,
        database_url=api_sqlite_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    secret = result.stdout.splitlines()[-1]
    assert result.stdout == secret + "\n" and len(secret) >= 40
    with transaction(sqlite_world.factory, commit=False) as session:
        stored = session.scalars(
            select(ApiToken).where(
                ApiToken.crypted_token == hashlib.sha256(secret.encode()).hexdigest()
            )
        ).one()
        assert (stored.user_id, stored.root_account_id) == (
            sqlite_world.admin_id, sqlite_world.account_id,
        )  # fmt: skip
    with sqlite_world.client(secret) as client:
        assert h.pairings_of(client.get(PAIRINGS)) == []
        assert h.error(client.post(PAIRINGS), 401) == "Insufficient scopes on access token."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--account", "987654", "--user", "1"], "no account with id 987654"),
        (["--account", "{account}", "--user", "987654"], "no user with id 987654"),
        (["--account", "{account}", "--user", "{admin}", "--scope", "url:GET|/x"], "unknown scope"),
        (["--account", "{account}", "--user", "{stranger}"], "has no login in account"),
    ],
)
def test_token_create_refuses_bad_input_in_one_line(
    sqlite_world: World, api_sqlite_url: str, args: list[str], message: str
) -> None:
    from tests.api.conftest import add_user, make_world

    other = make_world(sqlite_world.base_url, sqlite_world.factory)
    values = {
        "account": sqlite_world.account_id,
        "admin": sqlite_world.admin_id,
        "stranger": add_user(other.factory, other.account_id, "Stranger"),
    }
    result = tep(
        "token", "create", *(a.format(**values) for a in args), database_url=api_sqlite_url
    )
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr


def test_api_refuses_bad_settings_in_one_line() -> None:
    result = tep("api", "--port", "1", database_url="mysql://nope")
    assert result.returncode == 2
    assert "TEP_DATABASE_URL" in result.stderr and "Traceback" not in result.stderr


def test_the_served_api_needs_no_token_for_its_document(sqlite_world: World) -> None:
    document = httpx.get(f"{sqlite_world.base_url}/openapi.json")
    assert document.status_code == 200
    assert document.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
