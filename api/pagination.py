"""Canvas's pagination: `page`/`per_page` and a `Link` header (current, next, prev, first, last).

Canvas clients follow the `next` link as given, without adding their parameters again, so every
link repeats the request's query string with only `page` and `per_page` replaced.

A link is built from the configured public URL (`TEP_PUBLIC_URL`), or is relative (the path and
query alone) when none is configured: never from the request's `Host` header, which the client
chose and a cache or a victim's client would follow.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Sequence
from typing import Any, TypeVarTuple

from fastapi import Request, Response
from sqlalchemy import Row, Select, func, select
from sqlalchemy.orm import Session

from api.errors import bad_request
from api.params import Field, Params, echo, is_ascii_integer

Ts = TypeVarTuple("Ts")

DEFAULT_PER_PAGE = 10
MAX_PER_PAGE = 100  # larger requests get this many, as Canvas does
MAX_PAGE = 10**9  # keeps OFFSET within what every database accepts

FIELDS = (
    Field("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "Page number, from 1."),
    Field(
        "per_page",
        {"type": "integer", "minimum": 1},
        f"Items per page (default {DEFAULT_PER_PAGE}; more than {MAX_PER_PAGE} gives "
        f"{MAX_PER_PAGE}).",
    ),
)

LINK_HEADER_DOC: dict[str, Any] = {
    "Link": {
        "description": 'Pagination links: `<url>; rel="current"`, `next`, `prev`, `first`, '
        "`last`, comma-separated.",
        "schema": {"type": "string"},
    }
}


@dataclasses.dataclass(frozen=True)
class Page:
    number: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page


def _positive(params: Params, name: str, default: int, maximum: int | None) -> int:
    value = params.raw(name)
    if value is None or value == "":
        return default
    text = str(value).strip()
    if (
        isinstance(value, bool)
        or not is_ascii_integer(text)  # `str.isdigit` is true of `²`, which `int` refuses
        or len(text) > 12
        or int(text) < 1
    ):
        raise bad_request(f"{name} must be a positive integer in ASCII digits, not {echo(value)}")
    number = int(text)
    if maximum is not None and number > maximum:
        raise bad_request(f"{name} must be at most {maximum}")
    return number


def requested_page(params: Params) -> Page:
    per_page = _positive(params, "per_page", DEFAULT_PER_PAGE, None)
    return Page(_positive(params, "page", 1, MAX_PAGE), min(per_page, MAX_PER_PAGE))


def paginate(
    session: Session,
    stmt: Select[*Ts],
    page: Page,
    request: Request,
    response: Response,
) -> Sequence[Row[*Ts]]:
    """One page of `stmt` (already ordered), and the `Link` header describing the others."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = session.execute(stmt.limit(page.per_page).offset(page.offset)).all()
    response.headers["Link"] = link_header(request, page, total)
    return rows


def public_base(request: Request) -> str:
    """What absolute URLs of this API start with: the configured public URL, or `""` (links are
    then relative to the request's own URL)."""
    base: str = getattr(request.app.state, "public_url", None) or ""
    return base


def page_url(request: Request, **params: int) -> str:
    """The request's own path and query, with `params` replaced, after the public base."""
    path = urllib.parse.quote(request.scope.get("root_path", "") + request.scope["path"])
    query = request.url.include_query_params(**params).query
    return f"{public_base(request)}{path}?{query}"


def link_header(request: Request, page: Page, total: int) -> str:
    last = max(1, -(-total // page.per_page))
    rels: list[tuple[str, int]] = [("current", page.number)]
    if page.number < last:
        rels.append(("next", page.number + 1))
    if page.number > 1:
        rels.append(("prev", min(page.number - 1, last)))
    rels += [("first", 1), ("last", last)]
    return ",".join(
        f'<{page_url(request, page=number, per_page=page.per_page)}>; rel="{rel}"'
        for rel, number in rels
    )
