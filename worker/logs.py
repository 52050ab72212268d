"""The log's form (TEP_LOG_FORMAT): `text`, the usual lines, or `json`, one JSON object per line.

A JSON line holds `timestamp` (ISO 8601, UTC), `level`, `logger`, `process` and `message`; the
task's `task_id` and `task_name` while a Celery task runs (and on Celery's own lines about one);
whatever the call passed as `extra` (the sweep's `run_id` and counts, a skipped pairing's id and
reason); and an exception's traceback as one string, `exception`, so that a record never spans
lines.

Only the standard library at import: `tep` configures its log before anything heavier loads.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Celery's TaskFormatter sets these on a record when a task logger formats it; its trace and
# its consumer pass their lines' context as `data` (task id, name, args, kwargs, return value):
# the id and name are kept as `task_id`/`task_name`, the rest is what the message says already.
_CELERY_ATTRIBUTES = frozenset({"task_id", "task_name", "data"})
_UNKNOWN_TASK = "???"  # what TaskFormatter sets outside a task


def _timestamp(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _task_fields(record: logging.LogRecord) -> dict[str, str]:
    """The task the record is about: Celery's own line about it, else the running task."""
    data = getattr(record, "data", None)
    if isinstance(data, dict) and data.get("id"):
        return {"task_id": str(data["id"]), "task_name": str(data.get("name", ""))}
    task_id = getattr(record, "task_id", None)
    if task_id and task_id != _UNKNOWN_TASK:
        return {"task_id": str(task_id), "task_name": str(getattr(record, "task_name", ""))}
    # Celery's own module, only if this process loaded it: `tep` may log without Celery.
    state = sys.modules.get("celery._state")
    task = state.get_current_task() if state is not None else None
    task_id = getattr(getattr(task, "request", None), "id", None)
    if task is None or not task_id:
        return {}
    return {"task_id": str(task_id), "task_name": str(task.name)}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        entry.update(_task_fields(record))
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in _CELERY_ATTRIBUTES:
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON has no type for (a datetime, a UUID) is written as text.
        return json.dumps(entry, default=str)


def use_json(loggers: Iterable[logging.Logger]) -> None:
    """Give every handler of these loggers the JSON formatter (their destination, level and
    filters stay as whoever set them up chose)."""
    formatter = JsonFormatter()
    for logger in loggers:
        for handler in logger.handlers:
            handler.setFormatter(formatter)


def setup_cli() -> None:
    """`tep`'s log, on stderr. Text: what Python prints without any setup (warnings and errors,
    the message alone, beside the command's own output). JSON: every record from INFO up, so
    that a scheduled `tep sweep` leaves the same line about its run as the worker's sweeps do.

    The format is a setting, and reading the settings costs start-up time that `tep --help`
    must not pay (and fails on a bad one, which the command itself reports): it is read when
    the first record comes, by when the command has read them."""
    root = logging.getLogger()
    if any(isinstance(handler, CliHandler) for handler in root.handlers):
        return  # set up already (main() run twice in one process)
    root.addHandler(CliHandler())
    root.setLevel(logging.INFO)


class CliHandler(logging.StreamHandler[TextIO]):
    """:func:`setup_cli`'s handler: chooses text or JSON (and its level) at its first record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._chosen = False

    def handle(self, record: logging.LogRecord) -> bool:
        if not self._chosen:
            self._chosen = True
            if _configured_format() == "json":
                self.setFormatter(JsonFormatter())
            else:
                self.setLevel(logging.WARNING)
        if record.levelno < self.level:
            return False
        return bool(super().handle(record))


def _configured_format() -> str:
    from worker.settings import SettingsError, get_settings

    try:
        return get_settings().log_format
    except SettingsError:
        return "text"  # the command reports the bad setting, in one line


class ShortSuccessLine(logging.Filter):
    """Celery's "Task ... succeeded in ...s: <result>" line, without the result, for tasks that
    log what they did themselves: the sweep's summary is its own line (tasks/lifecycle.py), and
    the whole summary again on Celery's line made every sweep two lines of the same numbers."""

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        from celery.app import trace

        self._success = trace.LOG_SUCCESS
        self._task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if (
            record.msg == self._success
            and isinstance(data, dict)
            and data.get("name") in self._task_names
        ):
            record.msg = SHORT_SUCCESS
        return True


SHORT_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
