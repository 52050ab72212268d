"""tep's index of when live temporary enrollments fall due (models/tep.py EnrollmentDeadline).

Canvas has no index on `enrollments.end_at`, and on Canvas's database tep adds none: the sweep
finds due work in its own table instead, so its cost follows the due rows, not the enrollments
table and not the pairings that have ever ended. The index is kept by:

* every tep writer of a temporary enrollment (:func:`track`, :func:`refresh_pairings`);
* the sweep's discovery of what others wrote (:func:`discover`), in two index-range reads:
  enrollments newer than the last one seen (Canvas's primary key; re-reading the last
  `LOOKBACK_IDS` ids catches rows whose transaction committed after a later id's), and
  enrollments whose cache row says a date trigger has passed (Canvas's own
  `index_enrollment_states_on_state_valid_until`: Canvas sets `state_valid_until = end_at` on
  every save of a live enrollment within its dates, so a changed `end_at` shows up there when
  it falls due, until Canvas's 5-minute job recalculates it);
* a full rebuild (:func:`rebuild`) in the nightly run, for anything the two reads can miss (an
  `end_at` Canvas moved earlier and recalculated itself before a sweep saw it).

A row only says where to look; the sweep decides from Canvas's row itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import case, delete, exists, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models import (
    AnySelect,
    DiscoveryCursor,
    Enrollment,
    EnrollmentDeadline,
    EnrollmentState,
    PairingEnd,
    TemporaryEnrollmentPairing,
    live,
    utcnow,
)
from tasks.canvas_callbacks import ids_in

# Ids below the last one seen that each discovery reads again (see the module doc).
LOOKBACK_IDS = 1_000
# How far before the last read of Canvas's date triggers each discovery reads again: a trigger
# written by a transaction that committed late is still met.
PROBE_OVERLAP = dt.timedelta(minutes=5)
CURSOR_ID = 1

Pairing = TemporaryEnrollmentPairing


def open_pairing(pairing_id: Any) -> Any:
    """SQL: the pairing is neither deleted (Canvas's row) nor ended (tep's table)."""
    return exists().where(
        Pairing.id == pairing_id,
        Pairing.workflow_state != "deleted",
        # On `Pairing.id`, the enclosing EXISTS's table: `pairing_id` (a column of the outer
        # query) would not be correlated two levels down, and every pairing end would match.
        ~exists().where(PairingEnd.temporary_enrollment_pairing_id == Pairing.id),
    )


def _live_temporary() -> Any:
    return Enrollment.temporary_enrollment_pairing_id.is_not(None), live(Enrollment.workflow_state)


def _rows(where: Any) -> AnySelect:
    """Live temporary enrollments of open pairings matching `where`, as deadline rows."""
    return select(
        Enrollment.id,
        Enrollment.temporary_enrollment_pairing_id,
        Enrollment.root_account_id,
        Enrollment.end_at,
    ).where(*_live_temporary(), where, open_pairing(Enrollment.temporary_enrollment_pairing_id))


def _upsert(session: Session, rows: AnySelect) -> int:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(EnrollmentDeadline).from_select(
        ["enrollment_id", "temporary_enrollment_pairing_id", "root_account_id", "end_at"], rows
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[EnrollmentDeadline.enrollment_id],
        set_={
            "temporary_enrollment_pairing_id": stmt.excluded.temporary_enrollment_pairing_id,
            "end_at": stmt.excluded.end_at,
        },
        # Only rows that changed: discovery meets the same rows sweep after sweep (the lookback
        # ids; every due row whose cached state_valid_until has passed), and rewriting an
        # unchanged row costs a new tuple and index entries. bench/ (200,000 due rows): a
        # backlog's discovery 4.0-5.7 s -> 1.5-2.8 s; an idle sweep's lookback over 10,000
        # indexed live rows no longer writes them.
        where=or_(
            EnrollmentDeadline.temporary_enrollment_pairing_id.is_distinct_from(
                stmt.excluded.temporary_enrollment_pairing_id
            ),
            EnrollmentDeadline.end_at.is_distinct_from(stmt.excluded.end_at),
        ),
    )
    result = session.connection().execute(stmt.execution_options(preserve_rowcount=True))
    return int(result.rowcount or 0)


def track(session: Session, enrollment_ids: Collection[int]) -> None:
    """After a tep writer created or changed these enrollments: index the live temporary ones
    of open pairings, forget the others."""
    if not enrollment_ids:
        return
    session.connection().execute(
        delete(EnrollmentDeadline).where(
            ids_in(session, EnrollmentDeadline.enrollment_id, enrollment_ids)
        )
    )
    _upsert(session, _rows(ids_in(session, Enrollment.id, enrollment_ids)))


def refresh_pairings(session: Session, pairing_ids: Collection[int]) -> None:
    """Index exactly the live temporary enrollments of these (open) pairings, as they are now."""
    if not pairing_ids:
        return
    forget_pairings(session, pairing_ids)
    _upsert(
        session, _rows(ids_in(session, Enrollment.temporary_enrollment_pairing_id, pairing_ids))
    )


def forget_pairings(session: Session, pairing_ids: Collection[int]) -> None:
    """Drop the index rows of these pairings (ended, deleted, or about to be re-read)."""
    if pairing_ids:
        session.connection().execute(
            delete(EnrollmentDeadline).where(
                ids_in(session, EnrollmentDeadline.temporary_enrollment_pairing_id, pairing_ids)
            )
        )


def discover(session: Session, as_of: dt.datetime) -> int:
    """Index what others wrote since the last sweep (see the module doc); returns the rows
    indexed or re-indexed."""
    cursor = session.execute(
        select(DiscoveryCursor.last_enrollment_id, DiscoveryCursor.last_probed_at).where(
            DiscoveryCursor.id == CURSOR_ID
        )
    ).one_or_none()
    last_seen, last_probed = (cursor[0], cursor[1]) if cursor is not None else (0, None)
    newest = session.scalar(select(func.max(Enrollment.id))) or 0
    found = 0
    if newest > last_seen - LOOKBACK_IDS:
        found += _upsert(session, _rows(Enrollment.id > last_seen - LOOKBACK_IDS))
    # Rows whose date trigger has passed in Canvas's cache since the last read (and a margin): an
    # end Canvas moved, or one no tep writer saw. Only the triggers passed since then: older ones
    # were read before (or are the nightly rebuild's), so the read follows the rows that fell due,
    # not every trigger ever passed (tep's own managed tables keep past triggers of non-temporary
    # enrollments forever; Canvas's job clears them within minutes).
    probe_to = min(as_of, utcnow())  # a preview of the future must not move the cursor ahead
    passed = select(EnrollmentState.enrollment_id).where(EnrollmentState.state_valid_until <= as_of)
    if last_probed is not None:
        passed = passed.where(EnrollmentState.state_valid_until > last_probed - PROBE_OVERLAP)
    found += _upsert(session, _rows(Enrollment.id.in_(passed.scalar_subquery())))
    _advance_cursor(session, max(newest, last_seen), max(probe_to, last_probed or probe_to))
    return found


def _advance_cursor(session: Session, newest: int, probed_to: dt.datetime) -> None:
    """Move the cursor up to `newest` and `probed_to`, never down (concurrent sweeps race here
    harmlessly)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(DiscoveryCursor).values(
        id=CURSOR_ID, last_enrollment_id=newest, last_probed_at=probed_to, updated_at=utcnow()
    )
    current = DiscoveryCursor
    stmt = stmt.on_conflict_do_update(
        index_elements=[DiscoveryCursor.id],
        set_={
            "last_enrollment_id": case(
                (
                    current.last_enrollment_id < stmt.excluded.last_enrollment_id,
                    stmt.excluded.last_enrollment_id,
                ),
                else_=current.last_enrollment_id,
            ),
            "last_probed_at": case(
                (
                    or_(
                        current.last_probed_at.is_(None),
                        current.last_probed_at < stmt.excluded.last_probed_at,
                    ),
                    stmt.excluded.last_probed_at,
                ),
                else_=current.last_probed_at,
            ),
            "updated_at": stmt.excluded.updated_at,
        },
    )
    session.connection().execute(stmt)


def rebuild(session: Session) -> int:
    """Re-read every live temporary enrollment of open pairings (the nightly run): O(temporary
    enrollments), through Canvas's partial index on `temporary_enrollment_pairing_id`."""
    session.connection().execute(delete(EnrollmentDeadline))
    return _upsert(session, _rows(Enrollment.temporary_enrollment_pairing_id.is_not(None)))
