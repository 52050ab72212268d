"""Engines and sessions. Takes a URL from whoever wires it; reads no settings itself."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from models.base import TEP_SCHEMA

# Seconds a SQLite writer waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_SECONDS = 30

# TEP_CANVAS_TABLES: tep's migrations create Canvas's tables (`managed`), or Canvas's are there
# already and tep only reads and writes them (`existing`).
CANVAS_TABLES_MANAGED = "managed"
CANVAS_TABLES_EXISTING = "existing"

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclasses.dataclass(frozen=True)
class Schemas:
    """Where the two sets of tables live on PostgreSQL (SQLite has one file and no schemas)."""

    canvas: str = "public"
    tep: str = "tep"
    canvas_tables: str = CANVAS_TABLES_MANAGED

    def __post_init__(self) -> None:
        for name in (self.canvas, self.tep):
            if not _SCHEMA_NAME.match(name):
                raise ValueError(f"schema name {name!r}: use lower-case letters, digits and _")
        if self.canvas == self.tep:
            raise ValueError(f"tep's schema must not be Canvas's ({self.canvas!r})")
        if self.canvas_tables not in (CANVAS_TABLES_MANAGED, CANVAS_TABLES_EXISTING):
            raise ValueError(
                f"canvas tables {self.canvas_tables!r}: use "
                f"{CANVAS_TABLES_MANAGED} or {CANVAS_TABLES_EXISTING}"
            )

    def translate_map(self, backend: str) -> dict[str | None, str | None]:
        if backend == "sqlite":
            return {TEP_SCHEMA: None}
        return {None: self.canvas, TEP_SCHEMA: self.tep}

    def of_table(self, schema: str | None, backend: str) -> str | None:
        """The real schema of a table defined with `schema` (None: Canvas's)."""
        return self.translate_map(backend).get(schema, schema)


def normalize_url(url: str) -> str:
    """Use psycopg 3 for `postgresql://` URLs (SQLAlchemy would otherwise pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, schemas: Schemas | None = None, **kwargs: Any) -> Engine:
    """An engine whose statements find Canvas's tables and tep's in their schemas.

    PostgreSQL sessions run in UTC whatever the database's default zone: Canvas's timestamps are
    `timestamp without time zone` holding UTC, and anything the server computes from a zone
    (`now()`, a cast) must agree with them.
    """
    url = normalize_url(url)
    schemas = schemas or Schemas()
    backend = make_url(url).get_backend_name()
    options = {"schema_translate_map": schemas.translate_map(backend)}
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            execution_options=options,
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args["options"] = f"{connect_args.get('options', '')} -c TimeZone=UTC".strip()
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args=connect_args,
        execution_options=options,
        **kwargs,
    )


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


# A session's `info` key saying that Canvas's rows here are a mirror of a hosted Canvas: each
# change to an enrollment is decided here and made in Canvas through its REST API
# (tasks/canvas_rest/).
THROUGH_CANVAS = "tep_through_canvas"


def make_sessionmaker(
    engine: Engine, *, read_only: bool = False, through_canvas: bool = False
) -> sessionmaker[Session]:
    """Sessions on `engine`; `read_only` ones do not take SQLite's write lock when they begin.
    `through_canvas`: the Canvas tables are a hosted Canvas's mirror (:data:`THROUGH_CANVAS`)."""
    if read_only:
        engine = engine.execution_options(sqlite_begin="DEFERRED")
    return sessionmaker(engine, expire_on_commit=False, info={THROUGH_CANVAS: through_canvas})


def through_canvas(session: Session) -> bool:
    """Whether this session's changes go to a hosted Canvas through its REST API."""
    return bool(session.info.get(THROUGH_CANVAS))


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
