"""Managed mode is a faithful small Canvas: every Canvas column tep maps, as tep's migrations create
it, has the type, NOT NULL and default of the same column in Canvas's own schema
(tests/canvas_schema, transcribed from Canvas's init migration)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, text

from migrations import upgrade
from models import CANVAS_TABLE_CLASSES, Schemas, canvas_table_objects, make_engine
from tests import services
from tests.canvas_schema import build_canvas_schema

pytestmark = pytest.mark.postgres

# (table, column) -> (data type with length, NOT NULL, default)
Columns = dict[tuple[str, str], tuple[str, bool, str | None]]


def _columns(connection: Connection, schema: str) -> Columns:
    rows = connection.execute(
        text(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "pg_get_expr(d.adbin, d.adrelid) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE n.nspname = :schema AND c.relkind = 'r' AND a.attnum > 0 "
            "AND NOT a.attisdropped"
        ),
        {"schema": schema},
    )
    return {(t, c): (typ, bool(nn), _default(d)) for t, c, typ, nn, d in rows}


def _default(expression: str | None) -> str | None:
    """Defaults compared by meaning: a sequence default is the id's, a cast is dropped."""
    if expression is None:
        return None
    if expression.startswith("nextval("):
        return "serial"
    return expression.split("::", 1)[0]


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[Columns, Columns]]:
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with (
        services.scratch_postgres_database("tep_managed") as managed_url,
        services.scratch_postgres_database("tep_canvas") as canvas_url,
    ):
        upgrade(managed_url)
        engines: list[Any] = [make_engine(managed_url), make_engine(canvas_url)]
        try:
            with engines[1].begin() as connection:
                build_canvas_schema(connection, "public")
            with engines[0].connect() as managed, engines[1].connect() as canvas:
                yield _columns(managed, "public"), _columns(canvas, "public")
        finally:
            for engine in engines:
                engine.dispose()


def test_every_mapped_column_is_as_canvas_has_it(both: tuple[Columns, Columns]) -> None:
    managed, canvas = both
    differences = []
    for table in canvas_table_objects():
        for column in table.columns:
            key = (table.name, column.name)
            if key not in canvas:
                differences.append(f"{table.name}.{column.name}: not in Canvas's schema")
            elif managed[key] != canvas[key]:
                differences.append(
                    f"{table.name}.{column.name}: tep {managed[key]}, Canvas {canvas[key]}"
                )
    assert differences == []


def test_managed_canvas_tables_hold_no_tep_table(both: tuple[Columns, Columns]) -> None:
    """tep's own tables are in its own schema, never beside Canvas's (nor named like them)."""
    managed, canvas = both
    canvas_tables = {t for t, _ in canvas}
    managed_public = {t for t, _ in managed}
    assert managed_public == {m.__tablename__ for m in CANVAS_TABLE_CLASSES}
    assert "access_tokens" in canvas_tables  # Canvas's own table name: tep's is api_tokens
    assert not managed_public - canvas_tables


def test_existing_mode_schemas_are_apart() -> None:
    with pytest.raises(ValueError, match="must not be Canvas"):
        Schemas(canvas="public", tep="public")
