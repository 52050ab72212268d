"""Timers: expire each temporary enrollment at its `end_at`, not at the next beat tick.

The interval sweep (every `TEP_SWEEP_INTERVAL_SECONDS`, 60 s by default) stays the safety net.
Without timers an enrollment waits for the next tick: up to a whole interval late. With them:

* **Look-ahead.** After its sweep, each beat-triggered sweep reads, in one index-range query on
  tep's deadline index (:func:`due_moments`), the `end_at`s that fall due within the *horizon*:
  the interval plus a margin (`TEP_TIMER_MARGIN_SECONDS`), so that a tick that runs late still
  overlaps the next one. The cost follows the rows in the horizon, not the table; with nothing
  due it is that one read and nothing else (no write, no message).
* **One timer a second.** The `end_at`s are grouped by the whole second they fall in, and a
  sweep is scheduled (a Celery `eta`) for each second at the latest `end_at` of that second: it
  covers every `end_at` of the second (`end_at <= as_of` is due), at most one second late for
  the earliest of them and on the dot for whole-second ones, as Canvas writes them.
* **Once each.** Before sending, the seconds are claimed in tep's table
  `temporary_enrollment_timers` (:func:`claim_moments`): an insert that only takes a second no
  one holds, in the same database on every broker (Redis or the embedded SQLite one). Whoever
  sees a second due (two beats, several workers, the API) sends its timer once. A claim stands
  for the whole horizon, past its moment, so a later tick whose horizon overlaps does not send
  it again. A second can be claimed again only for a later `end_at` than its timer's (an
  enrollment created or moved into an already scheduled second): that is a new timer, not a
  duplicate.
* **A timer sweep is the ordinary sweep** (trigger `timer`, as of the moment it runs), so a late,
  lost or doubled timer costs lateness or an idle sweep, never a wrong change. One that changed
  something starts webhook delivery at once, as every sweep does (tasks/delivery.py).
* **A worker that restarts loses nothing.** A worker holds its ETA messages in memory until they
  are due; killed, it takes them with it (the SQLite broker forgets them; Redis hands them out
  again only after the visibility timeout, long after their moment). So a starting worker
  releases the claims on future seconds and looks ahead at once (:func:`remake`, sent from
  `worker_ready`): every timer the dead worker held is made again. Until a worker runs again,
  nothing runs at all; whatever fell due meanwhile is swept by the next tick.
* **The API** schedules an enrollment it creates (and a restore, the end dates it writes) at
  once when its `end_at` falls inside the current horizon (:func:`schedule_after_commit`): the
  claim is written in the writer's own transaction and the timer sent after it commits. An
  unreachable broker never fails the request: the claim is given back and the next tick
  schedules it.
* **Enrollments written by someone else** (Canvas, in `existing` mode) are found by the next
  tick's discovery and so scheduled by its look-ahead: those created at least one interval
  ahead of their `end_at` are on time too.

The horizon stays well inside the broker's visibility timeout (worker/settings.py refuses one
that is not): Redis redelivers an ETA message that stayed unacknowledged longer than that.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, case, delete, event, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from models import EnrollmentDeadline, ExpiryTimer, make_sessionmaker, transaction, utcnow
from tasks import webhooks
from tasks.canvas_callbacks import ids_in
from tasks.lifecycle import iso

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("tep.timers")

SWEEP_TASK = "tasks.expire_due_pairings"
TRIGGER_TIMER = "timer"
SECOND = dt.timedelta(seconds=1)
# A timer that fires before its moment (the worker's clock stepped back) waits for it, up to
# this long; beyond that it is not worth holding a pool process, and the sweep runs at once.
MAX_EARLY_WAIT_SECONDS = 5.0
# An API request that schedules a timer may find an `end_at` that passed while it committed:
# it is swept at once (its claim is that second's) rather than left to the next tick.
JUST_PASSED = SECOND
# The claims the API's transaction made, waiting for its commit (Session.info key).
_PENDING = "tep_timers_pending"
_HOOKED = "tep_timers_hooked"


@dataclasses.dataclass(frozen=True)
class TimerSettings:
    horizon: dt.timedelta
    # A timer message still waiting this long after its moment is dropped (Celery `expires`):
    # the interval sweep has done its work by then.
    expires_after: dt.timedelta


def timer_settings() -> TimerSettings | None:
    """From TEP_ settings; None when timers are off (TEP_TIMERS=false, or no interval sweep)."""
    from worker.settings import get_settings

    settings = get_settings()
    horizon = settings.timer_horizon_seconds
    if horizon is None:
        return None
    return TimerSettings(
        horizon=dt.timedelta(seconds=horizon),
        expires_after=dt.timedelta(seconds=max(settings.sweep_interval_seconds, 1.0)),
    )


# --------------------------------------------------------------------------------------------
# The logic: which seconds are due, and which of them this process may schedule


def second_of(moment: dt.datetime) -> dt.datetime:
    """The whole second `moment` falls due in: the smallest whole second at or after it."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + SECOND


def _latest_per_second(moments: Iterable[dt.datetime]) -> dict[dt.datetime, dt.datetime]:
    latest: dict[dt.datetime, dt.datetime] = {}
    for moment in moments:
        second = second_of(moment)
        if second not in latest or moment > latest[second]:
            latest[second] = moment
    return latest


def due_moments(session: Session, now: dt.datetime, horizon: dt.timedelta) -> list[dt.datetime]:
    """When to sweep so that every `end_at` in `(now, now + horizon]` is on time: for each whole
    second something falls due in, the latest `end_at` of that second, in order.

    One range read on the deadline index (`end_at`, PostgreSQL's index-only scan): its cost
    follows the rows in the horizon. Rows of pairings that have ended are not in the index; a
    row that is stale (its enrollment changed by Canvas since) costs an idle sweep at most.
    """
    end_ats = session.scalars(
        select(EnrollmentDeadline.end_at)
        .where(EnrollmentDeadline.end_at > now, EnrollmentDeadline.end_at <= now + horizon)
        .distinct()
    )
    return sorted(_latest_per_second(e for e in end_ats if e is not None).values())


def _insert(session: Session) -> Any:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(ExpiryTimer)


def claim_moments(
    session: Session,
    moments: Iterable[dt.datetime],
    ttl: dt.timedelta,
    *,
    now: dt.datetime | None = None,
) -> list[dt.datetime]:
    """Claim the seconds of `moments` for this caller; returns the moments (in order) whose
    timers the caller must now send, once its transaction has committed.

    A second is claimed when no one holds it (no row, or its claim lapsed: `claimed_until` has
    passed), or when it is held for an earlier moment than one of `moments` of that second (a
    later `end_at` joined it: its timer would fire too early for it). A claim stands until
    `now + ttl`, and never ends before its moment. One statement, an upsert that returns what
    it took: concurrent callers wait for each other's row locks (PostgreSQL) or write lock
    (SQLite), and only one of them gets each second. Seconds are claimed in order, so two
    callers lock their rows in the same order and cannot deadlock.
    """
    now = now if now is not None else utcnow()
    wanted = _latest_per_second(moments)
    if not wanted:
        return []
    stmt = _insert(session).values(
        [
            {"due_at": second, "fire_at": moment, "claimed_until": max(now + ttl, moment)}
            for second, moment in sorted(wanted.items())
        ]
    )
    held = ExpiryTimer.__table__.c
    stmt = stmt.on_conflict_do_update(
        index_elements=[held.due_at],
        set_={
            # A lapsed claim's timer may still come (late): keep the later of the two moments,
            # so that the timer sent now covers both.
            "fire_at": case(
                (held.fire_at > stmt.excluded.fire_at, held.fire_at), else_=stmt.excluded.fire_at
            ),
            "claimed_until": stmt.excluded.claimed_until,
        },
        where=or_(held.claimed_until <= now, held.fire_at < stmt.excluded.fire_at),
    ).returning(held.fire_at)
    return sorted(session.connection().execute(stmt).scalars())


def release_claims(session: Session, after: dt.datetime) -> int:
    """Give up every claim on a second after `after`: their timers are to be made again (a
    worker starting after one died holding them). Returns how many."""
    result = session.connection().execute(
        delete(ExpiryTimer)
        .where(ExpiryTimer.due_at > after)
        .execution_options(preserve_rowcount=True)
    )
    return int(result.rowcount or 0)


def prune(session: Session, before: dt.datetime) -> None:
    """Forget claims on seconds before `before` (long past: no one claims them again)."""
    session.connection().execute(delete(ExpiryTimer).where(ExpiryTimer.due_at < before))


def _give_back(session: Session, moments: Collection[dt.datetime]) -> None:
    """Release our claims on these moments (their timers could not be sent), so that the next
    tick claims them again; a claim someone has since extended is theirs and stays."""
    for moment in moments:
        session.connection().execute(
            delete(ExpiryTimer).where(
                ExpiryTimer.due_at == second_of(moment), ExpiryTimer.fire_at == moment
            )
        )


# --------------------------------------------------------------------------------------------
# Wiring: sending timers


def send_timer(
    app: Celery, moment: dt.datetime, timer: TimerSettings, *, retry: bool = True
) -> None:
    """Schedule the ordinary sweep at `moment` (it waits out a timer that fires early)."""
    app.send_task(
        SWEEP_TASK,
        kwargs={"trigger": TRIGGER_TIMER, "not_before": iso(moment)},
        eta=moment,
        expires=moment + timer.expires_after,
        retry=retry,
        # Its run is recorded in tep's sweep runs; a result backend would only subscribe the
        # sender to a reply (Redis) it never reads, and store one more row a second.
        ignore_result=True,
    )


def _send_all(
    app: Celery,
    moments: Collection[dt.datetime],
    timer: TimerSettings,
    engine: Engine,
    *,
    retry: bool,
) -> int:
    """Send a timer for each claimed moment; give back the claims of those that could not be
    sent (the broker is down: the next tick claims them again). Returns how many were sent."""
    failed: list[dt.datetime] = []
    error: Exception | None = None
    for moment in moments:
        try:
            send_timer(app, moment, timer, retry=retry)
        except Exception as exc:  # any broker error: the claim is given back, nothing fails
            failed.append(moment)
            error = exc
    if failed:
        log.warning(
            "could not schedule %d timer(s) (first at %s): %s; the next tick schedules them",
            len(failed),
            iso(failed[0]),
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
        try:
            with transaction(make_sessionmaker(engine)) as session:
                _give_back(session, failed)
        except Exception as exc:  # the claims lapse by themselves after the horizon
            log.warning("could not give back the claims of unsent timers: %s", exc)
    return len(moments) - len(failed)


def _engine_of(factory: sessionmaker[Session]) -> Engine:
    bind = factory.kw["bind"]
    return bind if isinstance(bind, Engine) else bind.engine


def look_ahead(
    factory: sessionmaker[Session],
    app: Celery,
    *,
    as_of: dt.datetime,
    timer: TimerSettings | None = None,
    release: bool = False,
) -> list[dt.datetime]:
    """Schedule a timer for each second due in `(as_of, as_of + horizon]` that no one has yet;
    returns the moments scheduled. `as_of` is the sweep's own, so nothing between the sweep
    and this read is left out. With `release`, first give up every claim on a future second
    (see :func:`remake`)."""
    timer = timer or timer_settings()
    if timer is None:
        return []
    with webhooks.reader(factory)() as session:  # no write lock on SQLite for the idle case
        moments = due_moments(session, as_of, timer.horizon)
        session.rollback()
    if not moments and not release:
        return []
    with transaction(factory) as session:
        now = utcnow()
        if release:
            released = release_claims(session, now)
            if released:
                log.info("released %d timer claim(s) to make them again", released)
        prune(session, as_of - timer.horizon)
        claimed = claim_moments(session, moments, timer.horizon, now=now)
    sent = _send_all(app, claimed, timer, _engine_of(factory), retry=True)
    if sent:
        log.info("scheduled %d timer(s) from %s to %s", sent, iso(claimed[0]), iso(claimed[-1]))
    return claimed


def remake(factory: sessionmaker[Session], app: Celery) -> list[dt.datetime]:
    """At a worker's start: release the claims on future seconds and look ahead from now, so the
    timers a killed worker took with it are made again (a duplicate of a timer another worker
    still holds is an idle sweep)."""
    return look_ahead(factory, app, as_of=utcnow(), release=True)


def wait_for(moment: dt.datetime) -> None:
    """Sleep until `moment` if a timer fired a little before it (never early, never long)."""
    early = (moment - utcnow()).total_seconds()
    if 0 < early <= MAX_EARLY_WAIT_SECONDS:
        time.sleep(early)


# --------------------------------------------------------------------------------------------
# Wiring: tep's writers (the API, restore) schedule what they write


def schedule_after_commit(
    session: Session, end_ats: Iterable[dt.datetime | None], *, now: dt.datetime | None = None
) -> None:
    """From a writer's transaction: the temporary enrollments it writes end at `end_ats`; those
    inside the current horizon get their timers now instead of at the next tick.

    The claims are written in `session`'s transaction (they commit or roll back with the write)
    and the timers are sent once it has committed, so a timer never runs before the enrollment
    it is for is visible. An unreachable broker is logged, never raised: the next tick
    schedules the moment. Nothing is read or written when no `end_at` is inside the horizon.
    """
    timer = timer_settings()
    if timer is None:
        return
    now = now if now is not None else utcnow()
    moments = [e for e in end_ats if e is not None and now - JUST_PASSED < e <= now + timer.horizon]
    if not moments:
        return
    claimed = claim_moments(session, moments, timer.horizon, now=now)
    if not claimed:
        return
    pending: set[dt.datetime] = session.info.setdefault(_PENDING, set())
    pending.update(claimed)
    if not session.info.get(_HOOKED):
        session.info[_HOOKED] = True
        event.listen(session, "after_commit", _send_pending)
        event.listen(session, "after_rollback", _drop_pending)


def schedule_enrollments_after_commit(session: Session, enrollment_ids: Collection[int]) -> None:
    """:func:`schedule_after_commit` for enrollments this transaction wrote and indexed
    (tasks/deadlines.py `track`): their end dates are read from the deadline index."""
    timer = timer_settings()
    if timer is None or not enrollment_ids:
        return
    now = utcnow()
    end_ats = session.scalars(
        select(EnrollmentDeadline.end_at).where(
            ids_in(session, EnrollmentDeadline.enrollment_id, enrollment_ids),
            EnrollmentDeadline.end_at > now - JUST_PASSED,
            EnrollmentDeadline.end_at <= now + timer.horizon,
        )
    ).all()
    schedule_after_commit(session, end_ats, now=now)


def _send_pending(session: Session) -> None:
    moments = sorted(session.info.pop(_PENDING, ()))
    if not moments:
        return
    timer = timer_settings()
    if timer is None:
        return
    try:
        from worker.celery_app import producer_app

        bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        # No retries: the request waits for this; a broker that is down is the next tick's.
        _send_all(producer_app(), moments, timer, engine, retry=False)
    except Exception as error:  # after the commit: nothing may fail the writer now
        log.warning("could not schedule timers %s: %s", [iso(m) for m in moments], error)


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
