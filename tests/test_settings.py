"""Settings refuse nonsense at start-up with one clear line."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import PROJECT_ROOT
from worker.celery_app import beat_schedule
from worker.settings import Settings, SettingsError, load_settings, parse_cron


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
def test_processes_refuse_to_start_with_one_line(program: str) -> None:
    env = {**os.environ, "TEP_TIMEZONE": "Nowhere/Special"}
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
    assert "unknown time zone 'Nowhere/Special'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
