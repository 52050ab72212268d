"""Alembic environment: migrates the database whose URL (and schemas) the caller put in the config.

`tep db upgrade` calls :func:`migrations.upgrade`, which builds a new database from the models and
runs revisions only on databases that have some; a bare `alembic upgrade head` (with the
repository's alembic.ini) falls back to the settings.
"""

from __future__ import annotations

from alembic import context

from models import TEP_SCHEMA, Base, Schemas, make_engine

config = context.config


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from worker.settings import get_settings

    return get_settings().database_url


def _schemas() -> Schemas:
    schemas = config.attributes.get("schemas")
    if isinstance(schemas, Schemas):
        return schemas
    from worker.settings import get_settings

    return get_settings().schemas()


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    schemas = _schemas()
    engine = make_engine(_database_url(), schemas)
    with engine.connect() as connection:
        # A bare `alembic upgrade` on a legacy database: its version table moves into tep's
        # schema first, as `tep db upgrade` does (migrations/__init__.py).
        from migrations import prepare

        with connection.begin():
            prepare(connection, schemas)
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite cannot ALTER most things; batch mode rebuilds tables there.
            render_as_batch=True,
            version_table_schema=schemas.of_table(TEP_SCHEMA, connection.dialect.name),
            include_schemas=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
