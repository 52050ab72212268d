"""Metrics in Prometheus format, parsed back with prometheus_client's parser, against the DB."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import BigInteger, Engine, event, literal, select
from sqlalchemy.orm import Session, sessionmaker

from models import (
    Enrollment,
    Schemas,
    StateChange,
    SweepRun,
    make_engine,
    make_sessionmaker,
    transaction,
    utcnow,
)
from tasks import lifecycle, metric_totals, metrics, restore
from tasks.events import record_pairing_created
from tests import factories as f

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
# SQLite's date functions work in whole milliseconds: a difference of two instants is exact to 2 ms.
SECONDS_CLOSE = 0.0025


def scrape(factory: sessionmaker[Session]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render_metrics(factory)
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_match_the_database(factory: sessionmaker[Session], session: Session) -> None:
    now = utcnow()
    root = f.account(session)
    f.temporary_pairing(session, root, [now - DAY, now - 2 * HOUR], ending_state="completed")
    f.temporary_pairing(session, root, [now - 3 * HOUR], ending_state="inactive")
    f.temporary_pairing(session, root, [now - 5 * HOUR, now - 5 * HOUR, now - 5 * HOUR])
    f.temporary_pairing(session, root, [now - DAY], ending_state="archived")  # skipped
    f.temporary_pairing(session, root, [now - HOUR / 2, now - HOUR / 4])
    early, _ = f.temporary_pairing(session, root, [now + DAY], ending_state="completed")
    session.commit()
    lifecycle.run_sweep(factory, as_of=now - HOUR)  # leaves `backlog` due but not yet swept
    lifecycle.run_sweep(factory, as_of=now - HOUR)
    with factory.begin() as writer:
        lifecycle.end_pairing(writer, early.id, as_of=now, delete=True)

    samples = scrape(factory)

    session.commit()
    changes = session.execute(select(StateChange.context_type, StateChange.to_state)).all()
    for state in ("deleted", "completed", "inactive"):
        expected = sum(1 for c in changes if c == ("Enrollment", state))
        assert value(samples, "tep_enrollments_changed_total", ending_state=state) == expected
    assert value(samples, "tep_enrollments_changed_total", ending_state="deleted") == 3
    assert value(samples, "tep_enrollments_changed_total", ending_state="completed") == 3
    assert value(samples, "tep_pairings_ended_total") == 3
    assert value(samples, "tep_pairings_deleted_total") == 1
    assert value(samples, "tep_due_enrollments") == 2 + 1  # the backlog and the skipped one
    assert value(samples, "tep_pairings_skipped", reason="unknown_ending_state") == 1
    assert value(samples, "tep_pairings_skipped", reason="missing_end_at") == 0
    assert value(samples, "tep_sweep_pairings_skipped_total") == 2  # once per run

    runs = session.scalars(select(SweepRun).order_by(SweepRun.started_at)).all()
    durations = [(r.finished_at - r.started_at).total_seconds() for r in runs]
    assert value(samples, "tep_sweep_run_duration_seconds_count") == 2
    close = SECONDS_CLOSE
    assert abs(value(samples, "tep_sweep_run_duration_seconds_sum") - sum(durations)) < 2 * close
    assert abs(value(samples, "tep_last_sweep_duration_seconds") - durations[-1]) < close
    assert (
        value(samples, "tep_last_sweep_finished_timestamp_seconds")
        == runs[-1].finished_at.timestamp()
    )
    assert json.loads(runs[-1].summary)["pairings_skipped"][0]["reason"] == "unknown_ending_state"

    expired = session.execute(
        select(StateChange.created_at, Enrollment.end_at)
        .join(Enrollment, Enrollment.id == StateChange.context_id)
        .where(StateChange.context_type == "Enrollment", StateChange.reason == "expired")
    ).all()
    lateness = [(changed - end).total_seconds() for changed, end in expired if end is not None]
    assert len(lateness) == 6
    assert value(samples, "tep_expiry_lateness_seconds_count") == 6
    assert abs(value(samples, "tep_expiry_lateness_seconds_sum") - sum(lateness)) < 6 * close
    for bound in metrics.LATENESS_BUCKETS:
        le = str(float(bound))
        expected = sum(1 for s in lateness if s <= bound)
        assert value(samples, "tep_expiry_lateness_seconds_bucket", le=le) == expected
    assert value(samples, "tep_expiry_lateness_seconds_bucket", le="+Inf") == 6
    assert value(samples, "tep_metrics_database_up") == 1


def test_an_empty_database_has_zeros_and_a_broken_one_says_so(
    factory: sessionmaker[Session], tmp_path: object
) -> None:
    samples = scrape(factory)
    assert value(samples, "tep_enrollments_changed_total", ending_state="inactive") == 0
    assert value(samples, "tep_sweep_run_duration_seconds_count") == 0
    assert ("tep_last_sweep_duration_seconds", ()) not in samples

    from models import make_engine, make_sessionmaker

    broken = make_sessionmaker(make_engine(f"sqlite:///{tmp_path}/never-migrated.sqlite"))
    samples = scrape(broken)
    assert value(samples, "tep_metrics_database_up") == 0


def test_the_grafana_dashboard_only_uses_metrics_we_serve(
    factory: sessionmaker[Session], session: Session
) -> None:
    import re

    from tests.processes import PROJECT_ROOT

    root = f.account(session)
    f.temporary_pairing(session, root, [utcnow() - HOUR])
    session.commit()
    lifecycle.run_sweep(factory)
    # Families without samples yet (no receivers configured, no notices) count as served.
    body, _ = metrics.render_metrics(factory)
    served = {name for name, _ in scrape(factory)} | {
        family.name for family in text_string_to_metric_families(body.decode())
    }
    dashboard = json.loads((PROJECT_ROOT / "deploy/grafana/tep-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\btep_[a-z_]+", target["expr"])
    }
    assert len(used) >= 10
    assert used <= served, used - served


# --------------------------------------------------------------------------------------------
# The totals behind the counters (tasks/metric_totals.py)

MICROSECOND = dt.timedelta(microseconds=1)
AUDIT_TABLE = StateChange.__tablename__


def reference_bucket(microseconds: int) -> str:
    for bound in metrics.LATENESS_BUCKETS:
        if microseconds <= round(bound * 1_000_000):
            return str(float(bound))
    return "+Inf"


def audit_totals(session: Session) -> dict[metric_totals.Key, int]:
    """The totals recomputed from the audit table and the sweep runs, in Python, as the scrape
    aggregated them before there were totals: what the kept totals must equal."""
    session.commit()  # a new transaction: see what the code under test committed
    totals: Counter[metric_totals.Key] = Counter()
    for context_type, to_state in session.execute(
        select(StateChange.context_type, StateChange.to_state)
    ):
        totals[(f"state_changes:{context_type}", to_state)] += 1
    expired = session.execute(
        select(StateChange.created_at, Enrollment.end_at)
        .join(Enrollment, Enrollment.id == StateChange.context_id)
        .where(
            StateChange.context_type == lifecycle.ENROLLMENT,
            StateChange.reason == lifecycle.REASON_EXPIRED,
            Enrollment.end_at.is_not(None),
        )
    )
    for changed_at, end_at in expired:
        assert end_at is not None  # as selected
        late = max(0, (changed_at - end_at) // MICROSECOND)
        totals[("expiry_lateness", reference_bucket(late))] += 1
        totals[("expiry_lateness_milliseconds", "")] += (late + 500) // 1000
    for started_at, finished_at, skipped in session.execute(
        select(SweepRun.started_at, SweepRun.finished_at, SweepRun.pairings_skipped)
    ):
        totals[("sweep_runs", "")] += 1
        totals[("sweep_run_microseconds", "")] += (finished_at - started_at) // MICROSECOND
        totals[("sweep_pairings_skipped", "")] += skipped
    return {key: n for key, n in totals.items() if n}


def kept_totals(factory: sessionmaker[Session]) -> dict[metric_totals.Key, int]:
    with factory() as session:
        return metric_totals.read(session)


def make_history(factory: sessionmaker[Session]) -> dt.datetime:
    """Every kind of writer: sweeps (one ahead of time, with a skipped pairing), an early end and
    a delete, each restored, and audit rows the ORM inserts (a pairing created, an enrollment
    concluded, as the API writes them). Lateness is kept away from bucket bounds, so that
    SQLite's millisecond date arithmetic (the backfill's) lands in the same buckets."""
    now = utcnow()
    with factory() as session:
        root = f.account(session)
        f.temporary_pairing(
            session, root, [now - 95 * MINUTE, now - 50 * MINUTE], ending_state="completed"
        )
        f.temporary_pairing(session, root, [now - 3 * HOUR - 7 * MINUTE], ending_state="inactive")
        f.temporary_pairing(session, root, [now - 20 * MINUTE])
        f.temporary_pairing(session, root, [now - DAY], ending_state="archived")  # skipped
        early, _ = f.temporary_pairing(session, root, [now + DAY], ending_state="completed")
        deleted, _ = f.temporary_pairing(session, root, [now + 2 * DAY])
        ahead, _ = f.temporary_pairing(session, root, [now + 3 * HOUR], ending_state="inactive")
        record_pairing_created(session, ahead)
        section = f.course(session, root)
        student = f.user(session, root)
        concluded = f.enrollment(session, root, user_id=student.id, section=section)
        session.add(
            StateChange(
                context_type=lifecycle.ENROLLMENT,
                context_id=concluded.id,
                root_account_id=root.id,
                from_state="active",
                to_state="completed",
                reason="concluded",
                run_id=lifecycle.new_run_id(),
                created_at=now,
            )
        )
        session.commit()
        early_id, deleted_id = early.id, deleted.id

    lifecycle.run_sweep(factory, as_of=now)
    for pairing_id, delete in ((early_id, False), (deleted_id, True)):
        with transaction(factory) as writer:
            lifecycle.end_pairing(writer, pairing_id, as_of=now, delete=delete)
        with transaction(factory) as writer:
            restore.restore_pairing(writer, pairing_id, as_of=now)
    lifecycle.run_sweep(factory, as_of=now)  # idle but for the skipped pairing
    # Ahead of time: a week on, the restored pairings and `ahead` expire before their end_at.
    lifecycle.run_sweep(factory, as_of=now + 7 * DAY)
    return now


def test_totals_equal_what_the_audit_table_says(
    factory: sessionmaker[Session], session: Session, database_url: str, database_schemas: Schemas
) -> None:
    make_history(factory)

    kept = kept_totals(factory)
    assert kept == audit_totals(session)
    ended = metric_totals.state_change_key(lifecycle.PAIRING, "ended")
    assert kept[ended] == 7  # 3 swept, 1 ended early (restored), then 3 ended ahead of time
    assert kept[metric_totals.state_change_key(lifecycle.PAIRING, "deleted")] == 1
    assert kept[metric_totals.state_change_key(lifecycle.PAIRING, "active")] == 3  # 2 restored
    # Swept, concluded, and the early one twice (ended early, restored, then swept ahead).
    assert kept[metric_totals.state_change_key(lifecycle.ENROLLMENT, "completed")] == 2 + 1 + 2
    assert kept[(metric_totals.RUNS, "")] == 3
    assert kept[(metric_totals.RUNS_SKIPPED, "")] == 3

    # The same figures from another process's engine (a restart, or the API's endpoint).
    other = make_engine(database_url, database_schemas)
    try:
        assert scrape(make_sessionmaker(other, read_only=True)) == scrape(factory)
    finally:
        other.dispose()


def test_lateness_is_never_negative(factory: sessionmaker[Session], session: Session) -> None:
    """A run ahead of time (`tep sweep --as-of` a week on) changes enrollments before their
    end_at: not late, so 0, and the sum stays what the late ones add (before: it went negative)."""
    now = utcnow()
    root = f.account(session)
    f.temporary_pairing(session, root, [now - 10 * MINUTE])
    f.temporary_pairing(session, root, [now + DAY, now + 2 * DAY])
    session.commit()
    lifecycle.run_sweep(factory, as_of=now)
    late = value(scrape(factory), "tep_expiry_lateness_seconds_sum")
    assert 600 <= late < 700

    lifecycle.run_sweep(factory, as_of=now + 7 * DAY)

    samples = scrape(factory)
    assert value(samples, "tep_expiry_lateness_seconds_count") == 3
    assert value(samples, "tep_expiry_lateness_seconds_sum") == late
    assert value(samples, "tep_expiry_lateness_seconds_bucket", le="0.1") == 2
    assert metric_totals.lateness_microseconds(now, now + DAY) == 0


def test_a_backlog_long_overdue_does_not_overflow_the_lateness_sum(
    factory: sessionmaker[Session], session: Session
) -> None:
    """Kept in microseconds, 200 enrollments two thousand years overdue (a backlog found late, in
    small) would pass BIGINT's range, and the sweep's commit would fail; in milliseconds not."""
    now = utcnow()
    ancient = dt.datetime(2, 1, 1, tzinfo=dt.UTC)
    root = f.account(session)
    f.temporary_pairing(session, root, [ancient] * 200)
    session.commit()

    assert lifecycle.run_sweep(factory, as_of=now).enrollments_changed_total == 200

    kept = kept_totals(factory)
    assert kept == audit_totals(session)
    late = value(scrape(factory), "tep_expiry_lateness_seconds_sum")
    assert late == pytest.approx(200 * (now - ancient).total_seconds(), rel=1e-6)
    assert late * 1_000_000 > 2**63  # what the sum would have been in microseconds


def test_a_restore_does_not_take_a_counted_lateness_back(
    factory: sessionmaker[Session], session: Session
) -> None:
    """A counter never goes down: a restore with a new end_at leaves the expiry's lateness (which
    the scrape's join to end_at used to recompute, to 0)."""
    now = utcnow()
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [now - HOUR - 10 * MINUTE])
    session.commit()
    lifecycle.run_sweep(factory, as_of=now)
    before = scrape(factory)
    with transaction(factory) as writer:
        restore.restore_pairing(writer, pairing.id, as_of=now, end_at=now + DAY)
    after = scrape(factory)
    for name in ("tep_expiry_lateness_seconds_sum", "tep_expiry_lateness_seconds_count"):
        assert value(after, name) == value(before, name)
    assert value(after, "tep_expiry_lateness_seconds_sum") > 3600


def test_a_scrape_does_not_read_the_audit_table(
    factory: sessionmaker[Session], session: Session, engine: Engine
) -> None:
    make_history(factory)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        samples = scrape(factory)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert value(samples, "tep_pairings_ended_total") == 7
    assert statements, "the listener saw the scrape's statements"
    assert [s for s in statements if AUDIT_TABLE in s] == []
    # The runs: only the last one is read (by its index), never aggregated.
    runs = [s for s in statements if SweepRun.__tablename__ in s]
    assert len(runs) == 1 and "LIMIT" in runs[0].upper()


def test_the_totals_name_audit_rows_as_the_lifecycle_writes_them() -> None:
    assert metric_totals.ENROLLMENT == lifecycle.ENROLLMENT
    assert metric_totals.REASON_EXPIRED == lifecycle.REASON_EXPIRED


def test_lateness_buckets_agree_in_python_and_sql(session: Session) -> None:
    """The sweep's statement buckets lateness in SQL, the portable path in Python: the same."""
    values = [0, 1, 99_999, 100_000, 100_001, 1_000_000, 3_600_000_000, 86_400_000_001]
    expected = [reference_bucket(v) for v in values]
    assert [metric_totals.lateness_bucket(v) for v in values] == expected
    assert expected[:5] == ["0.1", "0.1", "0.1", "0.1", "0.25"] and expected[-1] == "+Inf"
    in_sql = [
        session.scalar(select(metric_totals.lateness_bucket_sql(literal(v, BigInteger))))
        for v in values
    ]
    assert in_sql == expected


def test_concurrent_increments_both_count(factory: sessionmaker[Session]) -> None:
    """Two transactions adding to the same total: the second waits for the first's row (or, on
    SQLite, the write lock) and adds to what it committed; neither increment is lost, for a
    total that does not exist yet (both insert) and for one that does (both update)."""
    key = (metric_totals.RUNS_SKIPPED, "")
    for expected in (2, 4):
        with factory() as first:
            first.begin()
            metric_totals.add(first, key, 1)
            metric_totals.write_pending(first)  # the row is now locked until `first` commits

            def second() -> None:
                with transaction(factory) as session:
                    metric_totals.add(session, key, 1)

            thread = threading.Thread(target=second)
            thread.start()
            thread.join(timeout=1.0)
            assert thread.is_alive(), "the second writer waits for the first"
            first.commit()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert kept_totals(factory)[key] == expected


def test_concurrent_sweeps_count_every_change_once(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session)
    for i in range(24):
        f.temporary_pairing(session, root, [now - (i + 2) * MINUTE, now - HOUR - i * MINUTE])
    session.commit()
    sweeps = [
        threading.Thread(
            target=lifecycle.run_sweep, args=(factory,), kwargs={"as_of": now, "batch_size": 2}
        )
        for _ in range(2)
    ]
    for sweep in sweeps:
        sweep.start()
    for sweep in sweeps:
        sweep.join(timeout=120)
    kept = kept_totals(factory)
    assert kept == audit_totals(session)
    assert kept[metric_totals.state_change_key(lifecycle.PAIRING, "ended")] == 24
    assert kept[metric_totals.state_change_key(lifecycle.ENROLLMENT, "deleted")] == 48
