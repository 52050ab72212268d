"""TEP_CANVAS_*: the settings of tep beside a hosted Canvas (tasks/canvas_rest/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.beat import SEND_CANVAS_COMMANDS_TASK, SYNC_CANVAS_TASK, events_beat_schedule
from worker.settings import SettingsError, load_settings

TOKEN = "7~SecretCanvasTokenValue0123456789"


@pytest.fixture(autouse=True)
def _no_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("TEP_CANVAS_URL", "TEP_CANVAS_TOKEN", "TEP_CANVAS_ACCOUNT_IDS"):
        monkeypatch.delenv(name, raising=False)


def test_off_by_default() -> None:
    settings = load_settings()
    assert not settings.through_canvas
    assert settings.canvas_max_in_flight == 2
    assert settings.canvas_account_id_list == []
    assert not {"sync-canvas", "send-canvas-commands"} & set(events_beat_schedule(settings))


def test_on_with_a_url_and_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEP_CANVAS_URL", "https://school.instructure.com/api/v1/")
    monkeypatch.setenv("TEP_CANVAS_TOKEN", TOKEN)
    monkeypatch.setenv("TEP_CANVAS_ACCOUNT_IDS", " 1, 2 ")
    monkeypatch.setenv("TEP_CANVAS_SYNC_INTERVAL_SECONDS", "120")
    settings = load_settings()
    assert settings.through_canvas
    # The API's own prefix is the client's business: a URL given with it is taken without.
    assert settings.canvas_url == "https://school.instructure.com"
    assert settings.canvas_account_id_list == [1, 2]
    schedule = events_beat_schedule(settings)
    assert schedule["sync-canvas"]["task"] == SYNC_CANVAS_TASK
    assert schedule["sync-canvas"]["schedule"].total_seconds() == 120
    assert schedule["send-canvas-commands"]["task"] == SEND_CANVAS_COMMANDS_TASK


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TEP_CANVAS_URL": "https://school.instructure.com"}, "TEP_CANVAS_TOKEN"),
        ({"TEP_CANVAS_URL": "ftp://school.example", "TEP_CANVAS_TOKEN": TOKEN}, "TEP_CANVAS_URL"),
        (
            {"TEP_CANVAS_URL": "https://school.example/?x=1", "TEP_CANVAS_TOKEN": TOKEN},
            "TEP_CANVAS_URL",
        ),
        ({"TEP_CANVAS_ACCOUNT_IDS": "1,self"}, "TEP_CANVAS_ACCOUNT_IDS"),
        ({"TEP_CANVAS_ACCOUNT_IDS": "0"}, "TEP_CANVAS_ACCOUNT_IDS"),
        ({"TEP_CANVAS_MAX_IN_FLIGHT": "0"}, "TEP_CANVAS_MAX_IN_FLIGHT"),
        ({"TEP_CANVAS_SYNC_INTERVAL_SECONDS": "inf"}, "TEP_CANVAS_SYNC_INTERVAL_SECONDS"),
        ({"TEP_CANVAS_TOKEN": "two words"}, "TEP_CANVAS_TOKEN"),
    ],
)
def test_bad_values_are_refused_in_one_line(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    line = str(refused.value)
    assert "\n" not in line and f"{named}=" in line, line


def test_the_token_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in a refusal of the token itself, nor of another setting beside it."""
    monkeypatch.setenv("TEP_CANVAS_URL", "https://school.example/?q=1")
    monkeypatch.setenv("TEP_CANVAS_TOKEN", TOKEN + " x")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "TEP_CANVAS_TOKEN=***" in str(refused.value)
    assert "SecretCanvasToken" not in str(refused.value)
