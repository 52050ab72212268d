"""Parsing the events-and-notices settings (DESIGN.md section 5) into the values the code uses.

Each parser raises ValueError with a message meant for the operator; `worker.settings` turns it
into the one line a bad setting stops the process with. A URL setting is never shown as it is:
:func:`mask_url` (messages) and :func:`receiver_label` (metrics, logs, `tep status`) show it
without its password, whatever that holds, or its query string.
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


# The longest duration a timedelta holds (about 2.7 million years).
MAX_DURATION_SECONDS = int(dt.timedelta.max.total_seconds())
# A pre-expiry notice at most a year ahead: the planner adds the longest threshold to now, and a
# notice stores its threshold in seconds in an integer column.
MAX_NOTICE_THRESHOLD = dt.timedelta(days=366)


def parse_duration(text: str) -> dt.timedelta:
    """`3d`, `12h`, `30m`, `90s`, `1w`."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a duration (e.g. 3d, 12h, 30m)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text.strip()!r} must be longer than zero")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text.strip()!r} is too long")
    return dt.timedelta(seconds=seconds)


def parse_thresholds(text: str) -> tuple[dt.timedelta, ...]:
    """The notice thresholds, longest first, without repeats; empty means no pre-expiry notices."""
    parts = [part for part in text.split(",") if part.strip()]
    thresholds = tuple(sorted({parse_duration(part) for part in parts}, reverse=True))
    if thresholds and thresholds[0] > MAX_NOTICE_THRESHOLD:
        raise ValueError(
            f"notices come at most {MAX_NOTICE_THRESHOLD.days} days before the end, not "
            f"{thresholds[0].days} days"
        )
    return thresholds


def parse_webhook_urls(text: str) -> list[str]:
    urls = [part.strip() for part in text.split(",") if part.strip()]
    for position, url in enumerate(urls, start=1):
        # Named by position and label: the URL itself may hold a password or a token.
        try:
            check_userinfo(url)
        except ValueError as error:
            raise ValueError(f"URL #{position}: {error}") from None
        named = f"URL #{position} ({receiver_label(url)})"
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{named} is not an http(s) URL")
        try:
            parsed.port  # noqa: B018 (it parses the port)
        except ValueError:
            raise ValueError(f"{named} has a port that is not a number") from None
    if len(set(urls)) != len(urls):
        raise ValueError("a URL is listed twice")
    return urls


def parse_smtp_url(text: str) -> SmtpConfig:
    check_userinfo(text)
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in SMTP_DEFAULT_PORTS:
        raise ValueError("not an smtp:// or smtps:// URL (smtp://[user:password@]host[:port])")
    try:
        port = parsed.port or SMTP_DEFAULT_PORTS[parsed.scheme]
    except ValueError:
        raise ValueError("the port is not a number") from None
    if not parsed.hostname:
        raise ValueError("no host")
    return SmtpConfig(
        host=parsed.hostname,
        port=port,
        username=urllib.parse.unquote(parsed.username) if parsed.username else None,
        password=urllib.parse.unquote(parsed.password) if parsed.password else None,
        implicit_tls=parsed.scheme == "smtps",
    )


# An address as it goes into a header and an SMTP envelope unquoted: a dot-atom local part and a
# host name, ASCII only (the notices do not speak SMTPUTF8). Nothing else: no space, control
# character, comma, angle bracket or quote that could end the address or the header, or add
# another. Matched whole (`fullmatch`): `$` would also match before a final line break.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")


def check_address(text: str) -> str:
    """`text` if it is one plain email address (`local@host.example`), else ValueError."""
    if _ADDRESS.fullmatch(text) is None:
        raise ValueError(f"{text[:80]!r} is not an email address")
    return text


# --------------------------------------------------------------------------------------------
# URLs in messages, logs and labels. Every URL setting (TEP_DATABASE_URL, TEP_BROKER_URL,
# TEP_RESULT_BACKEND, TEP_SMTP_URL, TEP_WEBHOOK_URLS) is shown through `mask_url` or
# `receiver_label`, both of which read the userinfo with `_split_userinfo`.

# Characters that end a URL's userinfo for one parser or another when not percent-encoded.
_USERINFO_ENDS = "/?#@"


def _split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """`url` as (`scheme://`, its userinfo or None, what follows the userinfo's `@`).

    The userinfo is read up to the last `@` of the URL, where parsers stop at the first `/`,
    `?` or `#` (and SQLAlchemy at the first `@`): a password holding one of those, not
    percent-encoded, is still whole inside it, where a parser would show part of it as the
    host, port or path. A URL with an `@` in its path is over-read: more is hidden, nothing is
    shown. When a `?` or `#` comes before that `@`, what follows it may be more of a query or
    fragment, where tokens live: it is None, for nothing of it to be shown."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, after = rest.rpartition("@")
    if not at:
        return scheme + separator, None, rest
    if "?" in userinfo or "#" in userinfo:
        return scheme + separator, userinfo, None
    return scheme + separator, userinfo, after


def mask_url(url: str) -> str:
    """`url` fit for a message or a log line, whatever its password holds: the password is
    `***` (a userinfo without one, which may be a token, too), so are the query's values; the
    fragment is dropped. `postgresql://tep:s3cr/t@db/tep?sslmode=require` is shown as
    `postgresql://tep:***@db/tep?sslmode=***`."""
    start, userinfo, rest = _split_userinfo(url)
    if userinfo is not None:
        user, colon, _password = userinfo.partition(":")
        shown = f"{user}:***" if colon and not any(c in user for c in _USERINFO_ENDS) else "***"
        start += shown + "@"
    if rest is None:
        return start + "***"
    rest, _hash, _fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    if question:
        names = [part.partition("=")[0] for part in query.split("&")]
        rest += "?" + "&".join(f"{name}=***" for name in names)
    return start + rest


def check_userinfo(url: str) -> None:
    """Refuse a URL whose user name or password holds `/`, `?`, `#` or `@` not percent-encoded
    (or with an `@` after its host). Parsers read such a URL each their own way, and their
    error messages quote what they took for its host or port: a piece of the password."""
    _start, userinfo, _rest = _split_userinfo(url)
    if userinfo is not None and any(c in userinfo for c in _USERINFO_ENDS):
        raise ValueError(
            "percent-encode '/', '?', '#' and '@' in the user name and password "
            "(%2F, %3F, %23, %40), and an '@' after the host"
        )


def receiver_label(url: str) -> str:
    """A webhook receiver as metrics, logs and `tep status` name it: scheme, host, port and
    path, without the userinfo, query string or fragment, where receivers keep credentials
    and tokens."""
    start, _userinfo, rest = _split_userinfo(url)
    if rest is None:
        return start + "***"
    parts = urllib.parse.urlsplit(start + rest)
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
