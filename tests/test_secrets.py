"""Secrets never shown: a URL setting's password, whatever it holds, and a receiver's
credentials and tokens, in no message, log line, label or `tep status` output."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import CommunicationChannel, Notice, utcnow
from tasks import events, metrics, notices, webhooks
from tests import factories as f
from tests.processes import PROJECT_ROOT, service_env, start_worker
from tests.receivers import free_port, smtp_server, webhook_receiver
from worker.notify_settings import check_userinfo, mask_url, parse_smtp_url, receiver_label
from worker.settings import SettingsError, load_settings, redact

# Passwords as an operator might write them, not percent-encoded (or encoded): every character
# that ends a userinfo for one URL parser or another. Each piece (`pwA`, `pwB`, ...) must stay
# hidden, not only the whole password: a parser that misreads the URL shows a piece of it.
PASSWORDS = [
    "pwA/pwB",
    "pwA@pwB",
    "pwA:pwB",
    "pwA#pwB",
    "pwA?pwB",
    "pwA%40pwB%2FpwC",
    "pwA/pwB@pwC:pwD#pwE?pwF",
    "pwA://pwB",
    "pwA,pwB",
    "pwA pwB",
    "pwA&pwB=pwC",
    "pwA@",
]
URLS = [
    "postgresql://tep:{pw}@db.example:5432/tep",
    "postgresql+psycopg://tep:{pw}@db.example/tep?sslmode=require",
    "redis://:{pw}@redis.example:6379/0",
    "rediss://tep:{pw}@redis.example:6380/1",
    "sentinel://:{pw}@s1.example:26379",
    "db+postgresql://tep:{pw}@db.example/results",
    "smtp://mailer:{pw}@mail.example:587",
    "smtps://mailer:{pw}@mail.example",
    "https://hook:{pw}@hooks.example/tep?token=pwQ",
    "https://{pw}@hooks.example/tep",  # a token as the user name
]
# The query values a receiver URL keeps its tokens in.
TOKENS = ["pwQ"]
DAY = dt.timedelta(days=1)


def pieces(password: str) -> list[str]:
    return re.findall(r"pw[A-Z]", password) + TOKENS


def shown(text: str, password: str) -> list[str]:
    """The pieces of `password` (and the tokens) that `text` shows."""
    return [piece for piece in pieces(password) if piece in text]


@pytest.mark.parametrize("template", URLS)
@pytest.mark.parametrize("password", PASSWORDS)
def test_no_piece_of_a_password_is_shown(template: str, password: str) -> None:
    url = template.format(pw=password)
    secret = password
    if template.startswith("https://{pw}@"):  # the user name before a `:` is shown, as such
        secret = password.partition(":")[2] or password
    for text in (mask_url(url), receiver_label(url), str(redact(url))):
        assert shown(text, secret) == [], text
    if not set("?#") & set(password):  # then what follows the `@` is known to be the host
        assert ".example" in mask_url(url) and ".example" in receiver_label(url)


def test_what_masking_keeps() -> None:
    assert mask_url("postgresql://tep:s3cr/t@db:5432/tep?sslmode=require") == (
        "postgresql://tep:***@db:5432/tep?sslmode=***"
    )
    assert mask_url("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert mask_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert mask_url("sqlite:///tep.sqlite") == "sqlite:///tep.sqlite"
    assert mask_url("https://token@hooks.example/x#frag") == "https://***@hooks.example/x"
    assert redact(5) == 5
    assert redact("not a url") == "not a url"
    assert redact("not a url", url=True) == "not a url"
    assert redact("u:hunter2@host", url=True) == "u:***@host"
    assert receiver_label("https://u:p@hooks.example:8443/tep?token=t#f") == (
        "https://hooks.example:8443/tep"
    )
    assert receiver_label("http://[::1]:8080/x") == "http://[::1]:8080/x"


@pytest.mark.parametrize("password", ["pwA/pwB", "pwA?pwB", "pwA#pwB", "pwA@pwB"])
def test_a_password_must_be_percent_encoded(password: str) -> None:
    with pytest.raises(ValueError, match="percent-encode"):
        check_userinfo(f"redis://tep:{password}@redis.example/0")
    with pytest.raises(ValueError, match="percent-encode"):
        check_userinfo(f"https://hooks.example/tep?mail=a@{password}")


@pytest.mark.parametrize(
    "url",
    [
        "redis://tep:pwA%2FpwB%3FpwC%23pwD%40@redis.example/0",
        "redis://tep:pwA:pwB@redis.example/0",
        "redis://redis.example/0",
        "sqlite:///tep.sqlite",
        "https://hooks.example/tep?mail=a%40b",
    ],
)
def test_a_percent_encoded_password_is_taken(url: str) -> None:
    check_userinfo(url)


# --------------------------------------------------------------------------------------------
# End to end: settings refused, the processes' output, with such a password in a URL setting.


def tep(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", **env}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=environment,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def bad_url_settings(password: str) -> dict[str, str]:
    """Every URL setting wrong, each holding `password`. (The checks of the broker's, result
    backend's and public URL are loose: a password may make them pass, and then they are not
    named; whatever is named is masked.)"""
    return {
        "TEP_DATABASE_URL": f"mysql://tep:{password}@db.example/tep",
        "TEP_BROKER_URL": f"redis:/:{password}@redis.example/0",
        "TEP_RESULT_BACKEND": f"redis:/:{password}@redis.example/1",
        "TEP_SMTP_URL": f"smtp://mailer:{password}@mail.example:port",
        "TEP_WEBHOOK_URLS": f"https://hook:{password}@hooks.example/tep?token=pwQ,ftp://x.example/",
        "TEP_WEBHOOK_SECRET": "s",
        "TEP_PUBLIC_URL": f"https://tep:{password}@tep.example",
    }


def assert_refused_without(line: str, password: str) -> None:
    assert line.count("\n") <= 1 and "invalid settings: " in line, line
    for name in ("TEP_DATABASE_URL", "TEP_SMTP_URL", "TEP_WEBHOOK_URLS"):
        assert f"{name}=" in line
    assert shown(line, password) == [], line


# SQLAlchemy's URL parser ends the password at its first `@`, then reads `:pwD#pwE` as the port,
# and its ValueError quotes it: TEP_DATABASE_URL's validator must refuse such a URL first (with
# notify_settings.check_userinfo), as the SMTP and webhook URLs' parsers do.
@pytest.mark.parametrize(
    "password",
    [
        p
        for p in PASSWORDS
        if p != "pwA,pwB"  # TEP_WEBHOOK_URLS is a comma-separated list: tested below
    ],
)
def test_bad_url_settings_are_refused_without_their_passwords(
    password: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name, value in bad_url_settings(password).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert_refused_without(str(refused.value), password)


@pytest.mark.parametrize(
    "password",
    ["pwA/pwB", "pwA@pwB", "pwA://pwB", "pwA%40pwB%2FpwC"],
)
def test_tep_refuses_bad_url_settings_without_their_passwords(password: str) -> None:
    done = tep("status", **bad_url_settings(password))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("tep: invalid settings: ")
    assert_refused_without(done.stderr, password)


def test_a_comma_in_a_webhook_password_shows_no_piece_of_it() -> None:
    done = tep(
        "status",
        TEP_WEBHOOK_URLS="https://hook:pwA,pwB@hooks.example/tep?token=pwQ",
        TEP_WEBHOOK_SECRET="s",
    )
    assert done.returncode == 2 and "TEP_WEBHOOK_URLS=" in done.stderr
    assert shown(done.stdout + done.stderr, "pwA,pwB") == [], done.stderr


def test_a_check_across_settings_does_not_show_them_all() -> None:
    """A model-level check's input is every setting: the line says what is wrong, not them."""
    done = tep(
        "status",
        TEP_SCHEMA="public",
        TEP_DATABASE_URL="postgresql://tep:pwA%2FpwB@db.example/tep",
        TEP_SMTP_URL="smtp://mailer:pwC@mail.example:25",
    )
    assert done.returncode == 2 and "TEP_SCHEMA must differ" in done.stderr
    assert shown(done.stdout + done.stderr, "pwA pwB pwC") == [], done.stderr


@pytest.mark.parametrize("password", ["pwA%40pwB", "pwA%2FpwB%3FpwC%23pwD%40pwE"])
def test_the_worker_banner_and_connection_errors_mask_the_broker_password(
    password: str, sqlite_database_url: str, tmp_path: Path
) -> None:
    """Celery masks the broker and result URLs itself (kombu's `as_uri`, with `**`)."""
    port = free_port()  # nothing listens: the worker prints its banner, then cannot connect
    broker = f"redis://tep:{password}@127.0.0.1:{port}/0"
    worker = start_worker(service_env(sqlite_database_url, broker, "tep-secrets"), tmp_path)
    try:
        worker.wait_for_log("Cannot connect to", 60)
    finally:
        worker.kill()
    log = worker.log
    assert f"transport:   redis://tep:**@127.0.0.1:{port}/0" in log, log
    assert f"Cannot connect to redis://tep:**@127.0.0.1:{port}/0" in log
    assert shown(log, password) == [], log


@pytest.mark.parametrize("password", ["pwA/pwB", "pwA?pwB", "pwA#pwB", "pwA@pwB"])
def test_a_broker_password_celery_would_misread_is_refused_at_start_up(
    password: str, sqlite_database_url: str
) -> None:
    broker = f"redis://tep:{password}@127.0.0.1:6379/0"
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker"],
        env=service_env(sqlite_database_url, broker, "tep-secrets"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "percent-encode" in done.stderr
    assert "Traceback" not in done.stderr
    assert shown(done.stdout + done.stderr, password) == [], done.stderr


# --------------------------------------------------------------------------------------------
# Receivers in `tep status`, and the SMTP server's errors.


def test_tep_status_names_receivers_without_their_credentials(
    database_url: str, factory: sessionmaker[Session], session: Session
) -> None:
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [utcnow() + DAY])
    events.record_pairing_created(session, pairing, actor_id=None)
    session.commit()
    with webhook_receiver() as receiver:
        label = receiver.url  # closed when the block ends: the delivery fails
    url = label.replace("http://", "http://hook-user:pwA%2FpwB@") + "?token=pwQ"
    report = webhooks.deliver_webhooks(factory, [url], "s")[0]
    assert report.failed == 1 and report.receiver == label
    env = {"TEP_DATABASE_URL": database_url, "TEP_WEBHOOK_URLS": url, "TEP_WEBHOOK_SECRET": "s"}

    as_json = tep("status", "--json", **env)
    table = tep("status", **env)

    assert as_json.returncode == 0 and table.returncode == 0, as_json.stderr + table.stderr
    assert f'"url": "{label}"' in as_json.stdout and label in table.stdout
    for done in (as_json, table):
        assert shown(done.stdout + done.stderr, "hook-user pwA pwB") == []
        assert "hook-user" not in done.stdout + done.stderr
    body, _ = metrics.render_metrics(factory, [url])
    assert f'receiver="{label}"' in body.decode()
    assert shown(body.decode(), "hook-user pwA pwB") == [] and b"hook-user" not in body


def test_an_smtp_server_that_refuses_the_login_shows_no_password(
    factory: sessionmaker[Session], session: Session
) -> None:
    """Its error is the task's retry reason and the notice's last error: the login is refused
    (this server offers no AUTH), and neither says what the password was."""
    root = f.account(session)
    pairing, enrollments = f.temporary_pairing(session, root, [utcnow() + DAY / 2])
    session.add(
        CommunicationChannel(
            user_id=enrollments[0].user_id, path="sam@school.example", path_type="email"
        )
    )
    session.commit()
    with smtp_server() as (box, url):
        smtp = parse_smtp_url(url.replace("smtp://", "smtp://mailer:pwA%2FpwB%40pwC@"))
        assert smtp.password == "pwA/pwB@pwC"
        with pytest.raises(notices.SmtpUnavailable) as error:
            notices.run_notices(factory, smtp, "tep@school.example", [DAY])
        assert box.all() == []
    session.expire_all()
    notice = session.scalars(select(Notice)).one()
    assert notice.temporary_enrollment_pairing_id == pairing.id and notice.last_error
    for text in (str(error.value), notice.last_error):
        assert "AUTH" in text and shown(text, "pwA pwB pwC") == [], text
