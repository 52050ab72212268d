"""Retention: idle runs recorded one row per streak, and what `tep prune` may remove (and must
keep), on the three backends; the command itself as a real process."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
import time
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import (
    NOTICE_FAILED,
    NOTICE_PENDING,
    NOTICE_SENT,
    NOTICE_SKIPPED,
    Enrollment,
    Notice,
    StateChange,
    SweepRun,
    WebhookDelivery,
    WebhookReceiver,
    transaction,
    utcnow,
)
from tasks import lifecycle, metric_totals, restore, retention
from tasks.metrics import render_metrics
from tests import factories as f
from tests.test_status import tep

DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)
RETENTION = 30


def record(
    factory: sessionmaker[Session],
    at: dt.datetime,
    *,
    trigger: str = "beat",
    changed: int = 0,
    status: str = lifecycle.RUN_COMPLETED,
    account_id: int | None = None,
) -> lifecycle.RunSummary:
    """A run recorded as the sweep records one (lifecycle.record_run), at `at`."""
    summary = lifecycle.RunSummary(
        run_id=lifecycle.new_run_id(),
        as_of=at,
        dry_run=False,
        account_id=account_id,
        trigger=trigger,
        started_at=at,
        finished_at=at + dt.timedelta(milliseconds=20),
        status=status,
        error=None if status == lifecycle.RUN_COMPLETED else "OperationalError: gone",
    )
    summary.enrollments_changed["deleted"] = changed
    lifecycle.record_run(factory, summary)
    return summary


def runs(session: Session) -> list[dict[str, Any]]:
    session.commit()
    rows = session.scalars(select(SweepRun.summary).order_by(SweepRun.started_at)).all()
    return [json.loads(summary) for summary in rows]


def scraped(factory: sessionmaker[Session], name: str) -> float:
    text = render_metrics(factory)[0].decode()
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} in {text}"
    return float(values[0])


# --------------------------------------------------------------------------------------------
# Idle runs: one row per streak


def test_idle_runs_are_one_row_per_streak_and_the_last_sweep_still_moves(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    f.temporary_pairing(session, root, [utcnow() - MINUTE])
    session.commit()
    changed = lifecycle.run_sweep(factory, trigger="beat")
    ticks = [lifecycle.run_sweep(factory, trigger="beat") for _ in range(4)]

    recorded = runs(session)
    assert [r["run_id"] for r in recorded] == [changed.run_id, ticks[-1].run_id]
    idle = recorded[-1]
    assert (idle["idle_runs"], idle["idle_since"]) == (4, lifecycle.iso(ticks[0].started_at))
    assert "idle_runs" not in recorded[0]
    # The row is the last tick's: found by its run id, and the metrics' last sweep moves.
    row = session.get(SweepRun, ticks[-1].run_id)
    assert row is not None and row.finished_at == ticks[-1].finished_at
    assert scraped(factory, "tep_last_sweep_finished_timestamp_seconds") == (
        row.finished_at.timestamp()
    )
    assert scraped(factory, "tep_sweep_run_duration_seconds_count") == 5  # every tick counted
    kept = metric_totals.read(session)
    assert kept[(metric_totals.RUNS, metric_totals.NO_LABEL)] == 5


def test_a_streak_is_of_one_trigger_and_account_and_ends_at_a_run_that_did_something(
    factory: sessionmaker[Session], session: Session
) -> None:
    t = utcnow() - DAY
    record(factory, t, trigger="beat")
    record(factory, t + MINUTE, trigger="beat")
    record(factory, t + 2 * MINUTE, trigger="nightly")  # a streak of its own
    record(factory, t + 3 * MINUTE, trigger="beat")
    record(factory, t + 4 * MINUTE, trigger="beat", account_id=7)
    record(factory, t + 5 * MINUTE, trigger="beat", status=lifecycle.RUN_FAILED)
    record(factory, t + 6 * MINUTE, trigger="beat")
    record(factory, t + 7 * MINUTE, trigger="beat", changed=3)
    record(factory, t + 8 * MINUTE, trigger="beat")
    record(factory, t + 9 * MINUTE, trigger="beat")

    shape = [(r["trigger"], r["status"], r.get("idle_runs")) for r in runs(session)]
    assert shape == [
        ("beat", "completed", 2),
        ("nightly", "completed", 1),
        ("beat", "completed", 1),
        ("beat", "completed", 1),  # account 7
        ("beat", "failed", None),
        ("beat", "completed", 1),
        ("beat", "completed", None),  # changed 3
        ("beat", "completed", 2),
    ]


def test_a_run_that_started_before_the_latest_row_is_not_folded_into_it(
    factory: sessionmaker[Session], session: Session
) -> None:
    t = utcnow() - DAY
    record(factory, t + MINUTE)
    record(factory, t)  # finished after the other, but started first
    assert [r.get("idle_runs") for r in runs(session)] == [1, 1]


def test_idle_runs_recorded_at_once_each_count_once(
    factory: sessionmaker[Session], session: Session
) -> None:
    """Two idle runs that find the same streak row: one carries it on, the other (on PostgreSQL,
    finding it gone) starts a streak of its own; on SQLite they queue. Either way every run is
    counted once, in the rows and in the metric totals."""
    t = utcnow() - DAY
    record(factory, t)
    errors: list[BaseException] = []

    def idle_run(at: dt.datetime) -> None:
        try:
            record(factory, at)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    with transaction(factory) as locker:  # holds the row (PostgreSQL) or the database (SQLite)
        locker.execute(select(SweepRun.id).with_for_update())
        threads = [threading.Thread(target=idle_run, args=(t + n * MINUTE,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # both wait for the lock
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(r["idle_runs"] for r in runs(session)) == 3
    assert metric_totals.read(session)[(metric_totals.RUNS, metric_totals.NO_LABEL)] == 3


# --------------------------------------------------------------------------------------------
# tep prune: runs, notices, webhook receivers


def test_prune_removes_old_idle_runs_and_keeps_the_rest_in_batches(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    old = now - (RETENTION + 10) * DAY
    for day in range(5):  # idle streaks, each ended by a run that did something: all old
        record(factory, old + day * DAY)
        record(factory, old + day * DAY + MINUTE, changed=1)
    record(factory, old + 6 * DAY, status=lifecycle.RUN_FAILED)  # changed nothing, failed
    recent = record(factory, now - DAY)
    assert len(runs(session)) == 12

    preview = retention.prune(factory, now=now, retention_days=RETENTION, dry_run=True)
    assert preview.idle_runs == 5
    assert len(runs(session)) == 12

    done = retention.prune(factory, now=now, retention_days=RETENTION, batch_size=2)
    assert done.idle_runs == 5
    left = runs(session)
    assert [r["run_id"] for r in left if lifecycle.is_idle_run(r)] == [recent.run_id]
    assert sum(1 for r in left if r["enrollments_changed_total"]) == 5
    assert [r["status"] for r in left].count(lifecycle.RUN_FAILED) == 1
    assert retention.prune(factory, now=now, retention_days=RETENTION).idle_runs == 0


def test_prune_keeps_the_latest_run_however_old(
    factory: sessionmaker[Session], session: Session
) -> None:
    """It is the last sweep that the metrics report (and their alert on its age)."""
    now = utcnow()
    old = now - (RETENTION + 10) * DAY
    record(factory, old)
    record(factory, old + MINUTE, changed=1)
    latest = record(factory, old + 2 * MINUTE)

    assert retention.prune(factory, now=now, retention_days=RETENTION).idle_runs == 1
    assert [r["run_id"] for r in runs(session)][-1] == latest.run_id


def add_notice(
    session: Session,
    pairing_id: int,
    root_id: int,
    *,
    state: str,
    at: dt.datetime,
    kind: str = "before_end",
    threshold: int = 86400,
) -> Notice:
    notice = Notice(
        temporary_enrollment_pairing_id=pairing_id,
        root_account_id=root_id,
        kind=kind,
        threshold_seconds=threshold,
        ends_at=at,
        workflow_state=state,
        sent_at=at if state == NOTICE_SENT else None,
        created_at=at,
        updated_at=at,
    )
    session.add(notice)
    session.flush()
    return notice


def test_prune_removes_settled_notices_of_pairings_no_longer_open(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    old = now - (RETENTION + 1) * DAY
    root = f.account(session)
    ended, _ = f.temporary_pairing(session, root, [old])
    f.record_end(session, ended, old)
    deleted = f.pairing(session, root, state="deleted")
    still_open, _ = f.temporary_pairing(session, root, [old, now + DAY])
    gone = add_notice(session, ended.id, root.id, state=NOTICE_SENT, at=old)
    add_notice(session, ended.id, root.id, state=NOTICE_SENT, at=old, kind="ended", threshold=0)
    add_notice(session, deleted.id, root.id, state=NOTICE_SKIPPED, at=old)
    add_notice(session, 10**12, root.id, state=NOTICE_SENT, at=old)  # its pairing is gone
    kept = [
        # A pairing that is open could be planned this notice again: it stays.
        add_notice(session, still_open.id, root.id, state=NOTICE_SENT, at=old),
        # Not sent: `tep status` shows them.
        add_notice(session, deleted.id, root.id, state=NOTICE_FAILED, at=old, threshold=1),
        add_notice(session, deleted.id, root.id, state=NOTICE_PENDING, at=old, threshold=2),
        # Recent.
        add_notice(session, deleted.id, root.id, state=NOTICE_SENT, at=now - DAY, threshold=3),
    ]
    session.commit()
    gone_id, kept_ids = gone.id, sorted(n.id for n in kept)

    assert retention.prune(factory, now=now, dry_run=True).notices == 4
    assert retention.prune(factory, now=now, batch_size=3).notices == 4
    session.expire_all()
    assert sorted(session.scalars(select(Notice.id))) == kept_ids
    assert session.get(Notice, gone_id) is None


def test_prune_forgets_receivers_no_longer_configured(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    old = now - (RETENTION + 1) * DAY
    receivers = {
        url: WebhookReceiver(url=url, low_water_state_change_id=0, created_at=old, updated_at=at)
        for url, at in (
            ("https://configured.example/hook", old),
            ("https://removed.example/hook", old),
            ("https://removed-lately.example/hook", now - DAY),
        )
    }
    session.add_all(receivers.values())
    session.flush()
    for receiver in receivers.values():
        for change_id in range(1, 6):
            session.add(
                WebhookDelivery(
                    receiver_id=receiver.id,
                    state_change_id=change_id,
                    attempts=1,
                    delivered_at=old if change_id % 2 else None,
                    created_at=old,
                    updated_at=old,
                )
            )
    session.commit()
    configured = ["https://configured.example/hook"]

    preview = retention.prune(factory, now=now, webhook_urls=configured, dry_run=True)
    assert (preview.webhook_receivers, preview.webhook_deliveries) == (1, 5)
    done = retention.prune(factory, now=now, webhook_urls=configured, batch_size=2)
    assert (done.webhook_receivers, done.webhook_deliveries) == (1, 5)
    session.expire_all()
    assert sorted(session.scalars(select(WebhookReceiver.url))) == [
        "https://configured.example/hook",
        "https://removed-lately.example/hook",
    ]
    assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 10


def test_a_retention_shorter_than_the_check_looks_back_is_refused(
    factory: sessionmaker[Session],
) -> None:
    with pytest.raises(retention.RetentionError, match="at least 2"):
        retention.prune(factory, now=utcnow(), retention_days=1)
    with pytest.raises(retention.RetentionError, match="at least 1 day"):
        retention.prune(factory, now=utcnow(), audit_older_than_days=0)


# --------------------------------------------------------------------------------------------
# The audit log: only what no restore, receiver or notice needs


def stacks(session: Session) -> dict[int | None, list[str]]:
    """Each pairing's undo stack, as run ids, from the audit rows there are."""
    session.commit()
    rows = session.scalars(select(StateChange).order_by(StateChange.id)).all()
    trails: dict[int | None, list[StateChange]] = {}
    for row in rows:
        trails.setdefault(row.temporary_enrollment_pairing_id, []).append(row)
    return {
        pairing: [run[0].run_id for run in restore.undo_stack(trail)]
        for pairing, trail in trails.items()
        if pairing is not None
    }


def audit_count(session: Session) -> int:
    session.commit()
    return int(session.scalar(select(func.count()).select_from(StateChange)) or 0)


def stacked_enrollments(session: Session, pairing_id: int) -> list[Enrollment]:
    return list(
        session.scalars(
            select(Enrollment)
            .where(Enrollment.temporary_enrollment_pairing_id == pairing_id)
            .order_by(Enrollment.id)
        )
    )


def test_the_audit_prune_keeps_every_change_a_restore_could_undo(
    factory: sessionmaker[Session], session: Session
) -> None:
    """Old history already undone goes; each pairing's undo stack stays whole, and restores
    after the prune do what they would have done before it."""
    start = utcnow() - 60 * DAY
    root = f.account(session)
    # Ended early, restored, then swept: only the sweep's change is left to undo.
    redone, _ = f.temporary_pairing(session, root, [start + DAY])
    # Two changes stacked (two enrollments, two sweeps): a restore, then another, undoes both.
    stacked, _ = f.temporary_pairing(session, root, [start + DAY, start + 3 * DAY])
    # Deleted, restored, deleted again, restored again: nothing left to undo.
    undone, _ = f.temporary_pairing(session, root, [start + 50 * DAY])
    session.commit()
    with freeze_time(start):
        with transaction(factory) as writer:
            lifecycle.end_pairing(writer, redone.id, as_of=start)
        with transaction(factory) as writer:
            restore.restore_pairing(writer, redone.id, as_of=start, end_at=start + DAY)
        for _ in range(2):
            with transaction(factory) as writer:
                lifecycle.end_pairing(writer, undone.id, as_of=start, delete=True)
            with transaction(factory) as writer:
                restore.restore_pairing(writer, undone.id, as_of=start)
    with freeze_time(start + 2 * DAY):
        lifecycle.run_sweep(factory)
    with freeze_time(start + 4 * DAY):
        lifecycle.run_sweep(factory)
    before = stacks(session)
    assert [len(before[p.id]) for p in (redone, stacked, undone)] == [1, 2, 0]
    total = audit_count(session)

    preview = retention.prune(factory, now=utcnow(), audit_older_than_days=RETENTION, dry_run=True)
    # redone: its end and restore (2 rows each: enrollment and pairing); undone: all 8 rows.
    assert preview.audit_rows == 4 + 8
    assert preview.audit_kept_for_restore == total - 12
    assert audit_count(session) == total

    done = retention.prune(factory, now=utcnow(), audit_older_than_days=RETENTION, batch_size=5)
    assert (done.audit_rows, done.audit_kept_for_restore) == (12, total - 12)
    assert audit_count(session) == total - 12
    after = stacks(session)
    assert after[redone.id] == before[redone.id] and after[stacked.id] == before[stacked.id]
    assert undone.id not in after

    later = utcnow() + 10 * DAY
    for pairing_id in (redone.id, stacked.id, stacked.id):
        with transaction(factory) as writer:
            restore.restore_pairing(writer, pairing_id, as_of=utcnow(), end_at=later)
    session.commit()  # a new snapshot
    assert f.shown_pairing(session, stacked.id)[0] == "active"
    assert [e.workflow_state for e in stacked_enrollments(session, stacked.id)] == [
        "active",
        "active",
    ]
    with pytest.raises(restore.NothingToRestore), transaction(factory) as writer:
        restore.restore_pairing(writer, stacked.id, as_of=utcnow(), end_at=later)


def test_the_audit_prune_keeps_what_a_webhook_receiver_has_not_had(
    factory: sessionmaker[Session], session: Session
) -> None:
    start = utcnow() - 60 * DAY
    root = f.account(session)
    section = f.course(session, root)
    student = f.user(session, root)
    concluded = f.enrollment(session, root, user_id=student.id, section=section)
    for _ in range(4):  # changes to an enrollment of no pairing: nothing a restore reads
        session.add(
            StateChange(
                context_type=lifecycle.ENROLLMENT,
                context_id=concluded.id,
                root_account_id=root.id,
                from_state="active",
                to_state="completed",
                reason="concluded",
                run_id=lifecycle.new_run_id(),
                created_at=start,
            )
        )
    session.flush()
    ids = sorted(session.scalars(select(StateChange.id)))
    session.add(
        WebhookReceiver(
            url="https://slow.example/hook",
            low_water_state_change_id=ids[1],
            created_at=start,
            updated_at=utcnow(),
        )
    )
    session.commit()

    done = retention.prune(factory, now=utcnow(), audit_older_than_days=RETENTION)
    assert (done.audit_rows, done.audit_kept_for_webhooks) == (2, 2)
    session.expire_all()
    assert sorted(session.scalars(select(StateChange.id))) == ids[2:]


def test_the_audit_log_is_kept_unless_asked_for(
    factory: sessionmaker[Session], session: Session
) -> None:
    start = utcnow() - 60 * DAY
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [start])
    session.commit()
    with freeze_time(start):
        with transaction(factory) as writer:
            lifecycle.end_pairing(writer, pairing.id, as_of=start)
        with transaction(factory) as writer:
            restore.restore_pairing(writer, pairing.id, as_of=start, end_at=start + DAY)
    total = audit_count(session)

    report = retention.prune(factory, now=utcnow())
    assert report.audit_cutoff is None and report.to_json()["audit_rows"] is None
    assert audit_count(session) == total


def trail_of(operations: tuple[str, ...]) -> list[StateChange]:
    """Audit rows for a made-up history: `c` a change (two rows), `r` a restore of the newest
    change not yet undone (as tasks/restore.py writes one), `n` the pairing's creation."""
    rows: list[StateChange] = []
    undo: list[str] = []
    for op in operations:
        run_id = lifecycle.new_run_id()
        reason = {"c": "expired", "r": restore.REASON_RESTORED, "n": "created"}[op]
        if op == "r":
            if not undo:
                continue  # nothing to undo: tep would refuse the restore
            undo.pop()
        elif op == "c":
            undo.append(run_id)
        for _ in range(1 if op == "n" else 2):
            rows.append(
                StateChange(
                    id=len(rows) + 1,
                    run_id=run_id,
                    reason=reason,
                    created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                )
            )
    return rows


def test_what_the_audit_prune_leaves_replays_to_the_same_undo_stack() -> None:
    """Every history of up to 7 steps: the rows left after the prefix the prune may remove
    give the same undo stack, all of it, as the whole trail."""
    cutoff = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    for length in range(1, 8):
        for operations in itertools.product("ncr", repeat=length):
            trail = trail_of(operations)
            n = retention.removable_prefix(trail, cutoff, None)
            whole = [run[0].run_id for run in restore.undo_stack(trail)]
            left = [run[0].run_id for run in restore.undo_stack(trail[n:])]
            assert left == whole, operations
            # All that comes before the oldest change on the stack goes (with no mark or
            # cutoff in the way), and all of the stack stays.
            first_needed = next((i for i, row in enumerate(trail) if row.run_id in whole), None)
            assert n == (len(trail) if first_needed is None else first_needed), operations
            # Rows above a receiver's mark stay whatever the stack.
            assert retention.removable_prefix(trail, cutoff, 0) == 0


# --------------------------------------------------------------------------------------------
# The command


def test_tep_prune_dry_run_json_and_one_line_refusals(
    database_url: str, factory: sessionmaker[Session], session: Session
) -> None:
    old = utcnow() - (RETENTION + 5) * DAY
    record(factory, old)
    record(factory, old + MINUTE, changed=1)
    record(factory, old + 2 * MINUTE)
    record(factory, old + 3 * MINUTE, changed=1)
    record(factory, utcnow())

    preview = tep(database_url, "prune", "--dry-run", "--json")
    assert preview.returncode == 0, preview.stderr
    counts = json.loads(preview.stdout)
    assert (counts["dry_run"], counts["idle_runs"], counts["audit_rows"]) == (True, 2, None)
    assert len(runs(session)) == 5

    table = tep(database_url, "prune", "--audit-older-than", "40")
    assert table.returncode == 0, table.stderr
    assert "removed 2 idle sweep run(s)" in table.stdout
    assert "removed 0 audit row(s)" in table.stdout
    assert len(runs(session)) == 3

    for args, expected in (
        (("--older-than", "1"), "at least 2"),
        (("--audit-older-than", "0"), "--audit-older-than"),
        (("--older-than", "x"), "--older-than"),
    ):
        done = tep(database_url, "prune", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr
    done = tep(database_url, "prune", TEP_RETENTION_DAYS="1")
    assert done.returncode == 2 and "TEP_RETENTION_DAYS" in done.stderr
