"""`tep` as an operator runs it: a real process on an SQLite database of its own."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from models import make_engine, make_sessionmaker, utcnow
from tests import factories as f


class Tep:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
        self.env["TEP_DATABASE_URL"] = f"sqlite:///{workdir / 'tep.sqlite'}"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from worker.cli import main; main()", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def session(self) -> Session:
        return make_sessionmaker(make_engine(self.env["TEP_DATABASE_URL"]))()


@pytest.fixture
def tep(tmp_path: Path) -> Tep:
    runner = Tep(tmp_path)
    assert runner("db", "upgrade").returncode == 0
    return runner


def one_error_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]


def test_sweep_json_and_table(tep: Tep) -> None:
    with tep.session() as session:
        root = f.account(session)
        past = utcnow() - dt.timedelta(days=1)
        f.temporary_pairing(session, root, [past, past], ending_state="completed")
        f.temporary_pairing(session, root, [past], ending_state="bogus")
        session.commit()

    preview = tep("sweep", "--dry-run", "--json")
    assert preview.returncode == 0, preview.stderr
    summary = json.loads(preview.stdout)
    assert summary["dry_run"] is True
    assert summary["enrollments_changed"]["completed"] == 2
    assert [s["reason"] for s in summary["pairings_skipped"]] == ["unknown_ending_state"]

    table = tep("sweep")
    assert table.returncode == 0, table.stderr
    assert "enrollments -> completed" in table.stdout
    assert "pairings ended" in table.stdout
    assert "unknown_ending_state" in table.stdout  # the skipped pairing is listed, not hidden

    again = json.loads(tep("sweep", "--json").stdout)
    assert again["enrollments_changed_total"] == 0


def test_as_of_previews_the_future(tep: Tep) -> None:
    with tep.session() as session:
        f.temporary_pairing(session, f.account(session), [utcnow() + dt.timedelta(days=3)])
        session.commit()
    later = (utcnow() + dt.timedelta(days=4)).isoformat()
    summary = json.loads(tep("sweep", "--as-of", later, "--dry-run", "--json").stdout)
    assert summary["enrollments_changed"]["deleted"] == 1
    assert json.loads(tep("sweep", "--json").stdout)["enrollments_changed_total"] == 0


def test_bad_input_is_one_line_and_a_non_zero_exit(tep: Tep) -> None:
    one_error_line(tep("sweep", "--as-of", "next tuesday"), "is not an ISO 8601 date-time")
    one_error_line(tep("sweep", "--account", "4242"), "no account with id 4242")
    one_error_line(tep("sweep", "--account", "many"), "Invalid value for '--account'")


TOO_LARGE = "99999999999999999999999"  # past 64 bits


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("sweep", "--account", TOO_LARGE), "'--account': Input should be less than or equal"),
        (("sweep", "--account", "-1"), "'--account': Input should be greater than or equal to 1"),
        (("sweep", "--account", "9223372036854775808"), "'--account'"),  # 2**63
        (("admin", "grant", "--account", TOO_LARGE, "--user", "1"), "'--account'"),
        (("admin", "grant", "--account", "1", "--user", TOO_LARGE), "'--user'"),
        (("token", "create", "--account", TOO_LARGE, "--user", "1"), "'--account'"),
        (("token", "create", "--account", "1", "--user", TOO_LARGE), "'--user'"),
        (("token", "list", "--account", TOO_LARGE), "'--account'"),
        (("restore", TOO_LARGE), "'pairing_id': Input should be less than or equal"),
        (("demo", "--timeout", "nan"), "--timeout must be 1 to 3600 seconds, not nan"),
        (("demo", "--timeout", "inf"), "--timeout must be 1 to 3600 seconds, not inf"),
        (("api", "--workers", "1000000"), "'--workers': Input should be less than or equal"),
        (("token", "revoke", os.fsdecode(b"\xff")), "is not UTF-8 text"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else None,
)
def test_out_of_range_numbers_are_one_line_and_exit_2(
    tep: Tep, args: tuple[str, ...], expected: str
) -> None:
    done = tep(*args)
    one_error_line(done, expected)
    assert done.returncode == 2


@pytest.mark.managed_only
def test_an_id_past_64_bits_never_reaches_the_database(
    managed_database_url: str, tmp_path: Path
) -> None:
    """`tep restore`'s pairing id is checked against MAX_ID before any database work (SQLite
    could not bind it; PostgreSQL would say `bigint out of range`): one line and exit status 2."""
    runner = Tep(tmp_path)
    runner.env["TEP_DATABASE_URL"] = managed_database_url
    done = runner("restore", TOO_LARGE)
    one_error_line(done, "'pairing_id'")
    assert done.returncode == 2
    assert "SELECT" not in done.stderr and "database error" not in done.stderr


def test_a_setting_that_is_not_utf8_is_one_line_without_its_value(tep: Tep) -> None:
    tep.env["TEP_DATABASE_URL"] = os.fsdecode(b"postgresql://tep:hunter2\xff@db/tep")
    done = tep("sweep")
    one_error_line(done, "a TEP_ setting is not UTF-8 text")
    assert done.returncode == 2
    assert "hunter2" not in done.stderr


def test_a_database_that_was_never_migrated_says_what_to_do(tmp_path: Path) -> None:
    done = Tep(tmp_path)("sweep")
    one_error_line(done, "run `tep db upgrade` first")


def test_demo_seeds_due_and_future_pairings(tep: Tep) -> None:
    done = tep("demo", "--seed-only")
    assert done.returncode == 0, done.stderr
    summary = json.loads(tep("sweep", "--dry-run", "--json").stdout)
    assert summary["enrollments_changed"] == {"deleted": 4, "completed": 2, "inactive": 0}
    assert summary["pairings_ended"] == 3
    a_week = (utcnow() + dt.timedelta(days=8)).isoformat()
    ahead = json.loads(tep("sweep", "--dry-run", "--json", "--as-of", a_week).stdout)
    assert ahead["pairings_ended"] == 5


def test_demo_run_shows_the_worker_ending_pairings(tep: Tep) -> None:
    """README's first command: the embedded worker (SQLite broker) ends the due pairings."""
    tep.env["TEP_SWEEP_INTERVAL_SECONDS"] = "2"
    done = tep("demo", "--run", "--timeout", "90")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Task tasks.expire_due_pairings" in done.stdout + done.stderr
    assert "the worker ended 4 pairings" in done.stdout
    # Nothing but the databases of the default settings is left (beat's schedule was the demo's).
    assert sorted(os.listdir(tep.workdir)) == [
        "tep-broker.sqlite",
        "tep-results.sqlite",
        "tep.sqlite",
    ]
    # The table shows each pairing as tep does: the four ended (with when), the future one
    # active, although Canvas's rows of all five still say `active`.
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("│") and line.split("│")[1].strip().isdigit()
    ]
    shown = [(state, bool(ended_at)) for _, _, state, ended_at, _ in rows]
    assert shown == [("ended", True)] * 4 + [("active", False)], done.stdout
    after = json.loads(tep("sweep", "--json").stdout)
    assert after["enrollments_changed_total"] == 0


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_any_command_with_128_plus_its_number(
    tep: Tep, signum: int, status: int
) -> None:
    """Ctrl-C exited 0 (typer returns its 130 to a caller that is not standalone), and SIGTERM
    skipped every `finally`: here the demo's worker is stopped either way."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "demo", "--run", "--timeout", "120"],
        env={**tep.env, "PYTHONUNBUFFERED": "1"},
        cwd=tep.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.startswith("starting:"):
                break
        demo.send_signal(signum)
        demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == status


def test_help_lists_the_commands(tep: Tep) -> None:
    done = tep("--help")
    assert done.returncode == 0
    for command in ("db", "demo", "sweep"):
        assert command in done.stdout
    alone = tep()  # the help, and no empty `tep: ` line after it
    assert "sweep" in alone.stdout + alone.stderr
    assert "tep:" not in alone.stderr
