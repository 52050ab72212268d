"""What the tasks take from a message: arguments read by one rule (tasks/arguments.py), the
shape of a message the worker can run (worker/messages.py), and which database errors are worth
a retry. The same parts in a real worker: tests/test_malformed_messages.py."""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from models import MAX_ID
from tasks import arguments, jobs
from tasks.arguments import ArgumentError
from tasks.jobs import DatabaseUnavailable, is_connection_error, retried_if_unavailable
from tasks.lifecycle import LifecycleError
from tests import services
from worker import messages
from worker.cli.shared import parse_iso

UTC = dt.UTC


# --------------------------------------------------------------------------------------------
# One rule for a moment: the CLI's --as-of and the tasks' as_of


@pytest.mark.parametrize(
    ("value", "moment"),
    [
        ("2026-11-26T14:00:00Z", dt.datetime(2026, 11, 26, 14, tzinfo=UTC)),
        ("2026-11-26T15:30:00+01:30", dt.datetime(2026, 11, 26, 14, tzinfo=UTC)),
        # No offset: UTC, as Canvas reads them (and as the CLI always did; the task refused it).
        ("2026-11-26T14:00:00", dt.datetime(2026, 11, 26, 14, tzinfo=UTC)),
        ("2026-11-26", dt.datetime(2026, 11, 26, tzinfo=UTC)),
    ],
)
def test_a_moment_is_read_in_utc_and_without_an_offset_as_utc(
    value: str, moment: dt.datetime
) -> None:
    assert arguments.parse_moment(value, "as_of") == moment
    assert arguments.parse_moment(value, "as_of").tzinfo == UTC
    assert parse_iso(value, "--as-of") == moment  # the CLI reads it by the same rule


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9999-12-31T23:59:59-01:00", "as_of '9999-12-31T23:59:59-01:00' is out of range"),
        ("0001-01-01T00:00:00+01:00", "as_of '0001-01-01T00:00:00+01:00' is out of range"),
        ("next tuesday", "as_of 'next tuesday' is not an ISO 8601 date-time"),
        ("", "as_of '' is not an ISO 8601 date-time"),
        (1764000000, "as_of must be an ISO 8601 date-time string, not 1764000000"),
        (["2026-11-26"], "as_of must be an ISO 8601 date-time string, not ['2026-11-26']"),
    ],
)
def test_a_bad_moment_is_one_line_naming_the_argument(value: Any, message: str) -> None:
    with pytest.raises(ArgumentError) as raised:
        arguments.parse_moment(value, "as_of")
    assert str(raised.value).startswith(message)
    assert isinstance(raised.value, LifecycleError)  # the CLI's one-line handler takes it


def test_an_error_message_repeats_a_short_prefix_of_the_value() -> None:
    with pytest.raises(ArgumentError) as raised:
        arguments.parse_moment("x" * 1_000_000, "as_of")
    assert len(str(raised.value)) < 200
    assert str(raised.value).startswith("as_of 'xxxx")


def test_the_cli_refuses_an_out_of_range_moment_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    env["TEP_DATABASE_URL"] = f"sqlite:///{tmp_path / 'tep.sqlite'}"

    def tep(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from worker.cli import main; main()", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert tep("db", "upgrade").returncode == 0
    for args in (
        ("sweep", "--as-of", "9999-12-31T23:59:59-01:00"),
        ("restore", "1", "--end-at", "9999-12-31T23:59:59-01:00"),
    ):
        done = tep(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr == f"tep: {args[-2]} '9999-12-31T23:59:59-01:00' is out of range\n"


# --------------------------------------------------------------------------------------------
# Ids, flags and text


@pytest.mark.parametrize("value", [1, 42, MAX_ID])
def test_an_id_is_an_integer_that_fits_a_bigint(value: int) -> None:
    assert arguments.parse_id(value, "pairing_id") == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x", "pairing_id must be an integer id, not 'x'"),
        ("5", "pairing_id must be an integer id, not '5'"),
        (True, "pairing_id must be an integer id, not True"),
        (5.0, "pairing_id must be an integer id, not 5.0"),
        (None, "pairing_id must be an integer id, not None"),
        (0, f"pairing_id must be an id between 1 and {MAX_ID}, not 0"),
        (-1, f"pairing_id must be an id between 1 and {MAX_ID}, not -1"),
        (2**63, f"pairing_id must be an id between 1 and {MAX_ID}, not {2**63}"),
    ],
)
def test_a_bad_id_is_refused(value: Any, message: str) -> None:
    with pytest.raises(ArgumentError, match="^" + re.escape(message)):
        arguments.parse_id(value, "pairing_id")


def test_an_optional_id_may_be_none() -> None:
    assert arguments.optional_id(None, "account_id") is None
    assert arguments.optional_id(7, "account_id") == 7


@pytest.mark.parametrize("value", ["false", "true", "", 0, 1, None, [], "no"])
def test_a_flag_is_a_true_boolean_not_a_truthy_value(value: Any) -> None:
    with pytest.raises(ArgumentError, match=r"^delete must be true or false"):
        arguments.parse_flag(value, "delete")
    assert arguments.parse_flag(False, "delete") is False
    assert arguments.parse_flag(True, "delete") is True


@pytest.mark.parametrize("value", [None, 5, "", "x" * 65, "beat\nERROR forged line"])
def test_a_trigger_is_a_short_printable_string(value: Any) -> None:
    with pytest.raises(ArgumentError, match=r"^trigger must be"):
        arguments.parse_text(value, "trigger", 64)
    assert arguments.parse_text("beat", "trigger", 64) == "beat"


# --------------------------------------------------------------------------------------------
# Each task reads its arguments before any work


@pytest.fixture
def unreachable_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings whose database refuses every connection: a task that got as far as the
    database would fail with a database error, not an ArgumentError."""
    from worker import runtime
    from worker.settings import get_settings

    monkeypatch.setenv("TEP_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    get_settings.cache_clear()
    runtime.reset()
    yield
    get_settings.cache_clear()
    runtime.reset()


@pytest.mark.usefixtures("unreachable_database")
@pytest.mark.parametrize(
    ("task", "kwargs", "message"),
    [
        (jobs.expire_due_pairings, {"account_id": "x"}, "account_id must be an integer id"),
        (jobs.expire_due_pairings, {"account_id": 2**64}, "account_id must be an id between"),
        (jobs.expire_due_pairings, {"dry_run": "false"}, "dry_run must be true or false"),
        (jobs.expire_due_pairings, {"as_of": "soon"}, "as_of 'soon' is not an ISO 8601"),
        (jobs.expire_due_pairings, {"not_before": 5}, "not_before must be an ISO 8601"),
        (jobs.expire_due_pairings, {"trigger": None}, "trigger must be a string"),
        (jobs.end_pairing, {"pairing_id": "12"}, "pairing_id must be an integer id"),
        (jobs.end_pairing, {"pairing_id": 1, "delete": "false"}, "delete must be true or false"),
        (jobs.end_pairing, {"pairing_id": 1, "actor_id": True}, "actor_id must be an integer"),
        (
            jobs.end_pairing,
            {"pairing_id": 1, "as_of": "9999-12-31T23:59:59-01:00"},
            "as_of '9999-12-31T23:59:59-01:00' is out of range",
        ),
        (jobs.restore_pairing, {"pairing_id": None}, "pairing_id must be an integer id"),
        (jobs.restore_pairing, {"pairing_id": 1, "end_at": "x"}, "end_at 'x' is not an ISO"),
        (jobs.restore_pairing, {"pairing_id": 1, "actor_id": "3"}, "actor_id must be an"),
    ],
)
def test_a_task_refuses_a_bad_argument_before_any_work(
    task: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ArgumentError) as raised:
        task(**kwargs)
    assert str(raised.value).startswith(message)
    # Failed at once: never retried, and logged by Celery in one line (as expected), not with a
    # traceback; tasks/jobs.py logs it at ERROR with the task id.
    assert not issubclass(ArgumentError, tuple(task.autoretry_for))
    assert issubclass(ArgumentError, tuple(task.throws))


# --------------------------------------------------------------------------------------------
# Only a database out of reach is retried


def _raised(action: Callable[[], object]) -> DBAPIError:
    try:
        action()
    except DBAPIError as error:
        return error
    raise AssertionError("no database error")


def _execute(engine: Engine, *statements: str, params: dict[str, Any] | None = None) -> None:
    with engine.connect() as connection:
        for statement in statements:
            connection.execute(text(statement), params or {})


@pytest.fixture(scope="module")
def pg() -> Iterator[Engine]:
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)
    engine = create_engine(
        services.POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://")
    )
    yield engine
    engine.dispose()


def _terminated_backend(engine: Engine) -> None:
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with psycopg.connect(services.POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        connection.execute(text("SELECT 1"))


POSTGRES_ERRORS: dict[str, tuple[Callable[[Engine], object], bool]] = {
    "a refused connection": (
        lambda _: _execute(
            create_engine("postgresql+psycopg://postgres@127.0.0.1:1/x"), "SELECT 1"
        ),
        True,
    ),
    "a terminated backend": (_terminated_backend, True),
    "text for a bigint (account_id 'x')": (
        lambda pg: _execute(pg, "SELECT CAST(:x AS bigint)", params={"x": "x"}),
        False,
    ),
    "a number past bigint": (
        lambda pg: _execute(pg, "SELECT CAST(:x AS bigint)", params={"x": str(2**64)}),
        False,
    ),
    "a table that does not exist (a database never migrated)": (
        lambda pg: _execute(pg, "SELECT * FROM tep_no_such_table"),
        False,
    ),
    "a duplicate key": (
        lambda pg: _execute(
            pg,
            "CREATE TEMPORARY TABLE tep_t (id int PRIMARY KEY)",
            "INSERT INTO tep_t VALUES (1), (1)",
        ),
        False,
    ),
    "a statement timeout": (
        lambda pg: _execute(pg, "SET statement_timeout = 10", "SELECT pg_sleep(1)"),
        False,
    ),
}


@pytest.mark.postgres
@pytest.mark.parametrize("case", list(POSTGRES_ERRORS))
def test_only_a_postgresql_connection_error_is_worth_a_retry(pg: Engine, case: str) -> None:
    action, retried = POSTGRES_ERRORS[case]
    error = _raised(lambda: action(pg))
    assert is_connection_error(error) is retried

    def work() -> None:
        with retried_if_unavailable():
            raise error

    with pytest.raises(DatabaseUnavailable if retried else type(error)) as raised:
        work()
    if retried:
        assert raised.value.__cause__ is error
        assert "\n" not in str(raised.value)


def test_only_a_busy_sqlite_database_is_worth_a_retry(tmp_path: Path) -> None:
    path = tmp_path / "tep.sqlite"
    holder = sqlite3.connect(path)
    holder.execute("CREATE TABLE t (a)")
    holder.commit()
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        busy = _raised(lambda: _execute(engine, "INSERT INTO t VALUES (1)"))
        holder.rollback()
        missing = _raised(lambda: _execute(engine, "SELECT * FROM no_such_table"))
    finally:
        holder.close()
        engine.dispose()
    assert is_connection_error(busy)
    assert not is_connection_error(missing)


def test_the_tasks_retry_only_an_unavailable_database() -> None:
    for task in (
        jobs.expire_due_pairings,
        jobs.end_pairing,
        jobs.restore_pairing,
        jobs.remake_timers,
    ):
        assert tuple(task.autoretry_for) == (DatabaseUnavailable,)


# --------------------------------------------------------------------------------------------
# The shape of a message the worker can run


SWEEP_RUN = jobs.expire_due_pairings.run
END_RUN = jobs.end_pairing.run


@pytest.mark.parametrize(
    ("body", "run", "problem"),
    [
        ("abcd", SWEEP_RUN, "its body is a string ('abcd'), not [args, kwargs, embed]"),
        ("abc", SWEEP_RUN, "its body is a string ('abc'), not [args, kwargs, embed]"),
        (None, SWEEP_RUN, "its body is null, not [args, kwargs, embed]"),
        ([[], {}], SWEEP_RUN, "its body is a list of 2, not [args, kwargs, embed]"),
        ([[], {}, {}, {}], SWEEP_RUN, "its body is a list of 4, not [args, kwargs, embed]"),
        ({"args": [], "kwargs": {}}, SWEEP_RUN, "its body is an object of 2 keys"),
        (["x", {}, {}], SWEEP_RUN, "its args are a string ('x'), not a list"),
        ([[], [], {}], SWEEP_RUN, "its kwargs are a list of 0, not an object"),
        ([[], None, {}], SWEEP_RUN, "its kwargs are null, not an object"),
        ([[], {}, "x"], SWEEP_RUN, "its embed is a string ('x'), not an object"),
        ([[], {}, {"is_eager": True}], SWEEP_RUN, "its embed has unknown keys ['is_eager']"),
        ([[], {}, {"callbacks": "x"}], SWEEP_RUN, "its embed's callbacks is a string"),
        ([[], {}, {"chord": []}], SWEEP_RUN, "its embed's chord is a list of 0"),
        ([[], {"bogus": 1}, {}], SWEEP_RUN, "its arguments do not fit the task"),
        ([[1, 2, 3, 4, 5, 6], {}, {}], SWEEP_RUN, "its arguments do not fit the task"),
        ([[], {}, {}], END_RUN, "its arguments do not fit the task"),  # no pairing_id
        ([[1], {"pairing_id": 1}, {}], END_RUN, "its arguments do not fit the task"),
    ],
)
def test_a_body_that_is_not_a_call_of_the_task_is_named(body: Any, run: Any, problem: str) -> None:
    found = messages.body_problem(body, run)
    assert found is not None and found.startswith(problem)


@pytest.mark.parametrize(
    ("body", "run"),
    [
        ([[], {}, {}], SWEEP_RUN),
        ([[], {"dry_run": True, "trigger": "test"}, None], SWEEP_RUN),
        ([[5], {"delete": True}, {"callbacks": None, "errbacks": None, "chain": None}], END_RUN),
        ([[5], {}, {"callbacks": [{"task": "x"}], "chord": None}], END_RUN),
    ],
)
def test_a_call_of_the_task_passes(body: Any, run: Any) -> None:
    assert messages.body_problem(body, run) is None


def test_the_signature_is_the_tasks_own_through_celerys_retry_wrapper() -> None:
    # Celery wraps `run` for autoretry_for; the check must see the task's parameters.
    assert messages.body_problem([[], {"account_id": 1}, {}], SWEEP_RUN) is None
    assert messages.body_problem([[], {"account": 1}, {}], SWEEP_RUN) is not None


GOOD_HEADERS = {"task": "tasks.expire_due_pairings", "id": "6f1c", "retries": 0}


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (None, "it has no `task` header"),
        ({"id": "6f1c"}, "it has no `task` header"),
        ({**GOOD_HEADERS, "task": ["x"]}, "its `task` header is a list of 1, not a task name"),
        ({**GOOD_HEADERS, "task": ""}, "its `task` header is a string (''), not a task name"),
        ({**GOOD_HEADERS, "id": None}, "its `id` header is null, not a task id"),
        ({**GOOD_HEADERS, "id": 7}, "its `id` header is a number (7), not a task id"),
        ({**GOOD_HEADERS, "id": "a\nb"}, "its `id` header is a string ('a\\nb'), not a task id"),
        ({**GOOD_HEADERS, "retries": "x"}, "its `retries` header is a string ('x'), not a count"),
        ({**GOOD_HEADERS, "retries": -1}, "its `retries` header is a number (-1), not a count"),
        ({**GOOD_HEADERS, "timelimit": 5}, "its `timelimit` header is a number (5)"),
        ({**GOOD_HEADERS, "timelimit": [1]}, "its `timelimit` header is a list of 1"),
        ({**GOOD_HEADERS, "timelimit": ["a", None]}, "its `timelimit` header is a list of 2"),
    ],
)
def test_headers_that_are_not_a_task_messages_are_named(headers: Any, problem: str) -> None:
    found = messages.header_problem(headers)
    assert found is not None and found.startswith(problem)


def test_a_task_messages_headers_pass() -> None:
    assert messages.header_problem(GOOD_HEADERS) is None
    assert messages.header_problem({**GOOD_HEADERS, "timelimit": [None, None]}) is None
    assert messages.header_problem({**GOOD_HEADERS, "timelimit": [60, 50.5]}) is None
