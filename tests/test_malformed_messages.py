"""A real worker on Redis and PostgreSQL, given messages it must refuse: malformed bodies, bad
arguments, and a database that fails for reasons a retry would not mend."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import InvalidTaskError
from sqlalchemy.orm import Session

from tests import factories as f
from tests import services
from tests.processes import celery_worker, client_app, service_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

SWEEP = "tasks.expire_due_pairings"
END = "tasks.end_pairing"
# kombu's Redis transport keeps the unacknowledged messages of every queue in this hash.
UNACKED_KEY = "unacked"


@pytest.fixture
def env(postgres_database_url: str, redis_url: str) -> dict[str, str]:
    return service_env(postgres_database_url, redis_url, services.unique_queue())


def publish_raw(app: Any, queue: str, body: Any, headers: dict[str, Any]) -> None:
    """A message as anything with write access to the broker could send it: `body` is JSON
    in a Celery-like envelope, whatever its shape."""
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            json.dumps(body),
            routing_key=queue,
            exchange="",
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
        )


def headers_for(task: str) -> dict[str, Any]:
    return {"lang": "py", "task": task, "argsrepr": "", "kwargsrepr": ""}


def test_a_malformed_message_is_dropped_and_the_worker_runs_the_next(
    env: dict[str, str], pg_session: Session, tmp_path: Path
) -> None:
    broker, queue = env["TEP_BROKER_URL"], env["TEP_QUEUE"]
    messages: list[tuple[Any, dict[str, Any]]] = [
        ("a string", headers_for(SWEEP)),
        (None, headers_for(SWEEP)),
        ([[], {}], headers_for(SWEEP)),  # a list of the wrong length
        ([[], {}, {}, {}], headers_for(SWEEP)),
        ([[], ["dry_run"], {}], headers_for(SWEEP)),  # kwargs not an object
        ([[], {"bogus": True}, {}], headers_for(SWEEP)),  # an argument it does not take
        ([[], {}, {}], headers_for(END)),  # the pairing_id it needs is missing
        ([[], {}, {"is_eager": True}], headers_for(SWEEP)),  # would overwrite the request
        ([[], {}, {}], {**headers_for(SWEEP), "task": ["x"]}),  # not a task name
    ]
    bad = {str(uuid.uuid4()): message for message in messages}

    app = client_app(broker, queue)
    with celery_worker(env, tmp_path) as worker:
        for task_id, (body, headers) in bad.items():
            publish_raw(app, queue, body, {**headers, "id": task_id})
        # Queued after the bad ones (one worker process, one message at a time, in order).
        good = app.send_task(SWEEP, kwargs={"dry_run": True, "trigger": "test"})
        summary = good.get(timeout=60)
        assert worker.process.poll() is None  # still running
        refused = app.AsyncResult(next(iter(bad)))
        wait_until(lambda: refused.state == "FAILURE", 30, "the refusal stored as a result")

    assert summary["dry_run"] is True and summary["trigger"] == "test"
    errors = [line for line in worker.log.splitlines() if "ERROR/MainProcess" in line]
    for task_id in bad:
        assert any(task_id in line and "refused message" in line for line in errors), task_id
    assert "Unrecoverable error" not in worker.log
    assert "Traceback" not in worker.log
    # Gone from Redis: neither queued nor waiting to be redelivered.
    client = redis.Redis.from_url(broker)
    assert client.llen(queue) == 0
    unacked = " ".join(str(value) for value in client.hvals(UNACKED_KEY))
    assert not any(task_id in unacked for task_id in bad)
    # A caller waiting on a refused message is told why.
    with pytest.raises(InvalidTaskError, match="its body is a string"):
        refused.get(timeout=5)


def test_a_bad_argument_fails_at_once_and_does_no_work(
    env: dict[str, str], pg_session: Session, tmp_path: Path
) -> None:
    root = f.account(pg_session)
    pairing, _ = f.temporary_pairing(pg_session, root, [dt.datetime(2099, 1, 1, tzinfo=dt.UTC)])
    pg_session.commit()
    app = client_app(env["TEP_BROKER_URL"], env["TEP_QUEUE"])

    with celery_worker(env, tmp_path) as worker:
        not_deleted = app.send_task(END, args=[pairing.id], kwargs={"delete": "false"})
        with pytest.raises(Exception, match="delete must be true or false") as raised:
            not_deleted.get(timeout=60)
        not_an_id = app.send_task(SWEEP, kwargs={"account_id": "x"})
        with pytest.raises(Exception, match="account_id must be an integer id, not 'x'"):
            not_an_id.get(timeout=60)
        # No offset: UTC, as `tep sweep --as-of` reads it.
        naive = app.send_task(SWEEP, kwargs={"as_of": "2030-01-01T00:00:00", "dry_run": True})
        summary = naive.get(timeout=60)

    assert type(raised.value).__name__ == "ArgumentError"
    assert summary["as_of"] == "2030-01-01T00:00:00Z"
    assert f.shown_pairing(pg_session, pairing.id)[0] == "active"  # not ended, not deleted
    for result, name in ((not_deleted, END), (not_an_id, SWEEP)):
        assert f"ERROR/ForkPoolWorker-1] refused task {name}[{result.id}]" in worker.log
    assert "Retry in" not in worker.log
    assert "Traceback" not in worker.log


def test_only_a_database_out_of_reach_is_retried(redis_url: str, tmp_path: Path) -> None:
    queue = services.unique_queue()
    with services.scratch_postgres_database() as never_migrated:
        env = service_env(never_migrated, redis_url, queue)
        app = client_app(redis_url, queue)
        with celery_worker(env, tmp_path, name="unmigrated") as worker:
            # A schema error: every retry would fail the same way. It fails at once.
            sweep = app.send_task(SWEEP, kwargs={"trigger": "test"})
            with pytest.raises(Exception, match="does not exist"):
                sweep.get(timeout=30)
        assert "Retry in" not in worker.log

    env = service_env("postgresql://postgres@127.0.0.1:1/nowhere", redis_url, queue)
    with celery_worker(env, tmp_path, name="unreachable") as worker:
        sweep = app.send_task(SWEEP, kwargs={"trigger": "test"})
        wait_until(lambda: sweep.state == "RETRY", 30, "the sweep to be retried", worker)
        app.control.revoke(sweep.id)
    redis.Redis.from_url(redis_url).delete(queue)  # what the stopped worker put back
    assert "Retry in" in worker.log
    assert "DatabaseUnavailable" in worker.log
