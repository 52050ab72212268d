"""Timers (tasks/timers.py): which seconds are due, who may schedule each one, and the writers
and ticks that send them. On every backend (SQLite, PostgreSQL, Canvas's own schema); the clock
is frozen or passed in, never a live worker's (tests/test_timers_integration.py runs those)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from freezegun import freeze_time
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from migrations import alembic_config, upgrade
from models import (
    TEP_SCHEMA,
    Account,
    ExpiryTimer,
    Schemas,
    StateChange,
    TemporaryEnrollmentPairing,
    make_engine,
    transaction,
    utcnow,
)
from tasks import jobs, lifecycle, metrics, timers
from tests import factories as f
from tests.test_migrations import schema_differences
from worker import celery_app, runtime
from worker.settings import Settings, SettingsError, load_settings

T = dt.datetime(2027, 3, 1, 12, 0, 0, tzinfo=dt.UTC)  # "now", a whole second
S = dt.timedelta(seconds=1)
HORIZON = dt.timedelta(seconds=65)  # the default: a 60 s interval and a 5 s margin
TIMER = timers.TimerSettings(horizon=HORIZON, expires_after=dt.timedelta(seconds=60))


@dataclass
class FakeApp:
    """Stands in for a Celery app: records what would be sent, or fails like a dead broker."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    def send_task(self, name: str, **options: Any) -> None:
        if self.fail:
            raise ConnectionRefusedError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        self.sent.append({"name": name, **options})

    @property
    def etas(self) -> list[dt.datetime]:
        return [message["eta"] for message in self.sent]


def seed(session: Session, *end_ats: dt.datetime) -> None:
    """One pairing per `end_at`, written by tep's writers (so indexed in the deadline index)."""
    root = f.account(session)
    for end_at in end_ats:
        f.temporary_pairing(session, root, [end_at])
    session.commit()


def claims(session: Session) -> dict[dt.datetime, dt.datetime]:
    session.commit()
    return dict(session.execute(select(ExpiryTimer.due_at, ExpiryTimer.fire_at)).all())


# --------------------------------------------------------------------------------------------
# The logic


def test_a_moment_falls_due_in_the_whole_second_at_or_after_it() -> None:
    assert timers.second_of(T) == T
    assert timers.second_of(T + dt.timedelta(microseconds=1)) == T + S
    assert timers.second_of(T + dt.timedelta(milliseconds=999)) == T + S


def test_due_moments_are_the_latest_end_at_of_each_second_in_the_horizon(
    session: Session,
) -> None:
    ms = dt.timedelta(milliseconds=1)
    seed(
        session,
        T - S,  # due already: the sweep that looks ahead has just done it
        T,  # the boundary: due at T, so the same
        T + 10 * S,  # whole seconds, as Canvas writes end dates
        T + 10 * S,  # two enrollments of one moment: one timer
        T + 20 * S + 200 * ms,  # two in one second: the later one covers both
        T + 20 * S + 700 * ms,
        T + HORIZON,  # the edge of the horizon is in it
        T + HORIZON + ms,  # the next tick's
    )
    root = f.account(session, name="Ended")
    ended, _ = f.temporary_pairing(session, root, [T + 30 * S])
    f.record_end(session, ended, T - S)  # an ended pairing is out of the index, so out of here
    session.commit()

    assert timers.due_moments(session, T, HORIZON) == [
        T + 10 * S,
        T + 20 * S + 700 * ms,
        T + HORIZON,
    ]
    assert timers.due_moments(session, T + HORIZON, HORIZON) == [T + HORIZON + ms]
    # Idle: nothing due in the horizon, nothing to schedule.
    assert timers.due_moments(session, T + 10 * HORIZON, HORIZON) == []


def test_each_second_is_claimed_once(session: Session) -> None:
    moments = [T + 10 * S, T + 20 * S]
    with freeze_time(T):
        assert timers.claim_moments(session, moments, HORIZON) == moments
        session.commit()
        # The next tick's horizon overlaps this one: it sees the same seconds, takes none.
        assert timers.claim_moments(session, [*moments, T + 30 * S], HORIZON) == [T + 30 * S]
        session.commit()
    with freeze_time(T + 60 * S):
        assert timers.claim_moments(session, [T + 62 * S], HORIZON) == [T + 62 * S]
        assert timers.claim_moments(session, [T + 62 * S], HORIZON) == []  # same transaction
        session.commit()
    assert claims(session) == {
        T + 10 * S: T + 10 * S,
        T + 20 * S: T + 20 * S,
        T + 30 * S: T + 30 * S,
        T + 62 * S: T + 62 * S,
    }


def test_a_later_end_at_in_a_scheduled_second_gets_its_own_timer(session: Session) -> None:
    """A sweep at 12:00:09.300 would miss an enrollment ending at 12:00:09.800: that second is
    scheduled again, for the later moment; an earlier one is covered already."""
    early, late = T + 9 * S - 700 * S / 1000, T + 9 * S - 200 * S / 1000
    with freeze_time(T):
        assert timers.claim_moments(session, [early], HORIZON, now=T) == [early]
        assert timers.claim_moments(session, [late], HORIZON, now=T) == [late]
        assert timers.claim_moments(session, [early, late], HORIZON, now=T) == []
    assert claims(session) == {T + 9 * S: late}


def test_two_beats_claiming_at_once_schedule_each_second_once(
    factory: sessionmaker[Session],
) -> None:
    """Two ticks (two beats, or a beat and the API) claim the same seconds at the same moment:
    the second waits for the first's transaction and takes nothing it took."""
    moments = [T + n * S for n in range(1, 30)]
    first = factory()
    first.begin()
    assert timers.claim_moments(first, moments, HORIZON, now=T) == moments
    got: list[list[dt.datetime]] = []

    def second_beat() -> None:
        with transaction(factory) as session:
            got.append(timers.claim_moments(session, [*moments, T + 40 * S], HORIZON, now=T))

    other = threading.Thread(target=second_beat)
    other.start()
    time.sleep(0.5)  # it is waiting for our lock now (PostgreSQL's row, SQLite's write lock)
    assert not got
    first.commit()
    first.close()
    other.join(timeout=60)
    assert got == [[T + 40 * S]]


def test_a_lapsed_claim_is_claimed_again(session: Session) -> None:
    """A claim stands for its TTL (the horizon, as the tick uses it): not before it lapses."""
    moment = T + 10 * S
    assert timers.claim_moments(session, [moment], 5 * S, now=T) == [moment]
    session.commit()
    # It never lapses before its moment, whatever the TTL...
    assert timers.claim_moments(session, [moment], 5 * S, now=T + 9 * S) == []
    # ...and it does once its TTL is over.
    assert timers.claim_moments(session, [moment], 5 * S, now=T + 10 * S) == [moment]


def test_a_killed_workers_timers_are_made_again_once_a_worker_starts(session: Session) -> None:
    """The claims outlive a worker that died holding the timers: a starting worker releases the
    future ones, and the look-ahead takes them again."""
    moments = [T + 10 * S, T + 50 * S]
    assert timers.claim_moments(session, moments, HORIZON, now=T) == moments
    session.commit()
    assert timers.claim_moments(session, moments, HORIZON, now=T + 5 * S) == []
    assert timers.release_claims(session, T + 5 * S) == 2
    assert timers.claim_moments(session, moments, HORIZON, now=T + 5 * S) == moments


# --------------------------------------------------------------------------------------------
# The tick's look-ahead


def test_the_tick_looks_ahead_and_sends_each_timer_once(
    factory: sessionmaker[Session], session: Session
) -> None:
    seed(session, T - S, T + 10 * S, T + 10 * S, T + 40 * S, T + 90 * S, T + 210 * S)
    app = FakeApp()
    with freeze_time(T):
        assert timers.look_ahead(factory, app, as_of=T, timer=TIMER) == [T + 10 * S, T + 40 * S]
    assert app.etas == [T + 10 * S, T + 40 * S]
    assert {m["name"] for m in app.sent} == {"tasks.expire_due_pairings"}
    assert app.sent[0]["kwargs"] == {"trigger": "timer", "not_before": "2027-03-01T12:00:10Z"}
    assert app.sent[0]["expires"] == T + 70 * S  # dropped if still waiting a tick later

    # The next tick: its horizon overlaps (T + 40 s is in both); only T + 90 s is new.
    with freeze_time(T + 60 * S):
        assert timers.look_ahead(factory, app, as_of=T + 60 * S, timer=TIMER) == [T + 90 * S]
    assert app.etas == [T + 10 * S, T + 40 * S, T + 90 * S]
    # Claims on seconds a horizon in the past are forgotten as it goes.
    with freeze_time(T + 200 * S):
        timers.look_ahead(factory, app, as_of=T + 200 * S, timer=TIMER)
    assert claims(session) == {T + 210 * S: T + 210 * S}


def test_idle_stays_idle(factory: sessionmaker[Session], session: Session) -> None:
    """Nothing due in the horizon: one read, no claim written, no message."""
    seed(session, T - S, T + 2 * HORIZON)
    app = FakeApp()
    statements: list[str] = []
    engine: Engine = factory.kw["bind"]

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split()[0].upper())

    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert timers.look_ahead(factory, app, as_of=T, timer=TIMER) == []
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert app.sent == []
    assert [s for s in statements if s != "BEGIN"] == ["SELECT"]  # SQLite's BEGIN DEFERRED
    assert claims(session) == {}


def test_timers_that_cannot_be_sent_are_given_back(
    factory: sessionmaker[Session], session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    seed(session, T + 10 * S)
    dead = FakeApp(fail=True)
    with freeze_time(T), caplog.at_level(logging.WARNING, "tep.timers"):
        assert timers.look_ahead(factory, dead, as_of=T, timer=TIMER) == [T + 10 * S]
    assert "could not schedule 1 timer(s) (first at 2027-03-01T12:00:10Z)" in caplog.text
    assert claims(session) == {}  # given back: the next tick claims it again
    alive = FakeApp()
    with freeze_time(T + S):
        timers.look_ahead(factory, alive, as_of=T + S, timer=TIMER)
    assert alive.etas == [T + 10 * S]


def test_the_beat_sweep_looks_ahead_and_other_sweeps_do_not(
    factory: sessionmaker[Session],
    session: Session,
    database_url: str,
    database_schemas: Schemas,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The task itself (run in-process): beat's sweep, then its look-ahead from its own as_of."""
    now = utcnow()
    seed(session, now - S, now + 30 * S)
    app = FakeApp()
    monkeypatch.setattr(runtime, "session_factory", lambda: factory)
    monkeypatch.setattr(timers, "timer_settings", lambda: TIMER)
    monkeypatch.setattr(
        timers, "send_timer", lambda _app, moment, timer, **_: app.send_task("t", eta=moment)
    )

    manual = jobs.expire_due_pairings.run(trigger="celery")
    assert manual["enrollments_changed_total"] == 1 and "timers_scheduled" not in manual
    assert app.sent == []
    beat = jobs.expire_due_pairings.run(trigger="beat")
    assert beat["enrollments_changed_total"] == 0 and beat["timers_scheduled"] == 1
    assert app.etas == [now + 30 * S]


def test_a_timer_never_runs_before_its_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    with freeze_time(T):
        timers.wait_for(T + S / 4)  # fired early (a clock step): it waits
        timers.wait_for(T - S)  # on time or late: it does not
        timers.wait_for(T + 60 * S)  # absurdly early: not worth a pool process; run now
    assert slept == [0.25]


# --------------------------------------------------------------------------------------------
# tep's writers schedule what they write


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> FakeApp:
    app = FakeApp()
    monkeypatch.setattr(timers, "timer_settings", lambda: TIMER)
    monkeypatch.setattr(celery_app, "producer_app", lambda: app)
    return app


def test_a_writer_schedules_after_its_commit(
    factory: sessionmaker[Session], session: Session, producer: FakeApp
) -> None:
    now = utcnow()
    with transaction(factory) as writer:
        timers.schedule_after_commit(writer, [now + 30 * S, now + 2 * HORIZON, None])
        assert producer.sent == []  # not before the enrollment is visible to the timer's sweep
    assert producer.etas == [now + 30 * S]
    assert list(claims(session).values()) == [now + 30 * S]

    # The same moment from another writer: the timer is there already.
    with transaction(factory) as writer:
        timers.schedule_after_commit(writer, [now + 30 * S])
    assert len(producer.sent) == 1


def test_a_writer_that_rolls_back_schedules_nothing(
    factory: sessionmaker[Session], session: Session, producer: FakeApp
) -> None:
    now = utcnow()
    with pytest.raises(RuntimeError), transaction(factory) as writer:
        timers.schedule_after_commit(writer, [now + 30 * S])
        raise RuntimeError("the request failed")
    assert producer.sent == []
    assert claims(session) == {}


def test_an_unreachable_broker_never_fails_the_writer(
    factory: sessionmaker[Session],
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real producer on a Redis that is not there: the write commits, a warning says the next
    tick schedules it, and the claim is given back so that the tick can."""
    dead = celery_app.make_producer(Settings(broker_url="redis://127.0.0.1:1/0"))
    monkeypatch.setattr(timers, "timer_settings", lambda: TIMER)
    monkeypatch.setattr(celery_app, "producer_app", lambda: dead)
    now = utcnow()
    root_id = f.account(session).id
    session.commit()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "tep.timers"), transaction(factory) as writer:
        pairing_id = f.pairing(writer, writer.get_one(Account, root_id)).id
        timers.schedule_after_commit(writer, [now + 30 * S])
    assert time.monotonic() - started < 10
    assert "the next tick schedules them" in caplog.text
    assert session.get(TemporaryEnrollmentPairing, pairing_id) is not None  # committed
    assert claims(session) == {}


def test_a_restore_schedules_the_end_dates_it_writes(
    factory: sessionmaker[Session], session: Session, producer: FakeApp
) -> None:
    now = utcnow()
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [now + dt.timedelta(days=3)])
    session.commit()
    with transaction(factory) as writer:
        lifecycle.end_pairing(writer, pairing.id, as_of=now)
    from tasks import restore

    soon = (now + 20 * S).replace(microsecond=0)
    with transaction(factory) as writer:
        restore.restore_pairing(writer, pairing.id, as_of=utcnow(), end_at=soon)
    assert producer.etas == [soon]


def test_the_api_hook_is_off_when_timers_are(
    factory: sessionmaker[Session], session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timers, "timer_settings", lambda: None)
    with transaction(factory) as writer:
        timers.schedule_after_commit(writer, [utcnow() + 10 * S])
    assert claims(session) == {}


# --------------------------------------------------------------------------------------------
# Settings, metrics, migration


def test_timer_settings_default_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().timer_horizon_seconds == 65
    assert Settings(timers=False).timer_horizon_seconds is None
    assert Settings(sweep_interval_seconds=0).timer_horizon_seconds is None  # no tick, no timers


def test_a_horizon_past_half_the_visibility_timeout_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in list(os.environ):
        if key.startswith("TEP_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("TEP_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("TEP_VISIBILITY_TIMEOUT_SECONDS", "120")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "TEP_TIMER_MARGIN_SECONDS=5" in str(refused.value)
    assert "under half of TEP_VISIBILITY_TIMEOUT_SECONDS (120 s)" in str(refused.value)
    monkeypatch.setenv("TEP_VISIBILITY_TIMEOUT_SECONDS", "131")
    assert load_settings().timer_horizon_seconds == 65
    monkeypatch.setenv("TEP_VISIBILITY_TIMEOUT_SECONDS", "120")
    monkeypatch.setenv("TEP_TIMERS", "false")
    assert load_settings().timer_horizon_seconds is None
    # The SQLite broker never redelivers by a timeout: nothing to refuse.
    monkeypatch.setenv("TEP_TIMERS", "true")
    monkeypatch.setenv("TEP_BROKER_URL", "sqla+sqlite:///b.sqlite")
    assert load_settings().timer_horizon_seconds == 65


def test_lateness_buckets_resolve_a_tenth_of_a_second_and_never_go_negative(
    factory: sessionmaker[Session], session: Session
) -> None:
    assert metrics.LATENESS_BUCKETS[0] == 0.1 and 120 in metrics.LATENESS_BUCKETS
    now = utcnow()
    root = f.account(session)
    _, [enrollment] = f.temporary_pairing(session, root, [now - 10 * S])
    session.commit()
    lifecycle.run_sweep(factory, as_of=now - 9 * S)  # some 10 s late
    # A restore that moves end_at after the change would make it look early.
    session.add(
        StateChange(
            context_type="Enrollment",
            context_id=enrollment.id,
            root_account_id=root.id,
            from_state="active",
            to_state="deleted",
            reason=lifecycle.REASON_EXPIRED,
            run_id="early",
            created_at=now - 30 * S,
        )
    )
    session.commit()
    body, _ = metrics.render_metrics(factory)
    lines = dict(
        line.rsplit(" ", 1)
        for line in body.decode().splitlines()
        if line.startswith("tep_expiry_lateness_seconds")
    )
    assert float(lines['tep_expiry_lateness_seconds_bucket{le="0.1"}']) == 1  # the clamped one
    assert float(lines["tep_expiry_lateness_seconds_count"]) == 2
    assert float(lines["tep_expiry_lateness_seconds_sum"]) >= 0


def test_revision_0004_adds_the_timers_table_in_both_modes(
    database_url: str, database_schemas: Schemas
) -> None:
    """A database at 0003 (in either table mode) gets exactly the models' table from 0004,
    and only that: on Canvas's own database nothing of Canvas's changes."""
    engine = make_engine(database_url, database_schemas)
    schema = database_schemas.of_table(TEP_SCHEMA, engine.dialect.name)
    table = ExpiryTimer.__tablename__
    try:
        # Down to 0003 by the revisions' own downgrades (later ones drop their tables first).
        command.downgrade(alembic_config(database_url, database_schemas), "0003")
        assert table not in inspect(engine).get_table_names(schema=schema)
        upgrade(database_url, database_schemas)
        assert table in inspect(engine).get_table_names(schema=schema)
        with engine.connect() as connection:
            assert schema_differences(connection, database_schemas, tep_only=True) == []
    finally:
        engine.dispose()


def test_the_deadline_index_serves_the_look_ahead(pg_engine: Engine, pg_session: Session) -> None:
    """PostgreSQL reads the horizon from the deadline index alone (an index-only range scan):
    the cost follows the rows in the horizon, not the table."""
    seed(pg_session, *(T + n * dt.timedelta(minutes=1) for n in range(200)))
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    from sqlalchemy import event

    with pg_engine.connect() as connection:
        connection.execute(text("ANALYZE tep.temporary_enrollment_deadlines"))
        connection.execute(text("SET enable_seqscan = off"))  # a tiny table: ask for the plan
        event.listen(connection, "before_cursor_execute", record)
        with Session(bind=connection) as reader:
            assert timers.due_moments(reader, T, HORIZON) == [T + dt.timedelta(minutes=1)]
        event.remove(connection, "before_cursor_execute", record)
        # The look-ahead's own statement, with its own parameters.
        [(statement, parameters)] = seen
        plan = "\n".join(
            row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        )
    assert "Index Only Scan using index_temporary_enrollment_deadlines_on_end_at" in plan, plan


def test_make_producer_times_out_quickly() -> None:
    app = celery_app.make_producer(Settings(broker_url="redis://127.0.0.1:1/0"))
    options = app.conf.broker_transport_options
    assert options["socket_connect_timeout"] == celery_app.PRODUCER_CONNECT_TIMEOUT_SECONDS
    assert app.conf.task_default_queue == Settings().queue
    assert type(app.backend).__name__ == "DisabledBackend"  # no result store to open or fill
