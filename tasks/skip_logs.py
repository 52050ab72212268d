"""Which skipped pairings a sweep logs: those that are new, and once a day those that last.

A pairing with bad data (an unknown ending state, an undated live enrollment, a deleted root
account) is skipped by every sweep, and every run's summary lists it until someone fixes the
data. Logged at ERROR by every sweep too, it was ~1,440 identical lines a day (one per tick) for
each such pairing. So a sweep logs it when it first appears and again once a day while it lasts.
The memory of when each was last logged is tep's table `temporary_enrollment_skip_logs`
(:class:`models.tep.SkipLog`): shared by every worker, kept across restarts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.tep import SkipLog

# A pairing still skipped is logged again by a run this far from when it was last logged.
RELOG_INTERVAL = dt.timedelta(days=1)
# Rows per statement: 4 parameters each, well inside every driver's limit on parameters.
CHUNK_SIZE = 1_000

Key = tuple[int, str]  # (pairing id, reason)
T = TypeVar("T")


class Skipped(Protocol):
    """A skipped pairing as the sweep reports it (tasks/lifecycle.py's SkippedPairing)."""

    @property
    def pairing_id(self) -> int: ...
    @property
    def root_account_id(self) -> int: ...
    @property
    def reason(self) -> str: ...


def is_logged_lately(last_logged_at: dt.datetime, as_of: dt.datetime) -> bool:
    """Whether a run at `as_of` finds the pairing logged lately enough to stay quiet. Either way
    round: a run ahead of time (`--as-of` next week) must not silence today's runs for a week."""
    return abs(as_of - last_logged_at) < RELOG_INTERVAL


def _not_logged_lately(as_of: dt.datetime) -> ColumnElement[bool]:
    """:func:`is_logged_lately`, negated, as SQL."""
    last = SkipLog.last_logged_at
    return or_(last <= as_of - RELOG_INTERVAL, last >= as_of + RELOG_INTERVAL)


def to_log(
    session: Session,
    skipped: Iterable[Skipped],
    *,
    as_of: dt.datetime,
    account_id: int | None,
) -> set[Key]:
    """The (pairing id, reason) of the `skipped` pairings that a run at `as_of` logs, noted as
    logged at `as_of` in the caller's transaction (log them once it has committed).

    For a run that went through its whole scope (every root account, or `account_id`'s): the
    rows of that scope's pairings it did not skip are removed, so that a pairing fixed and
    broken again is new again.

    One is logged when it has no row, or when its row was logged a day or more from `as_of`.
    The rows are taken by an upsert that checks that again under the row's lock (PostgreSQL) or
    the write lock (SQLite), so of several workers sweeping at once only one logs a pairing.
    """
    current = {(s.pairing_id, s.reason): s.root_account_id for s in skipped}
    scope = [] if account_id is None else [SkipLog.root_account_id == account_id]
    found = select(SkipLog.temporary_enrollment_pairing_id, SkipLog.reason, SkipLog.last_logged_at)
    logged_at = {(pid, reason): last for pid, reason, last in session.execute(found.where(*scope))}

    gone = sorted(set(logged_at) - set(current))
    for reason in sorted({reason for _, reason in gone}):
        ids = [pid for pid, of in gone if of == reason]
        for chunk in _chunks(ids):
            session.execute(
                delete(SkipLog).where(
                    SkipLog.reason == reason, SkipLog.temporary_enrollment_pairing_id.in_(chunk)
                )
            )

    # Only what looks due is written (an unchanged row is not rewritten every tick); the upsert
    # decides. In key order, so that two runs lock their rows in the same order.
    due = sorted(
        key
        for key in current
        if key not in logged_at or not is_logged_lately(logged_at[key], as_of)
    )
    taken: set[Key] = set()
    for keys in _chunks(due):
        rows = [
            {
                "temporary_enrollment_pairing_id": pid,
                "reason": reason,
                "root_account_id": current[pid, reason],
                "last_logged_at": as_of,
            }
            for pid, reason in keys
        ]
        stmt = _insert(session).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[SkipLog.temporary_enrollment_pairing_id, SkipLog.reason],
            set_={
                "last_logged_at": stmt.excluded.last_logged_at,
                "root_account_id": stmt.excluded.root_account_id,
            },
            where=_not_logged_lately(as_of),
        ).returning(SkipLog.temporary_enrollment_pairing_id, SkipLog.reason)
        taken.update((pid, reason) for pid, reason in session.execute(stmt))
    return taken


def _insert(session: Session) -> Any:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(SkipLog)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), CHUNK_SIZE):
        yield items[start : start + CHUNK_SIZE]
