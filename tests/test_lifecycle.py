"""The lifecycle rules of DESIGN.md section 4, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Enrollment, StateChange, SweepRun, TemporaryEnrollmentPairing
from tasks import lifecycle
from tests import factories as f

T = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
TICK = dt.timedelta(microseconds=1)
DAY = dt.timedelta(days=1)


def fresh(session: Session) -> None:
    """Forget what the session has seen: end its transaction (SQLite reads a snapshot) and
    expire its objects."""
    session.commit()
    session.expire_all()


def states(session: Session, enrollments: list[Enrollment]) -> list[str]:
    fresh(session)
    return [session.get(Enrollment, e.id).workflow_state for e in enrollments]  # type: ignore[union-attr]


def pairing_state(session: Session, pairing: TemporaryEnrollmentPairing) -> str:
    return f.shown_pairing(session, pairing.id)[0]


def audit_count(session: Session) -> int:
    fresh(session)
    return session.scalar(select(func.count()).select_from(StateChange)) or 0


def sweep(factory: sessionmaker[Session], **kwargs: object) -> lifecycle.RunSummary:
    kwargs.setdefault("as_of", T)
    return lifecycle.run_sweep(factory, **kwargs)  # type: ignore[arg-type]


def test_due_boundary_before_at_and_after(factory: sessionmaker[Session], session: Session) -> None:
    root = f.account(session)
    pairing, (before, at, after) = f.temporary_pairing(session, root, [T - TICK, T, T + TICK])
    session.commit()

    with freeze_time(T):  # "now" is taken once, in Python, when no as_of is given
        summary = lifecycle.run_sweep(factory)

    assert summary.as_of == T
    assert states(session, [before, at, after]) == ["deleted", "deleted", "active"]
    assert summary.enrollments_changed == {"deleted": 2, "completed": 0, "inactive": 0}
    assert pairing_state(session, pairing) == "active"  # `after` is still live
    assert summary.pairings_ended == 0


def test_mixed_end_dates_end_the_pairing_only_when_the_last_expires(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(session, root, [T - DAY, T + DAY])
    session.commit()

    sweep(factory)
    assert states(session, enrollments) == ["deleted", "active"]
    assert pairing_state(session, pairing) == "active"

    summary = sweep(factory, as_of=T + DAY)
    assert states(session, enrollments) == ["deleted", "deleted"]
    assert pairing_state(session, pairing) == "ended"
    assert summary.pairings_ended == 1
    fresh(session)
    assert f.shown_pairing(session, pairing.id)[1] == T + DAY


@pytest.mark.parametrize("ending_state", ["deleted", "completed", "inactive"])
def test_each_ending_state_is_applied_and_audited(
    factory: sessionmaker[Session], session: Session, ending_state: str
) -> None:
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(
        session, root, [T - DAY, T - DAY], ending_state=ending_state, states=["active", "invited"]
    )
    session.commit()

    summary = sweep(factory)

    assert states(session, enrollments) == [ending_state, ending_state]
    assert summary.enrollments_changed[ending_state] == 2
    assert summary.enrollments_changed_total == 2
    assert pairing_state(session, pairing) == "ended"
    enrollment = session.get(Enrollment, enrollments[0].id)
    assert enrollment is not None
    assert (enrollment.completed_at == T) is (ending_state == "completed")

    rows = session.scalars(select(StateChange).order_by(StateChange.id)).all()
    assert [(r.context_type, r.context_id, r.from_state, r.to_state) for r in rows] == [
        ("Enrollment", enrollments[0].id, "active", ending_state),
        ("Enrollment", enrollments[1].id, "invited", ending_state),
        ("TemporaryEnrollmentPairing", pairing.id, "active", "ended"),
    ]
    assert {r.reason for r in rows} == {"expired"}
    assert {r.run_id for r in rows} == {summary.run_id}
    assert all(r.actor_id is None for r in rows)


def test_null_ending_state_means_deleted(factory: sessionmaker[Session], session: Session) -> None:
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(session, root, [T - DAY], ending_state=None)
    session.commit()

    summary = sweep(factory)

    assert states(session, enrollments) == ["deleted"]
    assert summary.enrollments_changed["deleted"] == 1
    assert pairing_state(session, pairing) == "ended"


def test_unknown_ending_state_is_skipped_reported_and_logged(
    factory: sessionmaker[Session], session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    root = f.account(session)
    bad, bad_enrollments = f.temporary_pairing(session, root, [T - DAY], ending_state="archived")
    good, good_enrollments = f.temporary_pairing(session, root, [T - DAY], ending_state="inactive")
    session.commit()

    with caplog.at_level(logging.ERROR, logger="tep.lifecycle"):
        summary = sweep(factory)

    assert states(session, bad_enrollments) == ["active"]
    assert pairing_state(session, bad) == "active"
    assert states(session, good_enrollments) == ["inactive"]
    assert pairing_state(session, good) == "ended"
    [skipped] = summary.to_json()["pairings_skipped"]
    assert skipped["pairing_id"] == bad.id
    assert skipped["reason"] == "unknown_ending_state"
    assert "'archived'" in skipped["detail"]
    assert any(str(bad.id) in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert (
        session.scalar(
            select(func.count())
            .select_from(StateChange)
            .where(StateChange.temporary_enrollment_pairing_id == bad.id)
        )
        == 0
    )


def test_missing_end_at_and_deleted_account_are_skipped(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    undated, undated_enrollments = f.temporary_pairing(session, root, [T - DAY, None])
    never_due, _ = f.temporary_pairing(session, root, [None])
    gone_root = f.account(session, name="Closed", state="deleted")
    orphan, orphan_enrollments = f.temporary_pairing(session, gone_root, [T - DAY])
    session.commit()

    summary = sweep(factory)

    reasons = {s["pairing_id"]: s["reason"] for s in summary.to_json()["pairings_skipped"]}
    assert reasons == {
        undated.id: "missing_end_at",
        never_due.id: "missing_end_at",
        orphan.id: "account_deleted",
    }
    assert states(session, undated_enrollments) == ["active", "active"]
    assert states(session, orphan_enrollments) == ["active"]
    assert audit_count(session) == 0


def test_empty_pairing_stays_active(factory: sessionmaker[Session], session: Session) -> None:
    root = f.account(session)
    empty = f.pairing(session, root)
    session.commit()

    summary = sweep(factory, as_of=T + 365 * DAY)

    assert pairing_state(session, empty) == "active"
    assert summary.pairings_ended == 0


def test_already_ended_and_non_temporary_enrollments_are_untouched(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    pairing, finished = f.temporary_pairing(
        session, root, [T - DAY, T - DAY], states=["completed", "rejected"]
    )
    teacher = f.user(session, root)
    regular = f.enrollment(
        session, root, user_id=teacher.id, section=f.course(session, root), end_at=T - DAY
    )
    ended_pairing, in_ended_pairing = f.temporary_pairing(session, root, [T - DAY])
    f.record_end(session, ended_pairing, T - DAY)
    session.commit()
    before = {e.id: e.updated_at for e in [*finished, regular, *in_ended_pairing]}

    summary = sweep(factory)

    assert summary.enrollments_changed_total == 0
    assert states(session, [*finished, regular, *in_ended_pairing]) == [
        "completed",
        "rejected",
        "active",
        "active",
    ]
    assert {e: session.get(Enrollment, e).updated_at for e in before} == before  # type: ignore[union-attr]
    assert audit_count(session) == 0
    # A pairing whose enrollments all ended some other way is not the sweep's to end: it only
    # ends pairings whose due enrollments it expired.
    assert pairing_state(session, pairing) == "active"


def test_sweep_is_idempotent(factory: sessionmaker[Session], session: Session) -> None:
    root = f.account(session)
    for ending_state in ("deleted", "completed", "inactive", None):
        f.temporary_pairing(session, root, [T - DAY, T - TICK], ending_state=ending_state)
    session.commit()

    first = sweep(factory)
    audits = audit_count(session)
    second = sweep(factory)

    assert first.enrollments_changed_total == 8
    assert first.pairings_ended == 4
    assert second.enrollments_changed_total == 0
    assert second.pairings_ended == 0
    assert audit_count(session) == audits == 12


def test_dry_run_reports_the_real_run_and_writes_nothing(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    f.temporary_pairing(session, root, [T - DAY, T - DAY], ending_state="completed")
    f.temporary_pairing(session, root, [T - DAY, T + DAY], ending_state="inactive")
    f.temporary_pairing(session, root, [T - DAY], ending_state="nonsense")
    f.temporary_pairing(session, root, [T - DAY, None])  # skipped: a live row without end_at
    session.commit()
    snapshot = session.execute(
        select(Enrollment.id, Enrollment.workflow_state, Enrollment.updated_at).order_by(
            Enrollment.id
        )
    ).all()

    # One row per window: the first pairing's two due rows fall in two windows, and a dry run,
    # which changes nothing, must still count that pairing once.
    preview = sweep(factory, dry_run=True, batch_size=1, window_size=1)

    fresh(session)
    assert (
        session.execute(
            select(Enrollment.id, Enrollment.workflow_state, Enrollment.updated_at).order_by(
                Enrollment.id
            )
        ).all()
        == snapshot
    )
    assert audit_count(session) == 0
    assert session.scalar(select(func.count()).select_from(SweepRun)) == 0

    real = sweep(factory)
    keys = ("enrollments_changed", "pairings_ended", "pairings_skipped")
    assert preview.dry_run and not real.dry_run
    assert {k: preview.to_json()[k] for k in keys} == {k: real.to_json()[k] for k in keys}
    assert real.enrollments_changed == {"deleted": 0, "completed": 2, "inactive": 1}
    assert len(real.skipped) == 2


def test_account_filter_limits_the_run_to_one_root_account(
    factory: sessionmaker[Session], session: Session
) -> None:
    first, second = f.account(session, name="First"), f.account(session, name="Second")
    _, mine = f.temporary_pairing(session, first, [T - DAY])
    _, theirs = f.temporary_pairing(session, second, [T - DAY])
    session.commit()

    summary = sweep(factory, account_id=first.id)

    assert summary.enrollments_changed_total == 1
    assert states(session, mine + theirs) == ["deleted", "active"]
    with pytest.raises(lifecycle.UnknownAccount, match="no account with id 999"):
        sweep(factory, account_id=999)


@pytest.mark.parametrize(("window_size", "batches"), [(lifecycle.WINDOW_SIZE, 4), (2, 4), (1, 7)])
def test_small_batches_process_every_pairing_once(
    factory: sessionmaker[Session], session: Session, window_size: int, batches: int
) -> None:
    root = f.account(session)
    made = [
        f.temporary_pairing(session, root, [T - 3 * DAY, T - DAY, T - 2 * DAY])[1] for _ in range(7)
    ]
    session.commit()

    # Two pairings per batch. One window holds all seven pairings: batches of 2, 2, 2, 1. Windows
    # of two rows (or one) meet two pairings (or one) by their first rows, a batch each; their
    # later rows, which later windows would have met, were expired with them.
    summary = sweep(factory, batch_size=2, window_size=window_size)

    assert summary.enrollments_changed_total == 21
    assert summary.pairings_ended == 7
    assert summary.batches == batches
    assert all(state == "deleted" for e in made for state in states(session, e))
    assert audit_count(session) == 21 + 7


def test_a_window_lists_its_distinct_pairings_in_id_order(session: Session) -> None:
    root = f.account(session)
    late, _ = f.temporary_pairing(session, root, [T - DAY, T - 2 * DAY, T + DAY])
    early, _ = f.temporary_pairing(session, root, [T - 3 * DAY])
    middle, _ = f.temporary_pairing(session, root, [T - 2 * DAY, T - 5 * DAY])
    session.commit()

    last, window = lifecycle._next_window(session, T, None, None, 4)

    # The four earliest due rows, by end_at: middle (-5), early (-3), late and middle (-2).
    assert window == sorted([late.id, early.id, middle.id])
    assert last is not None and last[0] == T - 2 * DAY
    rest, window = lifecycle._next_window(session, T, None, last, 4)
    assert window == [late.id]
    assert lifecycle._next_window(session, T, None, rest, 4) == (None, [])


def test_a_window_is_cut_into_batches_in_order_skipping_what_is_done() -> None:
    assert list(lifecycle._batches([3, 5, 8, 9, 12], 2, done=())) == [[3, 5], [8, 9], [12]]
    assert list(lifecycle._batches([3, 5, 8, 9, 12], 2, done={5, 9})) == [[3, 8], [12]]
    assert list(lifecycle._batches([3, 5, 8], 100, done=())) == [[3, 5, 8]]
    assert list(lifecycle._batches([3, 5], 1, done={3, 5})) == []


def test_a_committed_run_is_recorded(factory: sessionmaker[Session], session: Session) -> None:
    root = f.account(session)
    f.temporary_pairing(session, root, [T - DAY])
    session.commit()

    summary = sweep(factory, trigger="nightly")

    run = session.get(SweepRun, summary.run_id)
    assert run is not None
    assert (run.trigger, run.enrollments_changed, run.pairings_ended) == ("nightly", 1, 1)


def test_naive_as_of_is_refused(factory: sessionmaker[Session]) -> None:
    with pytest.raises(lifecycle.LifecycleError, match="no time zone"):
        lifecycle.run_sweep(factory, as_of=dt.datetime(2026, 1, 1))  # noqa: DTZ001


def test_end_pairing_early_applies_its_state_to_every_live_enrollment(
    factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    admin = f.user(session, root)
    pairing, enrollments = f.temporary_pairing(
        session, root, [T + DAY, T + 7 * DAY], ending_state="completed"
    )
    session.commit()

    with factory() as s, s.begin():
        ended, changed = lifecycle.end_pairing(
            s, pairing.id, as_of=T, actor_id=admin.id, delete=True
        )
        assert (ended.workflow_state, ended.deleted_by_id) == ("deleted", admin.id)
        assert changed == {"completed": 2}

    assert states(session, enrollments) == ["completed", "completed"]
    reasons = session.scalars(select(StateChange.reason).distinct()).all()
    assert reasons == ["pairing_deleted"]
    with factory() as s, s.begin():  # a second end changes nothing
        again, changed = lifecycle.end_pairing(s, pairing.id, as_of=T + DAY, actor_id=admin.id)
        assert (again.workflow_state, changed) == ("deleted", {})
    assert audit_count(session) == 3
    with factory() as s, s.begin(), pytest.raises(lifecycle.UnknownPairing):
        lifecycle.end_pairing(s, 12345, as_of=T)
