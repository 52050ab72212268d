"""The HTTP client for a hosted Canvas's REST API: the token, Canvas's rate limits, retries.

Canvas's limits (app/middleware/request_throttle.rb, instructure/canvas-lms commit 00b222d7):
one leaky bucket per token, full at 600 (`hwm`; it holds up to 800), leaking 10 per second; each
request adds an up-front cost of 50 while it runs, replaced by its actual cost (CPU plus database
seconds, usually well under 1) when it ends. Every answer says how much headroom is left
(`X-Rate-Limit-Remaining`, `hwm - count`) and what the request cost (`X-Request-Cost`, absent on
a throttled answer). A request that finds the bucket full is answered `403` with the body
`403 Forbidden (Rate Limit Exceeded)` (never a 429), before the controller runs: it changed
nothing and is always safe to send again.

So the client:

* keeps at most `max_in_flight` requests open at once (a semaphore): each open request holds 50
  of the 600, so a few in parallel are cheap and a dozen would throttle themselves;
* paces itself from the headroom it last saw: below a low-water mark of one up-front cost per
  request it may have in flight plus one (150 with the default 2), it waits, before the next
  request, for the bucket to leak back to that mark at Canvas's 10 per second (`(mark -
  remaining) / 10` seconds, the headroom estimated forward from when it was read). Above the
  mark it never waits: the steady state of small costs never throttles;
* retries Canvas's throttle answer, 5xx, timeouts, connection errors and a dropped connection
  with full-jitter exponential backoff (`uniform(0, min(cap, base * 2**n))`, AWS's "full
  jitter"), up to `max_attempts`, then raises CanvasUnavailable;
* raises CanvasPermissionError on a 401 (Canvas's answer to a bad token and to a permission it
  refuses: `render_unauthorized_action`, lib/authentication_methods.rb) and on any 403 that is
  not the throttle, naming the permission the endpoint needs (PERMISSIONS below).

Retrying a POST. DELETE (conclude/delete/deactivate an enrollment) and PUT (reactivate) set a
state: sending one twice ends where sending it once does, and the caller reads Canvas's answer
(an enrollment already in the target state is success). A POST creates: after a timeout or a
dropped answer it may have been applied. `retry_unsafe=True` (the default) retries it anyway:
the connector's only POST is restore's re-enrollment, which Canvas refuses or merges when it is
sent again (one enrollment per user, role and section: Canvas's unique index, `enroll_user`
reusing the row), so the worst case is an answer the caller must read. A caller that cannot
tolerate even that passes `retry_unsafe=False`: a POST or PATCH whose request may have reached
Canvas (a timeout, a dropped answer, a 5xx) is then not sent again and CanvasUnavailable says
so (`maybe_applied`), for the caller to look before it sends again. A throttle answer or a
connection that never opened is retried either way: Canvas did nothing.

The token goes in the Authorization header and nowhere else: no message, log line or repr holds
it.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx

from tasks.lifecycle import LifecycleError

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None

# app/middleware/request_throttle.rb, `LeakyBucket` defaults.
CANVAS_BUCKET_HWM = 600.0
CANVAS_OUTFLOW_PER_SECOND = 10.0
CANVAS_UP_FRONT_COST = 50.0
# request_throttle.rb `rate_limit_exceeded`: the throttle answer's body.
THROTTLE_MARK = "Rate Limit Exceeded"
# Canvas prefixes JSON with `while(1);` for session-authenticated (cookie) requests, against JSON
# hijacking; clients of Canvas strip it (a 2011 jQuery patch doing so for Canvas:
# gist.github.com/codekitchen/1405777). The line of Canvas that adds it was not found in the
# indexed source; a token request should not get it, and stripping is harmless either way.
JSON_PREFIX = "while(1);"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
USER_AGENT = "tep-canvas-connector"


class CanvasError(LifecycleError):
    """Anything wrong with Canvas's answers; str() is one line for people, never the token."""


class CanvasPermissionError(CanvasError):
    """A 401, or a 403 that is not the throttle: the token cannot do this. Stops a run."""

    def __init__(
        self, message: str, *, status: int, method: str, path: str, permission: str | None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        self.permission = permission


class CanvasUnavailable(CanvasError):
    """Retries exhausted (5xx, timeouts, dropped connections, throttle), or an unsafe request
    not sent again (`maybe_applied`)."""

    def __init__(
        self, message: str, *, method: str, path: str, attempts: int, maybe_applied: bool = False
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.attempts = attempts
        self.maybe_applied = maybe_applied


class CanvasRequestError(CanvasError):
    """An answer a helper cannot use where it needs one (get_all's non-2xx, a page that is not
    a list, a Link to another host)."""

    def __init__(self, message: str, *, status: int | None, method: str, path: str) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path


_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([^",;]+)"?')


@dataclass
class CanvasResponse:
    status: int
    headers: httpx.Headers
    body: Any  # parsed JSON, or None (no body, or not JSON)
    url: str = ""  # the URL that answered (relative Links resolve against it)
    text: str = ""  # the body as text (an error's message when it is not JSON)

    def links(self) -> dict[str, str]:
        """The Link header's URLs by rel (Canvas: current, next, prev, first, last)."""
        found: dict[str, str] = {}
        for url, rel in _LINK.findall(self.headers.get("link", "")):
            for name in rel.split():
                found.setdefault(name, urljoin(self.url, url) if self.url else url)
        return found

    def next_url(self) -> str | None:
        return self.links().get("next")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_message(self) -> str:
        """Canvas's error message(s), one line: `errors[].message`, `message`, `error`, or the
        text."""
        return error_message(self.body, self.text)


@dataclass
class RequestCost:
    """What the client's requests cost so far (totals over every thread)."""

    requests: int = 0  # HTTP requests sent, every attempt counted
    retries: int = 0  # attempts after a first one failed
    throttled: int = 0  # Canvas's throttle answers
    pages: int = 0  # pages read by get_all
    cost: float = 0.0  # sum of X-Request-Cost
    seconds: float = 0.0  # seconds spent waiting for answers (summed over threads)
    paused: float = 0.0  # seconds slept: pacing and backoff (summed over threads)
    lowest_remaining: float | None = None  # least X-Rate-Limit-Remaining seen

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# The permission each endpoint the connector calls needs, for the one line a refusal prints.
#
# * app/controllers/temporary_enrollment_pairings_api_controller.rb `authorize_action`:
#   index/show/new need any of RoleOverride::MANAGE_TEMPORARY_ENROLLMENT_PERMISSIONS
#   (temporary_enrollments_add/edit/delete), create `temporary_enrollments_add`, destroy
#   `temporary_enrollments_delete`.
# * app/controllers/enrollments_api_controller.rb: `destroy` asks `can_be_deleted_by` for
#   task=delete/deactivate/inactivate and `can_be_concluded_by` for conclude (the default);
#   `reactivate` asks `can_be_deleted_by`; `create` asks `can_create_enrollment_for?`;
#   `user_index_enrollments` with temporary_enrollments_for_recipient (or _recipients_for_
#   provider) needs any temporary-enrollment permission on each course's account, otherwise
#   `read_roster`; `course_index_enrollments` needs read_roster (or view_all_grades /
#   manage_grades).
# * app/models/enrollment.rb: `can_be_deleted_by` -> `can_delete_via_granular`
#   (remove_teacher_from_course, remove_ta_from_course, remove_designer_from_course,
#   remove_student_from_course, remove_observer_from_course by the enrollment's type; before
#   granular permissions manage_admin_users, or manage_students for students and observers);
#   `can_be_concluded_by`: manage_students for a student, else manage_admin_users.
# * app/controllers/users_controller.rb `api_index` (GET /accounts/:id/users): read_roster.

ANY_TEMPORARY = "temporary_enrollments_add, _edit or _delete (Temporary Enrollments)"
REMOVE = (
    "remove_<type>_from_course for the enrollment's type, e.g. remove_teacher_from_course "
    "(manage_admin_users, or manage_students for students, without granular permissions)"
)
CONCLUDE = "manage_admin_users (manage_students for a student enrollment)"
ADD = (
    "add_<type>_to_course for the enrollment's type, e.g. add_teacher_to_course "
    "(manage_admin_users, or manage_students for students, without granular permissions)"
)
_TEMPORARY_LISTING = (
    "temporary_enrollments_for_recipient",
    "temporary_enrollment_recipients_for_provider",
)
_ID = r"[^/]+"
PERMISSIONS: tuple[tuple[str, re.Pattern[str], Callable[[dict[str, str]], str | None]], ...] = (
    (
        "GET",
        re.compile(rf"/accounts/{_ID}/temporary_enrollment_pairings(/{_ID})?"),
        lambda q: ANY_TEMPORARY,
    ),
    (
        "POST",
        re.compile(rf"/accounts/{_ID}/temporary_enrollment_pairings"),
        lambda q: "temporary_enrollments_add",
    ),
    (
        "DELETE",
        re.compile(rf"/accounts/{_ID}/temporary_enrollment_pairings/{_ID}"),
        lambda q: "temporary_enrollments_delete",
    ),
    (
        "DELETE",
        re.compile(rf"/courses/{_ID}/enrollments/{_ID}"),
        lambda q: REMOVE if q.get("task") in ("delete", "deactivate", "inactivate") else CONCLUDE,
    ),
    ("PUT", re.compile(rf"/courses/{_ID}/enrollments/{_ID}/reactivate"), lambda q: REMOVE),
    ("POST", re.compile(rf"/(courses|sections)/{_ID}/enrollments"), lambda q: ADD),
    (
        "GET",
        re.compile(rf"/users/{_ID}/enrollments"),
        lambda q: ANY_TEMPORARY if any(k in q for k in _TEMPORARY_LISTING) else "read_roster",
    ),
    ("GET", re.compile(rf"/courses/{_ID}/enrollments"), lambda q: "read_roster"),
    ("GET", re.compile(rf"/accounts/{_ID}/users"), lambda q: "read_roster"),
)


def permission_for(method: str, path: str, query: Mapping[str, str] | None = None) -> str | None:
    """The permission Canvas checks for this request (PERMISSIONS), or None if not listed."""
    route = path.split("?", 1)[0].rstrip("/")
    if route.startswith("/api/v1"):
        route = route[len("/api/v1") :]
    wanted = {key.removesuffix("[]"): value for key, value in (query or {}).items()}
    for verb, pattern, permission in PERMISSIONS:
        if verb == method.upper() and pattern.fullmatch(route):
            return permission(wanted)
    return None


def error_message(body: Any, text: str = "") -> str:
    messages: list[str] = []
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list):
            messages += [
                str(e.get("message")) for e in errors if isinstance(e, dict) and "message" in e
            ]
            messages += [str(e) for e in errors if isinstance(e, str)]
        elif isinstance(errors, dict):  # ActiveRecord errors: {"field": [{"message": ...}]}
            for field, items in errors.items():
                for item in items if isinstance(items, list) else [items]:
                    detail = item.get("message") if isinstance(item, dict) else item
                    messages.append(f"{field} {detail}")
        for key in ("message", "error"):
            if not messages and isinstance(body.get(key), str):
                messages.append(body[key])
    if not messages and text:
        messages.append(text.strip())
    return " | ".join(" ".join(m.split()) for m in messages)[:300]


def parse_body(response: httpx.Response) -> tuple[Any, str]:
    """(JSON or None, text) of an answer; `while(1);` stripped."""
    text = response.text if response.content else ""
    body_text = text[len(JSON_PREFIX) :] if text.startswith(JSON_PREFIX) else text
    content_type = response.headers.get("content-type", "")
    if not body_text.strip() or "json" not in content_type:
        return None, text
    try:
        return json.loads(body_text), text
    except ValueError:
        return None, text


def _header_number(headers: httpx.Headers, name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


class CanvasClient:
    """One Canvas, one token; thread-safe (share it between a pool's threads)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        max_in_flight: int = 2,
        timeout: float = 30.0,
        max_attempts: int = 8,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        low_water: float | None = None,
        max_pause: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`low_water`: the headroom below which requests are paced (default one up-front cost
        per request in flight plus one); `max_pause`: the longest single pacing pause (default
        `backoff_cap`)."""
        if not base_url:
            raise CanvasError("no Canvas URL: set TEP_CANVAS_URL")
        if not token:
            raise CanvasError("no Canvas token: set TEP_CANVAS_TOKEN")
        if max_in_flight < 1 or max_attempts < 1:
            raise ValueError("max_in_flight and max_attempts must be at least 1")
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix("/api/v1")
        self._origin = _origin(self.base_url)
        self._token = token
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.low_water = (
            low_water if low_water is not None else CANVAS_UP_FRONT_COST * (max_in_flight + 1)
        )
        self.max_pause = max_pause if max_pause is not None else backoff_cap
        self._sleep = sleep
        self._random = rng or random.Random()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._remaining: tuple[float, float] | None = None  # (headroom, when read)
        self.cost = RequestCost()
        self._http = httpx.Client(
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=timeout,
            follow_redirects=False,  # a redirect elsewhere must not carry the token
            limits=httpx.Limits(
                max_connections=max_in_flight, max_keepalive_connections=max_in_flight
            ),
        )

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> CanvasClient:
        """From TEP_CANVAS_URL, TEP_CANVAS_TOKEN and TEP_CANVAS_MAX_IN_FLIGHT."""
        token = settings.canvas_token
        if hasattr(token, "get_secret_value"):
            token = token.get_secret_value()
        options.setdefault("max_in_flight", settings.canvas_max_in_flight)
        return cls(settings.canvas_url, token, **options)

    def __repr__(self) -> str:
        return f"CanvasClient({self.base_url!r}, max_in_flight={self.max_in_flight})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CanvasClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests

    def get(self, path: str, params: Params = None) -> CanvasResponse:
        return self.request("GET", path, params=params)

    def get_all(self, path: str, params: Params = None) -> Iterator[Any]:
        """Every item of every page: the first page, then each Link rel="next" as given (Canvas's
        links repeat the query). A `null` or empty (204) page yields nothing; a caller that
        must tell `null` from `[]` reads the first page with get()."""
        response = self.get(path, params)
        seen: set[str] = set()
        while True:
            shown = _shown(response.url or path)
            if not response.ok:
                raise CanvasRequestError(
                    f"Canvas answered {response.status} to GET {shown}: "
                    f"{response.error_message() or 'no message'}",
                    status=response.status, method="GET", path=shown,
                )  # fmt: skip
            with self._lock:
                self.cost.pages += 1
            body = response.body
            if isinstance(body, list):
                yield from body
            elif body is not None:
                raise CanvasRequestError(
                    f"Canvas answered GET {shown} with a {type(body).__name__}, not a list",
                    status=response.status, method="GET", path=shown,
                )  # fmt: skip
            following = response.next_url()
            if following is None:
                return
            if following in seen:
                raise CanvasRequestError(
                    f"Canvas's Link header for GET {shown} loops back to a page already read",
                    status=response.status, method="GET", path=shown,
                )  # fmt: skip
            seen.add(following)
            response = self.get(following)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        data: Any = None,
        retry_unsafe: bool = True,
    ) -> CanvasResponse:
        """One call, retried as the module says; returns any 2xx and any 4xx but 401 and a
        non-throttle 403 (callers handle 404, 400, 422)."""
        method = method.upper()
        url = self._url(path)
        shown = f"{method} {_shown(url)}"
        query = _query(url, params)
        attempt = 0
        while True:
            attempt += 1
            self._pace()
            failure, maybe_applied = "", False
            response: httpx.Response | None = None
            with self._slots:
                started = time.monotonic()
                try:
                    response = self._http.request(method, url, params=_params(params), data=data)
                except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                    failure = f"could not connect ({_describe(error)})"
                except httpx.TimeoutException as error:
                    failure, maybe_applied = f"timed out ({_describe(error)})", True
                except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
                    failure, maybe_applied = f"connection dropped ({_describe(error)})", True
                finally:
                    with self._lock:
                        self.cost.requests += 1
                        self.cost.seconds += time.monotonic() - started
            if response is not None:
                body, text = parse_body(response)
                throttled = response.status_code == 403 and THROTTLE_MARK in text
                self._read_limits(response.headers, throttled)
                status = response.status_code
                if throttled:
                    failure = "throttled (403 Rate Limit Exceeded)"
                elif status >= 500:
                    failure = f"{status} {error_message(body, text) or response.reason_phrase}"
                    maybe_applied = True
                elif status in (401, 403):
                    raise self._refused(status, method, url, query, response.headers, body, text)
                else:
                    return CanvasResponse(status, response.headers, body, str(response.url), text)

            unsafe = method not in IDEMPOTENT_METHODS and maybe_applied
            if unsafe and not retry_unsafe:
                raise CanvasUnavailable(
                    self._scrub(
                        f"Canvas may have applied {shown} but its answer was lost ({failure}): "
                        "not sent again; check Canvas before retrying"
                    ),
                    method=method, path=_shown(url), attempts=attempt, maybe_applied=True,
                )  # fmt: skip
            if attempt >= self.max_attempts:
                raise CanvasUnavailable(
                    self._scrub(
                        f"Canvas did not answer {shown} after {attempt} attempts "
                        f"(last: {failure}): it is down, overloaded or throttling this token"
                    ),
                    method=method, path=_shown(url), attempts=attempt, maybe_applied=unsafe,
                )  # fmt: skip
            delay = self._random.uniform(
                0.0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
            )
            with self._lock:
                self.cost.retries += 1
                self.cost.paused += delay
            self._sleep(delay)

    # ---- internals

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            if _origin(path) != self._origin:
                # A Link (or caller) pointing elsewhere would get the token: refuse.
                raise CanvasRequestError(
                    f"refusing to send the Canvas token to {_origin(path)} "
                    f"(not {self._origin}): Canvas's Link header points to another host",
                    status=None, method="GET", path=_shown(path),
                )  # fmt: skip
            return path
        if not path.startswith("/"):
            path = "/" + path
        return self.base_url + path

    def _read_limits(self, headers: httpx.Headers, throttled: bool) -> None:
        remaining = _header_number(headers, "x-rate-limit-remaining")
        cost = _header_number(headers, "x-request-cost")
        with self._lock:
            if throttled:
                self.cost.throttled += 1
            if cost is not None:
                self.cost.cost += cost
            if remaining is not None:
                self._remaining = (remaining, time.monotonic())
                lowest = self.cost.lowest_remaining
                self.cost.lowest_remaining = remaining if lowest is None else min(lowest, remaining)

    def pause_needed(self) -> float:
        """Seconds to wait before the next request so the bucket is back at the low-water mark
        (0 above it): the last headroom seen, plus what leaked since at 10 per second."""
        with self._lock:
            if self._remaining is None:
                return 0.0
            remaining, when = self._remaining
        estimate = remaining + CANVAS_OUTFLOW_PER_SECOND * (time.monotonic() - when)
        deficit = self.low_water - estimate
        return min(deficit / CANVAS_OUTFLOW_PER_SECOND, self.max_pause) if deficit > 0 else 0.0

    def _pace(self) -> None:
        pause = self.pause_needed()
        if pause > 0:
            with self._lock:
                self.cost.paused += pause
            self._sleep(pause)

    def _refused(
        self,
        status: int,
        method: str,
        url: str,
        query: dict[str, str],
        headers: httpx.Headers,
        body: Any,
        text: str,
    ) -> CanvasPermissionError:
        path = _shown(url)
        said = error_message(body, text)
        state = body.get("status") if isinstance(body, dict) else None
        permission: str | None = None
        if status == 401 and (
            "www-authenticate" in headers
            or state == "unauthenticated"
            or said in ("Invalid access token.", "user authorization required")
        ):
            # lib/authentication_methods.rb: a missing, unknown, expired or revoked token.
            message = (
                f"Canvas refused the token ({status}"
                f"{': ' + said if said else ''}) for {method} {path}: check TEP_CANVAS_TOKEN"
            )
        elif "scope" in said.lower():
            message = (
                f"Canvas refused {method} {path} ({status}: {said}): the token's scopes do not "
                "cover this endpoint; use a token without scopes or add this one's"
            )
        else:
            permission = permission_for(method, path, query)
            needs = (
                f"the token's user needs {permission}"
                if permission
                else "the token's user lacks a permission this endpoint needs"
            )
            message = (
                f"Canvas refused {method} {path} ({status}{': ' + said if said else ''}): "
                f"{needs} in the account"
            )
        return CanvasPermissionError(
            self._scrub(message), status=status, method=method, path=path, permission=permission
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "[token]") if self._token else text


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _shown(url: str) -> str:
    """The path of a URL, for messages (the query may be long; it never holds the token)."""
    return urlsplit(url).path or url


def _query(url: str, params: Params) -> dict[str, str]:
    found = dict(parse_qsl(urlsplit(url).query))
    if isinstance(params, Mapping):
        found.update({str(k): str(v) for k, v in params.items()})
    elif params is not None:
        found.update({str(k): str(v) for k, v in params})
    return found


def _params(params: Params) -> Any:
    """httpx's params: a list of pairs keeps Canvas's repeated `state[]=a&state[]=b`."""
    if params is None:
        return None
    items = params.items() if isinstance(params, Mapping) else params
    pairs: list[tuple[str, str]] = []
    for key, value in items:
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            pairs.append((key, "true" if item is True else "false" if item is False else str(item)))
    return pairs


def _describe(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:200]
