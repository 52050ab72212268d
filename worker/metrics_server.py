"""The worker's /metrics endpoint (TEP_METRICS_PORT), started when the worker is ready."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready

from worker.settings import get_settings

log = logging.getLogger("tep.worker")


@worker_ready.connect
def _start_metrics_endpoint(**_: Any) -> None:
    """Serve /metrics from the worker's main process (once, not in each pool child)."""
    settings = get_settings()
    if settings.metrics_port is None:
        return
    from models import make_engine, make_sessionmaker
    from tasks.metrics import serve_metrics

    # An engine of its own: scrapes never take a connection the tasks need.
    factory = make_sessionmaker(
        make_engine(settings.database_url, settings.schemas()), read_only=True
    )
    try:
        serve_metrics(settings.metrics_port, factory, settings.webhook_url_list)
    except OSError as error:
        log.error("metrics: cannot listen on port %s: %s", settings.metrics_port, error)
