"""`tep api`: serve the Canvas-compatible REST API (api/) with uvicorn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from worker.cli.shared import database

if TYPE_CHECKING:
    from fastapi import FastAPI

# uvicorn forks this many processes, each with its own database pool.
MAX_WORKERS = 64


def app_from_settings() -> FastAPI:
    """The app on TEP_DATABASE_URL: uvicorn's factory, called once in each worker process."""
    from api.app import create_app
    from worker.settings import get_settings

    settings = get_settings()
    return create_app(
        database(),
        webhook_urls=settings.webhook_url_list,
        canvas_tables=settings.canvas_tables,
        public_url=settings.public_url or None,
        max_body_bytes=settings.max_body_bytes,
        metrics_token=settings.metrics_token or None,
    )


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=MAX_WORKERS, help="Worker processes.")] = 1,
    proxy_headers: Annotated[
        bool,
        typer.Option(
            "--proxy-headers/--no-proxy-headers",
            help="Believe X-Forwarded-For and X-Forwarded-Proto from the addresses of "
            "--forwarded-allow-ips (a reverse proxy in front). Off: the peer is the client.",
        ),
    ] = False,
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            help="With --proxy-headers: the proxies' addresses (comma-separated; CIDR allowed)."
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve the Canvas-compatible REST API (run `tep db upgrade` first)."""
    import uvicorn

    database()  # refuse bad settings, or a missing database, with one line before uvicorn starts
    uvicorn.run(
        f"{__name__}:app_from_settings",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Forwarded headers are the client's to write unless a proxy we know overwrites them:
        # trusted only when asked for, and only from the proxies named.
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
    )
