"""A small HTTP/1.1 fault proxy in front of the test Canvas (a live `tep api`), which the tests
control: Canvas's throttle answers, 500s, slow answers and dropped connections, and optionally a
leaky bucket that throttles as Canvas's does.

Canvas facts come from `app/middleware/request_throttle.rb` (instructure/canvas-lms, commit
00b222d7; CANVAS.md calls it lib/, it lives in app/middleware/) and its Redis script
`app/middleware/request_throttle/increment_bucket.lua`:

* a throttled request is answered `403`, `Content-Type: text/plain; charset=utf-8`, body
  `403 Forbidden (Rate Limit Exceeded)\\n` (`rate_limit_exceeded`), never a 429;
* every token-authenticated answer carries `X-Rate-Limit-Remaining` (`hwm - count`), and
  `X-Request-Cost` unless it was throttled (`headers["X-Request-Cost"] = cost.to_s unless
  throttled`): a throttled answer has no cost header;
* the bucket (`LeakyBucket`): high-water mark 600 (full at or above it), maximum 800, outflow 10
  per second, up-front cost 50. `reserve_capacity` adds the up-front cost when a request starts
  and, when it ends, adds the actual cost and takes the up-front cost away again; whether the
  request is let in is judged after the up-front cost is added (`allowed?` -> `bucket.full?`).
  The script leaks `outflow * elapsed` before each increment and clamps the count to
  `[0, maximum]`.

Each proxied request is logged in `proxy.requests` as `(method, path_with_query, status or
"dropped", fault or None)`.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

import httpx

FaultKind = Literal["throttle", "error500", "slow", "drop_before", "drop_after", "respond"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "throttle", "error500", "slow", "drop_before", "drop_after", "respond",
)  # fmt: skip

# request_throttle.rb, `rate_limit_exceeded`: `"403 #{HTTP_STATUS_CODES[403]} (Rate Limit
# Exceeded)\n"`.
THROTTLE_BODY = b"403 Forbidden (Rate Limit Exceeded)\n"
THROTTLE_CONTENT_TYPE = "text/plain; charset=utf-8"
# lib/authentication_methods.rb `render_json_unauthorized` (a user who may not do this).
REFUSAL_BODY = (
    b'{"status":"unauthorized","errors":[{"message":"user not authorized to perform that action"}]}'
)
# Without a bucket the proxy still sends the headers a client reads: a full bucket's headroom.
DEFAULT_REMAINING = 600.0

# Headers that belong to one hop (RFC 9110 7.6.1), or that the proxy sets itself.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    }
)


class ProxiedRequest(NamedTuple):
    method: str
    path: str  # path with query, as the client sent it
    status: int | Literal["dropped"]
    fault: FaultKind | None


@dataclass
class Fault:
    kind: FaultKind
    times: int
    match: re.Pattern[str] | None
    delay: float
    status: int = 403
    body: bytes = b""

    def matches(self, line: str) -> bool:
        return self.match is None or self.match.search(line) is not None


@dataclass
class LeakyBucket:
    """Canvas's leaky bucket (request_throttle.rb `LeakyBucket`, defaults `hwm: 600`,
    `maximum: 800`, `outflow: 10`, `up_front_cost: 50`), one per token as Canvas keys it
    (`client_identifiers`: `token:<hash>` first).

    `cost`: each request's actual cost. Canvas counts CPU plus database seconds; None uses the
    upstream's elapsed seconds (the nearest thing the proxy can see), a number a fixed cost (for
    benchmarks that want Canvas-like costs from a fast test Canvas)."""

    capacity: float = 600.0  # Canvas's `hwm`: at or above it the bucket is full
    outflow_per_second: float = 10.0
    up_front_cost: float = 50.0
    maximum: float = 800.0
    cost: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _levels: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    throttled: int = 0

    def _increment(self, key: str, amount: float) -> float:
        """increment_bucket.lua: leak since last touched, add, clamp to [0, maximum]."""
        now = self.clock()
        count, touched = self._levels.get(key, (0.0, now))
        if count > 0:
            loss = self.outflow_per_second * (now - touched)
            if loss > 0:
                count -= loss
        count = min(max(count + amount, 0.0), self.maximum)
        self._levels[key] = (count, now)
        return count

    def start(self, key: str) -> bool:
        """A request begins: reserve the up-front cost; False if the bucket is then full."""
        with self._lock:
            count = self._increment(key, self.up_front_cost)
            if count >= self.capacity:
                self.throttled += 1
                return False
            return True

    def finish(self, key: str, actual: float) -> float:
        """The request ended: its actual cost replaces the up-front one; returns the remaining
        headroom (`hwm - count`, as Canvas's `remaining`)."""
        with self._lock:
            count = self._increment(key, actual - self.up_front_cost)
            return self.capacity - count

    def level(self, key: str) -> float:
        with self._lock:
            return self._increment(key, 0.0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the proxy's own log is `requests`

    def do_GET(self) -> None:
        self.server.proxy._handle(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET


class FaultProxy:
    """A proxy on 127.0.0.1 (a free port) in front of `upstream` (a base URL, no /api/v1)."""

    def __init__(
        self, upstream: str, *, bucket: LeakyBucket | None = None, timeout: float = 60.0
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.bucket = bucket
        self._faults: list[Fault] = []
        self._log: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight_seen = 0
        self._http = httpx.Client(
            timeout=timeout, limits=httpx.Limits(max_connections=64, max_keepalive_connections=16)
        )
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"fault-proxy-{port}", daemon=True
        )
        self._thread.start()

    # ---- the tests' controls

    def add_fault(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        match: str | None = None,
        delay: float = 0.0,
        status: int = 403,
        body: bytes | str | None = None,
    ) -> None:
        """The next `times` requests whose `"METHOD /path?query"` the regex `match` finds (any
        request without one) get the fault. Faults are tried in the order they were added.

        `respond` (not forwarded) answers `status` with `body` (JSON; default Canvas's refusal
        of an action, `{"status": "unauthorized", "errors": [{"message": ...}]}`), for answers
        the test Canvas never gives."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(
                Fault(
                    kind,
                    times,
                    re.compile(match) if match is not None else None,
                    delay,
                    status,
                    body.encode() if isinstance(body, str) else body or REFUSAL_BODY,
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many fault uses are left (0 once every fault added has been used)."""
        with self._lock:
            return sum(fault.times for fault in self._faults)

    @property
    def requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()
            self.max_in_flight_seen = 0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        # Answers still being made (a slow fault the client gave up on) finish first.
        deadline = time.monotonic() + 10
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._http.close()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[ProxiedRequest]:
        """The log once it holds `count` requests (a slow answer is logged when it is made)."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.requests

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the work

    def _take_fault(self, line: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(line):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _record(
        self, method: str, path: str, status: int | Literal["dropped"], fault: Fault | None
    ) -> None:
        with self._lock:
            self._log.append(ProxiedRequest(method, path, status, fault.kind if fault else None))

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handle(self, handler: _Handler) -> None:
        with self._counted():
            self._answer(handler)

    def _answer(self, handler: _Handler) -> None:
        method, path = handler.command, handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self._take_fault(f"{method} {path}")
        kind = fault.kind if fault else None
        token = handler.headers.get("Authorization", "")

        if kind == "drop_before":
            self._record(method, path, "dropped", fault)
            _drop(handler)
            return
        if kind == "throttle":
            self._record(method, path, 403, fault)
            # No X-Request-Cost: Canvas leaves it off throttled answers.
            _reply(
                handler,
                403,
                [("Content-Type", THROTTLE_CONTENT_TYPE), ("X-Rate-Limit-Remaining", "0.0")],
                THROTTLE_BODY,
            )
            return
        if kind == "error500":
            self._record(method, path, 500, fault)
            _reply(
                handler,
                500,
                [("Content-Type", "application/json; charset=utf-8")],
                b'{"errors":[{"message":"An error occurred (fault proxy)."}]}',
            )
            return
        if kind == "respond" and fault is not None:
            self._record(method, path, fault.status, fault)
            _reply(
                handler,
                fault.status,
                [("Content-Type", "application/json; charset=utf-8")],
                fault.body,
            )
            return
        if kind == "slow":
            time.sleep(fault.delay if fault else 0.0)

        if self.bucket is not None and not self.bucket.start(token):
            remaining = self.bucket.finish(token, 0.0)
            self._record(method, path, 403, None)
            _reply(
                handler,
                403,
                [
                    ("Content-Type", THROTTLE_CONTENT_TYPE),
                    # request_throttle.rb overwrites the throttle answer's "0.0" with the
                    # bucket's `remaining` after the request.
                    ("X-Rate-Limit-Remaining", _number(remaining)),
                ],
                THROTTLE_BODY,
            )
            return

        started = time.monotonic()
        try:
            upstream = self._http.request(
                method,
                self.upstream + path,
                headers=[
                    (name, value)
                    for name, value in handler.headers.items()
                    if name.lower() not in _HOP_HEADERS
                ]
                + [("Accept-Encoding", "identity")],
                content=body,
            )
        except httpx.HTTPError as error:
            if self.bucket is not None:
                self.bucket.finish(token, 0.0)
            self._record(method, path, 502, fault)
            _reply(handler, 502, [("Content-Type", "text/plain")], f"{error}\n".encode())
            return
        elapsed = time.monotonic() - started
        if self.bucket is not None:
            cost = self.bucket.cost if self.bucket.cost is not None else elapsed
            remaining = self.bucket.finish(token, cost)
        else:
            cost, remaining = elapsed, DEFAULT_REMAINING

        if kind == "drop_after":  # the change was made upstream; its answer is lost
            self._record(method, path, "dropped", fault)
            _drop(handler)
            return
        headers = [
            (name, self._rewrite(value) if name.lower() == "link" else value)
            for name, value in upstream.headers.multi_items()
            if name.lower() not in _HOP_HEADERS
            and name.lower() not in ("x-request-cost", "x-rate-limit-remaining")
        ]
        headers += [
            ("X-Request-Cost", _number(cost)),
            ("X-Rate-Limit-Remaining", _number(remaining)),
        ]
        self._record(method, path, upstream.status_code, fault)
        _reply(handler, upstream.status_code, headers, upstream.content)

    def _rewrite(self, link: str) -> str:
        """Pagination through the proxy: the upstream's origin in a Link becomes the proxy's."""
        origin = urlsplit(self.upstream)
        return link.replace(f"{origin.scheme}://{origin.netloc}", self.base_url)


def _number(value: float) -> str:
    return repr(round(value, 6))


def _reply(handler: _Handler, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    try:
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
        handler.wfile.flush()
    except OSError:  # the client gave up (a timeout on a slow answer)
        handler.close_connection = True


def _drop(handler: _Handler) -> None:
    """Close the connection without a byte of answer: the client sees the server disconnect."""
    handler.close_connection = True
    with suppress(OSError):
        handler.connection.shutdown(socket.SHUT_RDWR)
