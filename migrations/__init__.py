"""Migrations. `tep db upgrade` runs :func:`upgrade`; see migrations/env.py.

Two table modes (`TEP_CANVAS_TABLES`, DESIGN.md section 3):

* `managed`: tep creates the Canvas tables it uses (models/canvas.py) and its own.
* `existing`: Canvas's tables are there already, in `TEP_CANVAS_SCHEMA`. tep first checks that
  every Canvas column it maps is there (naming each one that is not), then creates and migrates
  only its own tables, in `TEP_SCHEMA`. It never creates, alters or drops anything of Canvas's.

A new database is built from the models in one step and stamped at the head revision (Alembic's
"create from scratch, then stamp" recipe), so `existing` mode never runs a revision that would
touch Canvas's tables. Revisions 0001 and 0002 are the schema before tep kept Canvas's tables as
Canvas has them; a database made by them (always `managed`) is moved over by 0003.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, inspect, text

from models import (
    CANVAS_TABLES_EXISTING,
    DUMMY_ROOT_ACCOUNT_ID,
    TEP_SCHEMA,
    Account,
    Base,
    Schemas,
    canvas_table_objects,
    make_engine,
    utcnow,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent
VERSION_TABLE = "alembic_version"
# A table only the legacy schema (revisions 0001-0002) has, in Canvas's schema.
LEGACY_MARKER_TABLE = "temporary_enrollment_state_changes"
DUMMY_ROOT_ACCOUNT_NAME = "Dummy Root Account"


class CanvasSchemaMismatch(Exception):
    """Canvas's tables lack columns tep needs; `problems` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def alembic_config(database_url: str, schemas: Schemas | None = None) -> Config:
    """An Alembic config for `database_url`, independent of the working folder."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates `%`: URL-encoded passwords must be escaped.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["schemas"] = schemas or Schemas()
    return config


def missing_canvas_columns(connection: Connection, schemas: Schemas) -> list[str]:
    """Every Canvas table or column tep maps that the database lacks, one line each."""
    backend = connection.dialect.name
    schema = schemas.of_table(None, backend)
    inspector = inspect(connection)
    present = set(inspector.get_table_names(schema=schema))
    problems: list[str] = []
    where = f"{schema}." if schema else ""
    for table in canvas_table_objects():
        if table.name not in present:
            problems.append(f"missing Canvas table {where}{table.name}")
            continue
        columns = {c["name"] for c in inspector.get_columns(table.name, schema=schema)}
        problems.extend(
            f"missing Canvas column {where}{table.name}.{column.name}"
            for column in table.columns
            if column.name not in columns
        )
    return problems


def _version_schema(connection: Connection, schemas: Schemas) -> str | None:
    return schemas.of_table(TEP_SCHEMA, connection.dialect.name)


def prepare(connection: Connection, schemas: Schemas) -> None:
    """tep's schema, and a legacy database's version table moved into it."""
    if connection.dialect.name != "postgresql":
        return
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schemas.tep}"'))
    inspector = inspect(connection)
    legacy = VERSION_TABLE in inspector.get_table_names(schema=schemas.canvas)
    if legacy and VERSION_TABLE not in inspector.get_table_names(schema=schemas.tep):
        # Revisions 0001-0002 kept Alembic's table beside Canvas's; from 0003 it is tep's.
        connection.execute(
            text(f'ALTER TABLE "{schemas.canvas}".{VERSION_TABLE} SET SCHEMA "{schemas.tep}"')
        )


def _current_revision(connection: Connection, schemas: Schemas) -> str | None:
    context = MigrationContext.configure(
        connection, opts={"version_table_schema": _version_schema(connection, schemas)}
    )
    return context.get_current_revision()


def _is_legacy(connection: Connection, schemas: Schemas) -> bool:
    schema = schemas.of_table(None, connection.dialect.name)
    return LEGACY_MARKER_TABLE in inspect(connection).get_table_names(schema=schema)


def _create_from_models(connection: Connection, schemas: Schemas) -> None:
    tables = [
        table
        for table in Base.metadata.sorted_tables
        if table.schema == TEP_SCHEMA or schemas.canvas_tables != CANVAS_TABLES_EXISTING
    ]
    Base.metadata.create_all(connection, tables=tables)
    if schemas.canvas_tables != CANVAS_TABLES_EXISTING:
        seed_dummy_root_account(connection)
    script = ScriptDirectory.from_config(alembic_config("sqlite://", schemas))
    context = MigrationContext.configure(
        connection, opts={"version_table_schema": _version_schema(connection, schemas)}
    )
    context.stamp(script, "head")


def seed_dummy_root_account(connection: Connection) -> None:
    """Canvas's account 0, which every root account's `root_account_id` points at
    (db/migrate/20111111214312_load_initial_data.rb)."""
    now = utcnow()
    connection.execute(
        insert(Account).values(
            id=DUMMY_ROOT_ACCOUNT_ID,
            name=DUMMY_ROOT_ACCOUNT_NAME,
            workflow_state="deleted",
            root_account_id=DUMMY_ROOT_ACCOUNT_ID,
            created_at=now,
            updated_at=now,
        )
    )


def upgrade(database_url: str, schemas: Schemas | None = None, revision: str = "head") -> None:
    """Bring the database to `revision`: build a new one from the models, or migrate."""
    from alembic import command

    schemas = schemas or Schemas()
    engine = make_engine(database_url, schemas)
    try:
        with engine.begin() as connection:
            prepare(connection, schemas)
            if schemas.canvas_tables == CANVAS_TABLES_EXISTING:
                problems = missing_canvas_columns(connection, schemas)
                if problems:
                    raise CanvasSchemaMismatch(problems)
            fresh = _current_revision(connection, schemas) is None
            if fresh and not _is_legacy(connection, schemas) and revision == "head":
                _create_from_models(connection, schemas)
                return
    finally:
        engine.dispose()
    command.upgrade(alembic_config(database_url, schemas), revision)
