"""Redis restarted under a running worker and beat (a private Redis: the shared one is not ours
to break)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import StateChange, SweepRun, utcnow
from tests import factories as f
from tests.processes import celery_beat, celery_worker, service_env, wait_until
from tests.reliability.redis_server import RedisServer, private_redis

RECONNECT_TIMEOUT_SECONDS = 120


def due_pairing(session: Session, name: str) -> int:
    root = f.account(session, name=name)
    pairing, _ = f.temporary_pairing(session, root, [utcnow().replace(microsecond=0)])
    session.commit()
    return pairing.id


def pairing_state(session: Session, pairing_id: int) -> str:
    session.commit()
    return f.shown_pairing(session, pairing_id)[0]


def test_redis_restart_under_worker_and_beat_then_next_tick_is_processed(
    postgres_database_url: str, redis_server: RedisServer, pg_session: Session, tmp_path: Path
) -> None:
    env = service_env(
        postgres_database_url, redis_server.url, "tep-restart", TEP_SWEEP_INTERVAL_SECONDS="1"
    )
    before = due_pairing(pg_session, "Before the restart")

    with celery_worker(env, tmp_path) as worker, celery_beat(env, tmp_path) as beat:
        wait_until(lambda: pairing_state(pg_session, before) == "ended", 60, "the first sweep")

        redis_server.kill()
        worker.wait_for_log("Connection to broker lost", RECONNECT_TIMEOUT_SECONDS)
        worker.wait_for_log("Cannot connect to", RECONNECT_TIMEOUT_SECONDS)  # and it stays down
        during = due_pairing(pg_session, "While Redis is down")
        redis_server.start()  # same port, empty: no persistence
        restarted_at = utcnow()

        wait_until(
            lambda: pairing_state(pg_session, during) == "ended",
            RECONNECT_TIMEOUT_SECONDS,
            "a beat tick after the restart to end the pairing",
            worker,
        )
        # Neither process was restarted to get there.
        assert worker.process.poll() is None and beat.process.poll() is None
        worker_log = worker.log

    # The run that ended it was a beat tick that started after Redis came back.
    run_id = pg_session.scalar(
        select(StateChange.run_id).where(
            StateChange.context_type == "TemporaryEnrollmentPairing",
            StateChange.context_id == during,
        )
    )
    run = pg_session.get(SweepRun, run_id)
    assert run is not None and run.trigger == "beat"
    assert run.started_at > restarted_at
    assert worker_log.count(f"Connected to redis://:**@127.0.0.1:{redis_server.port}") >= 2


def test_worker_warns_when_redis_may_evict_messages(
    postgres_database_url: str, tmp_path: Path
) -> None:
    with private_redis(tmp_path, eviction="allkeys-lru") as lru:
        env = service_env(postgres_database_url, lru.url, "tep-lru")
        with celery_worker(env, tmp_path, name="lru") as worker:
            worker.wait_for_log("maxmemory-policy allkeys-lru", 60)
            assert "WARNING/MainProcess] the broker's Redis has maxmemory-policy" in worker.log

    with private_redis(tmp_path) as safe:
        env = service_env(postgres_database_url, safe.url, "tep-safe")
        with celery_worker(env, tmp_path, name="safe") as worker:
            pass
        assert "maxmemory-policy" not in worker.log
