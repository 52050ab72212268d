"""Fixtures for the API tests: a real `tep api` server per database, and a fresh root account
(with an admin user, an AccountAdmin of it, and a token) per test, so tests never see each
other's data."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api import known_scopes
from api.auth import create_token
from migrations import upgrade
from models import Account, Pseudonym, User, make_engine, make_sessionmaker, transaction
from tasks import permissions
from tasks.canvas_objects import create_root_account
from tests import services
from tests.api.server import ApiServer, api_server

_names = itertools.count(1)


@pytest.fixture(scope="session")
def api_postgres_url() -> Iterator[str]:
    """A scratch PostgreSQL database of the API tests' own (other tests empty theirs)."""
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database("tep_api_test") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def api_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('api-sqlite') / 'tep.sqlite'}"
    upgrade(url)
    return url


def serve_api(
    url: str,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    settings: dict[str, str] | None = None,
) -> Iterator[ApiServer]:
    log = tmp_path_factory.mktemp(name) / "api.log"
    with api_server(url, log, settings) as server:
        yield server
    assert "Traceback" not in server.log, server.log


# Prometheus's bearer token for the PostgreSQL server's /metrics (the SQLite server has none,
# so its /metrics is off).
METRICS_TOKEN = "scrape-" + "0123456789abcdef" * 3


@pytest.fixture(scope="session")
def pg_server(
    api_postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serve_api(
        api_postgres_url, tmp_path_factory, "api-pg", {"TEP_METRICS_TOKEN": METRICS_TOKEN}
    )


@pytest.fixture(scope="session")
def sqlite_server(
    api_sqlite_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serve_api(api_sqlite_url, tmp_path_factory, "api-sqlite")


@pytest.fixture(scope="session")
def pg_api_engine(api_postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(api_postgres_url)
    yield engine
    engine.dispose()


@dataclasses.dataclass
class World:
    """One root account as a client sees it: its admin's token, and the database behind it."""

    base_url: str
    account_id: int
    admin_id: int
    token: str
    factory: sessionmaker[Session]

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url}/api/v1",
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=30,
        )

    def token_for(self, user_id: int, *scopes: str) -> str:
        with transaction(self.factory) as session:
            _token, secret = create_token(
                session,
                account_id=self.account_id,
                user_id=user_id,
                scopes=scopes,
                known_scopes=known_scopes(),
            )
        return secret

    def add_user(self, name: str = "Someone") -> int:
        return add_user(self.factory, self.account_id, name)

    def grant(self, user_id: int, role: str = "AccountAdmin", account_id: int | None = None) -> int:
        """Make the user an admin (an `account_users` row, as Canvas has them) of the account
        (default: the root account) in the named account role; returns the row's id."""
        return grant(self.factory, account_id or self.account_id, user_id, role)


def grant(factory: sessionmaker[Session], account_id: int, user_id: int, role: str) -> int:
    with transaction(factory) as session:
        account = session.get_one(Account, account_id)
        found = permissions.account_role(session, account, name=role)
        row, _written = permissions.grant(session, account, user_id, found)
        return row.id


def add_user(factory: sessionmaker[Session], account_id: int, name: str) -> int:
    with transaction(factory) as session:
        user = User(name=name)
        session.add(user)
        session.flush()
        session.add(
            Pseudonym(
                user_id=user.id, account_id=account_id, unique_id=f"u{next(_names)}-{user.id}"
            )
        )
        return user.id


def make_world(base_url: str, factory: sessionmaker[Session]) -> World:
    with transaction(factory) as session:
        # With its default term and built-in roles, as Canvas makes a root account.
        account_id = create_root_account(session, f"University {next(_names)}").id
    admin_id = add_user(factory, account_id, "Admin")
    # The API reads Canvas's permissions: the world's admin is an AccountAdmin of its account.
    grant(factory, account_id, admin_id, "AccountAdmin")
    world = World(base_url, account_id, admin_id, "", factory)
    world.token = world.token_for(admin_id)
    return world


@pytest.fixture
def world(pg_server: ApiServer, pg_api_engine: Engine) -> World:
    """A fresh root account on the PostgreSQL-backed server."""
    return make_world(pg_server.base_url, make_sessionmaker(pg_api_engine))


@pytest.fixture
def other_world(pg_server: ApiServer, pg_api_engine: Engine) -> World:
    """Another root account on the same server: its objects must be invisible to `world`."""
    return make_world(pg_server.base_url, make_sessionmaker(pg_api_engine))


@pytest.fixture
def sqlite_world(sqlite_server: ApiServer, api_sqlite_url: str) -> Iterator[World]:
    engine = make_engine(api_sqlite_url)
    yield make_world(sqlite_server.base_url, make_sessionmaker(engine))
    engine.dispose()
