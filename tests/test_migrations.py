"""The migrations create exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from models import Base


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_due_work_index_is_partial(engine: Engine) -> None:
    """The sweep's driving index covers live temporary enrollments only (O(due), not O(table))."""
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("enrollments")}
    due = indexes["index_enrollments_on_temporary_end_at"]
    assert due["column_names"][:2] == ["end_at", "id"]
    where = str(due.get("dialect_options", {}).get(f"{engine.dialect.name}_where", ""))
    assert "temporary_enrollment_pairing_id IS NOT NULL" in where
    assert "creation_pending" in where
