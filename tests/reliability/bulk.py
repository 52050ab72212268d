"""Large data sets in one statement, and the invariants every failure test checks afterwards."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import cast

from sqlalchemy import Connection, Engine, Table, select, text

from models import (
    Enrollment,
    EnrollmentDeadline,
    PairingEnd,
    StateChange,
    make_sessionmaker,
    utcnow,
)
from tasks import canvas_callbacks, deadlines
from tasks.canvas_objects import built_in_role
from tests import factories as f

ENDING_STATES = ("deleted", "completed", "inactive")


@dataclasses.dataclass(frozen=True)
class Backlog:
    root_account_id: int
    pairings: int
    enrollments_per_pairing: int

    @property
    def enrollments(self) -> int:
        return self.pairings * self.enrollments_per_pairing


def tep_tables(connection: Connection) -> dict[str, str]:
    """tep's tables as this connection names them (schema-qualified: raw SQL is not translated
    by the engine's schema_translate_map)."""
    names = {}
    for key, model in (
        ("audit", StateChange),
        ("ends", PairingEnd),
        ("deadlines", EnrollmentDeadline),
    ):
        table = cast(Table, model.__table__)
        schema = connection.schema_for_object(table)
        names[key] = f"{schema}.{table.name}" if schema else table.name
    return names


def seed_backlog(engine: Engine, pairings: int, per_pairing: int = 3) -> Backlog:
    """`pairings` active pairings, ending states in turn, each with `per_pairing` due
    enrollments, in one root account (PostgreSQL: generate_series).

    Written as tep's writers write them: Canvas's rows (a recipient per pairing and a section
    per enrollment of it, so that Canvas's unique index on provider, user, type, role and section
    holds; uuid and role set), their `enrollment_states` rows and users' touch
    (tasks/canvas_callbacks.py), and tep's deadline index.
    """
    factory = make_sessionmaker(engine)
    with factory() as session:
        root = f.account(session, name="Backlog University")
        provider = f.user(session, root, name="Provider")
        sections = [f.course(session, root) for _ in range(per_pairing)]
        role = built_in_role(session, root.id, "TeacherEnrollment")
        session.commit()
        root_id = root.id
        ids = {
            "root": root.id,
            "provider": provider.id,
            "role": role.id,
            "sections": [section.id for section in sections],
        }
    now = utcnow()
    with factory.begin() as session:
        connection = session.connection()
        marker = f"tep-backlog-{root_id}-"
        connection.execute(
            text(
                """
                INSERT INTO users (name, sortable_name, workflow_state, uuid, created_at,
                                   updated_at)
                SELECT 'Recipient ' || g, 'Recipient ' || g, 'registered', :marker || g,
                       :now, :now
                FROM generate_series(1, :pairings) AS g
                """
            ),
            {"marker": marker, "now": now, "pairings": pairings},
        )
        connection.execute(
            text(
                """
                INSERT INTO temporary_enrollment_pairings
                    (root_account_id, workflow_state, ending_enrollment_state,
                     created_at, updated_at)
                SELECT :root, 'active', (ARRAY['deleted', 'completed', 'inactive'])[1 + g % 3],
                       :now, :now
                FROM generate_series(1, :pairings) AS g
                """
            ),
            {"root": ids["root"], "now": now, "pairings": pairings},
        )
        # Pairing n (in id order) gets recipient n; its enrollment e is in section e.
        connection.execute(
            text(
                """
                WITH new_pairings AS (
                    SELECT id, row_number() OVER (ORDER BY id) AS n
                    FROM temporary_enrollment_pairings WHERE root_account_id = :root
                ), recipients AS (
                    SELECT id, row_number() OVER (ORDER BY id) AS n
                    FROM users WHERE uuid LIKE :marker || '%'
                )
                INSERT INTO enrollments
                    (user_id, course_id, course_section_id, root_account_id, type, uuid, role_id,
                     workflow_state, start_at, end_at, temporary_enrollment_source_user_id,
                     temporary_enrollment_pairing_id, created_at, updated_at)
                SELECT recipients.id, s.course_id, s.id, :root, 'TeacherEnrollment',
                       :marker || new_pairings.id || '-' || e, :role,
                       'active', :start_at, :end_at - e * interval '1 second', :provider,
                       new_pairings.id, :now, :now
                FROM new_pairings
                JOIN recipients USING (n)
                CROSS JOIN generate_series(1, :per_pairing) AS e
                JOIN course_sections s ON s.id = (CAST(:sections AS bigint[]))[e]
                """
            ),
            {
                **ids,
                "marker": marker,
                "per_pairing": per_pairing,
                "now": now,
                "start_at": now - dt.timedelta(days=30),
                "end_at": now - dt.timedelta(hours=1),
            },
        )
        created = list(
            session.scalars(select(Enrollment.id).where(Enrollment.root_account_id == root_id))
        )
        canvas_callbacks.sync_enrollments(session, created, now)
        deadlines.track(session, created)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        tables = ["enrollments", "temporary_enrollment_pairings", "enrollment_states"]
        tables.append(tep_tables(connection)["deadlines"])
        connection.execute(text(f"ANALYZE {', '.join(tables)}"))
    return Backlog(root_id, pairings, per_pairing)


@dataclasses.dataclass(frozen=True)
class Tally:
    """Where a backlog stands; every field is computed by the database."""

    pairings_active: int
    # Ended as tep shows it: Canvas's row `active` with a row in tep's pairing ends.
    pairings_ended: int
    # Pairings some of whose enrollments were expired and some not: must never exist.
    pairings_half_done: int
    # Ended pairings that still have a live enrollment: must never exist.
    ended_with_live: int
    # Active pairings with nothing live left (expired but not ended): must never exist.
    active_with_nothing_live: int
    # Canvas's pairing rows in a state Canvas does not know (tep never writes `ended` there).
    canvas_rows_not_active: int
    enrollments_expired: int
    # Expired enrollments whose `enrollment_states` row does not say so: must never exist.
    cache_incoherent: int
    # tep's deadline index rows left for ended pairings: must never exist.
    deadlines_of_ended: int
    enrollment_audit_rows: int
    enrollments_audited_twice: int
    pairing_audit_rows: int


def tally(engine: Engine, backlog: Backlog) -> Tally:
    with engine.connect() as connection:
        tep = tep_tables(connection)
        row = connection.execute(
            text(
                f"""
                WITH per_pairing AS (
                    SELECT p.id, p.workflow_state AS canvas_state,
                           CASE WHEN p.workflow_state = 'deleted' THEN 'deleted'
                                WHEN EXISTS (SELECT FROM {tep["ends"]} pe
                                             WHERE pe.temporary_enrollment_pairing_id = p.id)
                                THEN 'ended'
                                ELSE 'active' END AS shown,
                           count(*) FILTER (WHERE e.workflow_state IN
                               ('active', 'invited', 'creation_pending')) AS live,
                           count(*) FILTER (WHERE e.workflow_state NOT IN
                               ('active', 'invited', 'creation_pending')
                               AND (es.state IS DISTINCT FROM e.workflow_state
                                    OR NOT es.state_is_current)) AS incoherent,
                           count(*) AS total
                    FROM temporary_enrollment_pairings p
                    JOIN enrollments e ON e.temporary_enrollment_pairing_id = p.id
                    LEFT JOIN enrollment_states es ON es.enrollment_id = e.id
                    WHERE p.root_account_id = :root
                    GROUP BY p.id, p.workflow_state
                ), audit AS (
                    SELECT context_type, context_id, count(*) AS n
                    FROM {tep["audit"]}
                    WHERE root_account_id = :root
                    GROUP BY context_type, context_id
                )
                SELECT
                    (SELECT count(*) FROM per_pairing WHERE shown = 'active'),
                    (SELECT count(*) FROM per_pairing WHERE shown = 'ended'),
                    (SELECT count(*) FROM per_pairing WHERE live > 0 AND live < total),
                    (SELECT count(*) FROM per_pairing WHERE shown = 'ended' AND live > 0),
                    (SELECT count(*) FROM per_pairing WHERE shown = 'active' AND live = 0),
                    (SELECT count(*) FROM per_pairing WHERE canvas_state <> 'active'),
                    (SELECT coalesce(sum(total - live), 0) FROM per_pairing),
                    (SELECT coalesce(sum(incoherent), 0) FROM per_pairing),
                    (SELECT count(*) FROM {tep["deadlines"]} d
                     JOIN per_pairing ON per_pairing.id = d.temporary_enrollment_pairing_id
                     WHERE per_pairing.shown = 'ended'),
                    (SELECT coalesce(sum(n), 0) FROM audit WHERE context_type = 'Enrollment'),
                    (SELECT count(*) FROM audit WHERE context_type = 'Enrollment' AND n > 1),
                    (SELECT coalesce(sum(n), 0) FROM audit
                     WHERE context_type = 'TemporaryEnrollmentPairing')
                """
            ),
            {"root": backlog.root_account_id},
        ).one()
    return Tally(*(int(value) for value in row))


def assert_consistent(engine: Engine, backlog: Backlog) -> Tally:
    """Every pairing wholly processed or untouched, every change audited exactly once and
    reflected in Canvas's cache, Canvas's pairing rows left in states Canvas knows."""
    now = tally(engine, backlog)
    assert now.pairings_half_done == 0, now
    assert now.ended_with_live == 0, now
    assert now.active_with_nothing_live == 0, now
    assert now.canvas_rows_not_active == 0, now
    assert now.cache_incoherent == 0, now
    assert now.deadlines_of_ended == 0, now
    assert now.enrollments_audited_twice == 0, now
    assert now.enrollment_audit_rows == now.enrollments_expired, now
    assert now.pairing_audit_rows == now.pairings_ended, now
    assert now.pairings_active + now.pairings_ended == backlog.pairings, now
    return now


def assert_all_done(engine: Engine, backlog: Backlog) -> Tally:
    now = assert_consistent(engine, backlog)
    assert now.pairings_ended == backlog.pairings, now
    assert now.enrollments_expired == backlog.enrollments, now
    return now


def expired_so_far(engine: Engine, backlog: Backlog) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    f"SELECT count(*) FROM {tep_tables(connection)['audit']} "
                    "WHERE root_account_id = :root AND context_type = 'Enrollment'"
                ),
                {"root": backlog.root_account_id},
            ).scalar_one()
        )
