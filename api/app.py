"""The FastAPI application: Canvas's Temporary Enrollment Pairings API and the Enrollments slice.

`create_app` takes the database from whoever wires it (`tep api` passes the settings' URL; tests
pass a scratch database), so nothing here reads the environment at import time.
"""

from __future__ import annotations

import hmac
import importlib.resources
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.auth import bearer, route_scope
from api.db import Database
from api.errors import WWW_AUTHENTICATE, ApiError, install_handlers, not_found
from api.middleware import (
    DEFAULT_MAX_BODY_BYTES,
    BodyLimit,
    TrailingSlash,
    install_access_log_filter,
)
from api.routes import accounts, enrollments, pairings
from api.wire import CanvasStringIds
from models import CANVAS_TABLES_EXISTING, CANVAS_TABLES_MANAGED, make_engine, make_sessionmaker
from tasks.metrics import render_metrics

ROUTERS = (pairings.router, enrollments.router, accounts.router)

DESCRIPTION = """\
Canvas LMS's Temporary Enrollment Pairings API, the part of its Enrollments API that attaches
temporary enrollments to a pairing and reads them back (a course's, a user's), its Roles API and
the account's users, in Canvas's wire format, so that Canvas's own clients (its temporary-enrollment
UI, `canvasapi`) work.

* Authenticate with `Authorization: Bearer <token>` (`tep token create`). A token acts for one
  user in one root account; `self` names that account in paths. Objects of any other root
  account do not exist (404).
* Permissions are Canvas's, read from its `account_users`, `roles` and `role_overrides`: the
  pairings API needs `temporary_enrollments_add` (create), `temporary_enrollments_delete`
  (delete) or any of add/edit/delete (list, show, new) in the root account; the other endpoints
  need an admin of the account (`tep admin grant`, `POST /accounts/:account_id/admins`).
  Anyone else gets Canvas's 401, `{"status": "unauthorized", "errors": [{"message": "user not
  authorized to perform that action"}]}`. Token scopes narrow a token further.
* Parameters may come from the query string, a form-encoded body or a JSON body, for every method
  (Canvas's UI sends them all in the query string); bracketed names nest (`enrollment[user_id]`,
  `state[]`). An id may be given as a number or as a string of digits (`12` or `"12"`).
* A pairing is answered under its root key, `{"temporary_enrollment_pairing": {...}}`; a list of
  pairings is an array of those.
* With `Accept: application/json+canvas-string-ids`, every `id` and `*_id` in an answer (at any
  depth) is a string, as Canvas sends them; the schemas below show the default, numbers.
* Lists are paginated with `page` and `per_page` (default 10, at most 100) and a `Link` header.
  Links (and `html_url`) start with the configured `TEP_PUBLIC_URL`, or are relative.
* Errors are `{"errors": [{"message": "..."}]}`. A body over `TEP_MAX_BODY_BYTES` (default
  1 MiB) is a 413; an id no object can have (0, or beyond 64 bits) is a 404 in a path and a 400
  in a parameter; numbers are ASCII digits; text parameters refuse control characters.
* On Canvas's own database (`TEP_CANVAS_TABLES=existing`) Canvas owns users, courses,
  sections and admins: creating them here is refused (403); enrollments and pairings work as
  documented.
"""


def known_scopes() -> list[str]:
    """Every scope a token may be limited to: one per endpoint, in Canvas's form."""
    return sorted(
        route_scope(method, route.path)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
    )


# Swagger UI's assets, from the `fastapi-offline` package: `/docs` loads nothing from a CDN, so
# it works offline and behind a strict content security policy.
DOCS_ASSETS = importlib.resources.files("fastapi_offline") / "static"
DOCS_ASSETS_URL = "/docs/assets"


def create_app(
    factory: sessionmaker[Session] | None = None,
    *,
    database_url: str | None = None,
    webhook_urls: Sequence[str] = (),
    canvas_tables: str = CANVAS_TABLES_MANAGED,
    public_url: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    metrics_token: str | None = None,
) -> FastAPI:
    """The app on the database of `factory` (or of `database_url`). `webhook_urls` are the
    configured receivers, so that `/metrics` reports them as the worker's endpoint does.
    `canvas_tables` is TEP_CANVAS_TABLES: with `existing`, Canvas's tables are a real Canvas's
    and the endpoints creating users, courses and sections refuse (403). `public_url`
    (TEP_PUBLIC_URL) starts every absolute URL the API writes; without it they are relative.
    `max_body_bytes` is TEP_MAX_BODY_BYTES. `metrics_token` (TEP_METRICS_TOKEN) is the bearer
    token `/metrics` asks for; without one the API serves no metrics (the worker's
    TEP_METRICS_PORT does)."""
    if canvas_tables not in (CANVAS_TABLES_MANAGED, CANVAS_TABLES_EXISTING):
        raise ValueError(
            f"canvas_tables {canvas_tables!r}: use {CANVAS_TABLES_MANAGED} or "
            f"{CANVAS_TABLES_EXISTING}"
        )
    if factory is None:
        if database_url is None:
            raise ValueError("create_app needs a session factory or a database URL")
        factory = make_sessionmaker(make_engine(database_url))
    engine: Engine = factory.kw["bind"]
    app = FastAPI(
        title="Temporary enrollment lifecycle service",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,  # served below, from local assets
        redoc_url=None,
        # No redirect ever: its Location would be made from the request's Host header (a
        # trailing slash is routed as without it, by TrailingSlash).
        redirect_slashes=False,
    )
    app.state.database = Database(
        write=factory, read=make_sessionmaker(engine, read_only=True), canvas_tables=canvas_tables
    )
    app.state.public_url = public_url.rstrip("/") if public_url else None
    install_handlers(app)
    app.add_middleware(CanvasStringIds)
    app.add_middleware(TrailingSlash)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)  # outermost: before anything reads
    install_access_log_filter()
    for router in ROUTERS:
        app.include_router(router)
    app.state.api_routes = [route for router in ROUTERS for route in router.routes]
    read = app.state.database.read

    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        )

    def scraper(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        """The figures are every account's: only the operator's scrape token may read them,
        never an account's API token, and without a configured one there is nothing here."""
        if not metrics_token:
            raise not_found("The specified resource does not exist.")
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), metrics_token.encode()):
            raise ApiError(401, "the metrics need TEP_METRICS_TOKEN", headers=WWW_AUTHENTICATE)

    # Prometheus's scrape endpoint: not part of the Canvas API (not in the OpenAPI document); the
    # same figures, read from the database, as the worker's metrics port.
    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(scraper)])
    def metrics() -> Response:
        body, content_type = render_metrics(read, list(webhook_urls))
        return Response(content=body, media_type=content_type)

    return app
