"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, emptied after every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from migrations import seed_dummy_root_account, upgrade
from models import Base, make_engine, make_sessionmaker
from tests import services

BACKENDS = ["sqlite", "postgres"]
SERVICE_MARKERS = ("postgres", "redis")
# Outcomes of the tests that need a real server, per marker: CI checks that they really ran.
_service_outcomes: dict[str, list[str]] = {marker: [] for marker in SERVICE_MARKERS}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for marker in SERVICE_MARKERS:
            if marker in report.keywords:
                _service_outcomes[marker].append(report.outcome)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true, a run in which the PostgreSQL or Redis tests did not all run is a failure."""
    if not services.IN_CI or session.config.option.collectonly:
        return
    problems = []
    for marker, outcomes in _service_outcomes.items():
        if "passed" not in outcomes:
            problems.append(f"no {marker} test passed")
        if "skipped" in outcomes:
            problems.append(f"{outcomes.count('skipped')} {marker} test(s) skipped")
    if problems:
        print(f"\nCI=true: {'; '.join(problems)}: the services' tests must run", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A scratch database for this test session, migrated to head."""
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "tep.sqlite"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once on SQLite and once on PostgreSQL."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue(f"{request.param}_database_url"))


def empty_tables(engine: Engine) -> None:
    """Every table emptied, then Canvas's dummy account 0 put back (root accounts point at it)."""
    tables = list(reversed(Base.metadata.sorted_tables))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            names = ", ".join(
                f'"{connection.schema_for_object(t) or "public"}".{t.name}' for t in tables
            )
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                connection.execute(table.delete())
        seed_dummy_root_account(connection)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        # The code under test commits (a sweep commits per batch), so isolation is by emptying
        # the tables rather than by rolling back an outer transaction.
        empty_tables(engine)
        engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session for arranging and inspecting data; commit what the code under test must see.

    It begins its transactions without SQLite's write lock, so a test that has read something
    does not block the sweep it calls next; its first write takes the lock as usual.
    """
    with make_sessionmaker(engine, read_only=True)() as session:
        yield session


@pytest.fixture(scope="session")
def redis_url() -> str:
    error = services.redis_reachable()
    if error is not None:
        services.unavailable("Redis", error)
    return services.REDIS_URL


@pytest.fixture
def pg_engine(postgres_database_url: str) -> Iterator[Engine]:
    """The session's PostgreSQL database alone (for tests that need PostgreSQL specifically)."""
    engine = make_engine(postgres_database_url)
    try:
        yield engine
    finally:
        empty_tables(engine)
        engine.dispose()


@pytest.fixture
def pg_session(pg_engine: Engine) -> Iterator[Session]:
    with make_sessionmaker(pg_engine)() as session:
        yield session
