"""The worker refuses a task message it cannot run, instead of crashing on it.

Celery's consumer unpacks a protocol 2 message in the worker's main process before any task
code runs (celery/worker/request.py: `args, kwargs, embed = payload`): a body that is a string,
`null` or a list of the wrong length, or a `task` header that is not a name, raises there, outside
every handler, and the whole worker exits. The message is still unacknowledged, so Redis hands it
out again on restart and it crashes the worker again: a crash loop that no task-level guard (the
redelivery cap of worker/redelivery.py) ever sees.

So the worker's consumer (`worker_consumer`) checks each message's headers, its body's shape
(`[args, kwargs, embed]`) and whether its arguments fit the task's signature before Celery reads
it. A message that fails is logged at ERROR with its id, rejected without requeueing (which
acknowledges it: it is removed from the broker, never redelivered), and its result is stored as
failed so that a caller waiting on it is told. The worker carries on with the next message.
The values of the arguments are the task's own business (tasks/arguments.py).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

from celery import signals
from celery.exceptions import InvalidTaskError
from celery.utils.objects import Bunch
from celery.worker.consumer import Consumer

from tasks.arguments import shown

log = logging.getLogger("tep.messages")

# What Celery reads from `embed`, the body's third item; its keys become attributes of the task's
# request, so any other key (`is_eager`, `retries`) would overwrite what the worker set.
EMBED_LISTS = ("callbacks", "errbacks", "chain")
EMBED_MAPPINGS = ("chord",)
# A task id is a key in the result backend and in worker/redelivery.py's counts (Celery's are
# 36-character UUIDs); it and the task's name are written in log lines.
MAX_LABEL_LENGTH = 255


def describe(value: Any) -> str:
    """What a JSON value is, for a message that says why it does not fit (never all of it)."""
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    kind = {bool: "a boolean", str: "a string"}.get(type(value), "a number")
    return f"{kind} ({shown(value)})"


def is_label(value: Any) -> bool:
    """Whether a header can be written as is in a log line (a line break would forge one)."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_LABEL_LENGTH and value.isprintable()


def header_problem(headers: Any) -> str | None:
    """Why these headers are not a protocol 2 task message's, or None."""
    if not isinstance(headers, dict) or "task" not in headers:
        # Protocol 1 (the task in the body) is what Celery 3 sent; nothing sends it to tep.
        return "it has no `task` header (not a Celery protocol 2 task message)"
    name, task_id = headers["task"], headers.get("id")
    if not is_label(name):
        return f"its `task` header is {describe(name)}, not a task name"
    if not is_label(task_id):
        return f"its `id` header is {describe(task_id)}, not a task id"
    retries = headers.get("retries")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        return f"its `retries` header is {describe(retries)}, not a count"
    timelimit = headers.get("timelimit")
    if timelimit is not None and not (
        isinstance(timelimit, list | tuple)
        and len(timelimit) == 2
        and all(
            limit is None or (isinstance(limit, int | float) and not isinstance(limit, bool))
            for limit in timelimit
        )
    ):
        return f"its `timelimit` header is {describe(timelimit)}, not [hard, soft]"
    return None


def body_problem(body: Any, run: Any) -> str | None:
    """Why this decoded body is not a call of `run` (the task's function), or None."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        return f"its body is {describe(body)}, not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return f"its args are {describe(args)}, not a list"
    if not isinstance(kwargs, dict):
        return f"its kwargs are {describe(kwargs)}, not an object"
    if embed is not None:
        if not isinstance(embed, dict):
            return f"its embed is {describe(embed)}, not an object"
        unknown = sorted(set(embed) - {*EMBED_LISTS, *EMBED_MAPPINGS})
        if unknown:
            return f"its embed has unknown keys {shown(unknown)}"
        for key in EMBED_LISTS:
            value = embed.get(key)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(item, dict) for item in value)
            ):
                return f"its embed's {key} is {describe(value)}, not a list of signatures"
        for key in EMBED_MAPPINGS:
            value = embed.get(key)
            if value is not None and not isinstance(value, dict):
                return f"its embed's {key} is {describe(value)}, not a signature"
    try:
        # `run` is the task's function (Celery's autoretry wrapper keeps its signature).
        inspect.signature(run).bind(*args, **kwargs)
    except TypeError as error:
        return f"its arguments do not fit the task: {shown(str(error))}"
    return None


def message_problem(tasks: Mapping[str, Any], message: Any) -> str | None:
    """Why the worker cannot run this message, or None when Celery should have it.

    An unknown task, a body that cannot be decoded or a serializer that is not accepted are left
    to Celery, which already logs, discards and (for an unknown task) fails them."""
    problem = header_problem(message.headers)
    if problem is not None:
        return problem
    task = tasks.get(message.headers["task"])
    if task is None:
        return None
    try:
        body = message.decode()
    except Exception:  # Celery's own handling: a decode error is logged and acknowledged
        return None
    return body_problem(body, task.run)


class CheckingConsumer(Consumer):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's consumer, with :func:`message_problem` in front of its task handler."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        on_task_received = super().create_task_handler(*args, **kwargs)

        def on_checked_task_received(message: Any) -> Any:
            problem = message_problem(self.app.tasks, message)
            if problem is None:
                return on_task_received(message)
            self.refuse(message, problem)
            return None

        return on_checked_task_received

    def refuse(self, message: Any, problem: str) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id, name = headers.get("id"), headers.get("task")
        log.error(
            "refused message %s (task %s): %s; it is dropped",
            task_id if is_label(task_id) else shown(task_id),
            name if is_label(name) else shown(name),
            problem,
        )
        message.reject_log_error(log, self.connection_errors)  # not requeued: acknowledged
        signals.task_rejected.send(sender=self, message=message, exc=None)
        # Only a message whose headers are sound names a result to fail (its body is at fault).
        if header_problem(headers) is None and name in self.app.tasks:
            self.fail_result(message, str(task_id), str(name), problem)

    def fail_result(self, message: Any, task_id: str, name: str, problem: str) -> None:
        """Store the refusal as the task's result, as Celery does for an unknown task."""
        if message.headers.get("ignore_result"):
            return
        properties = message.properties if isinstance(message.properties, dict) else {}
        request = Bunch(
            task=name,
            chord=None,
            errbacks=None,
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to"),
        )
        try:
            self.app.backend.mark_as_failure(
                task_id, InvalidTaskError(f"refused message: {problem}"), request=request
            )
        except Exception as error:  # the message is refused either way
            log.warning("could not store the refusal of task %s: %s", task_id, error)
