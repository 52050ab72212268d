"""Declarative base shared by every table, and the two schemas the tables live in.

Every timestamp is a timezone-aware UTC ``datetime`` in Python, whatever the database. Canvas's
tables store ``timestamp without time zone`` holding UTC (`CanvasTimestamp`), as Canvas does;
tep's own tables store ``timestamptz``. SQLite has no time type, so both store ISO strings of the
naive UTC instant and re-attach UTC on the way out. Naive datetimes are refused rather than
guessed at.

Canvas's tables are defined without a schema and tep's with the placeholder schema
:data:`TEP_SCHEMA`; whoever makes the engine maps both to real schemas with SQLAlchemy's
``schema_translate_map`` (see :func:`models.db.make_engine`): on PostgreSQL Canvas's to
`TEP_CANVAS_SCHEMA` (default `public`) and ours to `TEP_SCHEMA` (default `tep`); on SQLite both
to the one file.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar

from sqlalchemy import DateTime, Dialect, MetaData, Select, String
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, mapped_column
from sqlalchemy.types import TypeDecorator

# Canvas's ids are PostgreSQL bigints: an id outside 1..MAX_ID names nothing, and must not reach
# the database (SQLite cannot even bind it). The API, the CLI and the tasks all check against it.
MAX_ID = 2**63 - 1

UTC = dt.UTC


# Any SELECT, whatever its columns (SQLAlchemy 2.1's Select is generic over its row's types).
AnySelect = Select[*tuple[Any, ...]]

# The placeholder schema of tep's own tables (translated to the configured one by the engine).
TEP_SCHEMA = "tep"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that always round-trips as aware UTC.

    ``timezone=True`` (tep's tables) is ``timestamptz``; ``timezone=False`` (Canvas's tables) is
    ``timestamp without time zone`` holding the UTC instant, as Canvas stores it. The value is
    bound naive-UTC there, so the session's time zone never shifts it.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self, timezone: bool = True, precision: int | None = None) -> None:
        super().__init__(timezone=timezone)
        self.timezone = timezone
        self.precision = precision
        if precision is not None:
            # `timestamp(6)`, as Rails 7's `t.timestamps` writes Canvas's newer tables.
            impl: Any = self.impl
            self.impl = impl.with_variant(
                postgresql.TIMESTAMP(timezone=timezone, precision=precision), "postgresql"
            )

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite" or not self.timezone:
            # SQLite compares strings: store one fixed-width, naive-UTC form so that ordering and
            # `<=` comparisons on the text are the same as on the instants.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        moment: dt.datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


# Constraint names follow one convention so Alembic migrations are deterministic on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

WorkflowState = Annotated[str, mapped_column(String(255), nullable=False)]


def CanvasTimestamp(precision: int | None = None) -> UTCDateTime:
    """``timestamp without time zone`` holding UTC: every timestamp column of Canvas's tables
    (``timestamp(6)`` where Canvas's migration asks for that precision)."""
    return UTCDateTime(timezone=False, precision=precision)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime()}


def utcnow() -> dt.datetime:
    """The current instant as aware UTC (frozen by freezegun in logic tests)."""
    return dt.datetime.now(UTC)
