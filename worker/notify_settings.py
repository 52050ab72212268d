"""Parsing the events-and-notices settings (DESIGN.md section 5) into the values the code uses.

Each parser raises ValueError with a message meant for the operator; `worker.settings` turns it
into the one line a bad setting stops the process with.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import urllib.parse

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SMTP_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}


@dataclasses.dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None
    password: str | None
    # `smtps://` is TLS from the first byte; `smtp://` upgrades with STARTTLS when offered.
    implicit_tls: bool


def parse_duration(text: str) -> dt.timedelta:
    """`3d`, `12h`, `30m`, `90s`, `1w`."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a duration (e.g. 3d, 12h, 30m)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text.strip()!r} must be longer than zero")
    return dt.timedelta(seconds=seconds)


def parse_thresholds(text: str) -> tuple[dt.timedelta, ...]:
    """The notice thresholds, longest first, without repeats; empty means no pre-expiry notices."""
    parts = [part for part in text.split(",") if part.strip()]
    return tuple(sorted({parse_duration(part) for part in parts}, reverse=True))


def parse_webhook_urls(text: str) -> list[str]:
    urls = [part.strip() for part in text.split(",") if part.strip()]
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
    if len(set(urls)) != len(urls):
        raise ValueError("a URL is listed twice")
    return urls


def receiver_label(url: str) -> str:
    """A webhook receiver as metrics and logs name it: scheme, host, port and path, without the
    userinfo, query string or fragment, where receivers keep credentials and tokens."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def receiver_labels(urls: list[str]) -> dict[str, str]:
    """Each receiver's label; receivers that would share one (the same URL with other
    credentials or query) get their position in TEP_WEBHOOK_URLS after it (`#2`), so every
    receiver keeps a series of its own."""
    labels = {url: receiver_label(url) for url in urls}
    shared = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    for position, url in enumerate(urls, start=1):
        if labels[url] in shared:
            labels[url] = f"{labels[url]} #{position}"
    return labels


def parse_smtp_url(text: str) -> SmtpConfig:
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in SMTP_DEFAULT_PORTS:
        raise ValueError(f"{_redact(text)!r} is not smtp://[user:password@]host:port")
    try:
        port = parsed.port or SMTP_DEFAULT_PORTS[parsed.scheme]
    except ValueError:
        raise ValueError(f"{_redact(text)!r} has a port that is not a number") from None
    if not parsed.hostname:
        raise ValueError(f"{_redact(text)!r} names no host")
    return SmtpConfig(
        host=parsed.hostname,
        port=port,
        username=urllib.parse.unquote(parsed.username) if parsed.username else None,
        password=urllib.parse.unquote(parsed.password) if parsed.password else None,
        implicit_tls=parsed.scheme == "smtps",
    )


def check_address(text: str) -> str:
    address = text.strip()
    if "@" not in address or any(c.isspace() for c in address):
        raise ValueError(f"{address!r} is not an email address")
    return address


def _redact(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)
