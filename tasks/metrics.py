"""Prometheus metrics, read from the database on each scrape.

The numbers live in the database (the audit table, the sweep runs, the outbox and notice tables),
so every process that serves them (the worker's endpoint, the API's `/metrics`) shows the same
values, they survive restarts, and they cannot drift from what actually happened: there are no
in-process counters to lose or to double count across worker processes.

Cost: each scrape counts the audit table by state (an aggregate over its rows) and joins the
expired enrollments for the lateness histogram. That is cheap for the audit volumes this service
produces; should it ever not be, those two belong in a rollup table kept by the sweep.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models import (
    ENDING_ENROLLMENT_STATES,
    Enrollment,
    Notice,
    StateChange,
    SweepRun,
    utcnow,
)
from tasks import lifecycle, webhooks
from worker.notify_settings import receiver_label, receiver_labels

log = logging.getLogger("tep.metrics")

# Lateness buckets (seconds from an enrollment's end_at to its change). Timers (tasks/timers.py)
# keep it under a second, so the buckets resolve 0.1 s up to 2 minutes (a timer lost and the
# interval sweep catching up: up to one interval, 60 s by default); the long ones show a stopped
# worker or a nightly-only setup.
LATENESS_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 86400,
)  # fmt: skip
# The last runs whose skipped pairings are reported as currently skipped.
RECENT_RUNS = 1


def seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[Any]:
    """`end - start` in seconds, as SQL, on PostgreSQL and on SQLite (which stores ISO text)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


class LifecycleCollector(Collector):
    def __init__(self, factory: sessionmaker[Session], webhook_urls: Sequence[str] = ()) -> None:
        self.factory = factory
        self.webhook_urls = list(webhook_urls)

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "tep_metrics_database_up", "1 when the metrics could be read from the database."
        )
        try:
            # A reader: on SQLite a scrape must not take (or wait for) the sweep's write lock.
            with webhooks.reader(self.factory)() as session:
                metrics = list(self._collect(session))
                session.rollback()
        except SQLAlchemyError as error:
            log.error("metrics: database unavailable: %s", str(error).splitlines()[0])
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [*metrics, up]

    def _collect(self, session: Session) -> Iterator[Metric]:
        yield from self._changes(session)
        yield from self._runs(session)
        yield self._lateness(session)
        due = GaugeMetricFamily(
            "tep_due_enrollments",
            "Temporary enrollments due now and not yet expired (the sweep's backlog).",
        )
        due.add_metric([], lifecycle.count_due(session, utcnow()))
        yield due
        yield from self._outbound(session)

    def _changes(self, session: Session) -> Iterator[Metric]:
        changed = CounterMetricFamily(
            "tep_enrollments_changed",
            "Temporary enrollments moved to an ending state, by that state.",
            labels=["ending_state"],
        )
        counts = dict.fromkeys(ENDING_ENROLLMENT_STATES, 0)
        rows = session.execute(
            select(StateChange.to_state, func.count())
            .where(
                StateChange.context_type == lifecycle.ENROLLMENT,
                StateChange.to_state.in_(ENDING_ENROLLMENT_STATES),
            )
            .group_by(StateChange.to_state)
        )
        for state, n in rows:
            counts[state] = n
        for state, n in counts.items():
            changed.add_metric([state], n)
        yield changed

        pairings = dict(
            session.execute(
                select(StateChange.to_state, func.count())
                .where(
                    StateChange.context_type == lifecycle.PAIRING,
                    StateChange.to_state.in_(("ended", "deleted")),
                )
                .group_by(StateChange.to_state)
            ).all()
        )
        ended = CounterMetricFamily(
            "tep_pairings_ended", "Pairings that ended (all their enrollments expired)."
        )
        ended.add_metric([], pairings.get("ended", 0))
        yield ended
        deleted = CounterMetricFamily(
            "tep_pairings_deleted", "Pairings deleted (ended early through the API)."
        )
        deleted.add_metric([], pairings.get("deleted", 0))
        yield deleted

    def _runs(self, session: Session) -> Iterator[Metric]:
        duration = seconds_between(session, SweepRun.started_at, SweepRun.finished_at)
        count, total, skipped = session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(duration), 0.0),
                func.coalesce(func.sum(SweepRun.pairings_skipped), 0),
            )
        ).one()
        runs = SummaryMetricFamily(
            "tep_sweep_run_duration_seconds",
            "Committed sweep runs and their total duration.",
            count_value=int(count),
            sum_value=float(total),
        )
        yield runs
        skipped_total = CounterMetricFamily(
            "tep_sweep_pairings_skipped",
            "Pairings skipped by sweep runs, summed over runs (a pairing skipped by every run "
            "counts once per run).",
        )
        skipped_total.add_metric([], int(skipped))
        yield skipped_total

        last = session.execute(
            select(SweepRun.finished_at, duration, SweepRun.summary)
            .order_by(SweepRun.started_at.desc(), SweepRun.id.desc())
            .limit(RECENT_RUNS)
        ).first()
        last_duration = GaugeMetricFamily(
            "tep_last_sweep_duration_seconds", "Duration of the last committed sweep."
        )
        last_finished = GaugeMetricFamily(
            "tep_last_sweep_finished_timestamp_seconds",
            "When the last committed sweep finished (Unix time).",
        )
        now_skipped = GaugeMetricFamily(
            "tep_pairings_skipped",
            "Pairings the last sweep skipped (left untouched: fix their data), by reason.",
            labels=["reason"],
        )
        reasons = dict.fromkeys(
            (
                lifecycle.SKIP_UNKNOWN_ENDING_STATE,
                lifecycle.SKIP_MISSING_END_AT,
                lifecycle.SKIP_ACCOUNT_DELETED,
            ),
            0,
        )
        if last is not None:
            finished_at, seconds, summary = last
            last_duration.add_metric([], float(seconds))
            last_finished.add_metric([], finished_at.timestamp())
            for item in json.loads(summary).get("pairings_skipped", []):
                reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
            yield last_duration
            yield last_finished
        for reason, n in reasons.items():
            now_skipped.add_metric([reason], n)
        yield now_skipped

    def _lateness(self, session: Session) -> Metric:
        # Never below zero: an expiry is never early (`end_at <= as_of`), but a restore with
        # --end-at moves `end_at` past the change that expired the enrollment before.
        raw = seconds_between(session, Enrollment.end_at, StateChange.created_at)
        lateness = case((raw < 0, 0.0), else_=raw).label("s")
        late = (
            select(lateness)
            .join(Enrollment, Enrollment.id == StateChange.context_id)
            .where(
                StateChange.context_type == lifecycle.ENROLLMENT,
                StateChange.reason == lifecycle.REASON_EXPIRED,
                Enrollment.end_at.is_not(None),
            )
            .subquery()
        )
        columns = [func.count(), func.coalesce(func.sum(late.c.s), 0.0)] + [
            func.coalesce(func.sum(case((late.c.s <= bound, 1), else_=0)), 0)
            for bound in LATENESS_BUCKETS
        ]
        count, total, *cumulative = session.execute(select(*columns).select_from(late)).one()
        buckets = [(_bound(b), int(n)) for b, n in zip(LATENESS_BUCKETS, cumulative, strict=True)]
        buckets.append(("+Inf", int(count)))
        return HistogramMetricFamily(
            "tep_expiry_lateness_seconds",
            "Time from a temporary enrollment's end_at to the sweep changing it.",
            buckets=buckets,
            sum_value=float(total),
        )

    def _outbound(self, session: Session) -> Iterator[Metric]:
        undelivered = GaugeMetricFamily(
            "tep_webhook_events_undelivered",
            "Lifecycle events not yet accepted by a configured webhook receiver.",
            labels=["receiver"],
        )
        failing = GaugeMetricFamily(
            "tep_webhook_events_failing",
            "Undelivered events that have failed at least once (waiting for a retry).",
            labels=["receiver"],
        )
        # Named without userinfo or query string: scrapes are not for the receivers' secrets.
        labels = receiver_labels(self.webhook_urls)
        for url, counts in webhooks.undelivered_counts(session, self.webhook_urls).items():
            label = labels.get(url) or receiver_label(url)
            undelivered.add_metric([label], counts["undelivered"])
            failing.add_metric([label], counts["failing"])
        yield undelivered
        yield failing
        notices = GaugeMetricFamily(
            "tep_notices",
            "Pre-expiry and access-ended notices, by kind and state.",
            labels=["kind", "state"],
        )
        rows = session.execute(
            select(Notice.kind, Notice.workflow_state, func.count()).group_by(
                Notice.kind, Notice.workflow_state
            )
        )
        for kind, state, n in rows:
            notices.add_metric([kind, state], n)
        yield notices


def _bound(value: float) -> str:
    return str(float(value))  # as prometheus_client writes `le` (1 -> "1.0")


def render_metrics(
    factory: sessionmaker[Session], webhook_urls: Sequence[str] = ()
) -> tuple[bytes, str]:
    """The metrics in Prometheus text format and its content type (for the API's `/metrics`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LifecycleCollector(factory, webhook_urls))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve_metrics(
    port: int,
    factory: sessionmaker[Session],
    webhook_urls: Sequence[str] = (),
    addr: str = "0.0.0.0",
) -> Any:
    """Serve the metrics on `port` from a background thread (the worker's endpoint)."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LifecycleCollector(factory, webhook_urls))
    server = start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on port %s", port)
    return server
