"""Canvas LMS's real tables (a subset) in a PostgreSQL schema, for tests.

`init_canvas_db.sql` (next to this file) is a transcription of the facts of Canvas's schema —
columns, types, defaults, indexes, foreign keys, replica identities and the
`guard_excessive_updates` statement triggers — taken from Canvas's own migration source; its
header cites every file. `build_canvas_schema` loads it into a schema and adds the dummy account 0
that Canvas's `LoadInitialData` migration creates; `configure_like_canvas_production` gives the
database the settings that make a test see what Canvas's production database would do.
"""

from __future__ import annotations

import secrets
import unicodedata
from pathlib import Path

import sqlalchemy
from sqlalchemy.orm import Session

SQL_PATH = Path(__file__).with_name("init_canvas_db.sql")

CANVAS_SOURCES: tuple[str, ...] = (
    "instructure/canvas-lms db/migrate/20101210192618_init_canvas_db.rb (squashed InitCanvasDb, "
    "Migration[7.0]; search-index id 1095676323, commit not listed by the index)",
    "instructure/canvas-lms config/initializers/postgresql_adapter.rb (index id 1021089220: "
    "DEFAULT_MAX_UPDATE_LIMIT = 1000, add_guard_excessive_updates, replica_identity_index)",
    "instructure/canvas-lms lib/canvas/active_record/migration/defer_foreign_keys.rb "
    "(index id 11157386655; path listed at f7ddfb9733fc2efab8f92f2849656cd7236e7155)",
    "switchman-inst-jobs PostgreSQLAdapter#set_search_path (index id 38764286225)",
    "activerecord-pg-extensions #set_replica_identity (index id 25349800513)",
    "instructure/canvas-lms SetReplicaIdentities migration, 2024 (index id 486060554)",
    "instructure/canvas-lms db/migrate/20231206233333_add_created_by_and_deleted_by_to_"
    "temporary_enrollment_pairings.rb @ 754e0fd37cfd725da3597f2e92462f9b29162f38",
    "instructure/canvas-lms CreateTemporaryEnrollmentPairings migration (index id 1669090401)",
    "instructure/canvas-lms AddUniqueIdNormalizedToPseudonyms (index id 48854807651) and "
    "NormalizePseudonyms (index id 5859776026) migrations",
    "instructure/canvas-lms config/initializers/active_record.rb best_unicode_collation_key "
    "(index id 943922173) and Canvas::ICU.choose_pg12_collation (index id 1153013030)",
    "instructure/canvas-lms db/migrate/20111111214312_load_initial_data.rb "
    "@ 3d8dd62786be64ea8f2161a9b09d957319a37bb0",
)

CANVAS_TABLES: tuple[str, ...] = (
    "accounts",
    "courses",
    "users",
    "access_tokens",
    "account_users",
    "communication_channels",
    "course_sections",
    "developer_keys",
    "enrollment_states",
    "enrollment_terms",
    "enrollments",
    "pseudonyms",
    "roles",
    "role_overrides",
    "temporary_enrollment_pairings",
)

# LoadInitialData defers this constraint (accounts.root_account_id -> accounts) while it creates
# the self-referencing dummy account.
ROOT_ACCOUNT_FK = "fk_rails_5de7ad5dec"

# A non-UTC zone: Canvas's timestamps hold UTC in `timestamp without time zone`, so a session in
# another zone shows up any `now()` or cast that assumes the session zone is UTC.
PRODUCTION_LIKE_TIMEZONE = "America/Denver"


def _quote(connection: sqlalchemy.Connection, identifier: str) -> str:
    return connection.dialect.identifier_preparer.quote_identifier(identifier)


def canvas_schema_sql() -> str:
    return SQL_PATH.read_text(encoding="utf-8")


def build_canvas_schema(connection: sqlalchemy.Connection, schema: str = "public") -> None:
    """Create Canvas's tables in `schema` (created if missing) and the dummy account 0.

    Runs in the connection's transaction (the caller commits); `search_path` is switched to
    `schema` for the load only and put back afterwards.
    """
    if connection.dialect.name != "postgresql":
        raise ValueError("Canvas's schema is PostgreSQL-only")
    quoted = _quote(connection, schema)
    previous = connection.exec_driver_sql("SHOW search_path").scalar_one()
    connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
    connection.execute(
        sqlalchemy.text("SELECT set_config('search_path', :path, true)"), {"path": quoted}
    )
    # No parameters: psycopg 3 then sends the whole multi-statement script in one go, and the
    # `%` in the functions' RAISE formats is not taken for a placeholder.
    connection.exec_driver_sql(canvas_schema_sql(), execution_options={"no_parameters": True})
    _create_dummy_root_account(connection)
    connection.execute(
        sqlalchemy.text("SELECT set_config('search_path', :path, true)"), {"path": previous}
    )


def _create_dummy_root_account(connection: sqlalchemy.Connection) -> None:
    """Account 0, as LoadInitialData#create_dummy_data creates it.

    Canvas runs `Account.create_with(name: "Dummy Root Account", workflow_state: "deleted",
    root_account_id: 0).find_or_create_by!(id: 0)` with the root-account FK deferred; Rails adds
    created_at/updated_at (UTC). Model callbacks that fill other columns are not reproduced.
    """
    connection.exec_driver_sql(f"SET CONSTRAINTS {ROOT_ACCOUNT_FK} DEFERRED")
    connection.exec_driver_sql(
        "INSERT INTO accounts (id, name, workflow_state, root_account_id, created_at, updated_at) "
        "VALUES (0, 'Dummy Root Account', 'deleted', 0, "
        "now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC') "
        "ON CONFLICT (id) DO NOTHING"
    )
    connection.exec_driver_sql(f"SET CONSTRAINTS {ROOT_ACCOUNT_FK} IMMEDIATE")


def configure_like_canvas_production(connection: sqlalchemy.Connection, database: str) -> None:
    """Make every new session on `database` fail guarded bulk writes and run in a non-UTC zone.

    `inst.max_update_fail = 'true'` turns the guard's WARNING into an exception (a statement
    touching more than `inst.max_update_limit`, default 1000, rows of one table); the zone is
    what a server outside UTC would give a session that does not set its own.
    """
    quoted = _quote(connection, database)
    connection.exec_driver_sql(f"ALTER DATABASE {quoted} SET inst.max_update_fail = 'true'")
    connection.exec_driver_sql(
        f"ALTER DATABASE {quoted} SET timezone = '{PRODUCTION_LIKE_TIMEZONE}'"
    )


def build_canvas_database(url: str, schema: str = "public") -> None:
    """Canvas's schema in the (empty) database at `url`, configured like Canvas's production
    database; the settings reach the sessions opened afterwards."""
    from models import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            build_canvas_schema(connection, schema)
            database = connection.engine.url.database
            assert database is not None
            configure_like_canvas_production(connection, database)
    finally:
        engine.dispose()


# pseudonyms' NOT NULL columns without a default that Canvas's model fills in Ruby (Authlogic's
# password and token columns; `unique_id_normalized` from Pseudonym.normalize). tep maps none of
# them: it creates no logins on Canvas's database (the API refuses to create users there).
CANVAS_FILLED_PSEUDONYM_COLUMNS: tuple[str, ...] = (
    "crypted_password",
    "password_salt",
    "persistence_token",
    "single_access_token",
    "perishable_token",
    "unique_id_normalized",
)
# (database URL, schema) -> whether its pseudonyms table is Canvas's (has those columns).
_canvas_pseudonyms: dict[tuple[str, str], bool] = {}


def _has_canvas_pseudonyms(connection: sqlalchemy.Connection) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    from models import Base

    schema = connection.schema_for_object(Base.metadata.tables["pseudonyms"]) or "public"
    key = (connection.engine.url.render_as_string(hide_password=True), schema)
    if key not in _canvas_pseudonyms:
        _canvas_pseudonyms[key] = bool(
            connection.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM information_schema.columns WHERE table_schema = :s "
                    "AND table_name = 'pseudonyms' AND column_name = 'crypted_password'"
                ),
                {"s": schema},
            ).scalar_one()
        )
    return _canvas_pseudonyms[key]


def add_pseudonym(
    session: Session,
    *,
    user_id: int,
    account_id: int,
    unique_id: str,
    sis_user_id: str | None = None,
) -> None:
    """A login of `user_id` in root account `account_id`, as test data: tep's mapped columns in
    `managed` mode; on Canvas's own schema also the columns Canvas's model fills in Ruby
    (random tokens and password hash, the normalized login), as Canvas would have written it."""
    from models import Pseudonym

    connection = session.connection()
    if not _has_canvas_pseudonyms(connection):
        session.add(
            Pseudonym(
                user_id=user_id, account_id=account_id, unique_id=unique_id, sis_user_id=sis_user_id
            )
        )
        session.flush()
        return
    filled = {
        "crypted_password": secrets.token_hex(32),
        "password_salt": secrets.token_hex(10),
        "persistence_token": secrets.token_hex(64),
        "single_access_token": secrets.token_urlsafe(15)[:20],
        "perishable_token": secrets.token_urlsafe(15)[:20],
        # Pseudonym.normalize: NFKC, then case-folded (downcase).
        "unique_id_normalized": unicodedata.normalize("NFKC", unique_id).lower(),
    }
    columns = {
        "user_id": user_id,
        "account_id": account_id,
        "workflow_state": "active",
        "unique_id": unique_id,
        "sis_user_id": sis_user_id,
        **filled,
    }
    table = sqlalchemy.table(
        "pseudonyms",
        *(sqlalchemy.column(name) for name in [*columns, "created_at", "updated_at"]),
    )
    now = sqlalchemy.text("(now() AT TIME ZONE 'UTC')")
    connection.execute(table.insert().values(**columns, created_at=now, updated_at=now))
