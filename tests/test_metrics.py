"""Metrics in Prometheus format, parsed back with prometheus_client's parser, against the DB."""

from __future__ import annotations

import datetime as dt
import json

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Enrollment, StateChange, SweepRun, utcnow
from tasks import lifecycle, metrics
from tests import factories as f

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
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
