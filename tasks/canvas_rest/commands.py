"""tep's outbox beside a hosted Canvas: the changes tep decided, sent to Canvas's REST API.

**Decision.** The sweep runs on tep's mirror of Canvas's rows with the ordinary rules
(tasks/lifecycle.py). Every enrollment change the lifecycle writes through a `through_canvas`
session also gets a command here, in the same transaction (:func:`write_for_changes`): one set-based
INSERT ... SELECT from the audit rows just written. The kind is Canvas's DELETE task for the
target state, `DELETE /api/v1/courses/:course_id/enrollments/:id?task=` (Canvas's
`EnrollmentsApiController#destroy`, app/controllers/enrollments_api_controller.rb: `delete` ->
`Enrollment#destroy`, `deactivate`/`inactivate` -> `#deactivate`, anything else -> `#conclude`).
A restore writes `reactivate` and `enroll` commands (tasks/canvas_rest/restore.py).

**Pairings end on Canvas's word.** A pairing with open commands is not ended by the sweep
(`lifecycle.record_pairing_ends` holds it back: :func:`not_awaiting_canvas`); it ends when the last
of its commands finishes with Canvas showing the change (confirmed, already, gone, ended by
Canvas), with the end and its audit row written as the sweep would have (reusing
`record_pairing_ends`, under the deciding run's id so that a restore undoes both together).

**Delivery** (:func:`deliver_commands`). Commands are leased in a committed transaction of their
own (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: its `BEGIN IMMEDIATE` write lock), so two
workers never hold, and so never send, the same command; a worker that dies leaves a lease that
lapses after `lease_seconds`. Only the oldest open command of an enrollment is claimed, so a
restore's reactivation is never sent before the expiry it undoes. Up to the client's
`max_in_flight` requests go at once. Canvas's answers finish each command in one transaction: its
outcome, the audit row's `canvas_confirmed_at`, the mirror's row when Canvas shows another state,
and the pairing's end when it was the last open command.

Answers, and what each means (Canvas facts cited where they are used):

* 2xx with the enrollment in the target state: `confirmed`; `already` when its `updated_at` is
  older than tep's decision (Canvas had it so before tep decided; compared across two clocks, so a
  skew of seconds can only move a command between these two labels, never change what was done);
* 404: `gone`. Canvas's course-scoped lookup (`@context.enrollments.find`, and Course's
  `has_many :enrollments, -> { where("enrollments.workflow_state<>'deleted'") }` in
  app/models/course.rb) finds every enrollment but a deleted one: its own job destroyed it, or
  someone deleted it. (tep's test Canvas shows a temporary enrollment past its `end_at` whose
  ending state is `deleted` as not found: api/routes/enrollments.py `delete_enrollment`.);
* another answer (400, 422, a 2xx without the enrollment): tep reads the enrollment
  (:func:`_look`) and decides from what Canvas shows: the target state -> `already`, another
  state that is not live -> `ended_by_canvas` (tep records it and changes nothing more in
  Canvas; the mirror takes Canvas's state), not there -> `gone`, live -> `refused`;
* CanvasUnavailable (the client's retries ran out): the command goes back to the outbox with
  `attempts + 1`, a backed-off `next_attempt_at` and `last_error`;
* CanvasPermissionError: every lease this run holds and has not used is released untouched, and
  the error is raised again: the run stops with Canvas's one line.

A DELETE, PUT or POST whose answer was lost is sent again by the client; Canvas then answers 404
(a delete already made) or the enrollment in the state the first request left it in, which this
module reads as success: each change is made once in Canvas.

Sending a DELETE without reading the enrollment first costs one request per expiry. The price:
an enrollment someone ended otherwise in Canvas since the last sync (an admin deactivating one
that is to be concluded) is moved on to tep's target state, and recorded `confirmed`; a 400 or
422 is the only answer that makes tep look first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import and_, case, exists, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from models import (
    LIVE_ENROLLMENT_STATES,
    CanvasCommand,
    Enrollment,
    PairingEnd,
    StateChange,
    TemporaryEnrollmentPairing,
    UTCDateTime,
    transaction,
    utcnow,
)
from tasks import canvas_callbacks, canvas_objects, deadlines, lifecycle
from tasks.canvas_callbacks import ids_in
from tasks.canvas_rest.client import (
    CanvasClient,
    CanvasError,
    CanvasPermissionError,
    CanvasRequestError,
    CanvasResponse,
    CanvasUnavailable,
)

log = logging.getLogger("tep.canvas.commands")

Pairing = TemporaryEnrollmentPairing

# Command kinds. The three endings are Canvas's DELETE tasks (enrollments_api_controller.rb
# #destroy); `reactivate` is its PUT .../reactivate, `enroll` its POST .../enrollments.
KIND_DELETE = "delete"
KIND_CONCLUDE = "conclude"
KIND_DEACTIVATE = "deactivate"
KIND_REACTIVATE = "reactivate"
KIND_ENROLL = "enroll"
KIND_FOR_ENDING_STATE = {
    "deleted": KIND_DELETE,
    "completed": KIND_CONCLUDE,
    "inactive": KIND_DEACTIVATE,
}
ENDING_KINDS = frozenset(KIND_FOR_ENDING_STATE.values())

# How a command finished (models/tep.py CanvasCommand).
CONFIRMED = "confirmed"
ALREADY = "already"
GONE = "gone"
ENDED_BY_CANVAS = "ended_by_canvas"
REFUSED = "refused"
OUTCOMES = (CONFIRMED, ALREADY, GONE, ENDED_BY_CANVAS, REFUSED)
# The outcomes after which Canvas shows the enrollment no longer live: its pairing may end.
SETTLED = frozenset({CONFIRMED, ALREADY, GONE, ENDED_BY_CANVAS})

# What Canvas's 404 for an enrollment id tep knows means (see the module doc).
NOT_FOUND_STATE = "deleted"
# Every state Canvas's course enrollments endpoint filters by (`state[]`; the synthetic ones are
# for users' lists only): enrollments_api_controller.rb #index.
EVERY_STATE = (
    "active",
    "invited",
    "creation_pending",
    "deleted",
    "rejected",
    "completed",
    "inactive",
)

# A command Canvas could not be reached for is tried again after RETRY_BASE_SECONDS * 2**n (n:
# the attempts so far, less one), jittered down to half, at most RETRY_CAP_SECONDS: a Canvas
# that is down for an hour is asked a few times an hour, not at every beat.
RETRY_BASE_SECONDS = 30.0
RETRY_CAP_SECONDS = 900.0
# Commands claimed at a time, per request the client may have in flight: each claim's lease
# starts fresh, so a long delivery run never sends on a lease about to lapse.
CLAIM_PER_SLOT = 4
# A claimed command whose lease has less than this share of its time left is not sent but
# given back: another worker may take it over once the lease lapses.
LEASE_SAFETY_SHARE = 0.5
DEFAULT_LIMIT = 500
DEFAULT_LEASE_SECONDS = 300.0


# --------------------------------------------------------------------------------------------
# Decision: written with the lifecycle's changes


def write_for_changes(
    session: Session, pairing_ids: Collection[int], ctx: lifecycle.ChangeContext
) -> int:
    """A command for each enrollment change these pairings just got in this run (the audit rows
    of `ctx`: its run id, stamped `ctx.changed_at`), in one INSERT ... SELECT. Returns how many."""
    if not pairing_ids:
        return 0
    kind = case(
        *(
            (StateChange.to_state == state, literal(kind))
            for state, kind in KIND_FOR_ENDING_STATE.items()
        )
    )
    changes = (
        select(
            kind,
            StateChange.context_id,
            Enrollment.course_id,
            StateChange.temporary_enrollment_pairing_id,
            StateChange.root_account_id,
            StateChange.id,
            StateChange.from_state,
            StateChange.to_state,
            StateChange.run_id,
            literal(ctx.changed_at, type_=UTCDateTime()),
        )
        .join(Enrollment, Enrollment.id == StateChange.context_id)
        .where(
            StateChange.run_id == ctx.run_id,
            ids_in(session, StateChange.temporary_enrollment_pairing_id, pairing_ids),
            StateChange.context_type == lifecycle.ENROLLMENT,
            StateChange.created_at == ctx.changed_at,
        )
    )
    written = session.connection().execute(
        insert(CanvasCommand)
        .from_select(
            [
                CanvasCommand.kind,
                CanvasCommand.enrollment_id,
                CanvasCommand.course_id,
                CanvasCommand.temporary_enrollment_pairing_id,
                CanvasCommand.root_account_id,
                CanvasCommand.state_change_id,
                CanvasCommand.from_state,
                CanvasCommand.to_state,
                CanvasCommand.run_id,
                CanvasCommand.created_at,
            ],
            changes,
        )
        .execution_options(preserve_rowcount=True)
    )
    return int(written.rowcount or 0)


def not_awaiting_canvas(
    session: Session, pairings: Sequence[tuple[int, int, str]]
) -> list[tuple[int, int, str]]:
    """Those of `pairings` `(id, root_account_id, from_state)` with no open command: they may end
    now. The others end when Canvas has answered (:func:`deliver_commands`); nothing of theirs is
    live in the mirror any more, so their deadline rows go now."""
    if not pairings:
        return []
    awaiting = set(
        session.scalars(
            select(CanvasCommand.temporary_enrollment_pairing_id)
            .where(
                ids_in(
                    session, CanvasCommand.temporary_enrollment_pairing_id, [p[0] for p in pairings]
                ),
                CanvasCommand.finished_at.is_(None),
            )
            .distinct()
        )
    )
    if awaiting:
        deadlines.forget_pairings(session, [pid for pid in awaiting if pid is not None])
    return [p for p in pairings if p[0] not in awaiting]


def open_commands(session: Session, pairing_id: int) -> int:
    """How many of the pairing's commands Canvas has not answered yet."""
    return int(
        session.scalar(
            select(func.count()).where(
                CanvasCommand.temporary_enrollment_pairing_id == pairing_id,
                CanvasCommand.finished_at.is_(None),
            )
        )
        or 0
    )


# --------------------------------------------------------------------------------------------
# Delivery


@dataclasses.dataclass
class DeliverySummary:
    """What one delivery run did."""

    worker_id: str
    claimed: int = 0
    outcomes: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    retry_later: int = 0  # Canvas out of reach: back in the outbox for later
    released: int = 0  # given back unsent (a run stopped, or a lease too close to its end)
    lost_leases: int = 0  # answered after the lease had lapsed and another worker took it
    pairings_ended: int = 0
    requests: int = 0  # HTTP requests sent, every attempt counted
    seconds: float = 0.0
    last_error: str | None = None

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["finished"] = self.finished
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A command this worker holds the lease of, with what sending it needs."""

    id: int
    kind: str
    enrollment_id: int
    course_id: int
    user_id: int | None  # the mirror's enrollment's user (to read the enrollment back)
    pairing_id: int | None
    root_account_id: int
    state_change_id: int | None
    from_state: str
    to_state: str
    payload: dict[str, Any]
    run_id: str
    created_at: dt.datetime
    attempts: int

    @property
    def enrollment_path(self) -> str:
        return f"/api/v1/courses/{self.course_id}/enrollments/{self.enrollment_id}"


@dataclasses.dataclass(frozen=True)
class Answer:
    """What Canvas's answer means for a command: an outcome, or (outcome None) try again later,
    or (`skipped`) not sent at all."""

    outcome: str | None
    canvas_state: str | None = None
    error: str | None = None
    new_enrollment_id: int | None = None
    skipped: bool = False


def deliver_commands(
    factory: sessionmaker[Session],
    client: CanvasClient,
    *,
    worker_id: str,
    limit: int = DEFAULT_LIMIT,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    as_of: dt.datetime | None = None,
    pairing_id: int | None = None,
) -> DeliverySummary:
    """Send up to `limit` open commands whose time has come (of one pairing, with `pairing_id`),
    and finish each from Canvas's answer (see the module doc). Raises CanvasPermissionError, after
    giving back the leases it did not use, when Canvas refuses the token."""
    summary = DeliverySummary(worker_id=worker_id[:64])
    requests_before = client.cost.requests
    started = time.monotonic()
    slots = max(1, int(getattr(client, "max_in_flight", 1)))
    try:
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="tep-canvas") as pool:
            while summary.claimed < limit:
                now = lifecycle.require_aware(as_of) if as_of is not None else utcnow()
                claimed = _claim(
                    factory,
                    summary.worker_id,
                    now=now,
                    lease_until=now + dt.timedelta(seconds=lease_seconds),
                    size=min(slots * CLAIM_PER_SLOT, limit - summary.claimed),
                    pairing_id=pairing_id,
                )
                if not claimed:
                    break
                summary.claimed += len(claimed)
                send_by = time.monotonic() + lease_seconds * LEASE_SAFETY_SHARE
                _send_all(factory, client, pool, claimed, summary, send_by=send_by, as_of=as_of)
    finally:
        summary.requests = client.cost.requests - requests_before
        summary.seconds = time.monotonic() - started
    _log_summary(summary)
    return summary


def _claim(
    factory: sessionmaker[Session],
    worker_id: str,
    *,
    now: dt.datetime,
    lease_until: dt.datetime,
    size: int,
    pairing_id: int | None,
) -> list[Claimed]:
    """Lease up to `size` open commands, in id order, in a transaction of their own: free (or
    lapsed) leases whose next attempt has come, the oldest open command of each enrollment only."""
    command = CanvasCommand
    older = aliased(CanvasCommand)
    with transaction(factory) as session:
        stmt = (
            select(command.id)
            .where(
                command.finished_at.is_(None),
                or_(command.lease_until.is_(None), command.lease_until <= now),
                or_(command.next_attempt_at.is_(None), command.next_attempt_at <= now),
                ~exists().where(
                    older.enrollment_id == command.enrollment_id,
                    older.finished_at.is_(None),
                    older.id < command.id,
                ),
            )
            .order_by(command.id)
            .limit(size)
        )
        if pairing_id is not None:
            stmt = stmt.where(command.temporary_enrollment_pairing_id == pairing_id)
        if session.get_bind().dialect.name == "postgresql":
            # Rows another worker is claiming right now are passed by, not waited for.
            stmt = stmt.with_for_update(of=command, skip_locked=True)
        ids = list(session.scalars(stmt))
        if not ids:
            return []
        session.connection().execute(
            update(command)
            .where(ids_in(session, command.id, ids))
            .values(lease_owner=worker_id, lease_until=lease_until)
        )
        rows = session.execute(
            select(command, Enrollment.user_id)
            .outerjoin(Enrollment, Enrollment.id == command.enrollment_id)
            .where(ids_in(session, command.id, ids))
            .order_by(command.id)
        ).all()
        return [
            Claimed(
                id=c.id,
                kind=c.kind,
                enrollment_id=c.enrollment_id,
                course_id=c.course_id,
                user_id=user_id,
                pairing_id=c.temporary_enrollment_pairing_id,
                root_account_id=c.root_account_id,
                state_change_id=c.state_change_id,
                from_state=c.from_state,
                to_state=c.to_state,
                payload=json.loads(c.payload) if c.payload else {},
                run_id=c.run_id,
                created_at=c.created_at,
                attempts=c.attempts,
            )
            for c, user_id in rows
        ]


def _send_all(
    factory: sessionmaker[Session],
    client: CanvasClient,
    pool: ThreadPoolExecutor,
    claimed: Sequence[Claimed],
    summary: DeliverySummary,
    *,
    send_by: float,
    as_of: dt.datetime | None,
) -> None:
    """Send the claimed commands on the pool; finish each here, in this thread, as it answers."""
    # Set by the first thread Canvas refuses: the others send nothing more.
    refused = threading.Event()
    futures: list[tuple[Claimed, Future[Answer]]] = [
        (command, pool.submit(_send, client, command, send_by, refused)) for command in claimed
    ]
    stop: CanvasPermissionError | None = None
    unsent: list[int] = []
    for command, future in futures:  # in claim order; each waits for its own answer
        if future.cancelled():
            unsent.append(command.id)
            continue
        try:
            answer = future.result()
        except CanvasPermissionError as error:
            if stop is None:
                stop = error
                for _other, pending in futures:
                    pending.cancel()  # those not started yet are not sent
            unsent.append(command.id)
            continue
        except CanvasUnavailable as error:
            answer = Answer(None, error=_one_line(error))
        except Exception as error:
            # A bug or an answer nothing here expected: the command waits in the outbox, with
            # the error for `tep status`, rather than stopping every other command.
            log.error("Canvas command %s (%s): %s", command.id, command.kind, _one_line(error))
            answer = Answer(None, error=_one_line(error))
        if answer.skipped:
            unsent.append(command.id)
            continue
        _finish(factory, summary, command, answer, as_of=as_of)
    if unsent:
        summary.released += _release(factory, summary.worker_id, unsent)
    if stop is not None:
        summary.last_error = str(stop)
        raise stop


def _release(factory: sessionmaker[Session], worker_id: str, ids: Sequence[int]) -> int:
    """Give back leases untouched (attempts, next attempt and error as they were)."""
    with transaction(factory) as session:
        result = session.connection().execute(
            update(CanvasCommand)
            .where(
                ids_in(session, CanvasCommand.id, ids),
                CanvasCommand.lease_owner == worker_id,
                CanvasCommand.finished_at.is_(None),
            )
            .values(lease_owner=None, lease_until=None)
        )
        return int(result.rowcount or 0)


# ---- one command over HTTP (on the pool's threads: no database here)


def _send(
    client: CanvasClient, command: Claimed, send_by: float, refused: threading.Event
) -> Answer:
    if refused.is_set() or time.monotonic() > send_by:
        return Answer(None, skipped=True)
    try:
        if command.kind in ENDING_KINDS:
            return _send_ending(client, command)
        if command.kind == KIND_REACTIVATE:
            return _send_reactivate(client, command)
        if command.kind == KIND_ENROLL:
            return _send_enroll(client, command)
    except CanvasPermissionError:
        refused.set()
        raise
    return Answer(REFUSED, error=f"unknown command kind {command.kind!r}")


def _send_ending(client: CanvasClient, command: Claimed) -> Answer:
    """DELETE ...?task=delete|conclude|deactivate (enrollments_api_controller.rb #destroy)."""
    response = client.request("DELETE", command.enrollment_path, params={"task": command.kind})
    if response.status == 404:
        return Answer(GONE, NOT_FOUND_STATE)
    shown = _enrollment_of(response)
    if response.ok and shown is not None:
        return _judge_ending(command, shown, made_now=True)
    said = _said(response)
    shown = _look(client, command)
    if shown is None:
        return Answer(GONE, NOT_FOUND_STATE, error=said)
    return _judge_ending(command, shown, made_now=False, said=said)


def _judge_ending(
    command: Claimed, shown: dict[str, Any], *, made_now: bool, said: str | None = None
) -> Answer:
    state = shown.get("enrollment_state")
    if not isinstance(state, str):
        return Answer(REFUSED, error=said or "Canvas's enrollment has no enrollment_state")
    if state == command.to_state:
        # In whole seconds, as Canvas renders its timestamps: a change made in the second tep
        # decided in is taken for tep's.
        updated = _moment(shown.get("updated_at"))
        decided = command.created_at.replace(microsecond=0)
        before_decision = updated is not None and updated.replace(microsecond=0) < decided
        outcome = CONFIRMED if made_now and not before_decision else ALREADY
        return Answer(outcome, state)
    if state in LIVE_ENROLLMENT_STATES:
        return Answer(
            REFUSED,
            state,
            error=f"{said or 'Canvas did not change it'}; Canvas shows enrollment "
            f"{command.enrollment_id} {state}",
        )
    return Answer(ENDED_BY_CANVAS, state, error=said)


def _send_reactivate(client: CanvasClient, command: Claimed) -> Answer:
    """PUT .../reactivate: Canvas's `reactivate`, from `inactive` only (400 `enrollment not
    inactive` otherwise; enrollments_api_controller.rb #reactivate)."""
    response = client.request("PUT", f"{command.enrollment_path}/reactivate")
    if response.status == 404:
        return Answer(GONE, NOT_FOUND_STATE, error=_said(response))
    shown = _enrollment_of(response)
    if (
        response.ok
        and shown is not None
        and shown.get("enrollment_state") in LIVE_ENROLLMENT_STATES
    ):
        return Answer(CONFIRMED, str(shown["enrollment_state"]))
    said = _said(response)
    shown = _look(client, command)
    if shown is None:
        return Answer(GONE, NOT_FOUND_STATE, error=said)
    state = shown.get("enrollment_state")
    if state in LIVE_ENROLLMENT_STATES:
        return Answer(ALREADY, str(state))
    return Answer(
        REFUSED,
        str(state) if state is not None else None,
        error=f"{said or 'Canvas did not reactivate it'}; Canvas shows enrollment "
        f"{command.enrollment_id} {state}",
    )


def _send_enroll(client: CanvasClient, command: Claimed) -> Answer:
    """POST /api/v1/sections/:section_id/enrollments with the old enrollment's user, role,
    section and temporary ids and the new end_at (enrollments_api_controller.rb #create, which
    passes them to `Course#enroll_user`, app/models/course.rb: with `allow_multiple_enrollments`
    it reuses the user's row of that type, role and section, deleted or not, and sets its state
    and dates; else it creates one). Canvas answers with the enrollment, whose id is recorded
    against the old one."""
    payload = command.payload
    section_id = payload.get("course_section_id")
    data = {
        f"enrollment[{name}]": _form(payload[name])
        for name in ENROLL_FIELDS
        if payload.get(name) is not None
    }
    response = client.request("POST", f"/api/v1/sections/{section_id}/enrollments", data=data)
    shown = _enrollment_of(response)
    if response.ok and shown is not None and isinstance(shown.get("id"), int | str):
        return Answer(CONFIRMED, _state_of(shown), new_enrollment_id=int(shown["id"]))
    # Sent twice (an answer lost), or refused: is the enrollment there as asked?
    said = _said(response)
    found = _find_enrolled(client, command)
    if found is not None:
        return Answer(ALREADY, _state_of(found), error=said, new_enrollment_id=int(found["id"]))
    if response.status == 404:
        return Answer(GONE, None, error=said)
    return Answer(REFUSED, None, error=said)


# What an `enroll` command sends (Canvas's `enrollment[...]` parameters); its payload holds them.
ENROLL_FIELDS = (
    "user_id",
    "role_id",
    "enrollment_state",
    "start_at",
    "end_at",
    "limit_privileges_to_course_section",
    "temporary_enrollment_source_user_id",
    "temporary_enrollment_pairing_id",
)


def _find_enrolled(client: CanvasClient, command: Claimed) -> dict[str, Any] | None:
    """The live enrollment the `enroll` command asked for, if Canvas has it: the user's in the
    course with the payload's section, role, pairing and end_at."""
    payload = command.payload
    wanted_end = _moment(payload.get("end_at"))
    for item in _course_enrollments(client, command.course_id, payload.get("user_id")):
        if (
            _same(item.get("course_section_id"), payload.get("course_section_id"))
            and _same(item.get("role_id"), payload.get("role_id"))
            and _same(
                item.get("temporary_enrollment_pairing_id"),
                payload.get("temporary_enrollment_pairing_id"),
            )
            and item.get("enrollment_state") in LIVE_ENROLLMENT_STATES
            and _moment(item.get("end_at")) == wanted_end
        ):
            return item
    return None


def _look(client: CanvasClient, command: Claimed) -> dict[str, Any] | None:
    """The enrollment as Canvas shows it now, or None when Canvas does not list it.

    Through the course's list with `user_id` and every `state[]` (the endpoints the test Canvas
    serves too). Canvas's `GET /api/v1/accounts/:account_id/enrollments/:id`
    (enrollments_api_controller.rb #show, `@context.all_enrollments.find`) would read one row,
    deleted ones included; tep's test Canvas does not serve it."""
    for item in _course_enrollments(client, command.course_id, command.user_id):
        if _same(item.get("id"), command.enrollment_id):
            return item
    return None


def _course_enrollments(client: CanvasClient, course_id: int, user_id: Any) -> list[dict[str, Any]]:
    if user_id is None:
        return []
    params = [
        ("user_id", str(user_id)),
        *(("state[]", s) for s in EVERY_STATE),
        ("per_page", "100"),
    ]
    try:
        return [
            item
            for item in client.get_all(f"/api/v1/courses/{course_id}/enrollments", params)
            if isinstance(item, dict)
        ]
    except CanvasRequestError as error:
        if error.status == 404:  # the course itself is gone (deleted, or never was)
            return []
        raise


# ---- finishing a command (this thread, one transaction each)


def _finish(
    factory: sessionmaker[Session],
    summary: DeliverySummary,
    command: Claimed,
    answer: Answer,
    *,
    as_of: dt.datetime | None,
) -> None:
    now = lifecycle.require_aware(as_of) if as_of is not None else utcnow()
    ended = False
    with transaction(factory) as session:
        if command.pairing_id is not None:
            # The pairing's row lock first, as every writer of its enrollments takes it: two
            # workers finishing its last two commands then see each other's, and one ends it.
            session.execute(
                select(Pairing.id).where(Pairing.id == command.pairing_id).with_for_update()
            )
        mine = and_(
            CanvasCommand.id == command.id,
            CanvasCommand.lease_owner == summary.worker_id,
            CanvasCommand.finished_at.is_(None),
        )
        if answer.outcome is None:
            delay = _backoff(command.attempts + 1)
            result = session.connection().execute(
                update(CanvasCommand)
                .where(mine)
                .values(
                    attempts=CanvasCommand.attempts + 1,
                    next_attempt_at=now + dt.timedelta(seconds=delay),
                    lease_owner=None,
                    lease_until=None,
                    last_error=answer.error,
                )
            )
            if not result.rowcount:
                summary.lost_leases += 1
                return
            summary.retry_later += 1
            summary.last_error = answer.error
            return
        result = session.connection().execute(
            update(CanvasCommand)
            .where(mine)
            .values(
                attempts=CanvasCommand.attempts + 1,
                outcome=answer.outcome,
                finished_at=now,
                canvas_state=answer.canvas_state,
                new_enrollment_id=answer.new_enrollment_id,
                last_error=answer.error,
                lease_owner=None,
                lease_until=None,
            )
        )
        if not result.rowcount:
            # The lease lapsed and another worker took the command over: its answer counts.
            summary.lost_leases += 1
            return
        if answer.outcome in SETTLED and command.state_change_id is not None:
            session.connection().execute(
                update(StateChange)
                .where(StateChange.id == command.state_change_id)
                .values(canvas_confirmed_at=now)
            )
        _mirror_follows(session, command, answer, now)
        if (
            command.kind in ENDING_KINDS
            and command.pairing_id is not None
            and answer.outcome in SETTLED
        ):
            ended = _end_pairing_if_done(session, command.pairing_id, now)
    summary.outcomes[answer.outcome] += 1
    if answer.outcome == REFUSED:
        summary.last_error = answer.error
        log.warning(
            "Canvas refused command %s (%s of enrollment %s): %s",
            command.id,
            command.kind,
            command.enrollment_id,
            answer.error,
        )
    if ended:
        summary.pairings_ended += 1


def _mirror_follows(session: Session, command: Claimed, answer: Answer, now: dt.datetime) -> None:
    """The mirror takes what Canvas showed: another state than tep's (`ended_by_canvas`, a `gone`
    one not deleted in the mirror, a restore Canvas did not make), and a re-enrollment's id."""
    if answer.outcome == REFUSED and command.kind in ENDING_KINDS:
        # tep's decision stands in the mirror: were it to take Canvas's live state, the next
        # sweep would decide the same again, and be refused again, every tick. The refusal is
        # in the command for people to see; the pairing stays open.
        return
    if command.kind == KIND_ENROLL and answer.new_enrollment_id not in (
        None,
        command.enrollment_id,
    ):
        assert answer.new_enrollment_id is not None
        _record_new_enrollment(session, command, answer.new_enrollment_id, answer.canvas_state, now)
        return
    state = answer.canvas_state
    if command.kind == KIND_ENROLL and answer.outcome in (GONE, REFUSED):
        if command.from_state != "deleted":
            # A re-dating Canvas did not take: the enrollment is as Canvas had it, with its old
            # end date there (the command's error says why); the mirror keeps the restore's.
            return
        state = NOT_FOUND_STATE  # not enrolled again: the old one stays deleted in Canvas
    if state is None:
        return
    changed = session.connection().execute(
        update(Enrollment)
        .where(Enrollment.id == command.enrollment_id, Enrollment.workflow_state != state)
        .values(workflow_state=state, updated_at=now)
    )
    if changed.rowcount:
        canvas_callbacks.sync_enrollments(session, [command.enrollment_id], now)
        deadlines.track(session, [command.enrollment_id])


def _record_new_enrollment(
    session: Session, command: Claimed, new_id: int, state: str | None, now: dt.datetime
) -> None:
    """Canvas made a new enrollment for an old one: the mirror gets it (a copy of the old row
    with Canvas's id, state and the new dates), and the old one goes back to `deleted`, as Canvas
    still has it. The command's `new_enrollment_id` records which replaced which."""
    old = session.get(Enrollment, command.enrollment_id)
    if old is None:
        return
    if session.get(Enrollment, new_id) is None:
        payload = command.payload
        canvas_objects.create_enrollment(
            session,
            Enrollment(
                id=new_id,
                user_id=old.user_id,
                course_id=old.course_id,
                course_section_id=old.course_section_id,
                root_account_id=old.root_account_id,
                type=old.type,
                role_id=old.role_id,
                workflow_state=state or payload.get("enrollment_state") or "active",
                start_at=_moment(payload.get("start_at")) or old.start_at,
                end_at=_moment(payload.get("end_at")) or old.end_at,
                limit_privileges_to_course_section=old.limit_privileges_to_course_section,
                temporary_enrollment_source_user_id=old.temporary_enrollment_source_user_id,
                temporary_enrollment_pairing_id=old.temporary_enrollment_pairing_id,
                created_at=now,
                updated_at=now,
            ),
            as_of=now,
        )
    old.workflow_state = NOT_FOUND_STATE
    old.updated_at = now
    session.flush()
    canvas_callbacks.sync_enrollments(session, [old.id], now)
    deadlines.track(session, [old.id])


def _end_pairing_if_done(session: Session, pairing_id: int, now: dt.datetime) -> bool:
    """End the pairing if its last open command just finished and nothing of it is live: as the
    sweep would have ended it when it decided (lifecycle.record_pairing_ends), under the run that
    decided its newest ending command, so that a restore undoes the end with the expiries."""
    if open_commands(session, pairing_id):
        return False
    pairing = session.get(Pairing, pairing_id)
    if pairing is None or session.get(PairingEnd, pairing_id) is not None:
        return False
    of_pairing = Enrollment.temporary_enrollment_pairing_id == pairing_id
    has_any = session.scalar(select(exists().where(of_pairing)))
    live_left = session.scalar(
        select(exists().where(of_pairing, Enrollment.workflow_state.in_(LIVE_ENROLLMENT_STATES)))
    )
    if not has_any or live_left:
        return False
    # Every enrollment's newest command must be settled: one Canvas refused is not ended there,
    # whatever the mirror says, and the pairing stays open (`tep status` lists the refusal).
    newest = (
        select(func.max(CanvasCommand.id))
        .where(CanvasCommand.temporary_enrollment_pairing_id == pairing_id)
        .group_by(CanvasCommand.enrollment_id)
    )
    if session.scalar(
        select(exists().where(CanvasCommand.id.in_(newest), CanvasCommand.outcome == REFUSED))
    ):
        return False
    decided = session.execute(
        select(CanvasCommand.run_id, StateChange.reason)
        .outerjoin(StateChange, StateChange.id == CanvasCommand.state_change_id)
        .where(
            CanvasCommand.temporary_enrollment_pairing_id == pairing_id,
            CanvasCommand.kind.in_(ENDING_KINDS),
        )
        .order_by(CanvasCommand.id.desc())
        .limit(1)
    ).first()
    if decided is None:
        return False
    ctx = lifecycle.ChangeContext(
        run_id=decided.run_id,
        as_of=now,
        reason=decided.reason or lifecycle.REASON_EXPIRED,
        changed_at=now,
    )
    if pairing.workflow_state == "deleted":
        # lifecycle.end_pairing(delete=True) audited the delete and left the end (a row of
        # tep's own, no audit row of its own) to Canvas's answers.
        session.add(
            PairingEnd(
                temporary_enrollment_pairing_id=pairing_id,
                root_account_id=pairing.root_account_id,
                ended_at=now,
                run_id=ctx.run_id,
                created_at=now,
            )
        )
        session.flush()
        deadlines.forget_pairings(session, [pairing_id])
        return True
    ended = lifecycle.record_pairing_ends(
        session, [(pairing_id, pairing.root_account_id, "active")], ctx, ended_at=now
    )
    return ended == 1


# ---- small helpers


def _enrollment_of(response: CanvasResponse) -> dict[str, Any] | None:
    body = response.body
    return body if isinstance(body, dict) and "enrollment_state" in body else None


def _state_of(shown: dict[str, Any]) -> str | None:
    state = shown.get("enrollment_state")
    return state if isinstance(state, str) else None


def _said(response: CanvasResponse) -> str:
    message = response.error_message()
    return f"Canvas answered {response.status}" + (f": {message}" if message else "")


def _same(a: Any, b: Any) -> bool:
    """Ids as Canvas sends them (numbers, or strings with `canvas-string-ids`)."""
    return a is not None and b is not None and str(a) == str(b)


def _moment(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _form(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _backoff(attempts: int) -> float:
    """Seconds before the next try of a command tried `attempts` times (jittered down to half)."""
    ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, CanvasError):
        return text[:500]
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


def _log_summary(summary: DeliverySummary) -> None:
    if not summary.claimed:
        return
    log.info(
        "Canvas commands: %d claimed, %s, %d to retry later, %d released, %d pairing(s) ended, "
        "%d request(s) in %.3f s",
        summary.claimed,
        ", ".join(f"{n} {outcome}" for outcome, n in summary.outcomes.items() if n)
        or "none finished",
        summary.retry_later,
        summary.released,
        summary.pairings_ended,
        summary.requests,
        summary.seconds,
        extra={"canvas_commands": summary.as_dict()},
    )
