"""The service's Celery app plus one task that kills its own worker, for the redelivery-cap test.

Test-only: `celery -A tests.reliability.crashing_app worker` (with the project root on
PYTHONPATH). Production workers never load it.
"""

from __future__ import annotations

import os
import signal

from worker import get_app

app = get_app()


@app.task(name="tests.kill_own_worker", acks_late=True)  # type: ignore[untyped-decorator]
def kill_own_worker(marker: str) -> None:
    """Note the delivery, then SIGKILL the whole worker (main process and pool), as an
    out-of-memory kill of the container would: the message stays unacknowledged in Redis."""
    with open(marker, "a") as deliveries:
        deliveries.write(f"{os.getpid()}\n")
    os.killpg(os.getpgrp(), signal.SIGKILL)


@app.task(name="tests.kill_own_pool_process", acks_late=True)  # type: ignore[untyped-decorator]
def kill_own_pool_process(marker: str) -> None:
    """Note the delivery, then SIGKILL only the pool process running it: the worker's main
    process sees it die (WorkerLostError) and lives on."""
    with open(marker, "a") as deliveries:
        deliveries.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)
