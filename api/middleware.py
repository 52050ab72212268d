"""What the API does to every request before a route sees it, and to what it logs about it.

* :class:`BodyLimit`: a body over `TEP_MAX_BODY_BYTES` is a 413 before it is read whole: at once
  when its `Content-Length` says so, else as soon as the bytes received pass the limit (a chunked
  body). Without it a 300 MB JSON value took the API to 2 GB of memory.
* :class:`TrailingSlash`: `/path/` is `/path`, as Rails routes it, without the redirect Starlette
  would answer (its `Location` is built from the request's `Host` header).
* :func:`install_access_log_filter`: no token reaches uvicorn's access log, which prints each
  request line with its query string: the values of parameters named like secrets
  (`access_token=`, `password=`, ...) are shown as `[FILTERED]`, as Rails's `filter_parameters`
  shows them. Headers (`Authorization`) are never logged.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

DEFAULT_MAX_BODY_BYTES = 1024 * 1024

# Parameter names whose values are secrets (Rails's filter_parameters, as Canvas configures it,
# and the usual spellings of the rest).
SECRET_NAME = re.compile(
    r"token|secret|passw|api_?key|auth|signature|credential|session|cookie", re.IGNORECASE
)
FILTERED = "[FILTERED]"


class BodyTooLarge(Exception):
    """Raised from `receive` once a body has passed the limit; :class:`BodyLimit` answers it."""


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        response = error_response(
            413,
            [f"the request body is larger than {self.max_bytes} bytes (TEP_MAX_BODY_BYTES)"],
            # What the client sent after its headers is left unread: the connection cannot be
            # reused for another request.
            headers={"Connection": "close"},
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        # The server has already refused a Content-Length that is not a number.
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > self.max_bytes
        ):
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:  # too late for a 413: let the server drop the connection
                raise
            await self._refuse(send)


class TrailingSlash:
    """Routes `/a/b/` as `/a/b` (Rails does; Starlette would redirect, to a URL made from the
    request's Host header). The server's own scope is left as it was, so its access log shows
    what the client asked for."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/")
            raw: bytes | None = scope.get("raw_path")
            if raw:
                scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


def redact_query(path_with_query: str) -> str:
    """`/x?access_token=abc&page=2` -> `/x?access_token=[FILTERED]&page=2`."""
    path, mark, query = path_with_query.partition("?")
    if not mark:
        return path_with_query
    parts = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        if equals and SECRET_NAME.search(urllib.parse.unquote_plus(name)):
            part = f"{name}={FILTERED}"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


class RedactQueryFilter(logging.Filter):
    """On uvicorn's access logger: its record is `'%s - "%s %s HTTP/%s" %d'` with the client,
    the method, the path with its query string, the HTTP version and the status; the third
    argument is rewritten by :func:`redact_query`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args: Any = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


ACCESS_LOGGER = "uvicorn.access"


def install_access_log_filter() -> None:
    """Once per process, whichever way uvicorn was started (`tep api`, or `uvicorn` itself)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactQueryFilter) for f in logger.filters):
        logger.addFilter(RedactQueryFilter())
