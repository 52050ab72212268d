"""`tep api` on the embedded SQLite default, and the `tep token create|list|revoke` and `tep api`
commands."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import select

from api import known_scopes
from api.auth import create_token
from models import ApiToken, transaction, utcnow
from tasks.lifecycle import LifecycleError, iso
from tests.api import helpers as h
from tests.api.conftest import World
from tests.processes import PROJECT_ROOT, wait_until
from worker.cli.tokens import token_expiry

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


def created_secret(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


def stored_token(world: World, secret: str) -> ApiToken:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with transaction(world.factory, commit=False) as session:
        token = session.scalars(select(ApiToken).where(ApiToken.crypted_token == digest)).one()
        session.expunge(token)  # kept as read: the rollback would expire it
        return token


def test_token_create_expires_in(sqlite_world: World, api_sqlite_url: str) -> None:
    account, user = str(sqlite_world.account_id), str(sqlite_world.admin_id)
    before = utcnow()
    result = tep(
        "token", "create", "--account", account, "--user", user, "--expires-in", "90d",
        database_url=api_sqlite_url,
    )  # fmt: skip
    secret = created_secret(result)
    expires_at = stored_token(sqlite_world, secret).expires_at
    assert expires_at is not None
    assert before + dt.timedelta(days=90) <= expires_at <= utcnow() + dt.timedelta(days=90)
    assert f"expires {expires_at.date().isoformat()}" in result.stderr
    with sqlite_world.client(secret) as client:
        h.ok(client.get("/accounts/self"))


@pytest.mark.parametrize("expires_in", ["3 days", "0d", "-1d", "99999999999999999999w", "1y"])
def test_a_bad_expiry_is_refused_in_one_line(expires_in: str) -> None:
    with pytest.raises(LifecycleError) as raised:
        token_expiry(expires_in)
    assert str(raised.value).startswith("--expires-in")


def test_token_create_refuses_a_bad_expiry_in_one_line(
    sqlite_world: World, api_sqlite_url: str
) -> None:
    result = tep(
        "token", "create", "--account", str(sqlite_world.account_id),
        "--user", str(sqlite_world.admin_id), "--expires-in", "99999999999999999999w",
        database_url=api_sqlite_url,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.startswith("tep: --expires-in") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_token_list_shows_the_accounts_tokens_but_no_secret(
    sqlite_world: World, api_sqlite_url: str
) -> None:
    scope = "url:GET|/api/v1/accounts/:account_id/temporary_enrollment_pairings"
    with transaction(sqlite_world.factory) as session:
        _token, scoped = create_token(
            session,
            account_id=sqlite_world.account_id,
            user_id=sqlite_world.admin_id,
            scopes=[scope],
            known_scopes=known_scopes(),
            expires_at=utcnow() + dt.timedelta(hours=12),
        )
    with sqlite_world.client(scoped) as client:
        h.ok(client.get(PAIRINGS))
    wait_until(
        lambda: stored_token(sqlite_world, scoped).last_used_at is not None, 10, "last_used_at"
    )
    stored = stored_token(sqlite_world, scoped)
    account, user = str(sqlite_world.account_id), str(sqlite_world.admin_id)
    listing = tep("token", "list", "--account", account, database_url=api_sqlite_url)
    assert listing.returncode == 0, listing.stderr
    assert scoped not in listing.stdout and sqlite_world.token not in listing.stdout
    [row] = [line for line in listing.stdout.splitlines() if f" {stored.id} " in line]
    assert f"{stored.token_hint}..." in row and f" {user} " in row and scope in row
    assert stored.expires_at is not None and stored.last_used_at is not None
    for moment in (stored.created_at, stored.last_used_at, stored.expires_at):
        assert iso(moment) in row, (iso(moment), row)
    assert "active" in row
    # The world's own token: every endpoint, never expires.
    own = stored_token(sqlite_world, sqlite_world.token)
    [own_row] = [line for line in listing.stdout.splitlines() if f" {own.id} " in line]
    assert "(all)" in own_row and "never" in own_row


def test_token_revoke_by_id_or_hint(sqlite_world: World, api_sqlite_url: str) -> None:
    first, second = (
        sqlite_world.token_for(sqlite_world.admin_id),
        sqlite_world.token_for(sqlite_world.admin_id),
    )
    by_id, by_hint = stored_token(sqlite_world, first), stored_token(sqlite_world, second)
    revoked = tep("token", "revoke", str(by_id.id), database_url=api_sqlite_url)
    assert revoked.returncode == 0 and f"revoked token {by_id.id}" in revoked.stderr, revoked
    with sqlite_world.client(first) as client:
        assert h.error(client.get("/accounts/self"), 401) == "Invalid access token."
    with sqlite_world.client(second) as client:
        h.ok(client.get("/accounts/self"))
        hinted = tep("token", "revoke", by_hint.token_hint, database_url=api_sqlite_url)
        assert hinted.returncode == 0, hinted.stderr
        assert h.error(client.get("/accounts/self"), 401) == "Invalid access token."
    again = tep("token", "revoke", str(by_id.id), database_url=api_sqlite_url)
    assert again.returncode == 2 and f"no token '{by_id.id}'" in again.stderr
    account = str(sqlite_world.account_id)
    everything = tep("token", "list", "--account", account, "--all", database_url=api_sqlite_url)
    [row] = [line for line in everything.stdout.splitlines() if f" {by_id.id} " in line]
    assert "revoked" in row
