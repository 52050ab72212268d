"""Canvas's error shape, `{"errors": [{"message": "..."}]}`, for every failure the API returns.

Handlers turn our own :class:`ApiError`, FastAPI's request validation errors, Starlette's routing
errors (404, 405) and anything unexpected (500, logged with its traceback) into that one shape, so
a client never has to parse a second error format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

# Canvas marks a 401 caused by the token itself (missing, unknown, expired) with this header;
# canvasapi raises InvalidAccessToken for it, and Unauthorized for a 401 without it.
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="canvas-lms"'}


class ErrorMessage(BaseModel):
    message: str


class ErrorBody(BaseModel):
    """Canvas's error body. `status` is there on a permission refusal (401), as Canvas renders
    it (`render_json_unauthorized`, lib/authentication_methods.rb)."""

    status: str | None = None
    errors: list[ErrorMessage]


class ApiError(Exception):
    """A request the API refuses; `message` is shown to the client as is, and `status_text`
    (Canvas's `status` key) beside it when given."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        status_text: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.status_text = status_text


# What Canvas answers a signed-in user who may not do what they asked, for an API request:
# `render_unauthorized_action` -> `render_json_unauthorized` (lib/authentication_methods.rb), a
# 401 with `{"status": "unauthorized", "errors": [{"message": "user not authorized to perform
# that action"}]}` and no WWW-Authenticate header (the token itself is fine).
UNAUTHORIZED_MESSAGE = "user not authorized to perform that action"


def unauthorized() -> ApiError:
    return ApiError(401, UNAUTHORIZED_MESSAGE, status_text="unauthorized")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, message)


# The longest message an answer carries. Messages cut the client's values they repeat to a short
# prefix where they are written (api/params.py `echo`); this bounds the rest, so no message can
# grow with what a client sent.
MAX_MESSAGE = 1000


def _safe(message: str) -> str:
    """A message fit for a JSON answer: at most MAX_MESSAGE characters, and encodable (a lone
    surrogate from a client's JSON would make the encoder raise)."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "…"
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int,
    messages: Sequence[str],
    headers: dict[str, str] | None = None,
    status_text: str | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"status": status_text} if status_text is not None else {}
    body["errors"] = [{"message": _safe(message)} for message in messages]
    return JSONResponse(body, status_code=status, headers=headers)


def _location(loc: Sequence[Any]) -> str:
    # FastAPI's locations start with where the value was ("path", "query", "body").
    parts = [str(part) for part in loc]
    return " ".join(parts[1:]) if len(parts) > 1 else " ".join(parts)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, [exc.message], exc.headers, exc.status_text)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    messages = [
        f"{_location(item['loc'])}: {item['msg'].removeprefix('Value error, ')}"
        for item in exc.errors()
    ]
    return error_response(400, messages or ["invalid request"])


def allowed_methods(request: Request) -> str:
    """The methods of the path the request hit. Starlette's own `Allow` names only the first
    route that matched, and FastAPI makes one route per method, so gather them: the first
    declared path that matches (as routing takes the first), and every method declared on it."""
    # The routes as declared (FastAPI nests included routers in `app.router.routes`).
    routes = [r for r in request.app.state.api_routes if r.include_in_schema]
    for route in routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods = {m for r in routes if r.path == route.path for m in r.methods or ()}
            return ", ".join(sorted(methods))
    return ""


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and message == "Not Found":
        message = "The specified resource does not exist."
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return error_response(exc.status_code, [message], headers)


async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this response is sent, so the server logs the
    # traceback once; logging it here too would only double it.
    return error_response(500, ["An error occurred; it has been logged."])


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
