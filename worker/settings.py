"""Settings: environment variables with the `TEP_` prefix, also read from `.env`.

A bad value refuses to start with one clear line (:func:`load_settings` raises
:class:`SettingsError`, whose message is that line), never a traceback.
"""

from __future__ import annotations

import zoneinfo
from functools import lru_cache

from celery.schedules import crontab
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_DATABASE_URL = "sqlite:///tep.sqlite"
# kombu's SQLAlchemy transport: a broker in an SQLite file, so nothing else needs to run.
DEFAULT_BROKER_URL = "sqla+sqlite:///tep-broker.sqlite"
DEFAULT_RESULT_BACKEND = "db+sqlite:///tep-results.sqlite"


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
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_RESULT_BACKEND
    # Seconds between interval sweeps; 0 turns the interval sweep off.
    sweep_interval_seconds: float = Field(default=60, ge=0)
    # Nightly full sweep, a cron line read in `timezone`; empty turns it off.
    nightly_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    # Due enrollments read per transaction; the same default as tasks.lifecycle.DEFAULT_BATCH_SIZE,
    # where the comment says why (measured with bench/).
    batch_size: int = Field(default=100_000, ge=1, le=1_000_000)
    # The Celery queue the tasks and beat use (lets several deployments share one broker).
    queue: str = Field(default="tep", min_length=1)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL (e.g. postgresql://user@host/db)") from None
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ValueError("only postgresql:// and sqlite:// databases are supported")
        return value

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("not a URL (e.g. redis://localhost:6379/0)")
        return value

    @field_validator("nightly_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if value.strip():
            try:
                parse_cron(value)
            except ValueError as exc:
                raise ValueError(f"not a cron line: {exc}") from None
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, America/Denver)") from None
        return value


def _one_line(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = "TEP_" + "_".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}={item.get('input')!r}: {message}")
    return "invalid settings: " + "; ".join(problems)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
