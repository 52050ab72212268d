"""What `tep prune` removes: rows of tep's own tables that nothing needs any more.

Past the retention (TEP_RETENTION_DAYS, default :data:`DEFAULT_RETENTION_DAYS`):

* **Idle sweep runs**: runs that completed and changed nothing (lifecycle.is_idle_run), which
  are already one row per streak (lifecycle.record_run). The latest run is always kept: it is
  the last sweep that the metrics and `tep status` report. Runs that changed something or did
  not complete are history, and stay.
* **Webhook receivers no longer configured** (not in TEP_WEBHOOK_URLS, untouched for the
  retention), with their delivery rows: re-added later, such a receiver starts as a new one does,
  from the last hour's events. A configured receiver's delivered rows are forgotten by the
  delivery itself as its low-water mark passes them (tasks/webhooks.py); the ones above the mark
  are what keeps a delivered event from being sent again, so they stay.
* **Sent and skipped notices** about an end past the retention, of pairings that are no longer
  open (ended, deleted or gone). The notice row is what stops a second notice of its kind to a
  pairing, and only an open pairing can be planned one again (tasks/notices.py).

The audit log only when asked (`--audit-older-than DAYS`), and never a row that something could
still need:

* a restore: tasks/restore.py undoes a pairing's newest change not yet undone, and restoring
  again steps further back, through every change on the pairing's undo stack. So a pairing
  keeps every row from the first one of the oldest change on its stack; only what comes before
  (changes undone since, creations) may go, and only as a prefix of the pairing's trail, oldest
  first, so that what is left replays to the same stack. Rows of no pairing (an API conclude or
  delete of an enrollment outside pairings) are nothing a restore reads;
* a webhook receiver: the audit table is the outbox, and rows above a receiver's low-water mark
  are events it has not had yet (or the record that it has);
* the notices planner, which reads the last day of pairing ends (`notices.ENDED_LOOKBACK`):
  DAYS is at least :data:`MIN_AUDIT_DAYS`.

The metric totals do not depend on any of these rows (tasks/metric_totals.py). Everything is
deleted in batches of `batch_size` rows, each batch its own short transaction, so a prune never
holds locks a sweep waits for; a dry run counts the same rows and deletes none.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, select, true
from sqlalchemy.orm import Session, load_only, sessionmaker

from models import (
    NOTICE_SENT,
    NOTICE_SKIPPED,
    Notice,
    StateChange,
    SweepRun,
    TemporaryEnrollmentPairing,
    WebhookDelivery,
    WebhookReceiver,
    transaction,
)
from tasks import lifecycle, notices, restore, status, webhooks

# How long delivered and idle things are kept (TEP_RETENTION_DAYS): long enough to look back on a
# month of runs and mail, short enough that the tables stay the size of their live work.
DEFAULT_RETENTION_DAYS = 30
# At least the look-back of `tep status --check` (tasks/status.py): a failed run is cleared by a
# later good run, which must still be there while the failed one is looked at.
MIN_RETENTION_DAYS = math.ceil(status.FAILURE_LOOKBACK / dt.timedelta(days=1))
# The audit log's shortest retention: the notices planner reads the last day of pairing ends.
MIN_AUDIT_DAYS = math.ceil(notices.ENDED_LOOKBACK / dt.timedelta(days=1))
# Rows per delete transaction: each one is short, and a sweep waits for at most one.
BATCH_SIZE = 5_000
# Pairings whose audit trails are read at a time (the audit prune replays each trail).
PAIRINGS_PER_PAGE = 500


class RetentionError(lifecycle.LifecycleError):
    """A prune the rules refuse (the message is meant for people)."""


@dataclasses.dataclass
class PruneReport:
    """What a prune removed (or, in a dry run, would remove)."""

    dry_run: bool
    cutoff: dt.datetime
    idle_runs: int = 0
    webhook_receivers: int = 0
    webhook_deliveries: int = 0
    notices: int = 0
    # Only when the audit log was asked for (`audit_cutoff` set).
    audit_cutoff: dt.datetime | None = None
    audit_rows: int = 0
    # Rows older than the audit cutoff that stay: what a restore or a webhook receiver needs.
    audit_kept_for_restore: int = 0
    audit_kept_for_webhooks: int = 0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cutoff"] = lifecycle.iso(self.cutoff)
        data["audit_cutoff"] = lifecycle.iso(self.audit_cutoff) if self.audit_cutoff else None
        if self.audit_cutoff is None:
            for key in ("audit_rows", "audit_kept_for_restore", "audit_kept_for_webhooks"):
                data[key] = None
        return data


def retention_cutoff(now: dt.datetime, days: int) -> dt.datetime:
    """The moment before which rows kept for `days` may go."""
    return now - dt.timedelta(days=days)


def prune(
    factory: sessionmaker[Session],
    *,
    now: dt.datetime,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    webhook_urls: Collection[str] = (),
    audit_older_than_days: int | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
) -> PruneReport:
    """Remove what is safe to remove (module doc); `webhook_urls` are the configured receivers."""
    if retention_days < MIN_RETENTION_DAYS:
        raise RetentionError(
            f"a retention of {retention_days} day(s) is too short: keep at least "
            f"{MIN_RETENTION_DAYS} (`tep status --check` looks that far back)"
        )
    if audit_older_than_days is not None and audit_older_than_days < MIN_AUDIT_DAYS:
        raise RetentionError(
            f"--audit-older-than {audit_older_than_days}: the audit log is kept at least "
            f"{MIN_AUDIT_DAYS} day(s) (the notices read the last day's pairing ends)"
        )
    now = lifecycle.require_aware(now)
    pruner = _Pruner(factory, dry_run, batch_size)
    report = PruneReport(dry_run=dry_run, cutoff=retention_cutoff(now, retention_days))
    report.idle_runs = pruner.idle_runs(report.cutoff)
    report.webhook_receivers, report.webhook_deliveries = pruner.webhook_receivers(
        report.cutoff, webhook_urls
    )
    report.notices = pruner.notices(report.cutoff)
    if audit_older_than_days is not None:
        report.audit_cutoff = retention_cutoff(now, audit_older_than_days)
        pruner.audit(report.audit_cutoff, report)
    return report


def removable_prefix(
    trail: Sequence[StateChange], cutoff: dt.datetime, low_water: int | None
) -> int:
    """How many of a pairing's audit rows (its whole trail, in id order) may go, oldest first:
    those before the first row a restore could still need (the first of the oldest change on
    the pairing's undo stack), the first one not older than `cutoff`, and the first one above
    `low_water` (a webhook receiver's mark; None when there is no receiver)."""
    stack = restore.undo_stack(trail)
    needed_from = stack[0][0].id if stack else None
    n = 0
    for row in trail:
        if (
            (needed_from is not None and row.id >= needed_from)
            or row.created_at >= cutoff
            or (low_water is not None and row.id > low_water)
        ):
            break
        n += 1
    return n


class _Pruner:
    """The batches of one prune: read with a reader (no SQLite write lock), delete in short
    transactions, or in a dry run only count."""

    def __init__(self, factory: sessionmaker[Session], dry_run: bool, batch_size: int) -> None:
        self.factory = factory
        self.read = webhooks.reader(factory)
        self.dry_run = dry_run
        self.batch_size = batch_size

    def reading(self) -> AbstractContextManager[Session]:
        return transaction(self.read, commit=False)

    def writing(self) -> AbstractContextManager[Session]:
        return transaction(self.read if self.dry_run else self.factory, commit=not self.dry_run)

    def idle_runs(self, cutoff: dt.datetime) -> int:
        """Idle runs that finished before `cutoff`, the latest run of all excepted."""
        removed = 0
        after = ""
        while True:
            with self.writing() as session:
                latest = session.scalar(
                    select(SweepRun.id)
                    .order_by(SweepRun.started_at.desc(), SweepRun.id.desc())
                    .limit(1)
                )
                if latest is None:
                    return removed
                # Idle runs changed nothing; whether one also completed is in its summary.
                page = session.execute(
                    select(SweepRun.id, SweepRun.summary)
                    .where(
                        SweepRun.finished_at < cutoff,
                        SweepRun.enrollments_changed == 0,
                        SweepRun.pairings_ended == 0,
                        SweepRun.id != latest,
                        SweepRun.id > after,
                    )
                    .order_by(SweepRun.id)
                    .limit(self.batch_size)
                ).all()
                if not page:
                    return removed
                after = page[-1].id
                ids = [id_ for id_, summary in page if lifecycle.is_idle_run(json.loads(summary))]
                if ids and not self.dry_run:
                    session.execute(delete(SweepRun).where(SweepRun.id.in_(ids)))
                removed += len(ids)

    def webhook_receivers(
        self, cutoff: dt.datetime, configured: Collection[str]
    ) -> tuple[int, int]:
        """Receivers not in `configured` and untouched since `cutoff`, with their delivery rows
        (a configured receiver's own delivery forgets its settled rows)."""
        stale = WebhookReceiver.updated_at < cutoff
        if configured:
            stale = and_(stale, WebhookReceiver.url.not_in(list(configured)))
        with self.reading() as session:
            receiver_ids = list(session.scalars(select(WebhookReceiver.id).where(stale)))
        receivers = deliveries = 0
        for receiver_id in receiver_ids:
            mine = WebhookDelivery.receiver_id == receiver_id
            deliveries += self._delete_in_batches(
                WebhookDelivery, WebhookDelivery.state_change_id, mine, extra=[mine]
            )
            if self.dry_run:
                receivers += 1
                continue
            with self.writing() as session:
                # Untouched still: a receiver configured again meanwhile is in use, and stays.
                receivers += (
                    session.connection()
                    .execute(
                        delete(WebhookReceiver).where(WebhookReceiver.id == receiver_id, stale)
                    )
                    .rowcount
                )
        return receivers, deliveries

    def notices(self, cutoff: dt.datetime) -> int:
        """Sent and skipped notices about an end before `cutoff`, of pairings no longer open."""
        pairing = TemporaryEnrollmentPairing
        still_open = exists().where(
            pairing.id == Notice.temporary_enrollment_pairing_id, lifecycle.open_pairing()
        )
        done = and_(
            Notice.workflow_state.in_((NOTICE_SENT, NOTICE_SKIPPED)),
            Notice.updated_at < cutoff,
            Notice.ends_at < cutoff,
            ~still_open,
        )
        return self._delete_in_batches(Notice, Notice.id, done)

    def audit(self, cutoff: dt.datetime, report: PruneReport) -> None:
        """Audit rows older than `cutoff` that no restore, receiver or notice needs."""
        with self.reading() as session:
            low_water = session.scalar(select(func.min(WebhookReceiver.low_water_state_change_id)))
        old = StateChange.created_at < cutoff
        # No receiver: no event is waiting for one.
        delivered = StateChange.id <= low_water if low_water is not None else true()
        outside_pairings = StateChange.temporary_enrollment_pairing_id.is_(None)
        report.audit_rows += self._delete_in_batches(
            StateChange, StateChange.id, and_(outside_pairings, old, delivered)
        )
        with self.reading() as session:
            report.audit_kept_for_webhooks += (
                session.scalar(
                    select(func.count())
                    .select_from(StateChange)
                    .where(outside_pairings, old, ~delivered)
                )
                or 0
            )
        for trails in self._pairing_trails(cutoff):
            ids: list[int] = []
            for trail in trails:
                n = removable_prefix(trail, cutoff, low_water)
                ids.extend(row.id for row in trail[:n])
                for row in trail[n:]:
                    if row.created_at < cutoff:
                        if low_water is not None and row.id > low_water:
                            report.audit_kept_for_webhooks += 1
                        else:
                            report.audit_kept_for_restore += 1
            for start in range(0, len(ids), self.batch_size):
                chunk = ids[start : start + self.batch_size]
                with self.writing() as session:
                    if not self.dry_run:
                        session.execute(delete(StateChange).where(StateChange.id.in_(chunk)))
                report.audit_rows += len(chunk)

    def _pairing_trails(self, cutoff: dt.datetime) -> Iterator[list[list[StateChange]]]:
        """The whole audit trails (id order) of the pairings with rows older than `cutoff`, a
        page of pairings at a time, by the pairing index."""
        pairing_id = StateChange.temporary_enrollment_pairing_id
        after = 0
        while True:
            with self.reading() as session:
                found = session.scalars(
                    select(pairing_id)
                    .where(pairing_id > after, StateChange.created_at < cutoff)
                    .group_by(pairing_id)
                    .order_by(pairing_id)
                    .limit(PAIRINGS_PER_PAGE)
                )
                page = [id_ for id_ in found if id_ is not None]  # never None: `> after`
                if not page:
                    return
                rows = session.scalars(
                    select(StateChange)
                    .options(
                        load_only(
                            StateChange.id,
                            StateChange.temporary_enrollment_pairing_id,
                            StateChange.run_id,
                            StateChange.reason,
                            StateChange.created_at,
                        )
                    )
                    .where(pairing_id.in_(page))
                    .order_by(pairing_id, StateChange.id)
                ).all()
                session.expunge_all()  # read on after the transaction ends, not expired by it
            trails: dict[int | None, list[StateChange]] = {}
            for row in rows:
                trails.setdefault(row.temporary_enrollment_pairing_id, []).append(row)
            yield list(trails.values())
            after = page[-1]

    def _delete_in_batches(
        self,
        table: type[Any],
        key: Any,
        where: ColumnElement[bool],
        extra: Sequence[ColumnElement[bool]] = (),
    ) -> int:
        """Delete the rows of `table` that match `where`, `batch_size` of them (by `key`) per
        transaction; in a dry run, count them. `extra` narrows the DELETE itself (a composite
        key: the batch's keys are then unique within it)."""
        if self.dry_run:
            with self.reading() as session:
                count = session.scalar(select(func.count()).select_from(table).where(where))
                return int(count or 0)
        removed = 0
        while True:
            batch = select(key).where(where).order_by(key).limit(self.batch_size)
            with self.writing() as session:
                done = int(
                    session.connection()
                    .execute(delete(table).where(key.in_(batch), *extra))
                    .rowcount
                )
            removed += done
            if done < self.batch_size:
                return removed
