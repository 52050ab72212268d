"""`tep`'s conventions (issue 13): version, `-h`, completion, bare `tep`, separators, a lazy
import, `--yes` for a run ahead of time, a missing database, the demo's table; and the layout of
the command modules (worker/cli/)."""

from __future__ import annotations

import ast
import datetime as dt
import importlib.metadata
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.main import get_command
from typer.testing import CliRunner

import models
from models import SweepRun, utcnow
from tasks import lifecycle
from tests import factories as f
from tests.processes import PROJECT_ROOT
from tests.test_cli import Tep, one_error_line
from worker.cli import admin, cli, shared
from worker.cli.demo import DEFAULT_ENDING_STATE, pairings_table
from worker.cli.demo_seed import seed_demo
from worker.cli.sweep import summary_table

TEP_SCRIPT = Path(sys.executable).with_name("tep")


@pytest.fixture
def tep(tmp_path: Path) -> Tep:
    runner = Tep(tmp_path)
    assert runner("db", "upgrade").returncode == 0
    return runner


def test_version_is_the_package_version(tmp_path: Path) -> None:
    done = Tep(tmp_path)("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tep {importlib.metadata.version('tep')}"
    assert os.listdir(tmp_path) == []


def _command_paths() -> list[list[str]]:
    """Every command and group of `tep`, as the words that name it."""
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(get_command(cli), [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda path: " ".join(path) or "tep")
def test_h_is_help_everywhere(path: list[str]) -> None:
    short = CliRunner().invoke(cli, [*path, "-h"], prog_name="tep")
    long = CliRunner().invoke(cli, [*path, "--help"], prog_name="tep")
    assert short.exit_code == 0, short.output
    assert "Usage:" in short.output
    assert short.output == long.output


def test_bare_tep_and_bare_groups_show_the_help_and_exit_0(tmp_path: Path) -> None:
    for args in ((), ("db",), ("token",)):
        done = Tep(tmp_path)(*args)
        assert done.returncode == 0, done.stderr
        assert "Usage:" in done.stdout
        assert done.stderr == ""


def test_shell_completion_is_on(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    # Run by bash, the shell it then detects (`; exit`: bash would otherwise exec tep in its
    # place, and tep's parent would be pytest).
    script = subprocess.run(
        ["bash", "-c", f"{TEP_SCRIPT} --show-completion; exit $?"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert script.returncode == 0, script.stderr
    assert "_TEP_COMPLETE=complete_bash" in script.stdout
    # What the shell's hook asks: the commands that start with `sw`.
    env.update(_TEP_COMPLETE="complete_bash", COMP_WORDS="tep sw", COMP_CWORD="1")
    words = subprocess.run([TEP_SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert words.stdout.split() == ["sweep"]
    assert os.listdir(tmp_path) == []


def test_help_imports_neither_the_database_nor_the_settings() -> None:
    """`tep --help` must start at once: the heavy libraries load only in the command that runs
    (bench/startup.py times it)."""
    heavy = ("sqlalchemy", "pydantic", "pydantic_settings", "celery", "fastapi", "rich", "models")
    probe = (
        "import sys\n"
        "import worker.cli\n"
        f"print([name for name in {heavy!r} if name in sys.modules])\n"
        "from worker.cli import cli\n"
        "cli(['--help'], standalone_mode=False)\n"
        f"print([name for name in {heavy!r} if name in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "[]"  # importing the CLI loads typer only
    assert lines[-1] in ("[]", "['rich']")  # typer renders its help with rich, if installed


def test_cli_modules_import_no_cycle() -> None:
    """The commands import worker/cli/shared.py (and each other one way), never the package
    that registers them: no module of the folder is part of an import loop."""
    folder = PROJECT_ROOT / "worker" / "cli"
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        name = f"worker.cli.{path.stem}" if path.stem != "__init__" else "worker.cli"
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = imported
    # `from worker.cli import sweep` in the package is an edge to the module, not to itself.
    graph = {name: {m for m in imported if m in graph} - {name} for name, imported in graph.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for step in graph[start] - seen:
            if step == target or reaches(step, target, seen | {step}):
                return True
        return False

    assert not [name for name in graph if reaches(name, name, set())]


def test_one_name_per_concept_across_packages() -> None:
    """A module name means one thing: `delivery` is webhook delivery (tasks/), not also the
    redelivery cap; `events` the event types, not also beat entries; `status` one module."""
    names = {
        package: {p.stem for p in (PROJECT_ROOT / package).glob("*.py")} - {"__init__"}
        for package in ("tasks", "worker", "api")
    }
    assert not names["tasks"] & names["worker"]
    assert not names["tasks"] & names["api"]
    assert not names["worker"] & names["api"]
    assert not (PROJECT_ROOT / "api" / "cli.py").exists()  # api/ is the web app only


def test_constants_spelled_out_for_a_fast_start_agree_with_models() -> None:
    assert shared.MAX_ID == models.MAX_ID
    assert admin.ACCOUNT_ADMIN_ROLE == models.ACCOUNT_ADMIN_ROLE


def render(table: object, width: int = 80) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_large_numbers_get_separators() -> None:
    assert shared.count(1234567) == "1,234,567"
    summary = {
        "dry_run": False,
        "run_id": "run",
        "as_of": "2026-11-26T14:00:00Z",
        "account_id": None,
        "enrollments_changed": {"deleted": 1234567, "completed": 0},
        "pairings_ended": 45678,
        "pairings_skipped": [],
        "duration_seconds": 12.5,
    }
    text = render(summary_table(summary))
    assert "1,234,567" in text and "45,678" in text


def test_status_counts_get_separators(tep: Tep) -> None:
    from worker.cli.status import tables

    with tep.session() as session:
        from tasks.status import collect_status

        report = collect_status(session, utcnow(), [])
    report["due"] = [
        {
            "root_account_id": 2,
            "account": "Big U",
            "ending_state": "deleted",
            "due_now": 1234567,
            "next_24h": 2345,
            "next_7d": 10000,
        }
    ]
    text = "\n".join(render(table, width=200) for table in tables(report, mail_on=False))
    assert "1,234,567" in text and "2,345" in text and "10,000" in text


def _sweep_runs(tep: Tep) -> int:
    with tep.session() as session:
        return session.scalar(select(func.count()).select_from(SweepRun)) or 0


def test_a_run_ahead_of_time_needs_yes(tep: Tep) -> None:
    with tep.session() as session:
        f.temporary_pairing(session, f.account(session), [utcnow() + dt.timedelta(days=3)])
        session.commit()
    a_week = (utcnow() + dt.timedelta(days=7)).isoformat()

    refused = tep("sweep", "--as-of", a_week)
    one_error_line(refused, "add --yes")
    assert refused.returncode == 2
    assert "7 days ahead" in refused.stderr
    assert _sweep_runs(tep) == 0  # nothing written, not even a run

    preview = tep("sweep", "--as-of", a_week, "--dry-run", "--json")  # a preview needs no --yes
    assert json.loads(preview.stdout)["enrollments_changed"]["deleted"] == 1
    soon = (utcnow() + dt.timedelta(seconds=30)).isoformat()  # clocks differ by a little
    assert tep("sweep", "--as-of", soon, "--json").returncode == 0

    done = tep("sweep", "--as-of", a_week, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["enrollments_changed"]["deleted"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("sweep", "--dry-run"),
        ("sweep",),
        ("token", "list", "--account", "1"),
        ("token", "create", "--account", "1", "--user", "1"),
        ("token", "revoke", "1"),
        ("admin", "grant", "--account", "1", "--user", "1"),
        ("restore", "1"),
    ],
    ids=" ".join,
)
def test_a_missing_database_is_one_line_and_nothing_is_created(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    runner = Tep(tmp_path)
    done = runner(*args)
    one_error_line(done, f"no database at {tmp_path / 'tep.sqlite'}")
    assert done.returncode == 1
    assert "tep db upgrade" in done.stderr
    assert os.listdir(tmp_path) == []


def test_the_default_database_in_the_wrong_folder_is_not_created(tmp_path: Path) -> None:
    """No TEP_DATABASE_URL: the default `tep.sqlite` of the working folder."""
    runner = Tep(tmp_path)
    del runner.env["TEP_DATABASE_URL"]
    one_error_line(runner("status"), "no database at")
    assert os.listdir(tmp_path) == []


def test_db_upgrade_and_demo_create_the_database(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert Tep(tmp_path / "a")("db", "upgrade").returncode == 0
    assert (tmp_path / "a" / "tep.sqlite").exists()
    demo = Tep(tmp_path / "b")("demo", "--seed-only")
    assert demo.returncode == 0, demo.stderr
    assert os.listdir(tmp_path / "b") == ["tep.sqlite"]


def test_in_memory_sqlite_is_not_a_missing_file() -> None:
    assert shared.sqlite_file("sqlite://") is None
    assert shared.sqlite_file("sqlite:///:memory:") is None
    assert shared.sqlite_file("sqlite:///file:x?mode=memory&uri=true") is None
    assert shared.sqlite_file("postgresql://tep@db/tep") is None
    assert shared.sqlite_file("sqlite:////srv/tep/tep.sqlite") == "/srv/tep/tep.sqlite"


@pytest.mark.managed_only
def test_demo_table_fits_80_columns(factory: sessionmaker[Session], session: Session) -> None:
    with factory.begin() as writing:
        seed = seed_demo(writing, utcnow())
    lifecycle.run_sweep(factory)
    watched = seed.due_pairing_ids + seed.soon_pairing_ids + seed.future_pairing_ids
    text = render(pairings_table(session, watched), width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text  # nothing cut
    rows = [line for line in lines if line.startswith("│") and line[1:].strip()[:1].isdigit()]
    assert len(rows) == len(watched)  # one line each: nothing wrapped either
    assert DEFAULT_ENDING_STATE in text and "None" not in text
    assert "3 deleted" in text  # enrollments counted by state


def test_startup_benchmark_runs(tmp_path: Path) -> None:
    """bench/startup.py's own bookkeeping (its timings mean nothing here)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.startup", "--runs", "1", "--json", str(tmp_path / "s.json")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr
    for name in ("python -c pass", "tep --help", "tep sweep --dry-run"):
        assert name in done.stdout
    medians = json.loads((tmp_path / "s.json").read_text())
    assert all(seconds > 0 for seconds in medians.values())
