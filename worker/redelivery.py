"""A cap on redeliveries of late-acknowledged messages.

The sweep is `acks_late`: its message is acknowledged when it finishes, so a worker that dies
mid-sweep leaves it unacknowledged and Redis hands it out again after the visibility timeout (the
sweep is idempotent, so the redelivery finishes the job). A message that kills its whole worker
every time (a pathological row that exhausts memory, say) would be redelivered forever and take
the worker down with it each time. So every delivery of a late-acked message is counted in Redis,
before the task runs, under its task id and retry number (a retry is a new message with the same
id); past `TEP_MAX_DELIVERIES` the message is refused: logged at ERROR with its id and rejected
without requeueing, which removes it from the broker.

The count lives in the broker's Redis because only Redis redelivers: other transports (kombu's
SQLAlchemy transport, the embedded default) have no visibility timeout, and there is no cap to keep.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_ready

from worker.settings import get_settings

log = logging.getLogger("tep.delivery")

KEY_PREFIX = "tep:deliveries:"
# How long a delivery count is kept after the last delivery. Counts are deleted when the task
# returns; this only bounds what a message that never returns leaves behind. Far longer than
# `max_deliveries` visibility timeouts at any sane setting.
COUNT_TTL_SECONDS = 7 * 24 * 3600
REDIS_SCHEMES = ("redis://", "rediss://")


@lru_cache(maxsize=1)
def _counter_client() -> redis.Redis | None:
    url = get_settings().broker_url
    if not url.startswith(REDIS_SCHEMES):
        return None
    # redis-py's pool notices a fork and reconnects, so one client per process is safe.
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


def delivery_key(task_id: str, retries: int) -> str:
    return f"{KEY_PREFIX}{task_id}:{retries}"


def count_delivery(task_id: str, retries: int) -> int | None:
    """Count one more delivery of this message; the count so far, or None without Redis."""
    client = _counter_client()
    if client is None:
        return None
    key = delivery_key(task_id, retries)
    try:
        pipeline = client.pipeline()
        pipeline.incr(key)
        pipeline.expire(key, COUNT_TTL_SECONDS)
        count, _ = pipeline.execute()
    except redis.RedisError as error:
        # The message did arrive, so Redis was there a moment ago; run it rather than refuse a
        # message we cannot count.
        log.warning("could not count the delivery of task %s: %s", task_id, error)
        return None
    return int(count)


def forget_deliveries(task_id: str, retries: int) -> None:
    client = _counter_client()
    if client is None:
        return
    try:
        client.delete(delivery_key(task_id, retries))
    except redis.RedisError as error:  # the count expires by itself
        log.warning("could not forget the delivery count of task %s: %s", task_id, error)


class CappedDeliveryTask(Task):  # type: ignore[misc]  # Celery ships no type hints
    """The base of every task of the app (`task_cls`): refuses a late-acked message delivered
    more than `TEP_MAX_DELIVERIES` times."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if self.acks_late and request.id and not (request.called_directly or request.is_eager):
            count = count_delivery(request.id, request.retries or 0)
            limit = get_settings().max_deliveries
            if count is not None and count > limit:
                log.error(
                    "refused task %s[%s]: delivered %d times, more than TEP_MAX_DELIVERIES=%d "
                    "(its worker died each time); the message is dropped",
                    self.name,
                    request.id,
                    count,
                    limit,
                )
                forget_deliveries(request.id, request.retries or 0)
                raise Reject(f"delivered {count} times (cap {limit})", requeue=False)
        return super().__call__(*args, **kwargs)

    def after_return(self, status: str, retval: Any, task_id: str, *args: Any) -> None:
        # The message is acknowledged now (or was retried under a new retry number): it will
        # not come back, so its count is no longer needed.
        if self.acks_late and task_id:
            forget_deliveries(task_id, self.request.retries or 0)
        super().after_return(status, retval, task_id, *args)


@worker_ready.connect  # type: ignore[untyped-decorator]  # Celery ships no type hints
def warn_unless_noeviction(**_: Any) -> None:
    """Redis holds the queue, the unacknowledged messages and these counts: under memory
    pressure any eviction policy but `noeviction` would silently drop some of them (a refused
    write is loud; a lost sweep message or delivery count is not). Warn at start-up."""
    client = _counter_client()
    if client is None:
        return
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:  # managed Redis services often refuse CONFIG; nothing to check
        return
    if policy != "noeviction":
        log.warning(
            "the broker's Redis has maxmemory-policy %s: under memory pressure it may evict "
            "queued or unacknowledged task messages; set it to noeviction",
            policy,
        )
