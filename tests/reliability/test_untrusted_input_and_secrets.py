"""What must never happen whatever arrives: a pickled message executed, a password in a log."""

from __future__ import annotations

import pickle
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from models import Schemas, SweepRun, utcnow
from tests import factories as f
from tests import services
from tests.processes import PROJECT_ROOT, celery_beat, celery_worker, service_env, wait_until
from tests.reliability.redis_server import private_redis


class CreatesFileWhenUnpickled:
    """Unpickling this calls `open(path, "w")`: proof, if the file appears, that a worker
    deserialized pickle. (Any callable would do; a real attacker's would not be so polite.)"""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def publish_pickled_task(broker_url: str, queue: str, task: str, args: tuple[object, ...]) -> str:
    """A Celery protocol 2 task message, pickle-serialized, straight onto the worker's queue."""
    task_id = str(uuid.uuid4())
    body = pickle.dumps((args, {}, {"callbacks": None, "errbacks": None, "chain": None}))
    exchange = Exchange(queue, type="direct")  # type: ignore[no-untyped-call]
    destination = Queue(queue, exchange, routing_key=queue)  # type: ignore[no-untyped-call]
    with Connection(broker_url) as connection:  # type: ignore[no-untyped-call]
        connection.Producer().publish(
            body,
            exchange=exchange,
            routing_key=queue,
            declare=[destination],
            serializer=None,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={
                "lang": "py", "task": task, "id": task_id, "root_id": task_id,
                "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
                "argsrepr": repr(args), "kwargsrepr": "{}", "origin": "attacker",
            },
        )  # fmt: skip
    return task_id


@pytest.fixture
def database_url_with_password(postgres_database_url: str) -> Iterator[tuple[str, str]]:
    """A login role with a password on the scratch database: (its URL, the password).

    The server trusts local connections, so the password is not checked; what matters is that
    it is in the URL the worker is given, where a careless log line would show it."""
    url = make_url(postgres_database_url)
    role = f"tep_secret_{uuid.uuid4().hex[:8]}"
    password = f"pg-{secrets.token_hex(8)}"
    admin = services.POSTGRES_ADMIN_URL
    database = services.postgres_url(str(url.database))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        with psycopg.connect(database, autocommit=True) as connection:
            # Canvas's tables in `public`, tep's own in its schema (the default Schemas).
            for schema in ("public", Schemas().tep):
                connection.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
                connection.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role}")
                connection.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
        yield url.set(username=role, password=password).render_as_string(False), password
    finally:
        with psycopg.connect(database, autocommit=True) as connection:
            connection.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP ROLE {role}")


def test_pickled_message_refused_and_passwords_never_logged(
    database_url_with_password: tuple[str, str], pg_session: Session, tmp_path: Path
) -> None:
    database_url, database_password = database_url_with_password
    redis_password = f"redis-{secrets.token_hex(8)}"
    root = f.account(pg_session)
    target, _ = f.temporary_pairing(pg_session, root, [utcnow().replace(year=2100)])
    pg_session.commit()
    marker = tmp_path / "unpickled"

    with private_redis(tmp_path, password=redis_password) as redis_server:
        queue = services.unique_queue()
        env = service_env(database_url, redis_server.url, queue, TEP_SWEEP_INTERVAL_SECONDS="1")
        with celery_worker(env, tmp_path) as worker, celery_beat(env, tmp_path) as beat:
            # Both connected with their passwords: beat's ticks reach the worker and the database.
            wait_until(lambda: beat_ran(pg_session), 60, "a beat sweep", worker)
            task_id = publish_pickled_task(
                redis_server.url,
                queue,
                "tasks.end_pairing",
                (target.id, CreatesFileWhenUnpickled(marker)),
            )
            worker.wait_for_log("application/x-python-serialize", 60)
            client = redis_server.client()
            wait_until(lambda: client.llen(queue) == 0, 60, "the pickled message to be consumed")
            logs = {"worker": worker.log, "beat": beat.log}

        # Refused: not deserialized, not run, and the refusal is in the log.
        assert not marker.exists()
        pg_session.commit()
        assert f.shown_pairing(pg_session, target.id) == ("active", None)
        assert "Refusing to deserialize untrusted content of type pickle" in logs["worker"]
        assert f"Task tasks.end_pairing[{task_id}] received" not in logs["worker"]

        # A setting refused at start-up names the bad value without its password.
        refused = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "worker"],
            env={**env, "TEP_DATABASE_URL": database_url.replace("postgresql", "mysql")},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2
        assert "TEP_DATABASE_URL='mysql://" in refused.stderr and ":***@" in refused.stderr
        logs["refused start-up"] = refused.stdout + refused.stderr

    # The start-up banners were written, with the broker URL masked...
    assert f"redis://:**@127.0.0.1:{redis_server.port}/0" in logs["worker"]
    assert "Configuration ->" in logs["beat"]
    # ...and no password appears anywhere.
    for name, text in logs.items():
        for password in (database_password, redis_password):
            assert password not in text, f"{name} log shows a password:\n{text}"


def beat_ran(session: Session) -> bool:
    session.commit()
    return (
        session.scalar(select(SweepRun.id).where(SweepRun.trigger == "beat").limit(1)) is not None
    )
