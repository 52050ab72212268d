"""Prometheus metrics, read from the database on each scrape.

The numbers live in the database, so every process that serves them (the worker's endpoint, the
API's `/metrics`) shows the same values, they survive restarts, and there are no in-process
counters to lose or to double count across worker processes.

Cost: the counters (changes by state, pairings ended and deleted, runs, skips, the lateness
histogram) are read from the totals kept as changes commit (tasks/metric_totals.py), a few rows
whatever the history; the gauges read the last run (one row by its index), the sweep's backlog,
the webhook outbox above each receiver's low-water mark and the notices. A scrape never
aggregates the audit table (bench/metrics.py measures it at 10,000,000 audit rows).
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
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models import ENDING_ENROLLMENT_STATES, Notice, SweepRun, utcnow
from tasks import lifecycle, metric_totals, webhooks
from tasks.metric_totals import Key
from worker.notify_settings import receiver_label, receiver_labels

log = logging.getLogger("tep.metrics")

# The lateness histogram's bounds, kept with the totals (tasks/metric_totals.py).
LATENESS_BUCKETS = metric_totals.LATENESS_BUCKETS
# The last runs whose skipped pairings are reported as currently skipped.
RECENT_RUNS = 1


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
        totals = metric_totals.read(session)
        yield from self._changes(totals)
        yield from self._runs(session, totals)
        yield self._lateness(totals)
        due = GaugeMetricFamily(
            "tep_due_enrollments",
            "Temporary enrollments due now and not yet expired (the sweep's backlog).",
        )
        due.add_metric([], lifecycle.count_due(session, utcnow()))
        yield due
        yield from self._outbound(session)

    def _changes(self, totals: dict[Key, int]) -> Iterator[Metric]:
        changed = CounterMetricFamily(
            "tep_enrollments_changed",
            "Temporary enrollments moved to an ending state, by that state.",
            labels=["ending_state"],
        )
        for state in ENDING_ENROLLMENT_STATES:
            key = metric_totals.state_change_key(lifecycle.ENROLLMENT, state)
            changed.add_metric([state], totals.get(key, 0))
        yield changed

        def pairings(to_state: str) -> int:
            return totals.get(metric_totals.state_change_key(lifecycle.PAIRING, to_state), 0)

        ended = CounterMetricFamily(
            "tep_pairings_ended", "Pairings that ended (all their enrollments expired)."
        )
        ended.add_metric([], pairings("ended"))
        yield ended
        deleted = CounterMetricFamily(
            "tep_pairings_deleted", "Pairings deleted (ended early through the API)."
        )
        deleted.add_metric([], pairings("deleted"))
        yield deleted

    def _runs(self, session: Session, totals: dict[Key, int]) -> Iterator[Metric]:
        def total(name: str) -> int:
            return totals.get((name, metric_totals.NO_LABEL), 0)

        runs = SummaryMetricFamily(
            "tep_sweep_run_duration_seconds",
            "Committed sweep runs and their total duration.",
            count_value=total(metric_totals.RUNS),
            sum_value=total(metric_totals.RUN_MICROSECONDS) / metric_totals.MICROSECONDS_PER_SECOND,
        )
        yield runs
        skipped_total = CounterMetricFamily(
            "tep_sweep_pairings_skipped",
            "Pairings skipped by sweep runs, summed over runs (a pairing skipped by every run "
            "counts once per run).",
        )
        skipped_total.add_metric([], total(metric_totals.RUNS_SKIPPED))
        yield skipped_total

        last = session.execute(
            select(SweepRun.started_at, SweepRun.finished_at, SweepRun.summary)
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
            started_at, finished_at, summary = last
            last_duration.add_metric([], (finished_at - started_at).total_seconds())
            last_finished.add_metric([], finished_at.timestamp())
            for item in json.loads(summary).get("pairings_skipped", []):
                reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
            yield last_duration
            yield last_finished
        for reason, n in reasons.items():
            now_skipped.add_metric([reason], n)
        yield now_skipped

    def _lateness(self, totals: dict[Key, int]) -> Metric:
        # Kept per bucket; a bucket's `le` sample counts every bucket up to its bound (and an
        # expiry counted under a bound no longer in LATENESS_BUCKETS counts from the next one up).
        per_bucket = [
            (float(label), n)
            for (name, label), n in totals.items()
            if name == metric_totals.LATENESS
        ]
        buckets = [
            (metric_totals.bucket_label(b), sum(n for bound, n in per_bucket if bound <= b))
            for b in LATENESS_BUCKETS
        ]
        buckets.append((metric_totals.INF, sum(n for _, n in per_bucket)))
        milliseconds = totals.get((metric_totals.LATENESS_MILLISECONDS, metric_totals.NO_LABEL), 0)
        return HistogramMetricFamily(
            "tep_expiry_lateness_seconds",
            "Time from a temporary enrollment's end_at to the sweep changing it (never below "
            "zero: a run ahead of time is not late).",
            buckets=buckets,
            sum_value=milliseconds / metric_totals.MILLISECONDS_PER_SECOND,
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
