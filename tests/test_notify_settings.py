"""The events-and-notices settings: parsed as documented, nonsense refused in one line."""

from __future__ import annotations

import datetime as dt

import pytest

from worker import notify_settings
from worker.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(str(tmp_path))  # no .env from the working folder
    for name in (
        "TEP_WEBHOOK_URLS",
        "TEP_WEBHOOK_SECRET",
        "TEP_SMTP_URL",
        "TEP_MAIL_FROM",
        "TEP_NOTIFY_BEFORE",
        "TEP_METRICS_PORT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_turn_everything_optional_off() -> None:
    settings = Settings()
    assert settings.webhook_url_list == []
    assert settings.smtp is None
    assert settings.metrics_port is None
    assert settings.notice_thresholds == (dt.timedelta(days=3), dt.timedelta(days=1))


def test_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEP_WEBHOOK_URLS", " https://a.example/hook, http://b.example:8080/x ")
    monkeypatch.setenv("TEP_WEBHOOK_SECRET", "s")
    monkeypatch.setenv("TEP_SMTP_URL", "smtp://mailer:p%40ss@mail.example:2525")
    monkeypatch.setenv("TEP_NOTIFY_BEFORE", "12h, 1w,30m")
    monkeypatch.setenv("TEP_METRICS_PORT", "9808")
    settings = load_settings()
    assert settings.webhook_url_list == ["https://a.example/hook", "http://b.example:8080/x"]
    assert settings.smtp == notify_settings.SmtpConfig(
        "mail.example", 2525, "mailer", "p@ss", implicit_tls=False
    )
    assert settings.notice_thresholds == (
        dt.timedelta(weeks=1),
        dt.timedelta(hours=12),
        dt.timedelta(minutes=30),
    )
    assert settings.metrics_port == 9808


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TEP_NOTIFY_BEFORE", "3 days", "is not a duration"),
        ("TEP_NOTIFY_BEFORE", "0d", "longer than zero"),
        ("TEP_WEBHOOK_URLS", "ftp://x.example/", "URL #1 (ftp://x.example/) is not an http(s)"),
        ("TEP_WEBHOOK_URLS", "https://a.example/,https://b.example:x/", "#2 (https://b.example/) "),
        ("TEP_WEBHOOK_URLS", "https://u:hunter2/x@a.example/", "URL #1: percent-encode '/'"),
        ("TEP_SMTP_URL", "mail.example:25", "not an smtp:// or smtps:// URL"),
        ("TEP_SMTP_URL", "smtp://u:hunter2@mail.example:port", "port is not a number"),
        ("TEP_SMTP_URL", "smtp://u:hunter2?@mail.example:25", "percent-encode '/', '?'"),
        ("TEP_MAIL_FROM", "nobody", "is not an email address"),
        ("TEP_MAIL_FROM", "tep@school.example\n", "is not an email address"),
        ("TEP_MAIL_FROM", "tep@school.example, evil@attacker.example", "not an email address"),
        ("TEP_METRICS_PORT", "70000", "less than or equal to 65535"),
    ],
)
def test_nonsense_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    line = str(error.value)
    assert "\n" not in line and name in line and message in line
    assert "hunter2" not in line  # a password in a URL is never echoed


def test_webhooks_need_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEP_WEBHOOK_URLS", "https://a.example/hook")
    with pytest.raises(SettingsError, match="TEP_WEBHOOK_SECRET"):
        load_settings()


@pytest.mark.parametrize(
    "address",
    [
        "tep@school.example\n",  # `$` would match before it
        "tep@school.example\r\nBcc: evil@attacker.example",
        "tep@school.example\u2028",
        " tep@school.example",
        "tep@school.example,evil@attacker.example",
        "Tep <tep@school.example>",
        '"tep"@school.example',
        "tep@school.example;",
        "tép@school.example",  # no SMTPUTF8
        "tep@",
        "@school.example",
        "tep@@school.example",
        "tep@school..example",
        "",
    ],
)
def test_an_address_must_be_one_plain_address_whole(address: str) -> None:
    with pytest.raises(ValueError, match="is not an email address"):
        notify_settings.check_address(address)


@pytest.mark.parametrize(
    "address", ["tep@localhost", "a.b+notices@mail.school-1.example", "o'brien@x.example"]
)
def test_plain_addresses_are_taken_as_they_are(address: str) -> None:
    assert notify_settings.check_address(address) == address
