"""`tep` as an operator runs it: a real process on an SQLite database of its own."""

from __future__ import annotations

import datetime as dt
import json
import os
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


def test_help_lists_the_commands(tep: Tep) -> None:
    done = tep("--help")
    assert done.returncode == 0
    for command in ("db", "demo", "sweep"):
        assert command in done.stdout
