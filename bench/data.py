"""Scratch databases and the benchmark's data, built in bulk by the server itself.

Rows are made with `INSERT ... SELECT ... FROM generate_series(...)`: the server generates them,
so a million enrollments take seconds rather than the minutes an ORM or even COPY from Python
would. Foreign-key triggers are switched off for the building session only
(`session_replication_role = replica`, which needs a superuser, as the local `postgres` role is):
the ids are generated consistent, and checking two million references row by row would triple
the build time without measuring anything.

Temporary and unrelated enrollments are interleaved in the heap, and due dates are scattered, so
that a sweep reads its rows from all over the table as it would in production rather than from a
few contiguous pages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from migrations import upgrade
from models import normalize_url

ADMIN_URL = os.environ.get(
    "TEP_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

# The moment every sweep of the benchmark runs "as of". Due rows end before it, future rows after.
AS_OF = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)

USERS = 10_000
COURSES = 1_000
# Pairing i gets ENDING_STATES[i % 4]: every state the sweep handles, NULL (= deleted) included.
ENDING_STATES = ("'deleted'", "'completed'", "'inactive'", "NULL")
LIVE_STATES = "ARRAY['active','active','active','invited','creation_pending']"
OTHER_STATES = "ARRAY['active','active','completed','deleted','inactive','invited']"
TYPES = (
    "ARRAY['StudentEnrollment','TeacherEnrollment','TaEnrollment',"
    "'DesignerEnrollment','ObserverEnrollment']"
)


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


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def sqlalchemy_url(url: str) -> str:
    return normalize_url(url)


def new_name(prefix: str = "tep_bench") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_database(name: str, template: str | None = None, admin_url: str = ADMIN_URL) -> str:
    """Create `name` (as a file copy of `template` when given) and return its URL.

    A file-level copy of a built template is how each measurement starts from the same data in
    a few seconds instead of rebuilding it.
    """
    clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clause}')
    return database_url(name, admin_url)


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


def build(url: str, shape: Shape, *, as_of: dt.datetime = AS_OF) -> None:
    """Migrate an empty database and fill it with `shape`'s data, analysed and vacuumed."""
    upgrade(sqlalchemy_url(url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO accounts (id, name, workflow_state, created_at, updated_at) "
            "VALUES (1, 'Bench University', 'active', now(), now())"
        )
        conn.execute(
            "INSERT INTO users (id, name, workflow_state, created_at, updated_at) "
            "SELECT g, 'User ' || g, 'registered', now(), now() FROM generate_series(1, %s) g",
            (USERS,),
        )
        conn.execute(
            "INSERT INTO courses (id, name, account_id, root_account_id, workflow_state, "
            "created_at, updated_at) "
            "SELECT g, 'Course ' || g, 1, 1, 'available', now(), now() "
            "FROM generate_series(1, %s) g",
            (COURSES,),
        )
        conn.execute(
            "INSERT INTO course_sections (id, course_id, root_account_id, name, default_section, "
            "workflow_state, created_at, updated_at) "
            "SELECT g, g, 1, 'Section ' || g, true, 'active', now(), now() "
            "FROM generate_series(1, %s) g",
            (COURSES,),
        )
        ending = f"(ARRAY[{', '.join(ENDING_STATES)}]::varchar[])[1 + mod(g, 4)]"
        conn.execute(
            "INSERT INTO temporary_enrollment_pairings (id, root_account_id, workflow_state, "
            "ending_enrollment_state, created_by_id, created_at, updated_at) "
            f"SELECT g, 1, 'active', {ending}, 1, now(), now() FROM generate_series(1, %s) g",
            (shape.pairings,),
        )
        insert_enrollments(conn, shape.due, shape.unrelated, shape.per_pairing, as_of)
        for table in ("accounts", "users", "courses", "course_sections"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1000000)")
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('temporary_enrollment_pairings', 'id'), %s)",
            (shape.pairings + 1,),
        )
        conn.execute("VACUUM (ANALYZE)")


def insert_enrollments(
    conn: psycopg.Connection[tuple[object, ...]],
    due: int,
    unrelated: int,
    per_pairing: int,
    as_of: dt.datetime,
    *,
    future: bool = False,
    first_pairing: int = 1,
) -> None:
    """`due` live temporary enrollments (pairing `first_pairing + k // per_pairing` for the k-th)
    interleaved with `unrelated` ordinary ones. With `future`, the temporary ones end after
    `as_of` instead: live and in the sweep's index, but not due."""
    total = max(due + unrelated, 1)
    # Temporary rows are spread evenly among the unrelated ones: row g is temporary when
    # floor(g * due / total) steps up at g, and it is then the k-th temporary row. `mod()` rather
    # than `%` keeps the statement free of the driver's placeholder character.
    temporary = f"((g + 1) * {due}::bigint / {total} > g * {due}::bigint / {total})"
    k = f"(g * {due}::bigint / {total})"
    # A scattered second within 30 days before (or after) as_of; never the boundary itself.
    offset = "(1 + mod(g * 7919, 30 * 86400)) * interval '1 second'"
    end_at = f"%(as_of)s::timestamptz {'+' if future else '-'} {offset}"
    conn.execute(
        "INSERT INTO enrollments (user_id, course_id, course_section_id, root_account_id, type, "
        "workflow_state, start_at, end_at, temporary_enrollment_source_user_id, "
        "temporary_enrollment_pairing_id, created_at, updated_at) "
        f"SELECT 1 + mod(g * 31, {USERS}), 1 + mod(g, {COURSES}), 1 + mod(g, {COURSES}), 1, "
        f"({TYPES})[1 + mod(g, 5)], "
        f"CASE WHEN {temporary} THEN ({LIVE_STATES})[1 + mod(g, 5)] "
        f"     ELSE ({OTHER_STATES})[1 + mod(g, 6)] END, "
        "%(as_of)s::timestamptz - interval '60 days', "
        f"CASE WHEN {temporary} THEN {end_at} "
        "     WHEN mod(g, 3) = 0 THEN %(as_of)s::timestamptz - interval '90 days' END, "
        f"CASE WHEN {temporary} THEN 1 + mod(g * 17, {USERS}) END, "
        f"CASE WHEN {temporary} THEN {first_pairing} + {k} / {per_pairing} END, "
        "now(), now() "
        f"FROM generate_series(0::bigint, {due + unrelated} - 1) g",
        {"as_of": as_of},
    )


def grow(url: str, shape: Shape, factor: int, *, as_of: dt.datetime = AS_OF) -> None:
    """Add `factor - 1` more copies of `shape`'s rows, none of them due: new active pairings whose
    enrollments end after `as_of` (live, so they sit in the sweep's own index) and more unrelated
    enrollments. The table then holds `factor` times the rows, and the work due is unchanged."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        row = conn.execute(
            "SELECT coalesce(max(id), 0) FROM temporary_enrollment_pairings"
        ).fetchone()
        next_pairing = 1 + (row[0] if row else 0)
        for _ in range(factor - 1):
            conn.execute(
                "INSERT INTO temporary_enrollment_pairings (id, root_account_id, workflow_state, "
                "ending_enrollment_state, created_by_id, created_at, updated_at) "
                "SELECT g, 1, 'active', 'deleted', 1, now(), now() "
                "FROM generate_series(%s::bigint, %s) g",
                (next_pairing, next_pairing + shape.pairings - 1),
            )
            insert_enrollments(
                conn,
                shape.due,
                shape.unrelated,
                shape.per_pairing,
                as_of,
                future=True,
                first_pairing=next_pairing,
            )
            next_pairing += shape.pairings
        conn.execute("VACUUM (ANALYZE)")
