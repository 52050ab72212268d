"""Restoring a pairing: undo the last change this service made to it, from the audit table.

Every state change the service makes (a sweep expiring enrollments and ending the pairing, an
early end or delete) writes one audit row per enrollment and one for the pairing, all stamped
with the run (or request) id that made them. Restoring undoes the most recent such run for one
pairing: each row's object goes back to its `from_state`, with a new audit row of reason
`restored`. Restores are themselves audited, so the audit trail reads as an undo stack: a restore
undoes the newest run not yet undone, and restoring again steps further back.

A restored live enrollment needs an `end_at` in the future: with its old one passed, Canvas's own
job (and tep's next sweep) would end it again at once, so a restore without `end_at` refuses.
Like every tep writer, a restore also writes what Canvas's callbacks would have
(tasks/canvas_callbacks.py) and re-indexes the enrollments' deadlines.

Nothing is half-applied: the pairing's row is locked first (the sweep's `SKIP LOCKED` claim then
passes it by, an early end waits), every object is checked to still be in the state the undone run
left it in, and one mismatch refuses the whole restore.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from models import (
    LIVE_ENROLLMENT_STATES,
    Enrollment,
    PairingEnd,
    StateChange,
    TemporaryEnrollmentPairing,
    through_canvas,
)
from tasks import canvas_callbacks, deadlines, metric_totals, timers
from tasks.events import REASON_CREATED
from tasks.lifecycle import (
    ENROLLMENT,
    PAIRING,
    LifecycleError,
    UnknownPairing,
    iso,
    new_run_id,
    pairing_state,
    require_aware,
)

REASON_RESTORED = "restored"


class NothingToRestore(LifecycleError):
    """The pairing has no recorded change left to undo."""


class RestoreConflict(LifecycleError):
    """Something changed the pairing or its enrollments after the change to undo."""


class RestoreNeedsEndAt(LifecycleError):
    """A restored enrollment's `end_at` has passed (or the new one would have)."""


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    pairing_id: int
    run_id: str
    undone_run_id: str
    undone_reason: str
    pairing_state: str
    enrollments_restored: dict[str, int]
    end_at: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["end_at"] = iso(self.end_at) if self.end_at else None
        return data


def undo_stack(changes: Sequence[StateChange]) -> list[list[StateChange]]:
    """The pairing's runs not yet undone, oldest first, from its audit rows in id order.

    A run is the rows sharing a run id. A restore run undoes the run on top of the stack, which
    is how :func:`restore_pairing` chose it, so replaying the trail reproduces the stack.
    """
    runs: dict[str, list[StateChange]] = {}
    for change in changes:
        runs.setdefault(change.run_id, []).append(change)
    stack: list[list[StateChange]] = []
    for rows in runs.values():
        if rows[0].reason == REASON_CREATED:
            continue  # a pairing's creation is history, not a change to undo (state `new`)
        if rows[0].reason == REASON_RESTORED:
            if stack:
                stack.pop()
        else:
            stack.append(rows)
    return stack


def restore_pairing(
    session: Session,
    pairing_id: int,
    *,
    as_of: dt.datetime,
    end_at: dt.datetime | None = None,
    actor_id: int | None = None,
) -> RestoreResult:
    """Put the pairing and its enrollments back to the states recorded before its last change.

    With `end_at`, the restored live enrollments get that end date, so the sweep expires them
    again when it comes. Raises (and changes nothing) :class:`NothingToRestore` when there is
    nothing to undo, :class:`RestoreConflict` when the undo would overwrite a later change, and
    :class:`RestoreNeedsEndAt` when a restored live enrollment's end_at (the old one, or the
    new `end_at`) is not after `as_of`: it would be ended again at once.
    """
    as_of = require_aware(as_of)
    end_at = require_aware(end_at) if end_at is not None else None
    pairing = session.execute(
        select(TemporaryEnrollmentPairing)
        .where(TemporaryEnrollmentPairing.id == pairing_id)
        .with_for_update()
    ).scalar_one_or_none()
    if pairing is None:
        raise UnknownPairing(f"no temporary enrollment pairing with id {pairing_id}")

    changes = session.scalars(
        select(StateChange)
        .where(StateChange.temporary_enrollment_pairing_id == pairing_id)
        .order_by(StateChange.id)
    ).all()
    shown = pairing_state(session, pairing)
    stack = undo_stack(changes)
    if not stack:
        if shown == "active":
            raise NothingToRestore(
                f"pairing {pairing_id} is active and has no recorded change to undo"
            )
        raise NothingToRestore(
            f"pairing {pairing_id} is {shown} but the audit table records no "
            "change by this service to undo"
        )
    undone = stack[-1]
    enrollment_rows = [c for c in undone if c.context_type == ENROLLMENT]
    pairing_rows = [c for c in undone if c.context_type == PAIRING]

    _check_unchanged(session, shown, pairing.id, undone[0].run_id, enrollment_rows, pairing_rows)
    _check_end_at(session, enrollment_rows, as_of, end_at)
    if through_canvas(session):
        _refuse_what_canvas_cannot_restore(session, pairing.id, enrollment_rows)
    canvas_callbacks.allow_bulk_writes(session)

    run_id = new_run_id()
    restored: dict[str, int] = {}
    connection = session.connection()
    by_transition: dict[tuple[str, str], list[int]] = {}
    for change in enrollment_rows:
        by_transition.setdefault((change.to_state, change.from_state), []).append(change.context_id)
    for (current, previous), ids in by_transition.items():
        values: dict[str, Any] = {"workflow_state": previous, "updated_at": as_of}
        if current == "completed":
            values["completed_at"] = None  # set by the change being undone
        if end_at is not None and previous in LIVE_ENROLLMENT_STATES:
            values["end_at"] = end_at
        connection.execute(
            update(Enrollment)
            .where(Enrollment.id.in_(ids), Enrollment.workflow_state == current)
            .values(**values)
        )
        restored[previous] = restored.get(previous, 0) + len(ids)

    for change in pairing_rows:
        if change.to_state == "deleted":
            # Canvas's row back to `active`, as before the DELETE.
            connection.execute(
                update(TemporaryEnrollmentPairing)
                .where(TemporaryEnrollmentPairing.id == pairing_id)
                .values(workflow_state="active", deleted_by_id=None, updated_at=as_of)
            )
        if change.from_state == "active":
            connection.execute(
                delete(PairingEnd).where(PairingEnd.temporary_enrollment_pairing_id == pairing_id)
            )
    restored_ids = [c.context_id for c in enrollment_rows]
    canvas_callbacks.sync_enrollments(session, restored_ids, as_of)
    deadlines.track(session, restored_ids)
    timers.schedule_enrollments_after_commit(session, restored_ids)  # an end_at due soon

    connection.execute(
        insert(StateChange),
        [
            {
                "context_type": change.context_type,
                "context_id": change.context_id,
                "temporary_enrollment_pairing_id": pairing_id,
                "root_account_id": change.root_account_id,
                "from_state": change.to_state,
                "to_state": change.from_state,
                "reason": REASON_RESTORED,
                "run_id": run_id,
                "actor_id": actor_id,
                "created_at": as_of,
            }
            for change in undone
        ],
    )
    for change in undone:  # a set-based insert: counted here (tasks/metric_totals.py)
        metric_totals.count_state_changes(session, change.context_type, change.from_state, 1)
    if through_canvas(session):
        # Beside a hosted Canvas these were the mirror's changes: each restored enrollment also
        # gets its command to Canvas, in this transaction (tasks/canvas_rest/restore.py).
        _write_canvas_restore_commands(session, pairing_id, run_id, end_at)
    session.refresh(pairing)
    return RestoreResult(
        pairing_id=pairing_id,
        run_id=run_id,
        undone_run_id=undone[0].run_id,
        undone_reason=undone[0].reason,
        pairing_state=pairing_state(session, pairing),
        enrollments_restored=restored,
        end_at=end_at,
    )


# The hooks into the hosted-Canvas connector (tasks/canvas_rest/restore.py), imported when called:
# it builds on this module.


def _refuse_what_canvas_cannot_restore(
    session: Session, pairing_id: int, enrollment_rows: Sequence[StateChange]
) -> None:
    from tasks.canvas_rest import restore as canvas_restore

    canvas_restore.refuse_what_canvas_cannot_restore(session, pairing_id, enrollment_rows)


def _write_canvas_restore_commands(
    session: Session, pairing_id: int, run_id: str, end_at: dt.datetime | None
) -> None:
    from tasks.canvas_rest import restore as canvas_restore

    canvas_restore.write_restore_commands(session, pairing_id, run_id, new_end_at=end_at)


def _check_end_at(
    session: Session,
    enrollment_rows: Sequence[StateChange],
    as_of: dt.datetime,
    end_at: dt.datetime | None,
) -> None:
    """Refuse to bring back a live enrollment whose end has passed: it would end again at once."""
    live = [c.context_id for c in enrollment_rows if c.from_state in LIVE_ENROLLMENT_STATES]
    if not live:
        return
    if end_at is not None:
        if end_at <= as_of:
            raise RestoreNeedsEndAt(
                f"--end-at {iso(end_at)} is not after {iso(as_of)}: the restored enrollments "
                "would end again at once; nothing was restored"
            )
        return
    passed = session.scalars(
        select(Enrollment.id)
        .where(Enrollment.id.in_(live), Enrollment.end_at <= as_of)
        .order_by(Enrollment.id)
    ).all()
    if passed:
        shown = ", ".join(str(i) for i in passed[:5]) + (" ..." if len(passed) > 5 else "")
        raise RestoreNeedsEndAt(
            f"the end_at of {len(passed)} enrollment(s) to restore ({shown}) has passed, so "
            "Canvas would end them again at once; give a new one with --end-at; nothing was "
            "restored"
        )


def _check_unchanged(
    session: Session,
    shown: str,
    pairing_id: int,
    run_id: str,
    enrollment_rows: Sequence[StateChange],
    pairing_rows: Sequence[StateChange],
) -> None:
    """Refuse when anything is no longer in the state the run to undo left it in."""
    problems: list[str] = []
    for change in pairing_rows:
        if shown != change.to_state:
            problems.append(f"the pairing is {shown}, not {change.to_state}")
    expected = {c.context_id: c.to_state for c in enrollment_rows}
    current = dict(
        session.execute(
            select(Enrollment.id, Enrollment.workflow_state).where(Enrollment.id.in_(expected))
        ).all()
    )
    for enrollment_id, state in sorted(expected.items()):
        now = current.get(enrollment_id)
        if now != state:
            found = "gone" if now is None else now
            problems.append(f"enrollment {enrollment_id} is {found}, not {state}")
    if problems:
        listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" * (len(problems) > 5))
        raise RestoreConflict(
            f"pairing {pairing_id} changed after run {run_id}: {listed}; nothing was restored"
        )
