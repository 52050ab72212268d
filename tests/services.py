"""Where the real PostgreSQL and Redis are, and scratch resources on them for one test session.

Each test session gets a database of its own on the PostgreSQL server (created here, dropped at
the end) and a Celery queue of its own on Redis, so that several sessions (or CI and a developer)
can share one server without seeing each other's data.

When a server is not answering, its tests are skipped on a developer's machine and fail under
`CI=true`: CI must never count a test that did not run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import redis

POSTGRES_ADMIN_URL = os.environ.get(
    "TEP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not available: {error}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: these tests must run)", pytrace=False)
    pytest.skip(message)


def postgres_url(database: str) -> str:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def postgres_reachable() -> Exception | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as error:
        return error


@contextmanager
def scratch_postgres_database(prefix: str = "tep_test") -> Iterator[str]:
    """A new, empty database on the server; yields its URL and drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_reachable() -> Exception | None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        return None
    except redis.RedisError as error:
        return error


# The Celery queues this session made on the real Redis. Kombu never deletes a queue, so without
# this each run would leave its queues' keys in the broker's database (db 0): conftest's
# session-finish hook deletes them.
SESSION_QUEUES: list[str] = []


def unique_queue(prefix: str = "tep-test") -> str:
    queue = f"{prefix}-{uuid.uuid4().hex[:12]}"
    SESSION_QUEUES.append(queue)
    return queue
