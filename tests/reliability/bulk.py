"""Large data sets in one statement, and the invariants every failure test checks afterwards."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import Engine, text

from models import make_sessionmaker, utcnow
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


def seed_backlog(engine: Engine, pairings: int, per_pairing: int = 3) -> Backlog:
    """`pairings` active pairings, ending states in turn, each with `per_pairing` due
    enrollments, in one root account (PostgreSQL: generate_series)."""
    with make_sessionmaker(engine)() as session:
        root = f.account(session, name="Backlog University")
        provider = f.user(session, root, name="Provider")
        recipient = f.user(session, root, name="Recipient")
        section = f.course(session, root)
        session.commit()
        ids = {
            "root": root.id,
            "provider": provider.id,
            "recipient": recipient.id,
            "course": section.course_id,
            "section": section.id,
        }
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            text(
                """
                WITH new_pairings AS (
                    INSERT INTO temporary_enrollment_pairings
                        (root_account_id, workflow_state, ending_enrollment_state,
                         created_at, updated_at)
                    SELECT :root, 'active', (ARRAY['deleted', 'completed', 'inactive'])[1 + g % 3],
                           :now, :now
                    FROM generate_series(1, :pairings) AS g
                    RETURNING id
                )
                INSERT INTO enrollments
                    (user_id, course_id, course_section_id, root_account_id, type,
                     workflow_state, start_at, end_at, temporary_enrollment_source_user_id,
                     temporary_enrollment_pairing_id, created_at, updated_at)
                SELECT :recipient, :course, :section, :root, 'TeacherEnrollment',
                       'active', :start_at, :end_at - e * interval '1 second', :provider,
                       new_pairings.id, :now, :now
                FROM new_pairings CROSS JOIN generate_series(1, :per_pairing) AS e
                """
            ),
            {
                **ids,
                "pairings": pairings,
                "per_pairing": per_pairing,
                "now": now,
                "start_at": now - dt.timedelta(days=30),
                "end_at": now - dt.timedelta(hours=1),
            },
        )
        connection.execute(text("ANALYZE enrollments; ANALYZE temporary_enrollment_pairings"))
    return Backlog(ids["root"], pairings, per_pairing)


@dataclasses.dataclass(frozen=True)
class Tally:
    """Where a backlog stands; every field is computed by the database."""

    pairings_active: int
    pairings_ended: int
    # Pairings some of whose enrollments were expired and some not: must never exist.
    pairings_half_done: int
    # Ended pairings that still have a live enrollment: must never exist.
    ended_with_live: int
    # Active pairings with nothing live left (expired but not ended): must never exist.
    active_with_nothing_live: int
    enrollments_expired: int
    enrollment_audit_rows: int
    enrollments_audited_twice: int
    pairing_audit_rows: int


def tally(engine: Engine, backlog: Backlog) -> Tally:
    with engine.connect() as connection:
        row = connection.execute(
            text(
                """
                WITH per_pairing AS (
                    SELECT p.id, p.workflow_state,
                           count(*) FILTER (WHERE e.workflow_state IN
                               ('active', 'invited', 'creation_pending')) AS live,
                           count(*) AS total
                    FROM temporary_enrollment_pairings p
                    JOIN enrollments e ON e.temporary_enrollment_pairing_id = p.id
                    WHERE p.root_account_id = :root
                    GROUP BY p.id, p.workflow_state
                ), audit AS (
                    SELECT context_type, context_id, count(*) AS n
                    FROM temporary_enrollment_state_changes
                    WHERE root_account_id = :root
                    GROUP BY context_type, context_id
                )
                SELECT
                    (SELECT count(*) FROM per_pairing WHERE workflow_state = 'active'),
                    (SELECT count(*) FROM per_pairing WHERE workflow_state = 'ended'),
                    (SELECT count(*) FROM per_pairing WHERE live > 0 AND live < total),
                    (SELECT count(*) FROM per_pairing WHERE workflow_state = 'ended' AND live > 0),
                    (SELECT count(*) FROM per_pairing WHERE workflow_state = 'active' AND live = 0),
                    (SELECT coalesce(sum(total - live), 0) FROM per_pairing),
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
    """Every pairing wholly processed or untouched, every change audited exactly once."""
    now = tally(engine, backlog)
    assert now.pairings_half_done == 0, now
    assert now.ended_with_live == 0, now
    assert now.active_with_nothing_live == 0, now
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
                    "SELECT count(*) FROM temporary_enrollment_state_changes "
                    "WHERE root_account_id = :root AND context_type = 'Enrollment'"
                ),
                {"root": backlog.root_account_id},
            ).scalar_one()
        )
