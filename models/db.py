"""Engines and sessions. Takes a URL from whoever wires it; reads no settings itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# Seconds a SQLite writer waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_SECONDS = 30


def normalize_url(url: str) -> str:
    """Use psycopg 3 for `postgresql://` URLs (SQLAlchemy would otherwise pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}, **kwargs)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    """Make SQLite behave like a database that several processes share.

    pysqlite's own transaction handling starts transactions lazily and in DEFERRED mode, so two
    writers can both read and then deadlock on the upgrade to a write lock. We take the write lock
    at BEGIN instead (BEGIN IMMEDIATE): concurrent sweeps then queue behind each other, which is
    what makes a batch's reads and writes consistent on SQLite, where FOR UPDATE does not exist.
    A reader that never writes may opt out with the execution option `sqlite_begin="DEFERRED"`
    (WAL readers then never wait for a writer).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


def make_sessionmaker(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on `engine`; `read_only` ones do not take SQLite's write lock when they begin."""
    if read_only:
        engine = engine.execution_options(sqlite_begin="DEFERRED")
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session], *, commit: bool = True) -> Iterator[Session]:
    """One unit of work: commit on success (or roll back when `commit` is false, as a dry run
    does), roll back on any error."""
    with factory() as session:
        session.begin()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        if commit:
            session.commit()
        else:
            session.rollback()
