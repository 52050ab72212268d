"""Lifecycle events: what the audit table says happened, in the shape webhooks carry.

The audit table `temporary_enrollment_state_changes` is the outbox. Every change this service
makes writes an audit row in the same transaction as the change, by the same set-based statements
(see tasks/lifecycle.py), so an event exists exactly when its change committed, and the sweep
writes nothing extra for it. One audit row is one event; the event id is derived from the row id,
so a redelivered event carries the same id and receivers can recognise duplicates.

Event types (DESIGN.md section 5), read from the row:

* an enrollment moved to an ending state (`deleted`, `completed`, `inactive`): `enrollment.expired`
  (whether by the sweep or because its pairing was ended or deleted early: see `data.reason`);
* a pairing moved to `ended`: `pairing.ended`; to `deleted`: `pairing.deleted`;
* a pairing coming from `new`: `pairing.created` (see :func:`record_pairing_created`);
* a pairing moved back to `active`: `pairing.restored`.

An enrollment put back to a live state by a restore is part of its pairing's `pairing.restored`
event, not an event of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from models import (
    ENDING_ENROLLMENT_STATES,
    Enrollment,
    StateChange,
    TemporaryEnrollmentPairing,
    utcnow,
)
from tasks import lifecycle

PAIRING_CREATED = "pairing.created"
ENROLLMENT_EXPIRED = "enrollment.expired"
PAIRING_ENDED = "pairing.ended"
PAIRING_DELETED = "pairing.deleted"
PAIRING_RESTORED = "pairing.restored"
EVENT_TYPES = (
    PAIRING_CREATED,
    ENROLLMENT_EXPIRED,
    PAIRING_ENDED,
    PAIRING_DELETED,
    PAIRING_RESTORED,
)

# The audit row of a creation: a pairing coming into existence, as Rails calls an unsaved record.
REASON_CREATED = "created"
FROM_STATE_NEW = "new"

EVENT_ID_PREFIX = "tep-sc-"


def event_id(state_change_id: int) -> str:
    """The event id of an audit row: stable across redeliveries, unique within a deployment."""
    return f"{EVENT_ID_PREFIX}{state_change_id}"


def event_type(context_type: str, from_state: str, to_state: str) -> str | None:
    """The webhook type of an audit row, or None for a row that is not an event of its own."""
    if context_type == lifecycle.ENROLLMENT:
        return ENROLLMENT_EXPIRED if to_state in ENDING_ENROLLMENT_STATES else None
    if context_type != lifecycle.PAIRING:
        return None
    if from_state == FROM_STATE_NEW:
        return PAIRING_CREATED
    if to_state == "ended":
        return PAIRING_ENDED
    if to_state == "deleted":
        return PAIRING_DELETED
    if to_state == "active":
        return PAIRING_RESTORED
    return None


def is_event() -> ColumnElement[bool]:
    """:func:`event_type` is not None, as SQL (the outbox's rows)."""
    return or_(
        StateChange.context_type == lifecycle.PAIRING,
        and_(
            StateChange.context_type == lifecycle.ENROLLMENT,
            StateChange.to_state.in_(ENDING_ENROLLMENT_STATES),
        ),
    )


@dataclasses.dataclass(frozen=True)
class Event:
    state_change_id: int
    type: str
    occurred_at: dt.datetime
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return event_id(self.state_change_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "occurred_at": lifecycle.iso(self.occurred_at),
            "data": self.data,
        }


def event_rows_query() -> Any:
    """Audit rows with what an event needs, enrollments' user and course joined in; callers add
    the range, order and limit."""
    return (
        select(
            StateChange.id,
            StateChange.context_type,
            StateChange.context_id,
            StateChange.temporary_enrollment_pairing_id,
            StateChange.root_account_id,
            StateChange.from_state,
            StateChange.to_state,
            StateChange.reason,
            StateChange.run_id,
            StateChange.actor_id,
            StateChange.created_at,
            Enrollment.user_id,
            Enrollment.course_id,
        )
        .outerjoin(
            Enrollment,
            and_(
                StateChange.context_type == lifecycle.ENROLLMENT,
                Enrollment.id == StateChange.context_id,
            ),
        )
        .where(is_event())
    )


def event_from_row(row: Any) -> Event | None:
    kind = event_type(row.context_type, row.from_state, row.to_state)
    if kind is None:
        return None
    data: dict[str, Any] = {
        "root_account_id": row.root_account_id,
        "pairing_id": row.temporary_enrollment_pairing_id,
    }
    if row.context_type == lifecycle.ENROLLMENT:
        data.update(enrollment_id=row.context_id, user_id=row.user_id, course_id=row.course_id)
    data.update(
        from_state=row.from_state,
        to_state=row.to_state,
        reason=row.reason,
        actor_id=row.actor_id,
        run_id=row.run_id,
    )
    return Event(state_change_id=row.id, type=kind, occurred_at=row.created_at, data=data)


def load_events(session: Session, after_id: int = 0, limit: int = 1000) -> list[Event]:
    """Events in audit order after `after_id` (for tests, `tep status` and tools)."""
    rows = session.execute(
        event_rows_query().where(StateChange.id > after_id).order_by(StateChange.id).limit(limit)
    )
    return [event for row in rows if (event := event_from_row(row)) is not None]


def record_pairing_created(
    session: Session,
    pairing: TemporaryEnrollmentPairing,
    actor_id: int | None = None,
    *,
    run_id: str | None = None,
) -> StateChange:
    """Record that `pairing` was created: the audit row that becomes a `pairing.created` event.

    Call it in the transaction that creates the pairing (after a flush, so it has an id); the API
    and the demo seeding do. Not committed here.
    """
    if pairing.id is None:
        session.flush()
    row = StateChange(
        context_type=lifecycle.PAIRING,
        context_id=pairing.id,
        temporary_enrollment_pairing_id=pairing.id,
        root_account_id=pairing.root_account_id,
        from_state=FROM_STATE_NEW,
        to_state=pairing.workflow_state or "active",
        reason=REASON_CREATED,
        run_id=run_id or lifecycle.new_run_id(),
        actor_id=actor_id if actor_id is not None else pairing.created_by_id,
        # The time of writing, not the pairing's created_at: the outbox's settle rule
        # (tasks/webhooks.py) relies on audit rows being stamped when their transaction runs.
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row
