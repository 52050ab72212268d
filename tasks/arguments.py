"""How a task's or a command's arguments are read: one rule per kind of value.

A Celery message's arguments are JSON written by whoever can reach the broker (beat, a timer, an
operator's `celery call`, anything with write access to Redis); the CLI's are typed by an
operator. Both are read here, before any work: a value that does not fit is an
:class:`ArgumentError` naming the argument, never a database error or a truthy `"false"`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from models import MAX_ID
from tasks.lifecycle import LifecycleError

# How much of a value an error message repeats: enough to recognise it, never a megabyte of it.
SHOWN_LIMIT = 100


class ArgumentError(LifecycleError):
    """An argument that does not fit; the message names it, in one line."""


def shown(value: Any) -> str:
    """A value as an error message repeats it: its repr, cut to a short prefix."""
    if isinstance(value, str) and len(value) > SHOWN_LIMIT:
        value = value[: SHOWN_LIMIT + 1]  # the repr of a prefix, never of the whole value
    text = repr(value)
    return text if len(text) <= SHOWN_LIMIT else text[:SHOWN_LIMIT] + "…"


def parse_moment(value: Any, name: str) -> dt.datetime:
    """An ISO 8601 date-time, in UTC; one without an offset is read as UTC, as Canvas reads
    them. A moment that exists in no calendar once in UTC (year 9999 west of Greenwich) is out
    of range."""
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be an ISO 8601 date-time string, not {shown(value)}")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ArgumentError(
            f"{name} {shown(value)} is not an ISO 8601 date-time (e.g. 2026-11-26T14:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        raise ArgumentError(f"{name} {shown(value)} is out of range") from None


def optional_moment(value: Any, name: str) -> dt.datetime | None:
    """:func:`parse_moment`, or None (the argument's default: now, or no moment)."""
    return None if value is None else parse_moment(value, name)


def parse_id(value: Any, name: str) -> int:
    """An id: a JSON integer (not a boolean, not a string of digits) that fits a bigint."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"{name} must be an integer id, not {shown(value)}")
    if not 1 <= value <= MAX_ID:
        raise ArgumentError(f"{name} must be an id between 1 and {MAX_ID}, not {shown(value)}")
    return value


def optional_id(value: Any, name: str) -> int | None:
    return None if value is None else parse_id(value, name)


def parse_flag(value: Any, name: str) -> bool:
    """A true boolean: `"false"`, `0` or `"no"` are refused, not read by their truthiness."""
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be true or false (a JSON boolean), not {shown(value)}")
    return value


def parse_text(value: Any, name: str, max_length: int) -> str:
    """A short line of text, stored in a column of `max_length` characters and shown in logs
    and `tep status` (so no control character: a line break would forge a log line)."""
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be a string, not {shown(value)}")
    if not 1 <= len(value) <= max_length or not value.isprintable():
        raise ArgumentError(
            f"{name} must be 1 to {max_length} printable characters, not {shown(value)}"
        )
    return value
