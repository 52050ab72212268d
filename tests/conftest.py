"""Shared fixtures: a migrated database on each backend, emptied after every test.

Backends of the `database_url`-based fixtures (`database_url`, `engine`, `factory`, `session`):

* `sqlite`: an SQLite file, `managed` tables (tep creates Canvas's tables it uses);
* `postgres`: a PostgreSQL scratch database, `managed` tables;
* `canvas`: a PostgreSQL scratch database holding Canvas's real schema (tests/canvas_schema,
  schema `public`, set up like Canvas's production database: `inst.max_update_fail = 'true'`
  and a non-UTC time zone), `existing` tables: tep's migrations created only tep's own tables.

A test taking one of those fixtures runs once per backend. To choose:

* `@pytest.mark.managed_only` (on a test, a class, or `pytestmark` of a module) leaves out
  `canvas`, for tests that cannot run in `existing` mode (creating courses or users through the
  API, which Canvas owns there); `managed_database_url` is the same choice as a fixture;
* `canvas_database_url` is the Canvas database alone (with `canvas_engine` / `canvas_factory` /
  `canvas_session`), and `pg_engine` / `pg_session` the managed PostgreSQL one alone;
* `TEP_TEST_BACKENDS=sqlite,postgres` (comma-separated) limits every run to those backends, e.g.
  `TEP_TEST_BACKENDS=canvas pytest tests/test_lifecycle.py`.

The `postgres` marker is on both PostgreSQL backends (CI checks those tests ran); `canvas` is on
the third alone (`-m "not canvas"` leaves it out).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import redis
from kombu.transport import redis as kombu_redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from migrations import seed_dummy_root_account, upgrade
from models import CANVAS_TABLES_EXISTING, Base, Schemas, make_engine, make_sessionmaker
from tests import services
from tests.canvas_schema import build_canvas_database

# Every backend of the `database_url` fixture; MANAGED_BACKENDS create Canvas's tables themselves.
BACKENDS = ("sqlite", "postgres", "canvas")
MANAGED_BACKENDS = ("sqlite", "postgres")
BACKENDS_ENV = "TEP_TEST_BACKENDS"
# Canvas's database is set up by Canvas: tep's migrations create only tep's own tables there.
CANVAS_SCHEMAS = Schemas(canvas_tables=CANVAS_TABLES_EXISTING)
SERVICE_MARKERS = ("postgres", "redis")
# Outcomes of the tests that need a real server, per marker: CI checks that they really ran.
_service_outcomes: dict[str, list[str]] = {marker: [] for marker in SERVICE_MARKERS}
# URLs of the databases in `existing` mode (the canvas backend), for `schemas_for`.
_existing_urls: set[str] = set()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "managed_only: run the database_url-based fixtures on the managed backends only "
        "(not on Canvas's own schema in existing mode)",
    )
    config.addinivalue_line(
        "markers", "canvas: runs on Canvas's real schema, TEP_CANVAS_TABLES=existing"
    )


def selected_backends() -> tuple[str, ...]:
    """BACKENDS, or those TEP_TEST_BACKENDS names (an unknown name is an error, not a skip)."""
    chosen = os.environ.get(BACKENDS_ENV, "").strip()
    if not chosen:
        return BACKENDS
    names = tuple(name.strip() for name in chosen.split(",") if name.strip())
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise pytest.UsageError(f"{BACKENDS_ENV}: unknown backend(s) {unknown}; use {BACKENDS}")
    return names


def _backend_param(name: str) -> object:
    marks = {"sqlite": [], "postgres": [pytest.mark.postgres]}.get(
        name, [pytest.mark.postgres, pytest.mark.canvas]
    )
    return pytest.param(name, marks=marks, id=name)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that needs `database_url` on every selected backend; `managed_only` tests
    and `managed_database_url` users leave out the canvas one."""
    for fixture in ("database_url", "managed_database_url"):
        if fixture not in metafunc.fixturenames:
            continue
        backends = selected_backends()
        if fixture == "managed_database_url" or metafunc.definition.get_closest_marker(
            "managed_only"
        ):
            backends = tuple(name for name in backends if name in MANAGED_BACKENDS)
        metafunc.parametrize(
            fixture, [_backend_param(name) for name in backends], indirect=True, scope="function"
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for marker in SERVICE_MARKERS:
            if marker in report.keywords:
                _service_outcomes[marker].append(report.outcome)


def delete_queue_keys(client: redis.Redis, queues: Iterable[str]) -> None:
    """Delete what kombu's Redis transport keeps for these queues (Celery names each queue's
    exchange after it): the message list of each priority step, the exchange's binding sets and
    its binding deadline, and the queues' unacknowledged messages. Other queues' keys stay."""
    names = set(queues)
    if not names:
        return
    channel = kombu_redis.Channel
    keys = []
    for name in names:
        keys.append(name)
        keys.extend(f"{name}{channel.sep}{step}" for step in kombu_redis.PRIORITY_STEPS if step)
        keys.append(channel.keyprefix_queue % name)
        keys.append(channel.keyprefix_binding_permanent % name)
    client.delete(*keys)
    client.zrem(channel.keyprefix_binding_deadlines, *names)
    # Each unacknowledged entry is [message, exchange, routing key].
    tags = [
        tag
        for tag, entry in client.hscan_iter(channel.unacked_key)
        if names.intersection(json.loads(entry)[1:])
    ]
    if tags:
        client.hdel(channel.unacked_key, *tags)
        client.zrem(channel.unacked_index_key, *tags)


def _delete_session_queues() -> None:
    if not services.SESSION_QUEUES:
        return
    client = redis.Redis.from_url(services.REDIS_URL, socket_connect_timeout=3)
    try:
        delete_queue_keys(client, services.SESSION_QUEUES)
    except redis.RedisError as error:  # the tests that needed it have said so already
        print(f"\nRedis: the session's queues were not deleted: {error}", flush=True)
    finally:
        client.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """This session's queues are deleted from Redis; under CI=true, a run in which the PostgreSQL
    or Redis tests did not all run is a failure."""
    _delete_session_queues()
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


def _require_postgres() -> None:
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A scratch database for this test session, migrated to head (managed tables)."""
    _require_postgres()
    with services.scratch_postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def canvas_database_url() -> Iterator[str]:
    """A scratch database holding Canvas's real tables (schema `public`), with tep's migrated
    beside them in `existing` mode (schema `tep`)."""
    _require_postgres()
    with services.scratch_postgres_database("tep_test_canvas") as url:
        build_canvas_database(url)
        upgrade(url, CANVAS_SCHEMAS)
        _existing_urls.add(url)
        try:
            yield url
        finally:
            _existing_urls.discard(url)


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "tep.sqlite"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs on every selected backend (see the module doc)."""
    return str(request.getfixturevalue(f"{request.param}_database_url"))


@pytest.fixture
def managed_database_url(request: pytest.FixtureRequest) -> str:
    """`database_url` on the managed backends only (SQLite and PostgreSQL)."""
    return str(request.getfixturevalue(f"{request.param}_database_url"))


def schemas_for(url: str) -> Schemas:
    """The table mode a database of these fixtures was migrated in."""
    return CANVAS_SCHEMAS if url in _existing_urls else Schemas()


@pytest.fixture
def database_schemas(database_url: str) -> Schemas:
    """The Schemas of `database_url` (pass them to make_engine / upgrade / settings)."""
    return schemas_for(database_url)


def empty_tables(engine: Engine) -> None:
    """Every table emptied, then Canvas's dummy account 0 put back (root accounts point at it).

    On PostgreSQL that is every table of Canvas's schema and tep's (Alembic's version table
    aside), so that on Canvas's own schema the tables tep does not map (access_tokens,
    developer_keys, ...) are emptied too. TRUNCATE fires no `guard_excessive_*` trigger.
    """
    tables = list(reversed(Base.metadata.sorted_tables))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            names = {f'"{connection.schema_for_object(t) or "public"}"."{t.name}"' for t in tables}
            schemas = {connection.schema_for_object(t) or "public" for t in tables}
            names.update(
                f'"{schema}"."{name}"'
                for schema, name in connection.execute(
                    text(
                        "SELECT schemaname, tablename FROM pg_tables "
                        "WHERE schemaname = ANY(:schemas) AND tablename <> 'alembic_version'"
                    ),
                    {"schemas": sorted(schemas)},
                )
            )
            connection.execute(
                text(f"TRUNCATE {', '.join(sorted(names))} RESTART IDENTITY CASCADE")
            )
        else:
            for table in tables:
                connection.execute(table.delete())
        # Canvas's accounts need no more than tep's seed writes (id, name, workflow_state,
        # root_account_id, timestamps; the rest have defaults or are nullable), so one seed
        # serves both modes, as it does for `tep db upgrade`.
        seed_dummy_root_account(connection)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, schemas_for(database_url))
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


@pytest.fixture
def canvas_engine(canvas_database_url: str) -> Iterator[Engine]:
    """Canvas's database alone, in `existing` mode (for tests of running beside Canvas)."""
    engine = make_engine(canvas_database_url, CANVAS_SCHEMAS)
    try:
        yield engine
    finally:
        empty_tables(engine)
        engine.dispose()


@pytest.fixture
def canvas_factory(canvas_engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(canvas_engine)


@pytest.fixture
def canvas_session(canvas_engine: Engine) -> Iterator[Session]:
    with make_sessionmaker(canvas_engine)() as session:
        yield session
