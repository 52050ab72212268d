"""A message that kills its worker every time is not redelivered forever (worker/redelivery.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.exceptions import WorkerLostError

from tests import services
from tests.processes import (
    PROJECT_ROOT,
    celery_worker,
    client_app,
    service_env,
    start_worker,
    wait_until,
)
from tests.reliability.redis_server import RedisServer

CRASHING_APP = "tests.reliability.crashing_app"
MAX_DELIVERIES = 2
# Short, so that Redis hands the unacknowledged message out again within seconds (a private Redis:
# kombu's unacked index is global to a Redis database, and other sessions use the shared one).
VISIBILITY_TIMEOUT_SECONDS = "8"  # hard time limit: 4 s, plenty for the empty sweep below


def deliveries(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_a_message_that_kills_its_worker_is_refused_after_the_cap(
    postgres_database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    queue = services.unique_queue()
    env = service_env(
        postgres_database_url,
        redis_server.url,
        queue,
        TEP_VISIBILITY_TIMEOUT_SECONDS=VISIBILITY_TIMEOUT_SECONDS,
        TEP_MAX_DELIVERIES=str(MAX_DELIVERIES),
        PYTHONPATH=str(PROJECT_ROOT),
    )
    marker = tmp_path / "deliveries"
    app = client_app(redis_server.url, queue)
    task_id = app.send_task("tests.kill_own_worker", args=[str(marker)]).id

    # A supervisor restarts the worker each time it dies; each time Redis redelivers.
    for delivery in range(1, MAX_DELIVERIES + 1):
        worker = start_worker(env, tmp_path, name=f"delivery-{delivery}", app=CRASHING_APP)
        worker.process.wait(timeout=120)  # the task killed it
        worker.stop()
        assert deliveries(marker) == delivery

    with celery_worker(env, tmp_path, name="survivor", app=CRASHING_APP) as survivor:
        survivor.wait_for_log(
            f"refused task tests.kill_own_worker[{task_id}]: delivered {MAX_DELIVERIES + 1} times",
            120,
        )
        client = redis_server.client()
        wait_until(
            lambda: client.hlen("unacked") == 0 and client.llen(queue) == 0,
            60,
            "the refused message to be gone from Redis",
            survivor,
        )
        # The worker lives on and serves other work.
        summary = app.send_task("tasks.expire_due_pairings").get(timeout=120)
        assert summary["enrollments_changed_total"] == 0
        log = survivor.log

    assert deliveries(marker) == MAX_DELIVERIES  # refused before it could run a third time
    assert f"ERROR/ForkPoolWorker-1] refused task tests.kill_own_worker[{task_id}]" in log
    assert not client.keys("tep:deliveries:*")  # the counts are cleaned up


def test_a_message_that_kills_its_pool_process_is_failed_not_redelivered(
    postgres_database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    queue = services.unique_queue()
    env = service_env(
        postgres_database_url,
        redis_server.url,
        queue,
        PYTHONPATH=str(PROJECT_ROOT),
    )
    marker = tmp_path / "deliveries"
    app = client_app(redis_server.url, queue)

    with celery_worker(env, tmp_path, app=CRASHING_APP) as worker:
        result = app.send_task("tests.kill_own_pool_process", args=[str(marker)])
        with pytest.raises(WorkerLostError):
            result.get(timeout=120)
        client = redis_server.client()
        # Acknowledged as failed (task_reject_on_worker_lost=False): nothing left to redeliver,
        # and the worker that lost a pool process keeps serving.
        wait_until(
            lambda: client.hlen("unacked") == 0 and client.llen(queue) == 0,
            60,
            "the failed message to be acknowledged",
            worker,
        )
        summary = app.send_task("tasks.expire_due_pairings").get(timeout=120)
        assert summary["enrollments_changed_total"] == 0
        assert worker.process.poll() is None

    assert deliveries(marker) == 1
