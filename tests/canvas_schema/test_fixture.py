"""The Canvas schema fixture: Canvas's tables as its migrations define them, and its guards."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg.rows import TupleRow
from sqlalchemy import Engine, exc, make_url, text

from models import make_engine
from tests import services
from tests.canvas_schema import (
    CANVAS_TABLES,
    build_canvas_schema,
    configure_like_canvas_production,
)

pytestmark = pytest.mark.postgres

SCHEMA = "canvas_fixture"


@dataclass(frozen=True)
class CanvasDatabase:
    url: str
    engine: Engine

    def raw_session(self) -> psycopg.Connection[TupleRow]:
        """A new session with no options of its own: it gets the database's settings.

        (`models.make_engine` pins its sessions to UTC, so the zone check cannot use them.)
        """
        return psycopg.connect(self.url, options=f"-c search_path={SCHEMA}")


@pytest.fixture(scope="module")
def canvas_db() -> Iterator[CanvasDatabase]:
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database("tep_canvas_schema") as url:
        engine = make_engine(url)
        try:
            with engine.begin() as connection:
                build_canvas_schema(connection, SCHEMA)
                database = make_url(url).database
                assert database is not None
                configure_like_canvas_production(connection, database)
            engine.dispose()  # later connections are new sessions and see the settings
            yield CanvasDatabase(url=url, engine=engine)
        finally:
            engine.dispose()


def _column(db: CanvasDatabase, table: str, column: str) -> dict[str, object]:
    with db.engine.connect() as connection:
        row = (
            connection.execute(
                text(
                    "SELECT data_type, is_nullable, column_default, datetime_precision,"
                    " format_type(a.atttypid, a.atttypmod) AS full_type"
                    " FROM information_schema.columns c"
                    " JOIN pg_attribute a ON a.attrelid = format('%I.%I', c.table_schema,"
                    "   c.table_name)::regclass AND a.attname = c.column_name"
                    " WHERE table_schema = :schema AND table_name = :table"
                    " AND column_name = :column"
                ),
                {"schema": SCHEMA, "table": table, "column": column},
            )
            .mappings()
            .one_or_none()
        )
    assert row is not None, f"{table}.{column} is missing"
    return dict(row)


def _index_definition(db: CanvasDatabase, name: str) -> str:
    with db.engine.connect() as connection:
        definition = connection.execute(
            text("SELECT indexdef FROM pg_indexes WHERE schemaname = :schema AND indexname = :n"),
            {"schema": SCHEMA, "n": name},
        ).scalar_one_or_none()
    assert definition is not None, f"index {name} is missing"
    return str(definition)


def test_every_table_exists_with_guard_triggers(canvas_db: CanvasDatabase) -> None:
    with canvas_db.engine.connect() as connection:
        tables = set(
            connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"),
                {"schema": SCHEMA},
            ).scalars()
        )
        triggers = {
            (str(row[0]), str(row[1]))
            for row in connection.execute(
                text(
                    "SELECT c.relname, t.tgname FROM pg_trigger t"
                    " JOIN pg_class c ON c.oid = t.tgrelid"
                    " WHERE c.relnamespace = to_regnamespace(:schema) AND NOT t.tgisinternal"
                ),
                {"schema": SCHEMA},
            )
        }
    assert tables == set(CANVAS_TABLES)
    for table in CANVAS_TABLES:
        assert (table, "guard_excessive_updates") in triggers
        assert (table, "guard_excessive_deletes") in triggers


def test_enrollment_columns_as_canvas_defines_them(canvas_db: CanvasDatabase) -> None:
    role_id = _column(canvas_db, "enrollments", "role_id")
    assert (role_id["data_type"], role_id["is_nullable"]) == ("bigint", "NO")
    limit = _column(canvas_db, "enrollments", "limit_privileges_to_course_section")
    assert (limit["data_type"], limit["is_nullable"], limit["column_default"]) == (
        "boolean",
        "NO",
        "false",
    )
    workflow_state = _column(canvas_db, "enrollments", "workflow_state")
    assert workflow_state["is_nullable"] == "NO"
    assert workflow_state["column_default"] is None
    assert workflow_state["full_type"] == "character varying(255)"
    for column in ("user_id", "course_id", "type", "course_section_id", "root_account_id"):
        assert _column(canvas_db, "enrollments", column)["is_nullable"] == "NO", column
    for column in ("temporary_enrollment_source_user_id", "temporary_enrollment_pairing_id"):
        assert _column(canvas_db, "enrollments", column)["is_nullable"] == "YES", column


def test_timestamps_are_without_time_zone(canvas_db: CanvasDatabase) -> None:
    for table, column in (
        ("enrollments", "end_at"),
        ("enrollments", "updated_at"),
        ("enrollment_states", "state_valid_until"),
        ("users", "updated_at"),
        ("temporary_enrollment_pairings", "created_at"),
    ):
        info = _column(canvas_db, table, column)
        assert info["data_type"] == "timestamp without time zone", (table, column)
    assert _column(canvas_db, "enrollments", "end_at")["full_type"] == (
        "timestamp without time zone"
    )
    # `t.timestamps` without `precision: nil` in a Migration[7.0]: precision 6, NOT NULL
    created_at = _column(canvas_db, "temporary_enrollment_pairings", "created_at")
    assert created_at["full_type"] == "timestamp(6) without time zone"
    assert created_at["is_nullable"] == "NO"


def test_temporary_enrollment_pairings(canvas_db: CanvasDatabase) -> None:
    workflow_state = _column(canvas_db, "temporary_enrollment_pairings", "workflow_state")
    assert workflow_state["is_nullable"] == "NO"
    assert workflow_state["column_default"] == "'active'::character varying"
    root_account_id = _column(canvas_db, "temporary_enrollment_pairings", "root_account_id")
    assert root_account_id["is_nullable"] == "NO"
    for column in ("created_by_id", "deleted_by_id", "ending_enrollment_state"):
        assert _column(canvas_db, "temporary_enrollment_pairings", column)["is_nullable"] == "YES"
    with canvas_db.engine.connect() as connection:
        has_ended_at = connection.execute(
            text(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = :schema"
                " AND table_name = 'temporary_enrollment_pairings' AND column_name = 'ended_at'"
            ),
            {"schema": SCHEMA},
        ).scalar_one()
    assert has_ended_at == 0


def test_enrollment_state_and_unique_indexes(canvas_db: CanvasDatabase) -> None:
    lock_version = _column(canvas_db, "enrollment_states", "lock_version")
    assert (lock_version["is_nullable"], lock_version["column_default"]) == ("NO", "0")
    definition = _index_definition(canvas_db, "index_enrollments_on_user_type_role_section")
    assert "UNIQUE" in definition
    assert "(user_id, type, role_id, course_section_id)" in definition
    assert "WHERE (associated_user_id IS NULL)" in definition
    temporary = _index_definition(
        canvas_db, "index_enrollments_on_temp_enrollment_user_type_role_section"
    )
    assert "(temporary_enrollment_source_user_id, user_id, type, role_id, course_section_id)" in (
        temporary
    )
    pairing = _index_definition(canvas_db, "index_enrollments_on_temporary_enrollment_pairing_id")
    assert "WHERE (temporary_enrollment_pairing_id IS NOT NULL)" in pairing
    with canvas_db.engine.connect() as connection:
        end_at_indexes = connection.execute(
            text(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = :schema"
                " AND tablename = 'enrollments' AND indexdef LIKE '%end_at%'"
            ),
            {"schema": SCHEMA},
        ).scalar_one()
    assert end_at_indexes == 0


def test_replica_identity_uses_the_replica_identity_index(canvas_db: CanvasDatabase) -> None:
    with canvas_db.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.relname, i.relname FROM pg_index x"
                " JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid"
                " WHERE x.indisreplident AND c.relnamespace = to_regnamespace(:schema)"
            ),
            {"schema": SCHEMA},
        )
        identities = {str(row[0]): str(row[1]) for row in rows}
    assert identities["enrollments"] == "index_enrollments_replica_identity"
    assert identities["users"] == "index_users_replica_identity"
    assert "communication_channels" not in identities  # it has no replica identity index
    definition = _index_definition(canvas_db, "index_enrollment_states_replica_identity")
    assert "(root_account_id, enrollment_id)" in definition


def test_dummy_account_zero_backs_root_account_foreign_keys(canvas_db: CanvasDatabase) -> None:
    with canvas_db.engine.connect() as connection:
        connection.exec_driver_sql(f"SET LOCAL search_path TO {SCHEMA}")
        dummy = connection.execute(
            text("SELECT name, workflow_state, root_account_id FROM accounts WHERE id = 0")
        ).one()
        assert tuple(dummy) == ("Dummy Root Account", "deleted", 0)
        connection.execute(
            text(
                "INSERT INTO accounts (name, root_account_id, created_at, updated_at)"
                " VALUES ('Root', 0, now(), now())"
            )
        )
        with pytest.raises(exc.IntegrityError):
            connection.execute(
                text(
                    "INSERT INTO accounts (name, root_account_id, created_at, updated_at)"
                    " VALUES ('Orphan', 424242, now(), now())"
                )
            )
        connection.rollback()


def test_guard_raises_on_a_bulk_update_in_a_new_session(canvas_db: CanvasDatabase) -> None:
    with canvas_db.engine.begin() as connection:
        connection.exec_driver_sql(f"SET LOCAL search_path TO {SCHEMA}")
        connection.execute(
            text(
                "INSERT INTO users (name, workflow_state, created_at, updated_at)"
                " SELECT 'user ' || n, 'registered', now(), now()"
                " FROM generate_series(1, 1001) AS n"
            )
        )
    with canvas_db.raw_session() as session:
        fail_setting = session.execute("SHOW inst.max_update_fail").fetchone()
        assert fail_setting is not None and fail_setting[0] == "true"
        with pytest.raises(psycopg.errors.RaiseException, match="guard_excessive_updates"):
            session.execute("UPDATE users SET name = name || '!'")
        session.rollback()

        # as Canvas's own bulk updates do: raise the limit for the transaction
        session.execute("SELECT set_config('inst.max_update_limit', '5000', true)")
        updated = session.execute("UPDATE users SET name = name || '!'")
        assert updated.rowcount == 1001
        session.rollback()

        # the limit is per statement and per table: 1000 rows is still allowed
        updated = session.execute(
            "UPDATE users SET name = name || '?' WHERE id IN (SELECT id FROM users LIMIT 1000)"
        )
        assert updated.rowcount == 1000
        session.rollback()

    # make_engine's sessions also get max_update_fail from the database
    with canvas_db.engine.connect() as connection:
        connection.exec_driver_sql(f"SET LOCAL search_path TO {SCHEMA}")
        with pytest.raises(exc.DBAPIError, match="guard_excessive_updates"):
            connection.execute(text("DELETE FROM users"))
        connection.rollback()


def test_new_sessions_run_outside_utc(canvas_db: CanvasDatabase) -> None:
    with canvas_db.raw_session() as session:
        row = session.execute("SHOW timezone").fetchone()
    assert row is not None
    assert row[0] not in ("UTC", "Etc/UTC", "GMT")
    assert row[0] == "America/Denver"
