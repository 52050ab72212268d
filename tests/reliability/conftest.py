"""Fixtures of the reliability group: real worker and beat processes on PostgreSQL and Redis,
broken on purpose. Every test here is marked `reliability` (and runs in a default pytest run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests import services
from tests.processes import service_env
from tests.reliability.redis_server import RedisServer, private_redis


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            for marker in ("reliability", "integration", "postgres", "redis"):
                item.add_marker(marker)


@pytest.fixture
def env(postgres_database_url: str, redis_url: str) -> dict[str, str]:
    return service_env(postgres_database_url, redis_url, services.unique_queue())


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with private_redis(tmp_path) as server:
        yield server


@pytest.fixture
def engine(pg_engine: Engine) -> Engine:
    return pg_engine
