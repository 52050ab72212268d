"""Scratch databases and the benchmark's data, built in bulk by the server itself.

Two table modes, as tep runs (models/db.py `Schemas.canvas_tables`):

* `managed`: tep's migrations create the Canvas tables tep uses (models/canvas.py) and its own;
* `existing` (`--canvas-schema`): Canvas's real schema (tests/canvas_schema, transcribed from
  Canvas's init migration: every column, index and the `guard_excessive_updates` triggers) with
  Canvas production's settings (`inst.max_update_fail = 'true'`, a non-UTC zone), then
  `tep db upgrade` in `existing` mode, which creates only tep's own tables.

The rows are the same in both. Canvas's rows are made with `INSERT ... SELECT ... FROM
generate_series(...)`: the server generates them, so a million enrollments take seconds rather
than the minutes an ORM or even COPY from Python would. Triggers (foreign keys, Canvas's guards)
are switched off for the building session only (`session_replication_role = replica`, which needs
a superuser, as the local `postgres` role is): the ids are generated consistent, and checking two
million references row by row would triple the build time without measuring anything. What
Canvas's own code would have made alongside (the root account's default term and built-in roles,
every enrollment's `enrollment_states` row) is made with tep's implementation of Canvas's rules
(tasks/canvas_objects.py, tasks/canvas_callbacks.py), so it is what tep's tests hold to.

tep's deadline index (tep.temporary_enrollment_deadlines) is not part of Canvas's rows:
:func:`build` leaves it empty, as it is right after `tep db upgrade` on a Canvas database, and
:func:`index_deadlines` fills it with the sweep's own discovery (tasks/deadlines.py), as the first
sweep after installing does.

Temporary and unrelated enrollments are interleaved in the heap, and due dates are scattered, so
that a sweep reads its rows from all over the table as it would in production rather than from a
few contiguous pages. Each enrollment has its own (user, section), so Canvas's unique indexes on
(user, type, role, section) hold.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
from sqlalchemy import select
from sqlalchemy.orm import Session

from migrations import upgrade
from models import (
    CANVAS_TABLES_EXISTING,
    CANVAS_TABLES_MANAGED,
    ENROLLMENT_TYPES,
    Enrollment,
    Role,
    Schemas,
    make_engine,
    normalize_url,
)
from tasks import canvas_callbacks, canvas_objects, deadlines
from tests.canvas_schema import build_canvas_schema, configure_like_canvas_production

ADMIN_URL = os.environ.get(
    "TEP_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

# The moment every sweep of the benchmark runs "as of". Due rows end before it, future rows after.
AS_OF = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
# When Canvas last computed the `enrollment_states` rows: before any temporary enrollment's end
# (due ones end within 30 days before AS_OF), so each live one's row says "current, valid until
# its end_at", and Canvas's own job has not run since (the cache is tep's to bring up to date).
CACHED_AT = AS_OF - dt.timedelta(days=31)

# Canvas's schema in `existing` mode, and tep's: the defaults (`TEP_CANVAS_SCHEMA`, `TEP_SCHEMA`).
CANVAS_SCHEMA = "public"
TEP = Schemas().tep

# Users and courses (one section each), so that Canvas's unique index on (user, type, role,
# section) holds:
# * ordinary enrollment n (the benchmark's row number) is user 1 + n mod USERS in section
#   1 + (n div USERS) mod COURSES: a pair of its own for USERS * COURSES rows;
# * a pairing's enrollments all belong to its one recipient, in one role, one per section of the
#   provider's courses, as Canvas's UI creates them (its assign form posts one enrollment per
#   selected section with the same user_id, role_id and pairing id: "Canvas will enroll
#   <recipient> as a <role> in <provider>'s selected courses"; instructure/canvas-lms temporary
#   enrollment UI, search-index id 1248250968, path not resolved by the index):
#   pairing p's recipient is user USERS + 1 + p mod RECIPIENTS, its j-th enrollment is in section
#   1 + ((p div RECIPIENTS) * per_pairing + j) mod COURSES, its provider user 1 + 17 p mod USERS.
#   A recipient's sections stay distinct for up to COURSES / per_pairing pairings each.
USERS = 100_000
RECIPIENTS = 100_000
COURSES = 1_000
# Pairing p ends in ENDING_STATES[p % 4]: every state the sweep handles, NULL (= deleted) included.
ENDING_STATES = ("'deleted'", "'completed'", "'inactive'", "NULL")
_ENDING = f"(ARRAY[{', '.join(ENDING_STATES)}]::varchar[])"
LIVE_STATES = "ARRAY['active','active','active','invited','creation_pending']"
OTHER_STATES = "ARRAY['active','active','completed','deleted','inactive','invited']"
TYPES = "ARRAY[" + ",".join(f"'{t}'" for t in ENROLLMENT_TYPES) + "]"

# A temporary enrollment is due (live, ended by AS_OF), future (live, ending after AS_OF) or
# ended (its pairing ended by an earlier sweep: in its ending state, the pairing's end recorded).
Kind = Literal["due", "future", "ended"]


@dataclasses.dataclass(frozen=True)
class Shape:
    """How much data: `pairings` active pairings with `per_pairing` due enrollments each, plus
    `unrelated` enrollments that no sweep may touch."""

    pairings: int
    per_pairing: int
    unrelated: int

    @property
    def due(self) -> int:
        return self.pairings * self.per_pairing


def schemas(canvas_schema: bool) -> Schemas:
    """tep's table mode for the benchmark's database (Canvas's schema: `existing`)."""
    return Schemas(
        canvas=CANVAS_SCHEMA,
        canvas_tables=CANVAS_TABLES_EXISTING if canvas_schema else CANVAS_TABLES_MANAGED,
    )


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def sqlalchemy_url(url: str) -> str:
    return normalize_url(url)


def connect(url: str, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection of the benchmark's own, in UTC: Canvas's timestamps are `timestamp without
    time zone` holding UTC, and a Canvas-like database's default zone is not UTC."""
    return psycopg.connect(url, options="-c TimeZone=UTC", **kwargs)


def new_name(prefix: str = "tep_bench") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_database(name: str, template: str | None = None, admin_url: str = ADMIN_URL) -> str:
    """Create `name` (as a file copy of `template` when given) and return its URL.

    A file-level copy of a built template is how each measurement starts from the same data in
    a few seconds instead of rebuilding it. `ALTER DATABASE ... SET` settings are not part of the
    copy (PostgreSQL keeps them per database), so the template's are set on the copy too: a copy
    of a Canvas-like database fails guarded bulk writes and runs in a non-UTC zone as well.
    """
    clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clause}')
        if template:
            rows = admin.execute(
                "SELECT unnest(s.setconfig) FROM pg_db_role_setting s "
                "JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = %s AND s.setrole = 0",
                (template,),
            ).fetchall()
            for (setting,) in rows:
                key, _, value = str(setting).partition("=")
                admin.execute(f'ALTER DATABASE "{name}" SET "{key}" = {_literal(value)}')
    return database_url(name, admin_url)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def drop_database(name: str, admin_url: str = ADMIN_URL) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(template: str | None = None) -> Iterator[str]:
    """A database of our own (a copy of `template` when given), dropped afterwards."""
    name = new_name()
    url = create_database(name, template)
    try:
        yield url
    finally:
        drop_database(name)


def name_of(url: str) -> str:
    return url.rpartition("/")[2]


def prepare_schema(url: str, *, canvas_schema: bool) -> None:
    """An empty database made ready for tep: Canvas's real schema first, when asked (set up as
    Canvas production is), then `tep db upgrade` in the matching mode."""
    if canvas_schema:
        engine = make_engine(sqlalchemy_url(url))
        try:
            with engine.begin() as connection:
                build_canvas_schema(connection, CANVAS_SCHEMA)
                configure_like_canvas_production(connection, name_of(url))
        finally:
            engine.dispose()
    upgrade(sqlalchemy_url(url), schemas(canvas_schema))


@dataclasses.dataclass(frozen=True)
class Root:
    """The benchmark's root account and what Canvas made with it."""

    account_id: int
    term_id: int
    role_ids: dict[str, int]  # built-in role of each enrollment type

    def role_sql(self, g: str) -> str:
        """SQL: the built-in role of enrollment type `TYPES[1 + g mod 5]`."""
        ids = ", ".join(str(self.role_ids[t]) for t in ENROLLMENT_TYPES)
        return f"(ARRAY[{ids}]::bigint[])[1 + mod({g}, {len(ENROLLMENT_TYPES)})]"


def create_root(url: str, name: str = "Bench University") -> Root:
    """A root account as Canvas creates one (root_account_id 0, default term, built-in roles)."""
    engine = make_engine(sqlalchemy_url(url))
    try:
        with Session(engine) as session, session.begin():
            account = canvas_objects.create_root_account(session, name)
            term_id = canvas_objects.default_term_id(session, account.id)
            roles = {
                name: id_
                for name, id_ in session.execute(
                    select(Role.name, Role.id).where(
                        Role.root_account_id == account.id, Role.workflow_state == "built_in"
                    )
                )
            }
            return Root(account.id, term_id, {t: roles[t] for t in ENROLLMENT_TYPES})
    finally:
        engine.dispose()


def build(
    url: str, shape: Shape, *, canvas_schema: bool = False, as_of: dt.datetime = AS_OF
) -> Root:
    """An empty database made ready for tep and filled with `shape`'s Canvas rows, analysed and
    vacuumed. tep's deadline index is left empty (see :func:`index_deadlines`)."""
    prepare_schema(url, canvas_schema=canvas_schema)
    root = create_root(url)
    with connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO users (id, name, sortable_name, workflow_state, uuid, created_at, "
            "updated_at) "
            "SELECT g, 'User ' || g, 'User ' || g, 'registered', 'bench-user-' || g, now(), now() "
            "FROM generate_series(1, %s) g",
            (USERS + RECIPIENTS,),
        )
        conn.execute(
            "INSERT INTO courses (id, name, account_id, root_account_id, enrollment_term_id, "
            "workflow_state, uuid, created_at, updated_at) "
            "SELECT g, 'Course ' || g, %(root)s, %(root)s, %(term)s, 'available', "
            "'bench-course-' || g, now(), now() FROM generate_series(1, %(n)s) g",
            {"root": root.account_id, "term": root.term_id, "n": COURSES},
        )
        conn.execute(
            "INSERT INTO course_sections (id, course_id, root_account_id, name, default_section, "
            "workflow_state, created_at, updated_at) "
            "SELECT g, g, %s, 'Section ' || g, true, 'active', now(), now() "
            "FROM generate_series(1, %s) g",
            (root.account_id, COURSES),
        )
        insert_pairings(conn, root, 1, shape.pairings)
        insert_enrollments(conn, root, shape, "due", first_row=0, first_pairing=1, as_of=as_of)
        for table in ("users", "courses", "course_sections"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1000000)")
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('temporary_enrollment_pairings', 'id'), %s)",
            (shape.pairings + 1,),
        )
    cache_enrollment_states(url, after_id=0)
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    return root


def insert_pairings(conn: psycopg.Connection[Any], root: Root, first: int, count: int) -> None:
    """Active pairings `first` .. `first + count - 1`, pairing p ending in ENDING_STATES[p % 4]."""
    conn.execute(
        "INSERT INTO temporary_enrollment_pairings (id, root_account_id, workflow_state, "
        "ending_enrollment_state, created_by_id, created_at, updated_at) "
        f"SELECT g, %s, 'active', {_ENDING}[1 + mod(g, 4)], 1, now(), now() "
        "FROM generate_series(%s::bigint, %s) g",
        (root.account_id, first, first + count - 1),
    )


def insert_enrollments(
    conn: psycopg.Connection[Any],
    root: Root,
    shape: Shape,
    kind: Kind,
    *,
    first_row: int,
    first_pairing: int,
    unrelated: int | None = None,
    as_of: dt.datetime = AS_OF,
) -> int:
    """`shape.due` temporary enrollments of `kind` (the k-th of pairing `first_pairing + k //
    per_pairing`) interleaved with `unrelated` (default `shape.unrelated`) ordinary ones, as rows
    `first_row` .. of the benchmark's numbering (which fixes each one's user and section).
    Returns the rows inserted."""
    due = shape.due
    unrelated = shape.unrelated if unrelated is None else unrelated
    if shape.per_pairing > COURSES:
        raise ValueError(f"at most {COURSES} enrollments per pairing (one per section)")
    total = max(due + unrelated, 1)
    # Row g of this call is temporary when floor(g * due / total) steps up at g, and it is then
    # the k-th temporary row: temporary rows are spread evenly among the unrelated ones. `mod()`
    # rather than `%` keeps the statement free of the driver's placeholder character.
    temporary = f"((g + 1) * {due}::bigint / {total} > g * {due}::bigint / {total})"
    k = f"(g * {due}::bigint / {total})"
    pairing = f"({first_pairing} + {k} / {shape.per_pairing})"
    n = f"({first_row} + g)"  # the row's number, across calls
    section = (
        f"CASE WHEN {temporary} THEN 1 + mod(({pairing} / {RECIPIENTS}) * {shape.per_pairing} "
        f"+ mod({k}, {shape.per_pairing}), {COURSES}) ELSE 1 + mod({n} / {USERS}, {COURSES}) END"
    )
    # The type (and role) of a pairing's enrollments is the pairing's; an ordinary row's its own.
    typed = f"CASE WHEN {temporary} THEN {pairing} ELSE g END"
    # A scattered second within 30 days before (or after) as_of; never the boundary itself.
    offset = "(1 + mod(g * 7919, 30 * 86400)) * interval '1 second'"
    end_at = f"%(as_of)s::timestamptz {'+' if kind == 'future' else '-'} {offset}"
    if kind == "ended":
        # What the sweep left: the pairing's ending state (NULL: deleted), completed_at with it.
        state = f"COALESCE({_ENDING}[1 + mod({pairing}, 4)], 'deleted')"
        completed = f"CASE WHEN {temporary} AND {state} = 'completed' THEN {end_at} END"
    else:
        state = f"({LIVE_STATES})[1 + mod(g, 5)]"
        completed = "NULL"
    conn.execute(
        "INSERT INTO enrollments (user_id, course_id, course_section_id, root_account_id, type, "
        "role_id, uuid, workflow_state, start_at, end_at, completed_at, "
        "temporary_enrollment_source_user_id, temporary_enrollment_pairing_id, created_at, "
        "updated_at) "
        f"SELECT CASE WHEN {temporary} THEN {USERS + 1} + mod({pairing}, {RECIPIENTS}) "
        f"ELSE 1 + mod({n}, {USERS}) END, {section}, {section}, {root.account_id}, "
        f"({TYPES})[1 + mod({typed}, 5)], {root.role_sql(typed)}, "
        f"md5('bench-enrollment-' || {n}), "
        f"CASE WHEN {temporary} THEN {state} ELSE ({OTHER_STATES})[1 + mod(g, 6)] END, "
        "%(as_of)s::timestamptz - interval '60 days', "
        f"CASE WHEN {temporary} THEN {end_at} "
        "     WHEN mod(g, 3) = 0 THEN %(as_of)s::timestamptz - interval '90 days' END, "
        f"{completed}, "
        f"CASE WHEN {temporary} THEN 1 + mod({pairing} * 17, {USERS}) END, "
        f"CASE WHEN {temporary} THEN {pairing} END, "
        "now(), now() "
        f"FROM generate_series(0::bigint, {due + unrelated} - 1) g",
        {"as_of": as_of},
    )
    return due + unrelated


def cache_enrollment_states(url: str, *, after_id: int, at: dt.datetime = CACHED_AT) -> None:
    """The `enrollment_states` row of every enrollment with an id above `after_id`, as Canvas
    computed it at `at` (tep's implementation of Canvas's rules, tasks/canvas_callbacks.py)."""
    engine = make_engine(sqlalchemy_url(url))
    try:
        with Session(engine) as session, session.begin():
            session.connection().exec_driver_sql("SET LOCAL session_replication_role = replica")
            rows = select(
                Enrollment.id.label("enrollment_id"),
                Enrollment.workflow_state,
                Enrollment.start_at,
                Enrollment.end_at,
                Enrollment.type,
                Enrollment.root_account_id,
            ).where(Enrollment.id > after_id)
            session.connection().execute(
                canvas_callbacks.enrollment_state_upsert(session, rows, at, at)
            )
    finally:
        engine.dispose()


def index_deadlines(url: str, as_of: dt.datetime = AS_OF) -> int:
    """tep's deadline index brought up to Canvas's rows by the sweep's own discovery (what the
    first sweep after installing, or after Canvas wrote rows, does), then analysed. Returns the
    rows the index holds."""
    engine = make_engine(sqlalchemy_url(url))
    try:
        with Session(engine) as session, session.begin():
            deadlines.discover(session, as_of)
    finally:
        engine.dispose()
    with connect(url, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {TEP}.temporary_enrollment_deadlines")
        row = conn.execute(f"SELECT count(*) FROM {TEP}.temporary_enrollment_deadlines").fetchone()
    return int(row[0]) if row else 0


@dataclasses.dataclass(frozen=True)
class Grown:
    """What :func:`grow` added."""

    enrollments: int
    ended_pairings: int
    future_pairings: int


def grow(url: str, shape: Shape, factor: int, *, as_of: dt.datetime = AS_OF) -> Grown:
    """Add `factor - 1` more copies of a swept `shape`, none of it due: per copy, `shape.pairings`
    pairings that an earlier sweep ended (their enrollments in their ending states, their ends in
    tep's table) among `shape.unrelated` ordinary enrollments, as the swept database holds; and
    `shape.pairings` active pairings whose enrollments end after `as_of` (live, in tep's deadline
    index). The table then holds more than `factor` times the enrollments and exactly `factor`
    times the ended pairings, and the work due is unchanged."""
    with connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        root_row = conn.execute(
            "SELECT id FROM accounts WHERE id <> 0 AND root_account_id = 0 ORDER BY id LIMIT 1"
        ).fetchone()
        last = conn.execute(
            "SELECT (SELECT coalesce(max(id), 0) FROM temporary_enrollment_pairings), "
            "(SELECT coalesce(max(id), 0) FROM enrollments), (SELECT count(*) FROM enrollments)"
        ).fetchone()
        roles = dict(
            conn.execute(
                "SELECT name, id FROM roles WHERE root_account_id = %s AND "
                "workflow_state = 'built_in'",
                (root_row[0] if root_row else 0,),
            ).fetchall()
        )
        if root_row is None or last is None:
            raise RuntimeError("grow: the database holds no benchmark data")
        root = Root(root_row[0], 0, {t: roles[t] for t in ENROLLMENT_TYPES})
        next_pairing, newest_before, row = last[0] + 1, last[1], int(last[2])
        added = 0
        for _ in range(factor - 1):
            # The pairings ending later first, then the ended ones among the unrelated rows: the
            # newest enrollments, which each sweep's discovery re-reads (the last LOOKBACK_IDS
            # ids, tasks/deadlines.py), are then of the same kinds as the swept database's, so
            # that the two idle sweeps differ in the table's size, not in its newest rows.
            insert_pairings(conn, root, next_pairing, shape.pairings)
            n = insert_enrollments(
                conn,
                root,
                shape,
                "future",
                first_row=row,
                first_pairing=next_pairing,
                unrelated=0,
                as_of=as_of,
            )
            row, added, next_pairing = row + n, added + n, next_pairing + shape.pairings
            insert_pairings(conn, root, next_pairing, shape.pairings)
            conn.execute(
                f"INSERT INTO {TEP}.temporary_enrollment_pairing_ends "
                "(temporary_enrollment_pairing_id, root_account_id, ended_at, run_id, created_at) "
                "SELECT g, %s, %s, 'bench-grow', now() FROM generate_series(%s::bigint, %s) g",
                (root.account_id, as_of, next_pairing, next_pairing + shape.pairings - 1),
            )
            n = insert_enrollments(
                conn, root, shape, "ended", first_row=row, first_pairing=next_pairing, as_of=as_of
            )
            row, added, next_pairing = row + n, added + n, next_pairing + shape.pairings
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('temporary_enrollment_pairings', 'id'), %s)",
            (next_pairing,),
        )
    cache_enrollment_states(url, after_id=newest_before)
    index_deadlines(url, as_of)
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    copies = factor - 1
    return Grown(added, copies * shape.pairings, copies * shape.pairings)
