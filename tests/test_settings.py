"""Settings refuse nonsense at start-up with one clear line."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import utcnow
from tests.processes import PROJECT_ROOT
from worker import settings as tep_settings
from worker.celery_app import beat_schedule, create_app
from worker.settings import Settings, SettingsError, load_settings, parse_cron

TOO_LARGE = "99999999999999999999"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("TEP_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_need_nothing_else_running() -> None:
    settings = load_settings()
    assert settings.database_url.startswith("sqlite:///")
    assert settings.broker_url.startswith("sqla+sqlite:///")
    assert settings.sweep_interval_seconds == 60
    assert settings.nightly_cron == "0 2 * * *"
    assert settings.timezone == "UTC"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TEP_SWEEP_INTERVAL_SECONDS", "-5", "TEP_SWEEP_INTERVAL_SECONDS='-5'"),
        ("TEP_NIGHTLY_CRON", "61 2 * * *", "not a cron line"),
        ("TEP_NIGHTLY_CRON", "0 2 * *", "expected 5 fields"),
        ("TEP_TIMEZONE", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("TEP_DATABASE_URL", "not a url", "not a database URL"),
        ("TEP_DATABASE_URL", "mysql://x/y", "only postgresql:// and sqlite://"),
        ("TEP_BROKER_URL", "localhost", "not a URL"),
        ("TEP_BATCH_SIZE", "0", "TEP_BATCH_SIZE='0'"),
    ],
)
def test_bad_values_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid settings: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TEP_SWEEP_INTERVAL_SECONDS", "inf", "a finite number"),
        ("TEP_SWEEP_INTERVAL_SECONDS", "nan", "a finite number"),
        ("TEP_SWEEP_INTERVAL_SECONDS", "1e308", "use 0 (off) or 1 to 86400 seconds"),
        ("TEP_SWEEP_INTERVAL_SECONDS", "1e-300", "use 0 (off) or 1 to 86400 seconds"),
        ("TEP_VISIBILITY_TIMEOUT_SECONDS", "inf", "a finite number"),
        ("TEP_VISIBILITY_TIMEOUT_SECONDS", "1e308", "less than or equal to 259200"),
        ("TEP_TIMER_MARGIN_SECONDS", "nan", "a finite number"),
        ("TEP_TIMER_MARGIN_SECONDS", "inf", "a finite number"),
        ("TEP_WEBHOOK_INTERVAL_SECONDS", "1e308", "less than or equal to 86400"),
        ("TEP_WEBHOOK_INTERVAL_SECONDS", "1e-300", "greater than or equal to 1"),
        ("TEP_NOTIFY_INTERVAL_SECONDS", "inf", "a finite number"),
        ("TEP_NOTIFY_INTERVAL_SECONDS", "-inf", "a finite number"),
        ("TEP_MAX_DELIVERIES", TOO_LARGE, "less than or equal to 100"),
        ("TEP_MAX_BODY_BYTES", TOO_LARGE, "less than or equal to 104857600"),
        ("TEP_BATCH_SIZE", TOO_LARGE, "less than or equal to 100000"),
        ("TEP_METRICS_PORT", TOO_LARGE, "less than or equal to 65535"),
        ("TEP_NOTIFY_BEFORE", f"{TOO_LARGE}w", "is too long"),
        ("TEP_NOTIFY_BEFORE", "3d,400d", "notices come at most 366 days before the end"),
    ],
)
def test_numbers_their_consumers_cannot_take_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    """Each passed validation, then crashed the worker at start-up (timedelta, int(), Celery's
    expires) or later (the notice planner's `now + threshold`), or made beat spin."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"invalid settings: {name}={value!r}: ")
    assert expected in message
    assert "\n" not in message


def test_the_largest_values_allowed_build_a_worker() -> None:
    """Every bound is inside what its consumer takes: the app, its beat schedule and the Redis
    transport options are built, and each interval and threshold can be added to now."""
    settings = Settings(
        broker_url="redis://127.0.0.1:6379/0",
        sweep_interval_seconds=tep_settings.MAX_INTERVAL_SECONDS,
        visibility_timeout_seconds=tep_settings.MAX_VISIBILITY_TIMEOUT_SECONDS,
        timer_margin_seconds=3600,
        webhook_urls="https://hooks.example/in",
        webhook_secret="secret",
        webhook_interval_seconds=tep_settings.MAX_INTERVAL_SECONDS,
        smtp_url="smtp://mail.example:25",
        notify_interval_seconds=tep_settings.MAX_INTERVAL_SECONDS,
        notify_before="366d",
        max_deliveries=tep_settings.MAX_DELIVERIES_LIMIT,
        max_body_bytes=tep_settings.MAX_BODY_BYTES_LIMIT,
    )
    app = create_app(settings)
    assert app.conf.task_soft_time_limit < app.conf.task_time_limit
    assert app.conf.broker_transport_options["unacked_restore_interval"] >= 1
    entries = app.conf.beat_schedule
    assert {"expire-due-pairings-every-interval", "deliver-webhooks", "send-notices"} <= set(
        entries
    )
    now = utcnow()
    for entry in entries.values():
        if isinstance(entry["schedule"], dt.timedelta):
            expires = dt.timedelta(seconds=entry["options"]["expires"])
            assert now + entry["schedule"] + expires > now  # no OverflowError
    assert now + max(settings.notice_thresholds) > now


def test_dotenv_is_read() -> None:
    Path(".env").write_text("TEP_SWEEP_INTERVAL_SECONDS=7\n")
    assert load_settings().sweep_interval_seconds == 7


def test_cron_fields_map_to_celery_by_name() -> None:
    # minute hour day-of-month month day-of-week: 02:30 on the 1st of every month
    schedule = parse_cron("30 2 1 * *")
    assert schedule.minute == {30}
    assert schedule.hour == {2}
    assert schedule.day_of_month == {1}
    assert schedule.day_of_week == set(range(7))


def test_beat_entries_follow_the_settings() -> None:
    both = beat_schedule(Settings(sweep_interval_seconds=15, nightly_cron="0 3 * * *"))
    assert both["expire-due-pairings-every-interval"]["schedule"] == dt.timedelta(seconds=15)
    assert both["expire-due-pairings-nightly"]["schedule"].hour == {3}
    assert beat_schedule(Settings(sweep_interval_seconds=0, nightly_cron="")) == {}


@pytest.mark.parametrize("program", ["tep", "celery"])
@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TEP_TIMEZONE", "Nowhere/Special", "unknown time zone 'Nowhere/Special'"),
        ("TEP_SWEEP_INTERVAL_SECONDS", "inf", "TEP_SWEEP_INTERVAL_SECONDS='inf'"),
        ("TEP_NOTIFY_BEFORE", f"{TOO_LARGE}w", f"'{TOO_LARGE}w' is too long"),
    ],
)
def test_processes_refuse_to_start_with_one_line(
    program: str, name: str, value: str, expected: str
) -> None:
    env = {**os.environ, name: value}
    command = (
        [sys.executable, "-c", "from worker.cli import main; main()", "sweep"]
        if program == "tep"
        else [sys.executable, "-m", "celery", "-A", "worker", "worker"]
    )
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
