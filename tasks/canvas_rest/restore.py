"""Restoring a pairing through a hosted Canvas (issue 14, point 5).

A restore beside a hosted Canvas is tasks/restore.py's restore on tep's mirror (the same undo
stack from the audit rows, the same checks, the pairing reopened and audited), plus a command to
Canvas for each enrollment it brings back, written in the same transaction (the hooks there call
:func:`refuse_what_canvas_cannot_restore` and :func:`write_restore_commands`):

* `inactive` -> `PUT /api/v1/courses/:course_id/enrollments/:id/reactivate` (Canvas's
  `reactivate`, from `inactive` only: app/controllers/enrollments_api_controller.rb). With a new
  `end_at`, an `enroll` command follows to re-date it: Canvas's API has no other way to change an
  enrollment's dates, and its create (`Course#enroll_user`, app/models/course.rb) reuses the
  user's row of that type, role and section and sets its `start_at`/`end_at`;
* `deleted` -> enrolled again, `POST /api/v1/sections/:section_id/enrollments`, with the same
  user, role, section, `limit_privileges_to_course_section`,
  `temporary_enrollment_source_user_id` and `temporary_enrollment_pairing_id` and the end date
  (the new one, when given); the id Canvas answers with is recorded against the old one
  (`CanvasCommand.new_enrollment_id`, and a mirror row of that id when it is a new one;
  Canvas's `Course#enroll_user` revives the deleted row itself, so it is usually the same id);
* `completed` is refused, and nothing is restored: Canvas's REST API has no endpoint that takes
  an enrollment out of `completed` (enrollments_api_controller.rb concludes, deletes,
  deactivates, and reactivates only `inactive` ones; Canvas's un-conclude is its web UI's
  `POST /courses/:course_id/unconclude_user/:id`, courses_controller.rb #unconclude_user, in
  config/routes.rb outside `/api/v1`);
* a new `end_at` is required wherever the old one has passed (tasks/restore.py's rule).

**Outbox, then an immediate attempt** (:func:`restore_through_canvas`), not synchronous calls.
The mirror, the audit rows and the commands commit together first, so nothing tep decided can be
lost between Canvas's change and tep's record of it: a Canvas that is down, throttling or drops
the answer leaves the commands in the outbox, and the delivery task sends them (each change
made once; commands.py). Sending first and writing afterwards would leave a Canvas change
unrecorded, and never retried, whenever the process died or the answer was lost in between. The
immediate attempt means a restore is in Canvas within the call when Canvas answers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from models import (
    LIVE_ENROLLMENT_STATES,
    CanvasCommand,
    Enrollment,
    StateChange,
    through_canvas,
    transaction,
    utcnow,
)
from tasks import lifecycle
from tasks import restore as mirror_restore
from tasks.canvas_rest import commands as outbox
from tasks.canvas_rest.client import CanvasClient

# The states Canvas's create takes in `enrollment[enrollment_state]` (enrollments_api_controller.rb
# #create); any other live state goes as Canvas's default, `invited` (which `Course#enroll_user`
# turns into `creation_pending` for a student in a course not yet published).
CREATABLE_STATES = ("active", "invited", "inactive")
DEFAULT_CREATED_STATE = "invited"

CANNOT_UNCONCLUDE = (
    "Canvas's REST API has no endpoint to un-conclude an enrollment (the Enrollments API "
    "concludes, deletes, deactivates, and reactivates only inactive ones), so tep cannot restore "
    "completed enrollments beside a hosted Canvas"
)


class RestoreRefused(lifecycle.LifecycleError):
    """A restore Canvas's REST API cannot carry out; nothing was restored."""


@dataclasses.dataclass(frozen=True)
class CanvasRestoreResult:
    """The mirror's restore, and how far Canvas has got with it."""

    restored: mirror_restore.RestoreResult
    commands: int  # commands written for Canvas
    pending: int  # of them, not answered yet (in the outbox: the delivery task sends them)
    delivery: outbox.DeliverySummary | None

    def to_json(self) -> dict[str, Any]:
        data = self.restored.to_json()
        data["canvas"] = {
            "commands": self.commands,
            "pending": self.pending,
            "delivery": self.delivery.as_dict() if self.delivery is not None else None,
        }
        return data


def refuse_what_canvas_cannot_restore(
    session: Session, pairing_id: int, enrollment_rows: Sequence[StateChange]
) -> None:
    """Before a restore through Canvas writes anything: refuse when Canvas has not answered the
    pairing's commands yet (the restore would undo a change Canvas may not have made, and its
    commands could overtake it), or when an enrollment would have to leave `completed`."""
    waiting = outbox.open_commands(session, pairing_id)
    if waiting:
        raise RestoreRefused(
            f"pairing {pairing_id} has {waiting} change(s) Canvas has not confirmed yet; send "
            "them first (`tep canvas send`), then restore; nothing was restored"
        )
    concluded = sorted(c.context_id for c in enrollment_rows if c.to_state == "completed")
    if concluded:
        shown = ", ".join(str(i) for i in concluded[:5]) + (" ..." if len(concluded) > 5 else "")
        raise RestoreRefused(
            f"pairing {pairing_id}: {len(concluded)} enrollment(s) to restore are completed "
            f"({shown}): {CANNOT_UNCONCLUDE}; nothing was restored"
        )
    for change in enrollment_rows:
        if not _restorable(change.to_state, change.from_state):
            raise RestoreRefused(
                f"enrollment {change.context_id} would go from {change.to_state} back to "
                f"{change.from_state}: Canvas's REST API has no way to make that change; nothing "
                "was restored"
            )


def _restorable(current: str, previous: str) -> bool:
    """Whether Canvas's API can take an enrollment from `current` back to `previous`: an inactive
    one reactivated (to `active`), a deleted one enrolled again (in a state Canvas creates)."""
    if current == "inactive":
        return previous in LIVE_ENROLLMENT_STATES
    return current == "deleted"


def write_restore_commands(
    session: Session, pairing_id: int, run_id: str, *, new_end_at: dt.datetime | None
) -> int:
    """The commands that make the restore `run_id` (its audit rows, just written) in Canvas, from
    the mirror's rows as the restore left them. Returns how many."""
    rows = session.execute(
        select(
            StateChange.id,
            StateChange.from_state,
            StateChange.to_state,
            StateChange.root_account_id,
            Enrollment.id.label("enrollment_id"),
            Enrollment.course_id,
            Enrollment.course_section_id,
            Enrollment.user_id,
            Enrollment.role_id,
            Enrollment.start_at,
            Enrollment.end_at,
            Enrollment.limit_privileges_to_course_section,
            Enrollment.temporary_enrollment_source_user_id,
            Enrollment.temporary_enrollment_pairing_id,
        )
        .join(Enrollment, Enrollment.id == StateChange.context_id)
        .where(
            StateChange.run_id == run_id,
            StateChange.temporary_enrollment_pairing_id == pairing_id,
            StateChange.context_type == lifecycle.ENROLLMENT,
        )
        .order_by(StateChange.id)
    ).all()
    now = utcnow()
    made: list[dict[str, Any]] = []
    for row in rows:
        base = {
            "enrollment_id": row.enrollment_id,
            "course_id": row.course_id,
            "temporary_enrollment_pairing_id": pairing_id,
            "root_account_id": row.root_account_id,
            "state_change_id": row.id,
            "from_state": row.from_state,
            "to_state": row.to_state,
            "run_id": run_id,
            "created_at": now,
            "attempts": 0,
        }
        enroll = {**base, "kind": outbox.KIND_ENROLL, "payload": json.dumps(_enroll_payload(row))}
        if not _restorable(row.from_state, row.to_state):  # refused before anything was written
            raise RestoreRefused(
                f"enrollment {row.enrollment_id} cannot be restored through Canvas"
            )
        if row.from_state == "inactive":
            made.append({**base, "kind": outbox.KIND_REACTIVATE, "payload": None})
            if new_end_at is not None:
                made.append(enroll)  # re-dated by Canvas's create, after the reactivation
        else:
            made.append(enroll)
    if made:
        session.connection().execute(insert(CanvasCommand), made)
    return len(made)


def _enroll_payload(row: Any) -> dict[str, Any]:
    state = row.to_state if row.to_state in CREATABLE_STATES else DEFAULT_CREATED_STATE
    return {
        "course_section_id": row.course_section_id,
        "user_id": row.user_id,
        "role_id": row.role_id,
        "enrollment_state": state,
        "start_at": lifecycle.iso(row.start_at) if row.start_at else None,
        "end_at": lifecycle.iso(row.end_at) if row.end_at else None,
        "limit_privileges_to_course_section": bool(row.limit_privileges_to_course_section),
        "temporary_enrollment_source_user_id": row.temporary_enrollment_source_user_id,
        "temporary_enrollment_pairing_id": row.temporary_enrollment_pairing_id,
    }


def restore_through_canvas(
    factory: sessionmaker[Session],
    client: CanvasClient | None,
    pairing_id: int,
    *,
    end_at: dt.datetime | None = None,
    actor_id: int | None = None,
    worker_id: str = "restore",
    as_of: dt.datetime | None = None,
) -> CanvasRestoreResult:
    """Restore the pairing on tep's mirror and queue its commands (one transaction), then send
    them at once when a client is given. Canvas being out of reach is not an error: the commands
    stay in the outbox (`pending`). A token Canvas refuses raises CanvasPermissionError, with the
    restore committed and its commands waiting."""
    moment = lifecycle.require_aware(as_of) if as_of is not None else utcnow()
    with transaction(factory) as session:
        if not through_canvas(session):
            raise lifecycle.LifecycleError(
                "restore through Canvas needs tep's mirror of a hosted Canvas (TEP_CANVAS_URL)"
            )
        restored = mirror_restore.restore_pairing(
            session, pairing_id, as_of=moment, end_at=end_at, actor_id=actor_id
        )
        written = int(
            session.scalar(select(func.count()).where(CanvasCommand.run_id == restored.run_id)) or 0
        )
    delivery = None
    if client is not None and written:
        delivery = outbox.deliver_commands(
            factory, client, worker_id=worker_id, pairing_id=pairing_id
        )
    with transaction(factory, commit=False) as session:
        pending = int(
            session.scalar(
                select(func.count()).where(
                    CanvasCommand.run_id == restored.run_id, CanvasCommand.finished_at.is_(None)
                )
            )
            or 0
        )
    return CanvasRestoreResult(restored, written, pending, delivery)
