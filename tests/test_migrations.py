"""The migrations create exactly the schema the models describe, on both databases; revision 0003
moves a database made by revisions 0001-0002 over to it, keeping every row."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, MetaData, func, inspect, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.schema import BLANK_SCHEMA

from migrations import DUMMY_ROOT_ACCOUNT_NAME, VERSION_TABLE, alembic_config, upgrade
from models import (
    BUILT_IN_ROLES,
    CANVAS_TABLES_EXISTING,
    DEFAULT_TERM_NAME,
    DUMMY_ROOT_ACCOUNT_ID,
    TEP_SCHEMA,
    Account,
    ApiToken,
    Base,
    CommunicationChannel,
    Course,
    CourseSection,
    DiscoveryCursor,
    Enrollment,
    EnrollmentDeadline,
    EnrollmentState,
    EnrollmentTerm,
    Notice,
    PairingEnd,
    Pseudonym,
    Role,
    Schemas,
    StateChange,
    SweepRun,
    TemporaryEnrollmentPairing,
    User,
    WebhookDelivery,
    WebhookReceiver,
    make_engine,
    make_sessionmaker,
)
from tasks import lifecycle, metric_totals
from tests import services
from tests.canvas_schema import build_canvas_database
from tests.conftest import CANVAS_SCHEMAS
from tests.test_metrics import audit_totals, make_history

LEGACY_REVISION = "0002"
HEAD_REVISION = "0007"


# --------------------------------------------------------------------------------------------
# Comparing a database with the models


def translated_metadata(backend: str, schemas: Schemas, *, tep_only: bool = False) -> MetaData:
    """The models' tables with tep's placeholder schema replaced by the real one (none on
    SQLite), which is what autogenerate must compare the database with."""

    def table_schema(schema: str | None) -> str | None:
        return None if schema is None else schemas.of_table(schema, backend)

    def referred_schema(schema: str | None) -> Any:
        # A foreign key's schema of None means "the table's own"; BLANK_SCHEMA means none.
        if schema is None:
            return None
        return schemas.of_table(schema, backend) or BLANK_SCHEMA

    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        if tep_only and table.schema != TEP_SCHEMA:
            continue
        table.to_metadata(
            metadata,
            # None is "the new MetaData's schema" (none), which SQLAlchemy's annotation omits.
            schema=table_schema(table.schema),  # type: ignore[arg-type]
            referred_schema_fn=lambda _t, _s, _c, referred: referred_schema(referred),
        )
    return metadata


def schema_differences(
    connection: Connection, schemas: Schemas, *, tep_only: bool = False
) -> list[Any]:
    """Alembic's autogenerate differences between the database and the models (types, NULLs,
    server defaults, indexes, foreign keys), over Canvas's schema and tep's."""
    backend = connection.dialect.name
    tep = schemas.of_table(TEP_SCHEMA, backend)
    wanted = {tep} if tep_only else {None, schemas.canvas, tep}

    tep_tables = {t.name for t in Base.metadata.sorted_tables if t.schema == TEP_SCHEMA}

    def include_name(name: str | None, type_: str, _parent: Any) -> bool:
        if type_ == "schema":
            return name in wanted
        # On SQLite tep's tables share the file with Canvas's.
        return not (tep_only and type_ == "table" and name not in tep_tables)

    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": backend == "postgresql",
            "include_name": include_name,
            "compare_server_default": True,
            "version_table_schema": tep,
        },
    )
    return list(compare_metadata(context, translated_metadata(backend, schemas, tep_only=tep_only)))


def _normal_sql(sql: str | None) -> str:
    """SQLite's stored DDL, without what differs between equal tables: whitespace, and the
    quotes ALTER TABLE .. RENAME puts around a table's name."""
    return " ".join((sql or "").replace('"', "").split())


def catalog(connection: Connection, schemas: Schemas) -> dict[str, set[tuple[Any, ...]]]:
    """What the database's own catalog says about tep's and Canvas's tables, for comparing two
    databases entry by entry: finer than autogenerate (partial index predicates, INCLUDE
    columns, sequences, constraint and index names). Column order is left out on PostgreSQL,
    where a converted table keeps its added columns last."""
    if connection.dialect.name == "sqlite":
        rows = connection.execute(
            text(
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE name NOT LIKE 'sqlite_%' AND tbl_name <> :version"
            ),
            {"version": VERSION_TABLE},
        )
        return {"objects": {(t, n, tbl, _normal_sql(sql)) for t, n, tbl, sql in rows}}
    names = [schemas.canvas, schemas.tep]
    queries = {
        "relations": """
            SELECT n.nspname, c.relname, c.relkind FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'S', 'i')
              AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')""",
        "columns": """
            SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                   a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE n.nspname = ANY(:schemas) AND c.relkind = 'r' AND a.attnum > 0
              AND NOT a.attisdropped AND c.relname <> 'alembic_version'""",
        "constraints": """
            SELECT n.nspname, c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
            FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(:schemas) AND c.relname <> 'alembic_version'""",
        "indexes": """
            SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
            WHERE schemaname = ANY(:schemas) AND tablename <> 'alembic_version'""",
        "sequences": """
            SELECT n.nspname, s.relname, t.relname, a.attname FROM pg_class s
            JOIN pg_namespace n ON n.oid = s.relnamespace
            JOIN pg_depend d ON d.objid = s.oid AND d.deptype = 'a'
            JOIN pg_class t ON t.oid = d.refobjid
            JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
            WHERE s.relkind = 'S' AND n.nspname = ANY(:schemas)""",
    }
    return {
        key: {tuple(row) for row in connection.execute(text(sql), {"schemas": names})}
        for key, sql in queries.items()
    }


def catalog_differences(
    got: dict[str, set[tuple[Any, ...]]], want: dict[str, set[tuple[Any, ...]]]
) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    return {
        key: {"extra": sorted(got[key] - want[key]), "missing": sorted(want[key] - got[key])}
        for key in want
        if got[key] != want[key]
    }


# --------------------------------------------------------------------------------------------
# A new database (built from the models and stamped)


@pytest.mark.managed_only
def test_new_database_matches_the_models(engine: Engine, database_schemas: Schemas) -> None:
    with engine.connect() as connection:
        assert schema_differences(connection, database_schemas) == []


def test_tep_tables_match_the_models_in_both_modes(
    engine: Engine, database_schemas: Schemas
) -> None:
    """On Canvas's own database (`existing`) too: tep's tables, in tep's schema."""
    with engine.connect() as connection:
        assert schema_differences(connection, database_schemas, tep_only=True) == []


def test_new_database_is_at_head(database_url: str, database_schemas: Schemas) -> None:
    engine = make_engine(database_url, database_schemas)
    try:
        with engine.connect() as connection:
            version_schema = database_schemas.of_table(TEP_SCHEMA, connection.dialect.name)
            context = MigrationContext.configure(
                connection, opts={"version_table_schema": version_schema}
            )
            assert context.get_current_revision() == HEAD_REVISION
    finally:
        engine.dispose()


def test_deadline_index_drives_the_sweep(engine: Engine, database_schemas: Schemas) -> None:
    """Due work is a range scan on tep's deadline index by (end_at, enrollment_id); undated
    live temporary enrollments have a partial index of their own (O(bad rows))."""
    schema = database_schemas.of_table(TEP_SCHEMA, engine.dialect.name)
    indexes = {
        ix["name"]: ix
        for ix in inspect(engine).get_indexes(EnrollmentDeadline.__tablename__, schema=schema)
    }
    due = indexes["index_temporary_enrollment_deadlines_on_end_at"]
    assert due["column_names"][:2] == ["end_at", "enrollment_id"]
    undated = indexes["index_temporary_enrollment_deadlines_without_end_at"]
    where = str(undated.get("dialect_options", {}).get(f"{engine.dialect.name}_where", ""))
    assert "end_at IS NULL" in where


# --------------------------------------------------------------------------------------------
# A legacy database (revisions 0001-0002) moved over by 0003


T0 = dt.datetime(2026, 11, 20, 9, 30, 15, 123456, tzinfo=dt.UTC)
ENDED_AT = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
DELETED_AT = dt.datetime(2026, 11, 25, 16, 45, tzinfo=dt.UTC)
PAST = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
FUTURE = dt.datetime(2027, 1, 15, 23, 59, 59, tzinfo=dt.UTC)
TOKEN_SECRET = "legacy-secret-token"

# Legacy ids (explicit, so that the assertions can name them).
ROOT, SUB, OTHER_ROOT = 1, 2, 3
PROVIDER, RECIPIENT, STUDENT = 1, 2, 3
COURSE, SECTION = 1, 1
ENDED, ACTIVE, DELETED, ENDED_UNAUDITED = 1, 2, 3, 4
E_EXPIRED, E_LIVE, E_TEACHER, E_INVITED, E_OF_DELETED = 1, 2, 3, 4, 5


def _moment(backend: str, value: dt.datetime) -> Any:
    """A timestamp as revisions 0001-0002 stored it: `timestamptz` on PostgreSQL, the naive UTC
    instant as text on SQLite (models.base.UTCDateTime)."""
    if backend == "postgresql":
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def fill_legacy_database(connection: Connection) -> None:
    """Old-style rows, written as revisions 0001-0002's tep wrote them: root accounts with NULL
    root_account_id, a pairing `ended` with `ended_at`, one deleted after it ended, tokens in
    `access_tokens`, audit rows."""
    backend = connection.dialect.name

    def insert(table: str, **values: Any) -> None:
        values = {
            key: _moment(backend, value) if isinstance(value, dt.datetime) else value
            for key, value in values.items()
        }
        if table != "temporary_enrollment_sweep_runs":
            values.setdefault("created_at", _moment(backend, T0))
        if table not in ("temporary_enrollment_state_changes", "temporary_enrollment_sweep_runs"):
            values.setdefault("updated_at", _moment(backend, T0))
        columns = ", ".join(values)
        params = ", ".join(f":{key}" for key in values)
        connection.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params})"), values)

    insert("accounts", id=ROOT, name="Legacy U", workflow_state="active")
    insert(
        "accounts",
        id=SUB,
        name="Arts",
        parent_account_id=ROOT,
        root_account_id=ROOT,
        workflow_state="active",
    )
    insert("accounts", id=OTHER_ROOT, name="Other U", workflow_state="active")
    for user_id, name in (
        (PROVIDER, "Pat Provider"),
        (RECIPIENT, "Rae Recipient"),
        (STUDENT, "Sam Student"),
    ):
        insert("users", id=user_id, name=name, sortable_name=name, workflow_state="registered")
        insert(
            "pseudonyms",
            user_id=user_id,
            account_id=ROOT,
            unique_id=f"user{user_id}",
            workflow_state="active",
        )
    insert(
        "communication_channels",
        user_id=RECIPIENT,
        path="rae@example.edu",
        path_type="email",
        workflow_state="active",
    )
    insert(
        "courses",
        id=COURSE,
        name="Painting",
        course_code="ART101",
        account_id=SUB,
        root_account_id=ROOT,
        workflow_state="available",
        start_at=PAST,
    )
    insert(
        "course_sections",
        id=SECTION,
        course_id=COURSE,
        root_account_id=ROOT,
        name="Painting",
        default_section=True,
        workflow_state="active",
    )
    insert(
        "temporary_enrollment_pairings",
        id=ENDED,
        root_account_id=ROOT,
        workflow_state="ended",
        ending_enrollment_state="deleted",
        created_by_id=PROVIDER,
        ended_at=ENDED_AT,
    )
    insert(
        "temporary_enrollment_pairings",
        id=ACTIVE,
        root_account_id=ROOT,
        workflow_state="active",
        ending_enrollment_state="completed",
    )
    insert(
        "temporary_enrollment_pairings",
        id=DELETED,
        root_account_id=ROOT,
        workflow_state="deleted",
        deleted_by_id=PROVIDER,
        ended_at=DELETED_AT,
    )
    insert(
        "temporary_enrollment_pairings",
        id=ENDED_UNAUDITED,
        root_account_id=ROOT,
        workflow_state="ended",
        ended_at=PAST,
    )

    def enrollment(eid: int, user: int, kind: str, state: str, **more: Any) -> None:
        insert(
            "enrollments",
            id=eid,
            user_id=user,
            course_id=COURSE,
            course_section_id=SECTION,
            root_account_id=ROOT,
            type=kind,
            workflow_state=state,
            **more,
        )

    enrollment(
        E_EXPIRED,
        RECIPIENT,
        "TeacherEnrollment",
        "deleted",
        start_at=T0,
        end_at=PAST,
        temporary_enrollment_source_user_id=PROVIDER,
        temporary_enrollment_pairing_id=ENDED,
    )
    enrollment(
        E_LIVE,
        RECIPIENT,
        "TaEnrollment",
        "active",
        start_at=T0,
        end_at=FUTURE,
        temporary_enrollment_source_user_id=PROVIDER,
        temporary_enrollment_pairing_id=ACTIVE,
    )
    enrollment(E_TEACHER, PROVIDER, "TeacherEnrollment", "active")
    enrollment(E_INVITED, STUDENT, "StudentEnrollment", "invited", start_at=FUTURE)
    # Bad data the sweep never touches: live, but its pairing is deleted. No deadline for it.
    enrollment(
        E_OF_DELETED,
        STUDENT,
        "TaEnrollment",
        "active",
        end_at=FUTURE,
        temporary_enrollment_source_user_id=PROVIDER,
        temporary_enrollment_pairing_id=DELETED,
    )

    def audit(aid: int, pairing: int, from_state: str, to_state: str, run_id: str) -> None:
        insert(
            "temporary_enrollment_state_changes",
            id=aid,
            context_type="TemporaryEnrollmentPairing",
            context_id=pairing,
            temporary_enrollment_pairing_id=pairing,
            root_account_id=ROOT,
            from_state=from_state,
            to_state=to_state,
            reason="expired",
            run_id=run_id,
        )

    # ENDED ended, was restored, and ended again: its end is the newest `ended` row's run.
    audit(1, ENDED, "active", "ended", "run-first-end")
    audit(2, ENDED, "ended", "active", "run-restore")
    audit(3, ENDED, "active", "ended", "run-second-end")
    insert(
        "temporary_enrollment_state_changes",
        id=4,
        context_type="Enrollment",
        context_id=E_EXPIRED,
        temporary_enrollment_pairing_id=ENDED,
        root_account_id=ROOT,
        from_state="active",
        to_state="deleted",
        reason="expired",
        run_id="run-second-end",
    )
    # DELETED was deleted while active: its end is that run's.
    audit(5, DELETED, "active", "deleted", "run-delete")
    insert(
        "temporary_enrollment_sweep_runs",
        id="run-second-end",
        trigger="beat",
        as_of=ENDED_AT,
        account_id=None,
        started_at=ENDED_AT,
        finished_at=ENDED_AT,
        enrollments_changed=1,
        pairings_ended=1,
        pairings_skipped=0,
        summary="{}",
    )
    insert(
        "access_tokens",
        id=1,
        user_id=PROVIDER,
        root_account_id=ROOT,
        crypted_token=hashlib.sha256(TOKEN_SECRET.encode()).hexdigest(),
        token_hint="legac",
        scopes=None,
        workflow_state="active",
        expires_at=FUTURE,
    )
    insert(
        "temporary_enrollment_webhook_receivers",
        id=1,
        url="https://hooks.example/tep",
        low_water_state_change_id=3,
    )
    insert(
        "temporary_enrollment_webhook_deliveries",
        receiver_id=1,
        state_change_id=4,
        attempts=2,
        next_attempt_at=FUTURE,
        last_status=503,
    )
    insert(
        "temporary_enrollment_notices",
        id=1,
        temporary_enrollment_pairing_id=ENDED,
        root_account_id=ROOT,
        kind="ended",
        threshold_seconds=0,
        ends_at=ENDED_AT,
        workflow_state="sent",
        attempts=1,
        recipients="rae@example.edu",
        sent_at=ENDED_AT,
    )
    if backend == "postgresql":
        # Explicit ids leave the sequences behind; tep's rows came from them.
        for table in (
            "accounts",
            "users",
            "courses",
            "course_sections",
            "enrollments",
            "temporary_enrollment_pairings",
            "temporary_enrollment_state_changes",
            "access_tokens",
            "temporary_enrollment_webhook_receivers",
            "temporary_enrollment_notices",
        ):
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )


def make_legacy_database(url: str) -> None:
    """Revisions 0001-0002 on an empty database, as a legacy tep left it: on PostgreSQL its
    version table in Canvas's schema and no tep schema."""
    upgrade(url, revision=LEGACY_REVISION)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"ALTER TABLE tep.{VERSION_TABLE} SET SCHEMA public"))
                connection.execute(text("DROP SCHEMA tep"))
                # A server whose default zone is not UTC: the conversion must not depend on it.
                database = engine.url.database
                connection.execute(
                    text(f"ALTER DATABASE \"{database}\" SET timezone = 'Asia/Kolkata'")
                )
            fill_legacy_database(connection)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def legacy_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A legacy database (revisions 0001-0002 with old-style rows), a scratch one per test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'legacy.sqlite'}"
        make_legacy_database(url)
        yield url
        return
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database("tep_test_legacy") as url:
        make_legacy_database(url)
        yield url


@pytest.fixture
def fresh_catalog(legacy_url: str, tmp_path: Path) -> Iterator[dict[str, set[tuple[Any, ...]]]]:
    """The catalog of a new database built from the models, on the same backend."""
    if legacy_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
        upgrade(url)
        yield read_catalog(url)
        return
    with services.scratch_postgres_database("tep_test_fresh") as url:
        upgrade(url)
        yield read_catalog(url)


def read_catalog(url: str) -> dict[str, set[tuple[Any, ...]]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return catalog(connection, Schemas())
    finally:
        engine.dispose()


def counts(session: Session) -> dict[str, int]:
    return {
        model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
        for model in (
            Account,
            User,
            Pseudonym,
            CommunicationChannel,
            Course,
            CourseSection,
            TemporaryEnrollmentPairing,
            Enrollment,
            StateChange,
            SweepRun,
            ApiToken,
            WebhookReceiver,
            WebhookDelivery,
            Notice,
            PairingEnd,
            EnrollmentDeadline,
            EnrollmentState,
            EnrollmentTerm,
            Role,
        )
    }


def test_legacy_database_is_converted(
    legacy_url: str, fresh_catalog: dict[str, set[tuple[Any, ...]]]
) -> None:
    upgrade(legacy_url)

    engine = make_engine(legacy_url)
    try:
        with engine.connect() as connection:
            assert schema_differences(connection, Schemas()) == []
            assert catalog_differences(catalog(connection, Schemas()), fresh_catalog) == {}
            if connection.dialect.name == "postgresql":
                assert set(inspect(connection).get_table_names(schema="tep")) == {
                    t.name for t in Base.metadata.sorted_tables if t.schema == TEP_SCHEMA
                } | {VERSION_TABLE}
            else:
                assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        with make_sessionmaker(engine)() as session:
            check_converted_rows(session)
            # The metric totals, filled from the converted audit rows and runs (revision 0005).
            assert_same_totals(
                metric_totals.read(session), audit_totals(session), backend=engine.dialect.name
            )
            assert metric_totals.read(session)[("sweep_runs", "")] >= 1
            before = counts(session)

        # Upgrading again changes nothing.
        upgrade(legacy_url)
        with engine.connect() as connection:
            assert catalog_differences(catalog(connection, Schemas()), fresh_catalog) == {}
        with make_sessionmaker(engine)() as session:
            assert counts(session) == before
            check_converted_rows(session)

        # And the code runs on it: the sweep ends the active pairing once its enrollment is due.
        summary = lifecycle.run_sweep(make_sessionmaker(engine), as_of=FUTURE)
        assert summary.enrollments_changed_total == 1
        assert summary.pairings_ended == 1
        assert not summary.skipped
        with make_sessionmaker(engine)() as session:
            live = session.get_one(Enrollment, E_LIVE)
            assert live.workflow_state == "completed"
            assert session.get_one(EnrollmentState, E_LIVE).state == "completed"
            assert lifecycle.pairing_view(
                session, session.get_one(TemporaryEnrollmentPairing, ACTIVE)
            ) == lifecycle.PairingView("ended", FUTURE)
    finally:
        engine.dispose()


def check_converted_rows(session: Session) -> None:
    # Accounts: Canvas's dummy account 0, root accounts pointing at it.
    dummy = session.get_one(Account, DUMMY_ROOT_ACCOUNT_ID)
    assert (dummy.name, dummy.workflow_state, dummy.root_account_id) == (
        DUMMY_ROOT_ACCOUNT_NAME,
        "deleted",
        DUMMY_ROOT_ACCOUNT_ID,
    )
    root, sub, other = (session.get_one(Account, i) for i in (ROOT, SUB, OTHER_ROOT))
    assert root.root_account_id == other.root_account_id == DUMMY_ROOT_ACCOUNT_ID
    assert root.is_root and other.is_root and not sub.is_root
    assert sub.root_account_id == ROOT
    assert root.created_at == T0  # the instant kept, at full precision
    assert root.uuid and sub.uuid and root.uuid != sub.uuid

    # Each root account: its default term and the built-in roles; none for the dummy account.
    for account_id in (ROOT, OTHER_ROOT):
        terms = session.scalars(
            select(EnrollmentTerm).where(EnrollmentTerm.root_account_id == account_id)
        ).all()
        assert [(t.name, t.workflow_state) for t in terms] == [(DEFAULT_TERM_NAME, "active")]
        roles = session.scalars(select(Role).where(Role.root_account_id == account_id)).all()
        assert {(r.name, r.base_role_type) for r in roles} == set(BUILT_IN_ROLES)
        assert all(r.workflow_state == "built_in" and r.account_id == account_id for r in roles)
    assert session.scalar(select(func.count()).select_from(Role)) == 2 * len(BUILT_IN_ROLES)

    course = session.get_one(Course, COURSE)
    default_term = session.scalars(
        select(EnrollmentTerm.id).where(EnrollmentTerm.root_account_id == ROOT)
    ).one()
    assert course.enrollment_term_id == default_term
    assert (course.name, course.course_code, course.start_at) == ("Painting", "ART101", PAST)
    assert course.uuid
    assert session.get_one(CourseSection, SECTION).default_section is True
    assert session.get_one(CommunicationChannel, 1).path == "rae@example.edu"
    assert session.scalar(select(func.count()).select_from(Pseudonym)) == 3

    # Enrollments: the built-in role of their type in their root account, a uuid, dates kept.
    roles_by_name = {
        r.name: r.id
        for r in session.scalars(select(Role).where(Role.root_account_id == ROOT)).all()
    }
    enrollments = {e.id: e for e in session.scalars(select(Enrollment)).all()}
    assert set(enrollments) == {E_EXPIRED, E_LIVE, E_TEACHER, E_INVITED, E_OF_DELETED}
    for e in enrollments.values():
        assert e.role_id == roles_by_name[e.type]
        assert e.uuid is not None and len(e.uuid) == 40
        assert e.limit_privileges_to_course_section is False
        assert e.associated_user_id is None
    assert len({e.uuid for e in enrollments.values()}) == len(enrollments)
    live = enrollments[E_LIVE]
    assert (live.start_at, live.end_at, live.workflow_state) == (T0, FUTURE, "active")

    # Canvas's cache: one row per enrollment, as Canvas's callbacks compute it.
    states = {s.enrollment_id: s for s in session.scalars(select(EnrollmentState)).all()}
    assert set(states) == set(enrollments)
    assert (states[E_LIVE].state, states[E_LIVE].state_valid_until) == ("active", FUTURE)
    assert states[E_EXPIRED].state == "deleted"
    assert states[E_TEACHER].state == "active"
    assert (states[E_INVITED].state, states[E_INVITED].state_valid_until) == (
        "pending_invited",
        FUTURE,
    )
    assert all(s.state_is_current and s.root_account_id == ROOT for s in states.values())

    # Pairings: Canvas's states only; the ends in tep's table.
    pairings = {p.id: p for p in session.scalars(select(TemporaryEnrollmentPairing)).all()}
    assert {i: p.workflow_state for i, p in pairings.items()} == {
        ENDED: "active",
        ACTIVE: "active",
        DELETED: "deleted",
        ENDED_UNAUDITED: "active",
    }
    assert pairings[ACTIVE].ending_enrollment_state == "completed"
    assert pairings[DELETED].deleted_by_id == PROVIDER
    ends = {
        end.temporary_enrollment_pairing_id: (end.ended_at, end.run_id, end.root_account_id)
        for end in session.scalars(select(PairingEnd)).all()
    }
    assert ends == {
        ENDED: (ENDED_AT, "run-second-end", ROOT),
        DELETED: (DELETED_AT, "run-delete", ROOT),
        ENDED_UNAUDITED: (PAST, "legacy-0003", ROOT),
    }
    views = lifecycle.pairing_views(session, pairings.values())
    assert views[ENDED] == lifecycle.PairingView("ended", ENDED_AT)
    assert views[ACTIVE] == lifecycle.PairingView("active", None)
    assert views[DELETED] == lifecycle.PairingView("deleted", DELETED_AT)

    # tep's deadline index: the live temporary enrollments of open pairings only.
    deadlines = session.scalars(select(EnrollmentDeadline)).all()
    assert [(d.enrollment_id, d.temporary_enrollment_pairing_id, d.end_at) for d in deadlines] == [
        (E_LIVE, ACTIVE, FUTURE)
    ]
    cursor = session.scalars(select(DiscoveryCursor)).one()
    assert cursor.last_enrollment_id == E_OF_DELETED

    # tep's own rows, moved as they were.
    token = session.scalars(
        select(ApiToken).where(
            ApiToken.crypted_token == hashlib.sha256(TOKEN_SECRET.encode()).hexdigest()
        )
    ).one()
    assert (token.id, token.user_id, token.root_account_id, token.workflow_state) == (
        1,
        PROVIDER,
        ROOT,
        "active",
    )
    assert token.expires_at == FUTURE
    audit = session.scalars(select(StateChange).order_by(StateChange.id)).all()
    assert [a.run_id for a in audit][:5] == [
        "run-first-end",
        "run-restore",
        "run-second-end",
        "run-second-end",
        "run-delete",
    ]
    assert session.get_one(SweepRun, "run-second-end").as_of == ENDED_AT
    assert session.get_one(WebhookReceiver, 1).low_water_state_change_id == 3
    delivery = session.get_one(WebhookDelivery, (1, 4))
    assert (delivery.attempts, delivery.next_attempt_at) == (2, FUTURE)
    notice = session.get_one(Notice, 1)
    assert (notice.temporary_enrollment_pairing_id, notice.ends_at) == (ENDED, ENDED_AT)


def test_converted_ids_continue(legacy_url: str) -> None:
    """New rows after the conversion take the next ids (the renamed token table's sequence
    included), and the foreign keys are enforced again."""
    upgrade(legacy_url)
    engine = make_engine(legacy_url)
    try:
        with make_sessionmaker(engine)() as session:
            token = ApiToken(
                user_id=PROVIDER,
                root_account_id=ROOT,
                crypted_token="another",
                token_hint="anoth",
                workflow_state="active",
            )
            session.add(token)
            session.flush()
            assert token.id == 2
            session.rollback()
        with pytest.raises(Exception, match=r"(?i)foreign key"), engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO course_sections (course_id, root_account_id, name, "
                    "workflow_state, created_at, updated_at) "
                    "VALUES (999, 1, 'x', 'active', :t, :t)"
                ),
                {"t": _moment(engine.dialect.name, T0)},
            )
    finally:
        engine.dispose()


def test_duplicate_enrollments_are_refused_before_any_change(legacy_url: str) -> None:
    """Canvas's unique index allows one enrollment per user, type, role and section; revisions
    0001-0002 allowed more. 0003 says which, and changes nothing."""
    engine = make_engine(legacy_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO enrollments (id, user_id, course_id, course_section_id, "
                    "root_account_id, type, workflow_state, created_at, updated_at) VALUES "
                    "(6, :user, :course, :section, :root, 'TeacherEnrollment', 'deleted', :t, :t)"
                ),
                {
                    "user": PROVIDER,
                    "course": COURSE,
                    "section": SECTION,
                    "root": ROOT,
                    "t": _moment(engine.dialect.name, T0),
                },
            )
            before = catalog(connection, Schemas())
        with pytest.raises(Exception, match="index_enrollments_on_user_type_role_section") as error:
            upgrade(legacy_url)
        assert f"user {PROVIDER} TeacherEnrollment in section {SECTION}" in str(error.value)
        assert "ids 3..6" in str(error.value)
        with engine.connect() as connection:
            assert catalog(connection, Schemas()) == before
            version_schema = "tep" if connection.dialect.name == "postgresql" else None
            context = MigrationContext.configure(
                connection, opts={"version_table_schema": version_schema}
            )
            assert context.get_current_revision() == LEGACY_REVISION
            assert connection.execute(text("SELECT count(*) FROM access_tokens")).scalar() == 1
    finally:
        engine.dispose()


def test_conversion_refuses_existing_mode(tmp_path: Path) -> None:
    """A legacy database is tep's own: 0003 never runs with TEP_CANVAS_TABLES=existing."""
    url = f"sqlite:///{tmp_path / 'legacy.sqlite'}"
    make_legacy_database(url)
    config = alembic_config(url, Schemas(canvas_tables=CANVAS_TABLES_EXISTING))
    with pytest.raises(Exception, match="TEP_CANVAS_TABLES=managed"):
        command.upgrade(config, "head")


def test_a_failed_conversion_changes_nothing(
    legacy_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0003 is one transaction on both databases (on SQLite too, where it leaves Alembic's to
    turn foreign keys off): failing at its last step leaves the legacy database as it was."""
    engine = make_engine(legacy_url)
    try:
        with engine.connect() as connection:
            before = catalog(connection, Schemas())

        def fail(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("failing on purpose after every table was converted")

        # 0003 imports it when Alembic loads the revision, so the stand-in is what it calls.
        monkeypatch.setattr("tasks.canvas_callbacks.cached_state_columns", fail)
        with pytest.raises(RuntimeError, match="on purpose"):
            upgrade(legacy_url)
        with engine.connect() as connection:
            assert catalog(connection, Schemas()) == before
            version_schema = "tep" if connection.dialect.name == "postgresql" else None
            context = MigrationContext.configure(
                connection, opts={"version_table_schema": version_schema}
            )
            assert context.get_current_revision() == LEGACY_REVISION
            pairing = connection.execute(
                text("SELECT workflow_state FROM temporary_enrollment_pairings WHERE id = :id"),
                {"id": ENDED},
            ).scalar()
            assert pairing == "ended"

        monkeypatch.undo()
        upgrade(legacy_url)  # and it converts once the cause is gone
        with make_sessionmaker(engine)() as session:
            check_converted_rows(session)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Revision 0005: the metric totals, filled from the audit table

# SQLite's date functions (the arithmetic the scrape used, and the fill uses) are exact to about a
# millisecond; the writers' own arithmetic is exact to the microsecond. A summed total may differ
# by that much per row it sums: in its own unit, per total.
SQLITE_SLACK_PER_ROW = {"expiry_lateness_milliseconds": 2, "sweep_run_microseconds": 2_000}


def assert_same_totals(got: dict[Any, int], want: dict[Any, int], *, backend: str) -> None:
    """Equal totals; on SQLite the summed times within SQLite's precision per row."""
    if backend != "sqlite":  # PostgreSQL's interval arithmetic is exact: so is every total
        assert got == want
        return
    assert got.keys() == want.keys()
    rows = {
        "expiry_lateness_milliseconds": sum(
            n for (name, _), n in want.items() if name == "expiry_lateness"
        ),
        "sweep_run_microseconds": want.get(("sweep_runs", ""), 0),
    }
    for key, n in want.items():
        if key[0] in rows:
            assert abs(got[key] - n) <= SQLITE_SLACK_PER_ROW[key[0]] * rows[key[0]], key
        else:
            assert got[key] == n, key


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("canvas", marks=[pytest.mark.postgres, pytest.mark.canvas]),
    ]
)
def scratch_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Schemas]]:
    """A new database at head, a scratch one per test (on Canvas's schema: `existing` mode)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tep.sqlite'}"
        upgrade(url)
        yield url, Schemas()
        return
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database("tep_test_totals") as url:
        schemas = Schemas()
        if request.param == "canvas":
            build_canvas_database(url)
            schemas = CANVAS_SCHEMAS
        upgrade(url, schemas)
        yield url, schemas


def test_upgrade_from_0004_fills_the_totals_from_the_audit_table(
    scratch_database: tuple[str, Schemas],
) -> None:
    """A database at 0004 with history: 0005 fills the totals with what the writers would have
    kept (the counters read the same across the upgrade), and ends as a new database is."""
    url, schemas = scratch_database
    engine = make_engine(url, schemas)
    factory = make_sessionmaker(engine)
    try:
        make_history(factory)
        with factory() as session:
            kept = metric_totals.read(session)
            assert kept == audit_totals(session)
        with engine.connect() as connection:
            new = catalog(connection, schemas)

        command.downgrade(alembic_config(url, schemas), "0004")
        with engine.connect() as connection:
            tep = schemas.of_table(TEP_SCHEMA, connection.dialect.name)
            assert "temporary_enrollment_metric_totals" not in inspect(connection).get_table_names(
                schema=tep
            )
        upgrade(url, schemas)

        with factory() as session:
            assert_same_totals(metric_totals.read(session), kept, backend=engine.dialect.name)
        with engine.connect() as connection:
            assert catalog_differences(catalog(connection, schemas), new) == {}
            assert schema_differences(connection, schemas, tep_only=True) == []
        # And the writers go on from the filled totals.
        lifecycle.run_sweep(factory)
        with factory() as session:
            assert metric_totals.read(session)[("sweep_runs", "")] == kept[("sweep_runs", "")] + 1
    finally:
        engine.dispose()


def test_an_empty_database_fills_no_totals(scratch_database: tuple[str, Schemas]) -> None:
    """No history, no rows: as a new database (a total is there once something was counted)."""
    url, schemas = scratch_database
    command.downgrade(alembic_config(url, schemas), "0004")
    upgrade(url, schemas)
    engine = make_engine(url, schemas)
    try:
        with make_sessionmaker(engine)() as session:
            assert metric_totals.read(session) == {}
    finally:
        engine.dispose()
