"""Process-wide wiring: settings and the database, created lazily once per process.

Lazily, because Celery's prefork pool forks children from the main process: a connection pool
made before the fork would be shared by every child. `worker_process_init` resets it.
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_sessionmaker
from worker.settings import get_settings


@lru_cache(maxsize=1)
def engine() -> Engine:
    settings = get_settings()
    return make_engine(settings.database_url, settings.schemas())


@lru_cache(maxsize=1)
def session_factory() -> sessionmaker[Session]:
    return make_sessionmaker(engine(), through_canvas=get_settings().through_canvas)


def reset() -> None:
    """Forget this process's engine (after a fork, or when tests change the settings)."""
    if engine.cache_info().currsize:
        engine().dispose(close=False)
    engine.cache_clear()
    session_factory.cache_clear()
