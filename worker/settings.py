"""Settings: environment variables with the `TEP_` prefix, also read from `.env`.

A bad value refuses to start with one clear line (:func:`load_settings` raises
:class:`SettingsError`, whose message is that line), never a traceback.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
import zoneinfo
from functools import lru_cache
from typing import Literal

from celery.schedules import crontab
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from models import Schemas
from worker import notify_settings
from worker.logs import LOG_FORMATS, LogFormat

DEFAULT_DATABASE_URL = "sqlite:///tep.sqlite"
# kombu's SQLAlchemy transport: a broker in an SQLite file, so nothing else needs to run.
DEFAULT_BROKER_URL = "sqla+sqlite:///tep-broker.sqlite"
DEFAULT_RESULT_BACKEND = "db+sqlite:///tep-results.sqlite"
# Brokers that hand an unacknowledged message to another worker after the visibility timeout
# (kombu's Redis transport); the others (the SQLite default) keep it until its worker is gone.
REDELIVERING_BROKERS = ("redis://", "rediss://", "sentinel://")

# Upper bounds of the numeric settings. Each is far past any sane value and well inside what its
# consumer takes: `timedelta(seconds=...)`, Celery's `expires` and time limits, `int()` of the
# Redis transport options; past them a value passed validation, then crashed the worker at
# start-up (or made beat spin, below a second).
DAY_SECONDS = 86_400
# An interval sweep, webhook or notice run at most once a day (the nightly cron is the daily
# sweep) and at most once a second: a shorter interval is a zero `timedelta` to Celery's beat.
MIN_INTERVAL_SECONDS = 1
MAX_INTERVAL_SECONDS = DAY_SECONDS
# Three days (a 36 h hard time limit): well inside the 7-day life of the redelivery counts
# (worker/redelivery.py), which must outlast one visibility timeout to see the next delivery.
MAX_VISIBILITY_TIMEOUT_SECONDS = 3 * DAY_SECONDS
# A message that killed its worker this many times will not succeed on the next delivery.
MAX_DELIVERIES_LIMIT = 100
# The API reads a body whole (JSON, forms): 100 MiB is already far more than any request needs.
MAX_BODY_BYTES_LIMIT = 100 * 1024 * 1024


class SettingsError(Exception):
    """A setting has a value the service cannot run with; the message is one line for people."""


def parse_cron(expression: str) -> crontab:
    """Turn a five-field cron line (`m h dom mon dow`) into a Celery schedule.

    Celery's `crontab()` takes its fields in a different order than a cron line, so map them by
    name rather than splatting the split line.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TEP_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = DEFAULT_DATABASE_URL
    # Whose Canvas tables these are (DESIGN.md section 3): `managed` (tep's migrations create
    # them: embedded SQLite, standalone PostgreSQL) or `existing` (a self-hosted Canvas's own
    # database: tep migrates only its own tables and never alters Canvas's).
    canvas_tables: Literal["managed", "existing"] = "managed"
    # PostgreSQL schema of Canvas's tables, and of tep's own (TEP_SCHEMA); SQLite has one file.
    canvas_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    tep_schema: str = Field(
        default="tep", pattern=r"^[a-z_][a-z0-9_]{0,62}$", validation_alias="TEP_SCHEMA"
    )
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_RESULT_BACKEND
    # Seconds between interval sweeps; 0 turns the interval sweep off.
    sweep_interval_seconds: float = Field(default=60, ge=0, allow_inf_nan=False)
    # Nightly full sweep, a cron line read in `timezone`; empty turns it off.
    nightly_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    # Pairings per transaction; the same default as tasks.lifecycle.DEFAULT_BATCH_SIZE, where the
    # comment says why (measured with bench/).
    batch_size: int = Field(default=2_500, ge=1, le=100_000)
    # The Celery queue the tasks and beat use (lets several deployments share one broker).
    queue: str = Field(default="tep", min_length=1)
    # Seconds Redis waits for a late acknowledgement before handing the message to another
    # worker; the task time limits are derived from it (see worker/celery_app.py).
    visibility_timeout_seconds: float = Field(
        default=3600, ge=1, le=MAX_VISIBILITY_TIMEOUT_SECONDS, allow_inf_nan=False
    )
    # Deliveries of one late-acknowledged message before it is refused (worker/redelivery.py).
    max_deliveries: int = Field(default=3, ge=1, le=MAX_DELIVERIES_LIMIT)
    # Timers (tasks/timers.py): each interval sweep looks `interval + margin` seconds ahead and
    # schedules a sweep (a Celery ETA) at each second something falls due in that horizon, so
    # expiry comes at end_at, not at the next tick. Off: expiry waits for the next tick. The
    # margin covers a tick that runs late, so consecutive horizons overlap instead of leaving a
    # gap. Timers need the interval sweep (TEP_SWEEP_INTERVAL_SECONDS > 0): it looks ahead.
    timers: bool = True
    timer_margin_seconds: float = Field(
        default=5, ge=0, le=3600, allow_inf_nan=False, validate_default=True
    )

    # Events and notices (DESIGN.md section 5); parsed and checked by worker/notify_settings.py.
    webhook_urls: str = ""  # comma-separated; none by default
    webhook_secret: str = Field(default="", validate_default=True)
    # Seconds between webhook delivery runs (a sweep that changed something also starts one).
    webhook_interval_seconds: float = Field(
        default=10, ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS, allow_inf_nan=False
    )
    smtp_url: str = ""  # smtp://[user:password@]host:port; mail is off when unset
    mail_from: str = "tep@localhost"
    notify_before: str = "3d,1d"  # pre-expiry notice thresholds; empty turns them off
    notify_interval_seconds: float = Field(
        default=300, ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS, allow_inf_nan=False
    )
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # unset: no worker endpoint

    # The API (api/app.py). Requests with a larger body are a 413 before they are read.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, le=MAX_BODY_BYTES_LIMIT)
    # What clients reach the API at (`https://tep.example.edu`, a path prefix allowed): links
    # and redirects start with it; unset, they are relative (never built from the Host header).
    public_url: str = ""
    # The bearer token Prometheus sends to the API's /metrics; unset: the API serves none.
    metrics_token: str = ""

    # Days `tep prune` keeps idle sweep runs, sent notices and the rows of webhook receivers no
    # longer configured (tasks/retention.py, which says why each is safe to remove). At least 2:
    # `tep status --check` looks two days back for a failed run and the good one after it.
    retention_days: int = Field(default=30, ge=2, le=36_500)

    # The form of the worker's, beat's and tep's log: `text` lines, or `json`, one object per
    # line (worker/logs.py says which fields).
    log_format: LogFormat = "text"

    # Beside a hosted Canvas (tasks/canvas_rest/): tep's database holds a mirror of what it needs,
    # synced from Canvas's REST API, and each change is made through Canvas's own endpoints.
    # Unset: tep writes Canvas's tables itself (TEP_CANVAS_TABLES).
    canvas_url: str = ""  # https://school.instructure.com
    canvas_token: str = Field(default="", validate_default=True)  # an administrator's token
    # Root accounts to manage, comma-separated; empty: the root accounts the token administers.
    canvas_account_ids: str = ""
    # Seconds between syncs from Canvas (the sweep then runs on the fresh mirror).
    canvas_sync_interval_seconds: float = Field(
        default=300, ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS, allow_inf_nan=False
    )
    # Requests to Canvas in flight at once, per process.
    canvas_max_in_flight: int = Field(default=2, ge=1, le=32)

    @model_validator(mode="after")
    def _schemas_apart(self) -> Settings:
        if self.canvas_schema == self.tep_schema:
            raise ValueError(
                f"TEP_SCHEMA must differ from TEP_CANVAS_SCHEMA ({self.canvas_schema!r}): "
                "tep's tables are kept apart from Canvas's"
            )
        return self

    @field_validator("sweep_interval_seconds")
    @classmethod
    def _sweep_interval(cls, value: float) -> float:
        if value and not MIN_INTERVAL_SECONDS <= value <= MAX_INTERVAL_SECONDS:
            raise ValueError(
                f"use 0 (off) or {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS} seconds "
                "(the nightly cron is the daily sweep)"
            )
        return value

    @field_validator("timer_margin_seconds")
    @classmethod
    def _timer_horizon(cls, value: float, info: ValidationInfo) -> float:
        """The horizon must stay well inside the broker's visibility timeout: a timer waits up to
        the horizon for its moment, then runs up to the hard time limit (half the timeout, see
        worker/celery_app.py) before it is acknowledged, and Redis hands a message that stayed
        unacknowledged longer than the timeout to another worker. So horizon < timeout / 2."""
        interval = info.data.get("sweep_interval_seconds")
        visibility = info.data.get("visibility_timeout_seconds")
        broker = str(info.data.get("broker_url", ""))
        if not info.data.get("timers") or not interval or visibility is None:
            return value
        if not broker.startswith(REDELIVERING_BROKERS):
            return value
        horizon = interval + value
        if horizon >= visibility / 2:
            raise ValueError(
                f"the timers' horizon (TEP_SWEEP_INTERVAL_SECONDS + TEP_TIMER_MARGIN_SECONDS = "
                f"{horizon:g} s) must be under half of TEP_VISIBILITY_TIMEOUT_SECONDS "
                f"({visibility:g} s), or Redis would hand a waiting timer to a second worker; "
                "raise the timeout, shorten the interval, or set TEP_TIMERS=false"
            )
        return value

    @property
    def timer_horizon_seconds(self) -> float | None:
        """How far each interval sweep looks ahead for timers; None when timers are off."""
        if not self.timers or self.sweep_interval_seconds <= 0:
            return None
        return self.sweep_interval_seconds + self.timer_margin_seconds

    def schemas(self) -> Schemas:
        return Schemas(
            canvas=self.canvas_schema, tep=self.tep_schema, canvas_tables=self.canvas_tables
        )

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls(cls, value: str) -> str:
        return ",".join(notify_settings.parse_webhook_urls(value))

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("webhook_urls") and not value:
            raise ValueError("set a secret to sign webhooks with when TEP_WEBHOOK_URLS is set")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str) -> str:
        if value.strip():
            notify_settings.parse_smtp_url(value.strip())
        return value.strip()

    @field_validator("mail_from")
    @classmethod
    def _mail_from(cls, value: str) -> str:
        return notify_settings.check_address(value)

    @field_validator("notify_before")
    @classmethod
    def _notify_before(cls, value: str) -> str:
        notify_settings.parse_thresholds(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        notify_settings.check_userinfo(value)
        parsed = urllib.parse.urlsplit(value)
        if (
            not value.isascii()  # it goes into headers: punycode a host, percent-encode a path
            or not value.isprintable()
            or " " in value
            or parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.username is not None
            or parsed.query
            or parsed.fragment
        ):
            raise ValueError(
                "not a public base URL: http(s)://host[:port][/prefix], without user, query "
                "or fragment"
            )
        return value.rstrip("/")

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in LOG_FORMATS:
            return value.strip().lower()
        raise ValueError(f"use {' or '.join(LOG_FORMATS)}")

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: str) -> str:
        if value and (len(value) < 32 or not value.isascii() or not value.isprintable()):
            raise ValueError("use at least 32 printable ASCII characters (openssl rand -hex 32)")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # A password holding an un-encoded / ? # or @ would be read as part of the host or path
        # (and echoed in a connection error): refused before SQLAlchemy parses the URL.
        notify_settings.check_userinfo(value)
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError("not a database URL (e.g. postgresql://user@host/db)") from None
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ValueError("only postgresql:// and sqlite:// databases are supported")
        return value

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("not a URL (e.g. redis://localhost:6379/0)")
        notify_settings.check_userinfo(value)  # kombu would read a password's tail as the port
        return value

    @field_validator("canvas_url")
    @classmethod
    def _canvas_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        notify_settings.check_userinfo(value)
        parsed = urllib.parse.urlsplit(value)
        if (
            not value.isascii()
            or not value.isprintable()
            or " " in value
            or parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.username is not None
            or parsed.query
            or parsed.fragment
        ):
            raise ValueError(
                "not a Canvas URL: http(s)://host[:port][/prefix], without user, query or fragment"
            )
        return value.rstrip("/").removesuffix("/api/v1")

    @field_validator("canvas_token")
    @classmethod
    def _canvas_token(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if value and (not value.isascii() or not value.isprintable() or " " in value):
            raise ValueError("a Canvas access token is printable ASCII without spaces")
        if info.data.get("canvas_url") and not value:
            raise ValueError("TEP_CANVAS_URL is set: set TEP_CANVAS_TOKEN to an admin's token")
        return value

    @field_validator("canvas_account_ids")
    @classmethod
    def _canvas_account_ids(cls, value: str) -> str:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if any(not part.isdigit() or not 0 < int(part) < 2**63 for part in parts):
            raise ValueError("comma-separated Canvas account ids (e.g. 1,2)")
        return ",".join(parts)

    @property
    def canvas_account_id_list(self) -> list[int]:
        return [int(part) for part in self.canvas_account_ids.split(",") if part]

    @property
    def through_canvas(self) -> bool:
        """Changes go through a hosted Canvas's REST API (tasks/canvas_rest/)."""
        return bool(self.canvas_url)

    @field_validator("nightly_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if value.strip():
            try:
                parse_cron(value)
            except ValueError as exc:
                raise ValueError(f"not a cron line: {exc}") from None
        return value.strip()

    @property
    def webhook_url_list(self) -> list[str]:
        return notify_settings.parse_webhook_urls(self.webhook_urls)

    @property
    def smtp(self) -> notify_settings.SmtpConfig | None:
        return notify_settings.parse_smtp_url(self.smtp_url) if self.smtp_url else None

    @property
    def notice_thresholds(self) -> tuple[dt.timedelta, ...]:
        return notify_settings.parse_thresholds(self.notify_before)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, America/Denver)") from None
        return value


def redact(value: object, *, url: bool = False) -> object:
    """A setting's value fit for a log or an error line: a URL (with `url`, any text, read as
    one) is shown without its password, whatever it holds, nor its query's values
    (:func:`notify_settings.mask_url`)."""
    if isinstance(value, str) and (url or "://" in value):
        return notify_settings.mask_url(value)
    return value


# Never echoed back in an error line at all.
_SECRET_SETTINGS = ("TEP_WEBHOOK_SECRET", "TEP_METRICS_TOKEN", "TEP_CANVAS_TOKEN")
# Always masked as URLs, even when a value is too broken to look like one.
_URL_SETTINGS = (
    "TEP_DATABASE_URL",
    "TEP_BROKER_URL",
    "TEP_RESULT_BACKEND",
    "TEP_SMTP_URL",
    "TEP_WEBHOOK_URLS",
    "TEP_PUBLIC_URL",
    "TEP_CANVAS_URL",
)


def _one_line(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a check across settings, whose input is all of them: not shown
            problems.append(message)
            continue
        name = "TEP_" + "_".join(str(part) for part in item["loc"]).upper()
        value = redact(item.get("input"), url=name in _URL_SETTINGS)
        shown = "***" if name in _SECRET_SETTINGS else repr(value)
        problems.append(f"{name}={shown}: {message}")
    return "invalid settings: " + "; ".join(problems)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
