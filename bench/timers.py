"""Timers (issue 15): lateness at the default interval, with timers and with them off.

A real `celery -A worker worker`, `celery -A worker beat` (at the default interval, 60 s) and
`tep api` run against Redis and a scratch database, once with `TEP_TIMERS=true` (the default) and
once with `TEP_TIMERS=false` (expiry waits for the next tick, as before issue 15). Two sets of
temporary enrollments fall due while they run, their end dates in whole seconds as Canvas writes
them:

* **database**: written straight into the tables before beat's first tick (as Canvas writes
  them: role, uuid, `enrollment_states` row; not in tep's deadline index), due over the minute
  after that tick, which is the first to see them (its discovery indexes them, its look-ahead
  schedules them);
* **API**: created through `POST /api/v1/courses/:id/enrollments` a minute before beat's first
  tick, due over the following minute: those inside the API's horizon are scheduled by the API
  itself, the rest by the first tick.

Lateness is each expiry's audit row `created_at` minus its `end_at`, as bench/lateness.py
measures it. The timer sweeps are counted (against the distinct seconds due: one each) and timed
from their recorded runs (`tep.temporary_enrollment_sweep_runs`, trigger `timer`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session

from api import known_scopes
from api.auth import create_token
from bench import data
from bench.lateness import READY_TIMEOUT_SECONDS, _Process, percentile
from bench.measure import Check
from models import User, make_engine
from tasks import canvas_objects, permissions
from tests.canvas_schema import add_pseudonym
from worker.settings import Settings

DEFAULT_INTERVAL = Settings().sweep_interval_seconds
# Issue 15's targets, with timers, at the default settings.
MAX_P99_SECONDS = 1.0
MIN_SECONDS = 0.0
DATABASE = "database"
API = "API"
SECOND = dt.timedelta(seconds=1)


@dataclasses.dataclass
class Population:
    name: str
    enrollments: int
    delays: list[float]  # seconds, sorted

    def stat(self, which: str) -> float:
        if not self.delays:
            return float("nan")
        return {
            "p50": percentile(self.delays, 50),
            "p99": percentile(self.delays, 99),
            "max": self.delays[-1],
            "min": self.delays[0],
        }[which]


@dataclasses.dataclass
class TimersRun:
    timers: bool
    interval: float
    populations: list[Population]
    moments: int  # distinct seconds the enrollments fall due in
    timer_sweeps: list[float]  # each timer sweep's duration, seconds
    timer_changes: int  # enrollments the timer sweeps changed

    @property
    def label(self) -> str:
        return "timers" if self.timers else "timers off"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Api:
    """`tep api` (uvicorn) on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/api/v1"
        self._log = log.open("wb")
        self.log_path = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "api", "--port", str(self.port)],
            env=env,
            cwd=log.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.base_url}/../../openapi.json", timeout=2).is_success:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"tep api did not start:\n{log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def _whole_seconds(first: dt.datetime, count: int, spread: float) -> list[dt.datetime]:
    """`count` end dates evenly over `spread` seconds from `first`, each a whole second."""
    start = first.replace(microsecond=0) + dt.timedelta(seconds=1)
    step = spread / max(1, count - 1)
    return [start + dt.timedelta(seconds=round(i * step)) for i in range(count)]


def _seed_database(url: str, end_ats: list[dt.datetime]) -> int:
    """Temporary enrollments written straight into the tables, as Canvas writes them (role,
    uuid, an `enrollment_states` row valid until `end_at`), 10 to a pairing; tep's deadline index
    does not have them: the next sweep's discovery finds them. Returns the root account's id."""
    root = data.create_root(url, "Timers: database")
    count = len(end_ats)
    with data.connect(url) as conn:
        before = conn.execute("SELECT coalesce(max(id), 0) FROM enrollments").fetchone()
        users = [
            row[0]
            for row in conn.execute(
                "INSERT INTO users (name, workflow_state, created_at, updated_at) "
                "SELECT 'Recipient ' || g, 'registered', now(), now() "
                "FROM generate_series(1, %s) g RETURNING id",
                (count,),
            )
        ]
        course = conn.execute(
            "INSERT INTO courses (name, account_id, root_account_id, enrollment_term_id, "
            "workflow_state, created_at, updated_at) "
            "VALUES ('Course', %(root)s, %(root)s, %(term)s, 'available', now(), now()) "
            "RETURNING id",
            {"root": root.account_id, "term": root.term_id},
        ).fetchone()
        assert course is not None
        section = conn.execute(
            "INSERT INTO course_sections (course_id, root_account_id, name, default_section, "
            "workflow_state, created_at, updated_at) "
            "VALUES (%s, %s, 'Section', true, 'active', now(), now()) RETURNING id",
            (course[0], root.account_id),
        ).fetchone()
        assert section is not None
        pairings = [
            row[0]
            for row in conn.execute(
                "INSERT INTO temporary_enrollment_pairings (root_account_id, workflow_state, "
                "ending_enrollment_state, created_at, updated_at) "
                "SELECT %s, 'active', 'deleted', now(), now() FROM generate_series(1, %s) "
                "RETURNING id",
                (root.account_id, max(1, count // 10)),
            )
        ]
        # Each pairing's enrollments fall due across the spread (they end with the last).
        conn.cursor().executemany(
            "INSERT INTO enrollments (user_id, course_id, course_section_id, root_account_id, "
            "type, role_id, uuid, workflow_state, end_at, temporary_enrollment_pairing_id, "
            "created_at, updated_at) VALUES (%s, %s, %s, %s, 'TeacherEnrollment', %s, %s, "
            "'active', %s, %s, now(), now())",
            [
                (
                    user,
                    course[0],
                    section[0],
                    root.account_id,
                    root.role_ids["TeacherEnrollment"],
                    uuid.uuid4().hex,
                    end_at,
                    pairings[i % len(pairings)],
                )
                for i, (user, end_at) in enumerate(zip(users, end_ats, strict=True))
            ],
        )
        conn.commit()
    data.cache_enrollment_states(
        url, after_id=int(before[0]) if before else 0, at=dt.datetime.now(dt.UTC)
    )
    return root.account_id


@dataclasses.dataclass
class _ApiWorld:
    account_id: int
    token: str
    course_id: int
    provider_id: int
    recipients: list[int]


def _api_world(url: str, canvas_schema: bool, recipients: int) -> _ApiWorld:
    """A root account with an admin and her token, a course, a provider and recipients, made in
    the database (on Canvas's schema, Canvas owns users and courses; the API refuses them)."""
    engine = make_engine(data.sqlalchemy_url(url), data.schemas(canvas_schema))
    try:
        with Session(engine) as session, session.begin():
            account = canvas_objects.create_root_account(session, "Timers: API")
            people: list[int] = []
            for n in range(recipients + 2):
                user = User(name=f"Person {n}")
                session.add(user)
                session.flush()
                add_pseudonym(
                    session, user_id=user.id, account_id=account.id, unique_id=f"timers{n}"
                )
                people.append(user.id)
            admin, provider, *others = people
            permissions.grant(session, account, admin, permissions.account_role(session, account))
            course, _section = canvas_objects.create_course(session, account, "Timers")
            _, token = create_token(
                session, account_id=account.id, user_id=admin, known_scopes=known_scopes()
            )
            return _ApiWorld(account.id, token, course.id, provider, others)
    finally:
        engine.dispose()


def _create_through_the_api(api: _Api, world: _ApiWorld, end_ats: list[dt.datetime]) -> None:
    with httpx.Client(
        base_url=api.base_url, headers={"Authorization": f"Bearer {world.token}"}, timeout=30
    ) as client:
        answer = client.post("/accounts/self/temporary_enrollment_pairings")
        if answer.status_code != 201:
            raise RuntimeError(f"creating a pairing: {answer.status_code} {answer.text}")
        pairing = answer.json()["temporary_enrollment_pairing"]["id"]
        for recipient, end_at in zip(world.recipients, end_ats, strict=True):
            answer = client.post(
                f"/courses/{world.course_id}/enrollments",
                data={
                    "enrollment[user_id]": recipient,
                    "enrollment[type]": "TeacherEnrollment",
                    "enrollment[enrollment_state]": "active",
                    "enrollment[end_at]": end_at.isoformat(),
                    "enrollment[temporary_enrollment_source_user_id]": world.provider_id,
                    "enrollment[temporary_enrollment_pairing_id]": pairing,
                },
            )
            if answer.status_code != 200:
                raise RuntimeError(f"creating an enrollment: {answer.status_code} {answer.text}")


def _delays(url: str, account_id: int) -> list[float]:
    with data.connect(url) as conn:
        return [
            float(seconds)
            for (seconds,) in conn.execute(
                "SELECT extract(epoch FROM c.created_at - e.end_at) "
                f"FROM {data.TEP}.temporary_enrollment_state_changes c "
                "JOIN enrollments e ON e.id = c.context_id "
                "WHERE c.context_type = 'Enrollment' AND c.reason = 'expired' "
                "AND e.root_account_id = %s ORDER BY 1",
                (account_id,),
            )
        ]


def _changed(url: str) -> int:
    with data.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {data.TEP}.temporary_enrollment_state_changes "
            "WHERE context_type = 'Enrollment'"
        ).fetchone()
        return int(row[0]) if row else 0


def measure(
    url: str,
    redis_url: str,
    *,
    timers: bool,
    database_enrollments: int = 1_000,
    api_enrollments: int = 100,
    spread: float = 60.0,
    interval: float = DEFAULT_INTERVAL,
    canvas_schema: bool = False,
) -> TimersRun:
    """One run (see the module doc); `interval` other than the default is for the smoke test."""
    data.prepare_schema(url, canvas_schema=canvas_schema)
    schemas = data.schemas(canvas_schema)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    env.update(
        TEP_DATABASE_URL=url,
        TEP_CANVAS_TABLES=schemas.canvas_tables,
        TEP_CANVAS_SCHEMA=schemas.canvas,
        TEP_SCHEMA=schemas.tep,
        TEP_BROKER_URL=redis_url,
        TEP_RESULT_BACKEND=redis_url,
        TEP_QUEUE=f"tep-bench-{uuid.uuid4().hex[:12]}",
        TEP_NIGHTLY_CRON="",
        TEP_TIMERS="true" if timers else "false",
        PYTHONUNBUFFERED="1",
    )
    if interval != DEFAULT_INTERVAL:
        env["TEP_SWEEP_INTERVAL_SECONDS"] = str(interval)
    world = _api_world(url, canvas_schema, api_enrollments)
    step = dt.timedelta(seconds=interval)
    with tempfile.TemporaryDirectory(prefix="tep-bench-timers-") as folder:
        workdir = Path(folder)
        processes: list[Any] = []
        try:
            api = _Api(env, workdir / "api.log")
            processes.append(api)
            worker = _Process(
                ["worker", "--loglevel", "INFO", "--concurrency", "2", "--hostname", "b@%h"],
                env,
                workdir / "worker.log",
            )
            processes.append(worker)
            worker.wait_for("ready.")
            beat = _Process(
                ["beat", "--loglevel", "INFO", "--schedule", str(workdir / "beat-schedule")],
                env,
                workdir / "beat.log",
            )
            processes.append(beat)
            beat.wait_for("beat: Starting...")
            first_tick = dt.datetime.now(dt.UTC) + step  # beat's first tick: an interval on
            # API: due over a spread starting just after creation (part inside its horizon).
            api_due = _whole_seconds(
                dt.datetime.now(dt.UTC) + max(min(step / 3, 15 * SECOND), 5 * SECOND),
                api_enrollments,
                spread,
            )
            _create_through_the_api(api, world, api_due)
            database_due = _whole_seconds(
                first_tick + min(step / 10, 5 * SECOND), database_enrollments, spread
            )
            database_root = _seed_database(url, database_due)
            if dt.datetime.now(dt.UTC) >= first_tick:
                raise RuntimeError("seeding took longer than an interval: use fewer enrollments")
            total = api_enrollments + database_enrollments
            last = max(api_due + database_due)
            deadline = time.monotonic() + (last - dt.datetime.now(dt.UTC)).total_seconds()
            deadline += 2 * interval + 10
            while time.monotonic() < deadline and _changed(url) < total:
                time.sleep(0.5)
        finally:
            for process in reversed(processes):
                process.stop()
    with data.connect(url) as conn:
        sweeps = conn.execute(
            "SELECT extract(epoch FROM finished_at - started_at), enrollments_changed "
            f"FROM {data.TEP}.temporary_enrollment_sweep_runs WHERE trigger = 'timer'"
        ).fetchall()
    return TimersRun(
        timers=timers,
        interval=interval,
        populations=[
            Population(DATABASE, database_enrollments, _delays(url, database_root)),
            Population(API, api_enrollments, _delays(url, world.account_id)),
        ],
        moments=len(set(api_due) | set(database_due)),
        timer_sweeps=sorted(float(seconds) for seconds, _ in sweeps),
        timer_changes=sum(int(changed) for _, changed in sweeps),
    )


Add = Callable[..., None]


def report(runs: list[TimersRun], add: Add, figures: dict[str, Any]) -> None:
    """Rows for bench/run.py's table: lateness of each set, with and without timers; the timer
    sweeps (one per second due) and what they cost."""
    for run in runs:
        for population in run.populations:
            key = f"{'timers' if run.timers else 'no_timers'}_{population.name.lower()}"
            stats = {which: population.stat(which) for which in ("p50", "p99", "max", "min")}
            figures[f"lateness_{key}"] = stats
            shown = ", ".join(f"{which} {value:.2f} s" for which, value in stats.items())
            what = f"lateness at {run.interval:g} s, {run.label}, {population.name}"
            if run.timers:
                ok = stats["p99"] <= MAX_P99_SECONDS and stats["min"] >= MIN_SECONDS
                add(what, shown, f"p99 <= {MAX_P99_SECONDS:g} s, min >= 0", ok)
            else:
                add(what, shown)
        if run.timers:
            sweeps = run.timer_sweeps
            figures["timer_sweeps"] = {
                "count": len(sweeps),
                "moments": run.moments,
                "median_seconds": statistics.median(sweeps) if sweeps else None,
                "p99_seconds": percentile(sweeps, 99) if sweeps else None,
                "total_seconds": sum(sweeps),
                "enrollments_changed": run.timer_changes,
            }
            add(
                "timer sweeps (one per second due)",
                f"{len(sweeps)} for {run.moments} seconds due",
                "= seconds due",
                len(sweeps) == run.moments,
            )
            if sweeps:
                add(
                    "timer sweep cost",
                    f"median {statistics.median(sweeps) * 1000:.0f} ms, p99 "
                    f"{percentile(sweeps, 99) * 1000:.0f} ms, total {sum(sweeps):.1f} s "
                    f"for {run.timer_changes:,} enrollments",
                )


def bench(
    options: Any, results: Any, progress: Callable[[str], None], **kwargs: Any
) -> list[TimersRun]:
    """bench/run.py's entry: both runs at the default interval, added to `results`."""
    runs = []
    for timers in (True, False):
        progress(
            f"timers {'on' if timers else 'off'}: worker + beat at {DEFAULT_INTERVAL:g} s + tep "
            f"api, {options.lateness_enrollments:,} enrollments in the tables and "
            f"{kwargs.get('api_enrollments', 100)} through the API, due over "
            f"{options.lateness_spread:g} s"
        )
        with data.scratch_database() as url:
            runs.append(
                measure(
                    url,
                    options.redis_url,
                    timers=timers,
                    database_enrollments=options.lateness_enrollments,
                    spread=options.lateness_spread,
                    canvas_schema=options.canvas_schema,
                    **kwargs,
                )
            )
    for run in runs:
        for population in run.populations:
            results.checks.append(
                Check(
                    f"{run.label}: {population.name} enrollments changed",
                    population.enrollments,
                    len(population.delays),
                )
            )
    report(runs, results.add, results.figures)
    return runs
