"""Canvas's string ids: `Accept: application/json+canvas-string-ids` turns every id into a string.

Canvas decides per request and applies it to every JSON answer it renders, once, in
`ApplicationController#render` (`app/controllers/application_controller.rb`): when
`request.headers['Accept'] =~ %r{application/json\\+canvas-string-ids}` (the media type anywhere
in the header; Canvas's own UI sends `application/json+canvas-string-ids, application/json`, see
`ui/shared/util/xhr.ts`, `defaultFetchOptions`), the object goes through
`StringifyIds.recursively_stringify_ids` (`gems/stringify_ids/lib/stringify_ids.rb`, formerly
`Api.recursively_stringify_json_ids` in `lib/api.rb`): in every hash at any depth, a key matching
`/(^|_)id$/i` whose value is an Integer becomes a string, and a key matching `/(^|_)ids$/i` whose
value is an array has its Integer items turned into strings. Anything else (null, strings,
booleans, nested hashes under an `*_id` key) is left alone.

The answer's Content-Type does not change: Canvas registers no MIME type for the string-ids
variant (`config/initializers/mime_types.rb`), so `render json:` answers `application/json`; so
do we.

Done here once, as ASGI middleware over every JSON answer (lists, nested objects, error bodies),
so no route has to know about it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STRING_IDS_MEDIA_TYPE = "application/json+canvas-string-ids"

_ID_KEY = re.compile(r"(^|_)id$", re.IGNORECASE)
_IDS_KEY = re.compile(r"(^|_)ids$", re.IGNORECASE)


def wants_string_ids(accept: str | None) -> bool:
    """Canvas's test: the media type appears anywhere in the Accept header (case-sensitive, as
    Canvas's regular expression is)."""
    return accept is not None and STRING_IDS_MEDIA_TYPE in accept


def _stringify_id(value: Any) -> Any:
    # Ruby's `is_a?(Integer)`: true and false are not Integers there, though bool is an int here.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def stringify_ids(value: Any) -> Any:
    """`StringifyIds.recursively_stringify_ids`: a copy of `value` with every `id`/`*_id` integer
    and every integer in an `ids`/`*_ids` array as a string, at any depth."""
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if _ID_KEY.search(key):
                item = _stringify_id(item)
            elif _IDS_KEY.search(key) and isinstance(item, list):
                item = [_stringify_id(i) for i in item]
            result[key] = stringify_ids(item) if isinstance(item, dict | list) else item
        return result
    if isinstance(value, list):
        return [stringify_ids(item) if isinstance(item, dict | list) else item for item in value]
    return value


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


class CanvasStringIds:
    """Rewrites the JSON answers of requests that ask for string ids; passes the rest through
    untouched (no buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not wants_string_ids(Headers(scope=scope).get("accept")):
            await self.app(scope, receive, send)
            return

        start: Message | None = None
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if _is_json(Headers(raw=message.get("headers", [])).get("content-type")):
                    start = message  # held back until the whole body is here
                    return
                await send(message)
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(chunks)
                if body:  # a HEAD answer has none, and keeps its Content-Length
                    body = json.dumps(
                        stringify_ids(json.loads(body)), ensure_ascii=False, separators=(",", ":")
                    ).encode("utf-8")
                    headers = MutableHeaders(raw=list(start.get("headers", [])))
                    headers["content-length"] = str(len(body))
                    start = {**start, "headers": headers.raw}
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
            else:
                await send(message)

        await self.app(scope, receive, rewrite)
