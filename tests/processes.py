"""Real worker and beat processes for integration tests (no eager mode, no mocks).

A `CeleryProcess` runs `celery -A worker ...` as a child process with its own environment (a
scratch PostgreSQL database, Redis, a queue of its own), writes its log to a file the test can
read, and is stopped (or killed) by the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 60


def service_env(database_url: str, broker_url: str, queue: str, **extra: str) -> dict[str, str]:
    """The environment of a worker, beat or CLI process under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    env.update(
        TEP_DATABASE_URL=database_url,
        TEP_BROKER_URL=broker_url,
        TEP_RESULT_BACKEND=broker_url,
        TEP_QUEUE=queue,
        TEP_SWEEP_INTERVAL_SECONDS="0",
        TEP_NIGHTLY_CRON="",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class CeleryProcess:
    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, app: str = "worker"
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, *args],
            env=env,
            cwd=log_path.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill it and its pool children
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        wait_until(lambda: text in self.log, timeout, f"{text!r} in {self.log_path}", self)

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            # SIGTERM to the main process alone: Celery's warm shutdown, which lets the pool
            # finish its tasks (a signal to the whole group would kill the pool under it).
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or a lost machine would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    process: CeleryProcess | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.process.poll() is not None:
            raise AssertionError(f"process exited ({process.process.returncode}):\n{process.log}")
        time.sleep(0.2)
    log = f"\n--- log ---\n{process.log}" if process is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{log}")


def start_worker(
    env: dict[str, str],
    workdir: Path,
    *args: str,
    name: str = "worker",
    concurrency: int = 1,
    app: str = "worker",
) -> CeleryProcess:
    """Start `celery -A worker worker` (the caller stops it); does not wait for it."""
    return CeleryProcess(
        [
            "worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
            "--hostname", f"{name}@%h", *args,
        ],
        env,
        workdir / f"{name}.log",
        app=app,
    )  # fmt: skip


@contextmanager
def celery_worker(
    env: dict[str, str],
    workdir: Path,
    *args: str,
    name: str = "worker",
    concurrency: int = 1,
    app: str = "worker",
) -> Iterator[CeleryProcess]:
    """A running `celery -A worker worker`, ready to consume when this yields."""
    process = start_worker(env, workdir, *args, name=name, concurrency=concurrency, app=app)
    try:
        process.wait_for_log("ready.")
        yield process
    finally:
        process.stop()


@contextmanager
def celery_beat(env: dict[str, str], workdir: Path) -> Iterator[CeleryProcess]:
    process = CeleryProcess(
        ["beat", "--loglevel", "INFO", "--schedule", str(workdir / "beat-schedule")],
        env,
        workdir / "beat.log",
    )
    try:
        process.wait_for_log("beat: Starting...")
        yield process
    finally:
        process.stop()


def client_app(broker_url: str, queue: str) -> Celery:
    """A producer-side app, as another service would use to send tasks by name."""
    app = Celery("tep-test-client", broker=broker_url, backend=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=queue,
    )
    return app
