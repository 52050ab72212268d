"""tep on Canvas's own database (`TEP_CANVAS_TABLES=existing`; issue 10 points 1, 4, 5 and 9).

The database is Canvas's real schema (tests/canvas_schema, transcribed from Canvas's init
migration), set up like Canvas's production database: `inst.max_update_fail = 'true'` (the update
guard raises instead of warning) and a default time zone that is not UTC. What is checked:

* `tep db upgrade` (the function and the CLI) leaves everything of Canvas's as it was (tables,
  columns, indexes, constraints, triggers, functions, settings, rows), creates tep's tables in
  schema `tep` only, and is a no-op the second time; with a column missing it names it, exits
  non-zero and creates nothing;
* the sweep, an early end and a restore of more than 1,000 enrollments in one statement pass
  Canvas's `guard_excessive_updates` triggers, in failing mode and without a warning in warning
  mode;
* every enrollment change leaves `enrollment_states` coherent, touches the user and changes no
  other column;
* Canvas getting there first (its cache already ended, its job already destroyed the rows), rows
  Canvas inserted itself, and the database's time zone.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, exc, func, select, text
from sqlalchemy.orm import Session, sessionmaker

import migrations
from models import (
    CANVAS_TABLES_EXISTING,
    TEP_SCHEMA,
    Base,
    CourseSection,
    Enrollment,
    PairingEnd,
    Schemas,
    StateChange,
    TemporaryEnrollmentPairing,
    User,
    make_engine,
    transaction,
)
from tasks import lifecycle, restore
from tasks.canvas_objects import built_in_role, create_course, create_enrollments
from tests import factories as f
from tests import services
from tests.canvas_schema import PRODUCTION_LIKE_TIMEZONE, build_canvas_database

pytestmark = [pytest.mark.postgres, pytest.mark.canvas]

EXISTING = Schemas(canvas_tables=CANVAS_TABLES_EXISTING)
T = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
TICK = dt.timedelta(microseconds=1)
DAY = dt.timedelta(days=1)
# Canvas's guard: more than this many rows of one table in one statement raise (or warn).
GUARD_LIMIT = 1_000
GUARD = "guard_excessive"
# Canvas's rows are read back with plain SQL, as Canvas would see them (naive timestamps).
CANVAS = "public"


def naive(moment: dt.datetime) -> dt.datetime:
    """An aware instant as Canvas stores it: naive UTC."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def wall_clock() -> dt.datetime:
    return naive(dt.datetime.now(dt.UTC))


# --------------------------------------------------------------------------------------------
# Scratch databases with Canvas's schema, and snapshots of what is in them


@pytest.fixture
def canvas_url() -> Iterator[str]:
    """A new database holding Canvas's schema only, configured like production; tep not yet
    migrated into it."""
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    with services.scratch_postgres_database("tep_test_canvas_upgrade") as url:
        build_canvas_database(url)
        yield url


Snapshot = dict[str, list[tuple[Any, ...]]]

# Each query lists one kind of object, schema first; `:excluded` are the schemas left out.
_CATALOG_QUERIES: dict[str, str] = {
    "schemas": """
        SELECT n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text FROM pg_namespace n
        WHERE NOT n.nspname = ANY(:excluded)""",
    "relations": """
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relreplident,
               c.relrowsecurity, pg_get_userbyid(c.relowner), c.relacl::text,
               c.reloptions::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT n.nspname = ANY(:excluded)""",
    "columns": """
        SELECT n.nspname, c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               a.attcollation::regcollation::text, a.attacl::text
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE NOT n.nspname = ANY(:excluded) AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE NOT schemaname = ANY(:excluded)""",
    "constraints": """
        SELECT n.nspname, c.relname, con.conname, con.contype, pg_get_constraintdef(con.oid),
               con.condeferrable, con.condeferred, con.convalidated
        FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
        LEFT JOIN pg_class c ON c.oid = con.conrelid
        WHERE NOT n.nspname = ANY(:excluded)""",
    "triggers": """
        SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT n.nspname = ANY(:excluded) AND NOT t.tgisinternal""",
    "functions": """
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind,
               md5(p.prosrc), p.proconfig::text, pg_get_userbyid(p.proowner), p.proacl::text
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE NOT n.nspname = ANY(:excluded)""",
    "sequences": """
        SELECT schemaname, sequencename, data_type::text, start_value, increment_by, last_value
        FROM pg_sequences WHERE NOT schemaname = ANY(:excluded)""",
    "extensions": """
        SELECT e.extname, n.nspname, e.extversion FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace""",
    "event_triggers": "SELECT evtname, evtevent, evtenabled FROM pg_event_trigger",
    "database_settings": """
        SELECT s.setrole, s.setconfig::text FROM pg_db_role_setting s
        JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database()""",
}
_SYSTEM_SCHEMAS = ["pg_catalog", "information_schema", "pg_toast"]


def snapshot(url: str, *, leave_out: tuple[str, ...] = ()) -> Snapshot:
    """Everything in the database that tep must not change, as sorted rows per kind: the
    catalog (above) and the rows of every table, except the schemas in `leave_out`."""
    excluded = [*_SYSTEM_SCHEMAS, *leave_out]
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            result: Snapshot = {
                kind: sorted(
                    (tuple(row) for row in connection.execute(text(sql), {"excluded": excluded})),
                    key=repr,
                )
                for kind, sql in _CATALOG_QUERIES.items()
            }
            tables = connection.execute(
                text(
                    "SELECT schemaname, tablename FROM pg_tables "
                    "WHERE NOT schemaname = ANY(:excluded) ORDER BY 1, 2"
                ),
                {"excluded": excluded},
            ).all()
            result["rows"] = [
                (
                    schema,
                    table,
                    connection.execute(
                        text(
                            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY "
                            f't::text), \'\')) FROM "{schema}"."{table}" t'
                        )
                    ).one()[:],
                )
                for schema, table in tables
            ]
    finally:
        engine.dispose()
    return result


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What differs, one line per object gone or new (empty when equal)."""
    lines = []
    for kind in sorted(set(before) | set(after)):
        old, new = set(before.get(kind, [])), set(after.get(kind, []))
        lines += [f"{kind}: gone {row}" for row in sorted(old - new, key=repr)]
        lines += [f"{kind}: new {row}" for row in sorted(new - old, key=repr)]
    return lines


def tep_tables() -> set[str]:
    return {t.name for t in Base.metadata.sorted_tables if t.schema == TEP_SCHEMA}


def tables_in(url: str, schema: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(
                connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
                ).scalars()
            )
    finally:
        engine.dispose()


def tep_cli(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `tep` command, configured for Canvas's database by its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    env.update(TEP_DATABASE_URL=url, TEP_CANVAS_TABLES="existing")
    script = Path(sys.executable).with_name("tep")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from worker.cli import main; main()"]
    )
    return subprocess.run(
        [*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def upgrade_by_function(url: str, cwd: Path) -> None:
    migrations.upgrade(url, EXISTING)


def upgrade_by_cli(url: str, cwd: Path) -> None:
    done = tep_cli(url, "db", "upgrade", cwd=cwd)
    assert done.returncode == 0, done.stderr


UPGRADES: dict[str, Callable[[str, Path], None]] = {
    "function": upgrade_by_function,
    "cli": upgrade_by_cli,
}


# --------------------------------------------------------------------------------------------
# (a), (b): `tep db upgrade` on Canvas's database


@pytest.mark.parametrize("first", sorted(UPGRADES))
def test_upgrade_leaves_canvas_schema_unchanged_and_is_a_no_op_twice(
    canvas_url: str, tmp_path: Path, first: str
) -> None:
    canvas_before = snapshot(canvas_url)
    assert "tep" not in {row[0] for row in canvas_before["schemas"]}
    assert canvas_before["triggers"], "the fixture has Canvas's guard triggers"

    UPGRADES[first](canvas_url, tmp_path)

    # Nothing of Canvas's changed: the whole database but tep's schema is as it was.
    assert differences(canvas_before, snapshot(canvas_url, leave_out=("tep",))) == []
    # tep's tables, all of them and nothing else, in schema tep.
    assert tables_in(canvas_url, "tep") == tep_tables() | {migrations.VERSION_TABLE}
    # No dummy account seeded: Canvas's account 0 is Canvas's (its LoadInitialData row).
    with psycopg.connect(canvas_url) as raw:
        assert raw.execute("SELECT id, name FROM public.accounts").fetchall() == [
            (0, "Dummy Root Account")
        ]
        [version] = raw.execute("SELECT version_num FROM tep.alembic_version").fetchall()
    assert (
        version[0]
        == ScriptDirectory.from_config(migrations.alembic_config(canvas_url)).get_current_head()
    )

    # Again, by both ways: nothing at all changes, tep's schema included.
    everything = snapshot(canvas_url)
    for name in (first, *sorted(set(UPGRADES) - {first})):
        UPGRADES[name](canvas_url, tmp_path)
        assert differences(everything, snapshot(canvas_url)) == [], f"second upgrade by {name}"


def test_missing_canvas_columns_are_named_one_a_line_and_nothing_is_created(
    canvas_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(canvas_url, autocommit=True) as raw:
        # As if Canvas's database predated these columns (CASCADE: the indexes and foreign keys
        # on role_id go with it).
        raw.execute("ALTER TABLE public.enrollments DROP COLUMN role_id CASCADE")
        raw.execute("ALTER TABLE public.enrollment_states DROP COLUMN lock_version")
    before = snapshot(canvas_url)

    done = tep_cli(canvas_url, "db", "upgrade", cwd=tmp_path)

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line.strip() for line in done.stderr.splitlines()]
    named = [line for line in lines if line.startswith("missing Canvas")]
    # One line each, naming schema, table and column.
    assert sorted(named) == [
        "missing Canvas column public.enrollment_states.lock_version",
        "missing Canvas column public.enrollments.role_id",
    ], done.stderr
    assert differences(before, snapshot(canvas_url)) == []  # not even tep's schema

    with pytest.raises(migrations.CanvasSchemaMismatch) as raised:
        migrations.upgrade(canvas_url, EXISTING)
    assert sorted(raised.value.problems) == sorted(named)
    assert differences(before, snapshot(canvas_url)) == []


# --------------------------------------------------------------------------------------------
# Sweeps and other writers on Canvas's tables (the session's Canvas database, emptied after
# each test by the conftest's canvas_engine)


def watch_guard(engine: Engine, *, fail: bool) -> list[str]:
    """Every notice the server sends the engine's sessions, as "SEVERITY: message".

    Registered before the engine's first connection (the conftest's engine is new per test).
    `fail=False` turns Canvas's guard to its warning mode for these sessions, where a breach
    is a WARNING rather than an exception; `client_min_messages` makes sure a WARNING is sent.
    """
    seen: list[str] = []
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.add_notice_handler(
            lambda diagnostic: seen.append(f"{diagnostic.severity}: {diagnostic.message_primary}")
        )
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET client_min_messages = 'notice'")
            if not fail:
                cursor.execute("SET inst.max_update_fail = 'false'")
        dbapi_connection.commit()

    return seen


def guard_messages(seen: list[str]) -> list[str]:
    return [message for message in seen if GUARD in message]


def assert_guard_is_watched(
    factory: sessionmaker[Session], seen: list[str], ids: list[int], *, fail: bool
) -> None:
    """The control: a bare UPDATE of those rows, without raising the guard's limit, is caught
    (so a test finding no guard message has looked where one would be)."""
    assert len(ids) > GUARD_LIMIT
    statement = text(
        f"UPDATE {CANVAS}.enrollments SET updated_at = updated_at WHERE id = ANY(:ids)"
    )
    with factory() as session, session.begin():
        if fail:
            with pytest.raises(exc.DBAPIError, match="guard_excessive_updates"):
                session.execute(statement, {"ids": ids})
        else:
            session.execute(statement, {"ids": ids})
            assert any(m.startswith("WARNING: guard_excessive_updates") for m in seen), seen
            session.rollback()


def canvas_rows(
    session: Session, table: str, ids: list[int], key: str = "id"
) -> dict[int, dict[str, Any]]:
    """Every column of these rows of a Canvas table, read fresh with plain SQL."""
    session.commit()
    result = session.execute(
        text(f"SELECT * FROM {CANVAS}.{table} WHERE {key} = ANY(:ids)"), {"ids": ids}
    ).mappings()
    return {row[key]: dict(row) for row in result}


def changed_columns(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {column for column in before if before[column] != after[column]}


def world_rows(session: Session) -> dict[str, Any]:
    """Every row of the tables a sweep may write, Canvas's and tep's, for idempotence checks."""
    session.commit()
    tables = [
        f"{CANVAS}.enrollments",
        f"{CANVAS}.enrollment_states",
        f"{CANVAS}.users",
        f"{CANVAS}.temporary_enrollment_pairings",
        "tep.temporary_enrollment_state_changes",
        "tep.temporary_enrollment_pairing_ends",
        "tep.temporary_enrollment_deadlines",
    ]
    return {
        table: session.execute(text(f"SELECT t::text FROM {table} t ORDER BY 1")).scalars().all()
        for table in tables
    }


def audit_rows(session: Session) -> list[tuple[Any, ...]]:
    session.commit()
    rows = session.execute(
        select(
            StateChange.context_type,
            StateChange.context_id,
            StateChange.from_state,
            StateChange.to_state,
            StateChange.reason,
        ).order_by(StateChange.id)
    )
    return [tuple(row) for row in rows]


def big_backlog(
    factory: sessionmaker[Session], *, singles: int, big: int, end_at: dt.datetime
) -> tuple[list[int], int, list[int]]:
    """`singles` recipients with a pairing of one enrollment each (ending `deleted`) and one
    recipient whose pairing has `big` enrollments, one per section (ending `completed`).
    Returns (all enrollment ids, the big pairing's id, the recipients' user ids)."""
    with transaction(factory) as session:
        # Arranging test data in bulk, as Canvas's own bulk writers do (and not with tep's
        # helper, which the tests check): the guard's limit raised for this transaction.
        session.execute(text("SELECT set_config('inst.max_update_limit', '1000000', true)"))
        root = f.account(session)
        course, section = create_course(session, root, "Big course")
        role_id = built_in_role(session, root.id, "StudentEnrollment").id
        provider = f.user(session, root, name="Provider")
        recipients = [User(name=f"Recipient {i}") for i in range(singles + 1)]
        session.add_all(recipients)
        sections = [
            CourseSection(course_id=course.id, root_account_id=root.id, name=f"Section {i}")
            for i in range(big)
        ]
        session.add_all(sections)
        pairings = [
            TemporaryEnrollmentPairing(root_account_id=root.id, ending_enrollment_state="deleted")
            for _ in range(singles)
        ]
        big_pairing = TemporaryEnrollmentPairing(
            root_account_id=root.id, ending_enrollment_state="completed"
        )
        session.add_all([*pairings, big_pairing])
        session.flush()

        def enrollment(
            user: User, where: CourseSection, pairing: TemporaryEnrollmentPairing
        ) -> Enrollment:
            return Enrollment(
                user_id=user.id,
                course_id=course.id,
                course_section_id=where.id,
                root_account_id=root.id,
                type="StudentEnrollment",
                role_id=role_id,
                workflow_state="active",
                start_at=end_at - 10 * DAY,
                end_at=end_at,
                temporary_enrollment_pairing_id=pairing.id,
                temporary_enrollment_source_user_id=provider.id,
            )

        # The last recipient has no single pairing: it is the big pairing's.
        made = [enrollment(user, section, p) for user, p in zip(recipients, pairings, strict=False)]
        made += [enrollment(recipients[-1], s, big_pairing) for s in sections]
        create_enrollments(session, made, as_of=end_at - 5 * DAY)
        return [e.id for e in made], big_pairing.id, [u.id for u in recipients]


@pytest.mark.parametrize("fail", [True, False], ids=["guard-raises", "guard-warns"])
def test_a_sweep_of_more_than_a_thousand_rows_passes_canvas_guard(
    canvas_engine: Engine,
    canvas_factory: sessionmaker[Session],
    canvas_session: Session,
    fail: bool,
) -> None:
    seen = watch_guard(canvas_engine, fail=fail)
    singles, big = 1_050, 1_020
    ids, big_pairing, users = big_backlog(canvas_factory, singles=singles, big=big, end_at=T - DAY)
    with canvas_factory() as session:
        assert session.execute(text("SHOW inst.max_update_fail")).scalar_one() == (
            "true" if fail else "false"
        )
    before = wall_clock()

    summary = lifecycle.run_sweep(canvas_factory, as_of=T)

    # One batch: every statement of it touched more than the guard's limit of rows.
    assert summary.batches == 1
    assert summary.enrollments_changed == {"deleted": singles, "completed": big, "inactive": 0}
    assert summary.pairings_ended == singles + 1
    assert guard_messages(seen) == []
    canvas_session.commit()
    states: dict[str, int] = dict(
        canvas_session.execute(
            text(
                f"SELECT s.state, count(*) FROM {CANVAS}.enrollment_states s "
                "WHERE s.enrollment_id = ANY(:ids) AND s.state_is_current "
                "AND s.state_valid_until IS NULL GROUP BY s.state"
            ),
            {"ids": ids},
        ).all()
    )
    assert states == {"deleted": singles, "completed": big}
    touched = canvas_session.execute(
        text(f"SELECT count(*) FROM {CANVAS}.users WHERE id = ANY(:ids) AND updated_at >= :t"),
        {"ids": users, "t": before},
    ).scalar_one()
    assert touched == len(users) > GUARD_LIMIT
    assert f.shown_pairing(canvas_session, big_pairing)[0] == "ended"

    assert_guard_is_watched(canvas_factory, seen, ids, fail=fail)


@pytest.mark.parametrize("fail", [True, False], ids=["guard-raises", "guard-warns"])
def test_ending_early_and_restoring_more_than_a_thousand_rows_pass_canvas_guard(
    canvas_engine: Engine,
    canvas_factory: sessionmaker[Session],
    canvas_session: Session,
    fail: bool,
) -> None:
    seen = watch_guard(canvas_engine, fail=fail)
    ids, big_pairing, _ = big_backlog(canvas_factory, singles=0, big=1_020, end_at=T + 7 * DAY)

    with transaction(canvas_factory) as session:
        _, changed = lifecycle.end_pairing(session, big_pairing, as_of=T, delete=True)
    assert changed == {"completed": 1_020}
    with transaction(canvas_factory) as session:
        result = restore.restore_pairing(session, big_pairing, as_of=T + TICK)
    assert result.enrollments_restored == {"active": 1_020}

    assert guard_messages(seen) == []
    rows = canvas_rows(canvas_session, "enrollment_states", ids, key="enrollment_id")
    assert {(r["state"], r["state_valid_until"]) for r in rows.values()} == {
        ("active", naive(T + 7 * DAY))
    }
    assert f.shown_pairing(canvas_session, big_pairing)[0] == "active"
    assert_guard_is_watched(canvas_factory, seen, ids, fail=fail)


# --------------------------------------------------------------------------------------------
# (d) What Canvas's callbacks would have written, and nothing else


def canvas_has_been_here(session: Session, enrollment_ids: list[int], user_ids: list[int]) -> None:
    """Give the rows values in the columns tep does not write, as a live Canvas would have:
    activity, grade publishing, an SIS login, an access recalculation pending, a bumped lock."""
    session.execute(
        text(
            f"UPDATE {CANVAS}.enrollments SET last_activity_at = '2026-11-20 08:00:00', "
            "total_activity_time = 3600, grade_publishing_status = 'published', "
            "self_enrolled = false, last_attended_at = '2026-11-19 09:00:00', "
            "graded_at = '2026-11-18 10:00:00', limit_privileges_to_course_section = true "
            "WHERE id = ANY(:ids)"
        ),
        {"ids": enrollment_ids},
    )
    session.execute(
        text(
            f"UPDATE {CANVAS}.enrollment_states SET lock_version = lock_version + 4, "
            "access_is_current = true, restricted_access = true, "
            "updated_at = '2026-11-20 08:00:00' WHERE enrollment_id = ANY(:ids)"
        ),
        {"ids": enrollment_ids},
    )
    session.execute(
        text(
            f"UPDATE {CANVAS}.users SET time_zone = 'America/Denver', "
            "updated_at = '2026-11-01 00:00:00' WHERE id = ANY(:ids)"
        ),
        {"ids": user_ids},
    )
    session.commit()


@pytest.mark.parametrize("ending_state", ["deleted", "completed", "inactive"])
def test_expiry_writes_what_canvas_callbacks_would_and_nothing_else(
    canvas_factory: sessionmaker[Session], canvas_session: Session, ending_state: str
) -> None:
    session = canvas_session
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(
        session, root, [T - DAY, T - TICK], ending_state=ending_state, states=["active", "invited"]
    )
    session.commit()
    ids = [e.id for e in enrollments]
    recipient = enrollments[0].user_id
    provider = enrollments[0].temporary_enrollment_source_user_id
    assert provider is not None
    canvas_has_been_here(session, ids, [recipient, provider])
    enrollments_before = canvas_rows(session, "enrollments", ids)
    states_before = canvas_rows(session, "enrollment_states", ids, key="enrollment_id")
    users_before = canvas_rows(session, "users", [recipient, provider])
    pairing_before = canvas_rows(session, "temporary_enrollment_pairings", [pairing.id])
    start = wall_clock()

    summary = lifecycle.run_sweep(canvas_factory, as_of=T)

    end = wall_clock()
    assert summary.enrollments_changed_total == 2
    enrollments_after = canvas_rows(session, "enrollments", ids)
    states_after = canvas_rows(session, "enrollment_states", ids, key="enrollment_id")
    users_after = canvas_rows(session, "users", [recipient, provider])
    expected_columns = {"workflow_state", "updated_at"} | (
        {"completed_at"} if ending_state == "completed" else set()
    )
    for id_ in ids:
        old, new = enrollments_before[id_], enrollments_after[id_]
        assert changed_columns(old, new) == expected_columns, id_
        assert new["workflow_state"] == ending_state
        assert start <= new["updated_at"] <= end
        assert new["completed_at"] == (naive(T) if ending_state == "completed" else None)

        cached_old, cached = states_before[id_], states_after[id_]
        assert cached["state"] == ending_state
        assert cached["state_is_current"] is True
        assert cached["state_started_at"] is None
        assert cached["state_valid_until"] is None
        assert cached["access_is_current"] is False
        assert cached["lock_version"] == cached_old["lock_version"] + 1
        assert start <= cached["updated_at"] <= end
        assert changed_columns(cached_old, cached) <= {
            "state",
            "state_is_current",
            "state_started_at",
            "state_valid_until",
            "access_is_current",
            "lock_version",
            "updated_at",
        }
        assert (cached["restricted_access"], cached["root_account_id"]) == (True, root.id)

    assert changed_columns(users_before[recipient], users_after[recipient]) == {"updated_at"}
    assert start <= users_after[recipient]["updated_at"] <= end
    assert users_after[provider] == users_before[provider]  # not the user of these enrollments
    # Canvas's pairing row is not touched: its end is tep's.
    assert canvas_rows(session, "temporary_enrollment_pairings", [pairing.id]) == pairing_before
    assert f.shown_pairing(session, pairing.id) == ("ended", T)


# --------------------------------------------------------------------------------------------
# (e) Canvas first; idempotence


def insert_as_canvas(
    session: Session,
    *,
    pairing_id: int,
    user_id: int,
    source_user_id: int,
    section: CourseSection,
    end_at: dt.datetime,
    cached_state: str = "active",
) -> int:
    """An enrollment as Canvas's `Enrollment.create!` writes it, in plain SQL (naive UTC
    timestamps, uuid, role, and its `enrollment_states` row; `state_valid_until = end_at` while
    within its dates, or already ended in the cache when `cached_state` says so)."""
    role_id = built_in_role(session, section.root_account_id, "TeacherEnrollment").id
    start_at = end_at - 14 * DAY
    enrollment_id = session.execute(
        text(
            f"INSERT INTO {CANVAS}.enrollments (user_id, course_id, type, uuid, workflow_state, "
            "created_at, updated_at, start_at, end_at, course_section_id, root_account_id, "
            "role_id, temporary_enrollment_source_user_id, temporary_enrollment_pairing_id) "
            "VALUES (:user, :course, 'TeacherEnrollment', md5(random()::text), 'active', "
            ":created, :created, :start, :end, :section, :root, :role, :source, :pairing) "
            "RETURNING id"
        ),
        {
            "user": user_id,
            "course": section.course_id,
            "created": naive(start_at),
            "start": naive(start_at),
            "end": naive(end_at),
            "section": section.id,
            "root": section.root_account_id,
            "role": role_id,
            "source": source_user_id,
            "pairing": pairing_id,
        },
    ).scalar_one()
    ended = cached_state != "active"
    session.execute(
        text(
            f"INSERT INTO {CANVAS}.enrollment_states (enrollment_id, state, state_is_current, "
            "state_started_at, state_valid_until, lock_version, updated_at, root_account_id) "
            "VALUES (:id, :state, true, :started, :until, 1, :created, :root)"
        ),
        {
            "id": enrollment_id,
            "state": cached_state,
            "started": naive(end_at if ended else start_at),
            "until": None if ended else naive(end_at),
            "created": naive(start_at),
            "root": section.root_account_id,
        },
    )
    return int(enrollment_id)


def canvas_pairing(session: Session, root_account_id: int, ending_state: str | None) -> int:
    """A pairing as Canvas's `TemporaryEnrollmentPairing.create!` writes it."""
    return int(
        session.execute(
            text(
                f"INSERT INTO {CANVAS}.temporary_enrollment_pairings (root_account_id, "
                "workflow_state, created_at, updated_at, ending_enrollment_state) "
                "VALUES (:root, 'active', :now, :now, :ending) RETURNING id"
            ),
            {"root": root_account_id, "now": wall_clock(), "ending": ending_state},
        ).scalar_one()
    )


def canvas_job_ends_in_cache(session: Session, ids: list[int], state: str) -> None:
    """Canvas's 5-minute job (`EnrollmentState.recalculate_expired_states`) for an ending state
    `completed`/`inactive`: the cache says ended, the enrollment row stays `active`."""
    session.execute(
        text(
            f"UPDATE {CANVAS}.enrollment_states s SET state = :state, state_is_current = true, "
            "state_started_at = e.end_at, state_valid_until = NULL, "
            "lock_version = s.lock_version + 1, updated_at = :now "
            f"FROM {CANVAS}.enrollments e WHERE e.id = s.enrollment_id AND e.id = ANY(:ids)"
        ),
        {"state": state, "now": wall_clock(), "ids": ids},
    )
    session.commit()


def canvas_job_destroys(session: Session, ids: list[int]) -> None:
    """Canvas's job for an ending state `deleted` (or NULL): `enrollment.destroy`, with its
    callbacks (the cache row, the user's touch)."""
    now = wall_clock()
    session.execute(
        text(
            f"UPDATE {CANVAS}.enrollments SET workflow_state = 'deleted', updated_at = :now "
            "WHERE id = ANY(:ids)"
        ),
        {"now": now, "ids": ids},
    )
    session.execute(
        text(
            f"UPDATE {CANVAS}.enrollment_states SET state = 'deleted', state_is_current = true, "
            "state_started_at = NULL, state_valid_until = NULL, "
            "lock_version = lock_version + 1, updated_at = :now WHERE enrollment_id = ANY(:ids)"
        ),
        {"now": now, "ids": ids},
    )
    session.execute(
        text(
            f"UPDATE {CANVAS}.users SET updated_at = :now WHERE id IN "
            f"(SELECT user_id FROM {CANVAS}.enrollments WHERE id = ANY(:ids))"
        ),
        {"now": now, "ids": ids},
    )
    session.commit()


def assert_idempotent(factory: sessionmaker[Session], session: Session) -> None:
    """A second sweep at the same moment, and one a day later, change nothing."""
    before = world_rows(session)
    for moment in (T, T + DAY):
        again = lifecycle.run_sweep(factory, as_of=moment)
        assert (again.enrollments_changed_total, again.pairings_ended) == (0, 0)
        assert world_rows(session) == before


@pytest.mark.parametrize("written_by", ["tep", "canvas"])
@pytest.mark.parametrize("ending_state", ["completed", "inactive"])
def test_a_live_row_canvas_cache_already_ended_is_still_expired(
    canvas_factory: sessionmaker[Session],
    canvas_session: Session,
    ending_state: str,
    written_by: str,
) -> None:
    session = canvas_session
    root = f.account(session)
    if written_by == "tep":
        pairing, [enrollment] = f.temporary_pairing(
            session, root, [T - DAY], ending_state=ending_state
        )
        pairing_id, enrollment_id = pairing.id, enrollment.id
        session.commit()
        canvas_job_ends_in_cache(session, [enrollment_id], ending_state)
    else:
        provider, recipient = f.user(session, root), f.user(session, root)
        pairing_id = canvas_pairing(session, root.id, ending_state)
        enrollment_id = insert_as_canvas(
            session,
            pairing_id=pairing_id,
            user_id=recipient.id,
            source_user_id=provider.id,
            section=f.course(session, root),
            end_at=T - DAY,
            cached_state=ending_state,
        )
        session.commit()
    cached_before = canvas_rows(session, "enrollment_states", [enrollment_id], "enrollment_id")
    assert cached_before[enrollment_id]["state"] == ending_state
    assert cached_before[enrollment_id]["state_valid_until"] is None
    row_before = canvas_rows(session, "enrollments", [enrollment_id])[enrollment_id]
    assert row_before["workflow_state"] == "active"

    summary = lifecycle.run_sweep(canvas_factory, as_of=T)

    assert summary.enrollments_changed[ending_state] == 1
    row = canvas_rows(session, "enrollments", [enrollment_id])[enrollment_id]
    assert row["workflow_state"] == ending_state
    assert row["completed_at"] == (naive(T) if ending_state == "completed" else None)
    cached = canvas_rows(session, "enrollment_states", [enrollment_id], "enrollment_id")[
        enrollment_id
    ]
    assert (cached["state"], cached["state_valid_until"], cached["lock_version"]) == (
        ending_state,
        None,
        cached_before[enrollment_id]["lock_version"] + 1,
    )
    assert audit_rows(session) == [
        ("Enrollment", enrollment_id, "active", ending_state, "expired"),
        ("TemporaryEnrollmentPairing", pairing_id, "active", "ended", "expired"),
    ]
    assert f.shown_pairing(session, pairing_id) == ("ended", T)
    assert_idempotent(canvas_factory, session)


@pytest.mark.parametrize("destroyed", ["all", "one of two"])
def test_a_pairing_whose_enrollments_canvas_destroyed_ends(
    canvas_factory: sessionmaker[Session], canvas_session: Session, destroyed: str
) -> None:
    session = canvas_session
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(session, root, [T - DAY, T - DAY])
    session.commit()
    ids = [e.id for e in enrollments]
    gone = ids if destroyed == "all" else ids[:1]
    canvas_job_destroys(session, gone)
    gone_before = canvas_rows(session, "enrollments", gone)
    gone_cached = canvas_rows(session, "enrollment_states", gone, "enrollment_id")

    summary = lifecycle.run_sweep(canvas_factory, as_of=T)

    left = [id_ for id_ in ids if id_ not in gone]
    assert summary.enrollments_changed_total == len(left)
    assert summary.pairings_ended == 1
    # What Canvas destroyed is left as Canvas left it: no change invented, none audited.
    assert canvas_rows(session, "enrollments", gone) == gone_before
    assert canvas_rows(session, "enrollment_states", gone, "enrollment_id") == gone_cached
    assert audit_rows(session) == [
        *(("Enrollment", id_, "active", "deleted", "expired") for id_ in left),
        ("TemporaryEnrollmentPairing", pairing.id, "active", "ended", "expired"),
    ]
    ends = session.execute(
        select(PairingEnd.temporary_enrollment_pairing_id, PairingEnd.ended_at, PairingEnd.run_id)
    ).all()
    assert [tuple(e) for e in ends] == [(pairing.id, T, summary.run_id)]
    canvas_pairing_row = canvas_rows(session, "temporary_enrollment_pairings", [pairing.id])
    assert canvas_pairing_row[pairing.id]["workflow_state"] == "active"  # Canvas's: untouched
    assert_idempotent(canvas_factory, session)


# --------------------------------------------------------------------------------------------
# (f) The database's time zone


def test_a_non_utc_database_zone_shifts_nothing(
    canvas_database_url: str, canvas_factory: sessionmaker[Session], canvas_session: Session
) -> None:
    session = canvas_session
    # The premise: a session that does not set its zone gets the database's, which is not UTC;
    # tep's sessions run in UTC.
    with psycopg.connect(canvas_database_url) as raw:
        assert raw.execute("SHOW TimeZone").fetchone() == (PRODUCTION_LIKE_TIMEZONE,)
    assert session.execute(text("SHOW TimeZone")).scalar_one() == "UTC"

    root = f.account(session)
    pairing, (at, after) = f.temporary_pairing(
        session, root, [T, T + TICK], ending_state="completed"
    )
    session.commit()
    with psycopg.connect(canvas_database_url) as raw:
        stored = raw.execute(
            f"SELECT end_at, end_at::text FROM {CANVAS}.enrollments WHERE id = %s", (at.id,)
        ).fetchone()
    assert stored == (naive(T), "2026-11-26 12:00:00")  # naive UTC, whatever the zone

    early = lifecycle.run_sweep(canvas_factory, as_of=T - TICK)
    assert early.enrollments_changed_total == 0
    not_due_before = canvas_rows(session, "enrollment_states", [after.id], "enrollment_id")
    start = wall_clock()
    exact = lifecycle.run_sweep(canvas_factory, as_of=T)  # due exactly at end_at
    end = wall_clock()
    assert exact.enrollments_changed == {"deleted": 0, "completed": 1, "inactive": 0}

    rows = canvas_rows(session, "enrollments", [at.id, after.id])
    assert (rows[at.id]["workflow_state"], rows[after.id]["workflow_state"]) == (
        "completed",
        "active",
    )
    assert rows[at.id]["completed_at"] == naive(T)
    # Written as UTC, not in the database's zone (Denver is 7 hours behind in November).
    assert start <= rows[at.id]["updated_at"] <= end
    cached = canvas_rows(session, "enrollment_states", [at.id, after.id], "enrollment_id")
    assert start <= cached[at.id]["updated_at"] <= end
    assert cached[after.id] == not_due_before[after.id]  # 1 µs later: not due, not written
    user = canvas_rows(session, "users", [at.user_id])[at.user_id]
    assert start <= user["updated_at"] <= end

    lifecycle.run_sweep(canvas_factory, as_of=T + TICK)
    assert f.shown_pairing(session, pairing.id) == ("ended", T + TICK)
    with psycopg.connect(canvas_database_url) as raw:  # tep's timestamptz, read in Denver
        [(ended_at,)] = raw.execute(
            "SELECT ended_at FROM tep.temporary_enrollment_pairing_ends"
        ).fetchall()
    assert ended_at == T + TICK and ended_at.utcoffset() == dt.timedelta(hours=-7)


# --------------------------------------------------------------------------------------------
# (g) Rows Canvas wrote itself


@pytest.mark.parametrize("seen_before_due", [True, False], ids=["seen-early", "seen-when-due"])
def test_an_enrollment_canvas_inserted_is_discovered_and_expired(
    canvas_factory: sessionmaker[Session], canvas_session: Session, seen_before_due: bool
) -> None:
    session = canvas_session
    root = f.account(session)
    f.temporary_pairing(session, root, [T + 30 * DAY])  # tep's own, so the cursor has moved
    session.commit()
    lifecycle.run_sweep(canvas_factory, as_of=T - 3 * DAY)

    provider, recipient = f.user(session, root), f.user(session, root)
    pairing_id = canvas_pairing(session, root.id, "inactive")
    enrollment_id = insert_as_canvas(
        session,
        pairing_id=pairing_id,
        user_id=recipient.id,
        source_user_id=provider.id,
        section=f.course(session, root),
        end_at=T - TICK,
    )
    session.commit()
    before = canvas_rows(session, "enrollments", [enrollment_id])[enrollment_id]
    cached_before = canvas_rows(session, "enrollment_states", [enrollment_id], "enrollment_id")[
        enrollment_id
    ]

    if seen_before_due:
        early = lifecycle.run_sweep(canvas_factory, as_of=T - DAY)
        assert early.discovered >= 1
        assert early.enrollments_changed_total == 0
        assert canvas_rows(session, "enrollments", [enrollment_id])[enrollment_id] == before
    summary = lifecycle.run_sweep(canvas_factory, as_of=T)

    assert summary.enrollments_changed == {"deleted": 0, "completed": 0, "inactive": 1}
    assert summary.pairings_ended == 1
    after = canvas_rows(session, "enrollments", [enrollment_id])[enrollment_id]
    assert changed_columns(before, after) == {"workflow_state", "updated_at"}
    assert after["workflow_state"] == "inactive"
    cached = canvas_rows(session, "enrollment_states", [enrollment_id], "enrollment_id")[
        enrollment_id
    ]
    assert (cached["state"], cached["state_valid_until"], cached["lock_version"]) == (
        "inactive",
        None,
        cached_before["lock_version"] + 1,
    )
    assert audit_rows(session) == [
        ("Enrollment", enrollment_id, "active", "inactive", "expired"),
        ("TemporaryEnrollmentPairing", pairing_id, "active", "ended", "expired"),
    ]
    count = session.scalar(select(func.count()).select_from(PairingEnd))
    assert count == 1
    assert_idempotent(canvas_factory, session)
