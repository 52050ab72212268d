"""A real `tep api` process (uvicorn) on a free port, for tests over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.processes import PROJECT_ROOT, wait_until

READY_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ApiServer:
    def __init__(
        self, database_url: str, log_path: Path, settings: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
        # Deployed as it would be, with its public URL configured (links and `html_url` start
        # with it; without one they are relative: test_hardening.py).
        env.update(
            TEP_DATABASE_URL=database_url,
            TEP_PUBLIC_URL=self.base_url,
            PYTHONUNBUFFERED="1",
        )
        env.update(settings or {})
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "api", "--port", str(self.port)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"tep api exited ({self.process.returncode}):\n{self.log}")
        try:
            return httpx.get(f"{self.base_url}/openapi.json", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()


@contextmanager
def api_server(
    database_url: str, log_path: Path, settings: dict[str, str] | None = None
) -> Iterator[ApiServer]:
    """`tep api` on the database, with other `TEP_` settings if given."""
    server = ApiServer(database_url, log_path, settings)
    try:
        wait_until(server.ready, READY_TIMEOUT_SECONDS, f"tep api on {server.base_url}")
        yield server
    finally:
        server.stop()
