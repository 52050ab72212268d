"""A private `redis-server` on a free port, for tests that must stop or restart the broker.

The shared Redis on 6379 serves every test session on this machine, so a test that breaks its
broker breaks this one instead: no persistence, its own port, killed and restarted at will.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests import services
from tests.processes import wait_until

START_TIMEOUT_SECONDS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(
        self, workdir: Path, password: str | None = None, eviction: str = "noeviction"
    ) -> None:
        self.eviction = eviction
        self.port = free_port()
        self.password = password
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def start(self) -> None:
        self.starts += 1
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--maxmemory-policy", self.eviction,
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        log = (self.workdir / f"redis-{self.port}-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_until(self._answers, START_TIMEOUT_SECONDS, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would: everything in it (no persistence) is gone."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@contextmanager
def private_redis(
    workdir: Path, password: str | None = None, eviction: str = "noeviction"
) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        services.unavailable("redis-server (to run a private Redis)", FileNotFoundError())
    server = RedisServer(workdir, password, eviction)
    server.start()
    try:
        yield server
    finally:
        server.kill()
