"""Lateness: how long after its `end_at` a live worker and beat actually change an enrollment.

A real `celery -A worker worker` and `celery -A worker beat` run against Redis (on a queue of
their own) and a scratch database, with the interval sweep at `interval` seconds. Enrollments are
made to fall due one after another over `spread` seconds; the delay of each is its audit row's
`created_at` (stamped when its batch ran) minus its `end_at`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import data

READY_TIMEOUT_SECONDS = 60
# Enrollments per pairing: the pairings end only when their last enrollment does, as in life.
PER_PAIRING = 10


@dataclasses.dataclass
class Lateness:
    enrollments: int
    changed: int
    delays: list[float]  # seconds, sorted


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values` (q in 0..100)."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


class _Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", *args],
            env=env,
            cwd=log.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop it with its pool children
        )

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.log_path.name}: no {text!r}:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def measure(
    url: str,
    broker_url: str,
    *,
    enrollments: int,
    spread: float,
    interval: float,
    lead: float = 3.0,
    canvas_schema: bool = False,
) -> Lateness:
    """Make `enrollments` fall due over `spread` seconds, starting `lead` s after the worker and
    beat are ready, and wait until all have changed (or `spread + 6 intervals` have passed)."""
    data.prepare_schema(url, canvas_schema=canvas_schema)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEP_")}
    schemas = data.schemas(canvas_schema)
    env.update(
        TEP_DATABASE_URL=url,
        TEP_CANVAS_TABLES=schemas.canvas_tables,
        TEP_CANVAS_SCHEMA=schemas.canvas,
        TEP_SCHEMA=schemas.tep,
        TEP_BROKER_URL=broker_url,
        TEP_RESULT_BACKEND=broker_url,
        TEP_QUEUE=f"tep-bench-{uuid.uuid4().hex[:12]}",
        TEP_SWEEP_INTERVAL_SECONDS=str(interval),
        TEP_NIGHTLY_CRON="",
        PYTHONUNBUFFERED="1",
    )
    with tempfile.TemporaryDirectory(prefix="tep-bench-") as folder:
        workdir = Path(folder)
        worker = _Process(
            ["worker", "--loglevel", "INFO", "--concurrency", "1", "--hostname", "bench@%h"],
            env,
            workdir / "worker.log",
        )
        beat = None
        try:
            worker.wait_for("ready.")
            beat = _Process(
                ["beat", "--loglevel", "INFO", "--schedule", str(workdir / "beat-schedule")],
                env,
                workdir / "beat.log",
            )
            beat.wait_for("beat: Starting...")
            first = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)
            _seed(url, enrollments, first, spread)
            deadline = time.monotonic() + lead + spread + 6 * interval
            while time.monotonic() < deadline and _changed(url) < enrollments:
                time.sleep(0.5)
        finally:
            if beat is not None:
                beat.stop()
            worker.stop()
    with data.connect(url) as conn:
        delays = [
            float(seconds)
            for (seconds,) in conn.execute(
                "SELECT extract(epoch FROM c.created_at - e.end_at) "
                f"FROM {data.TEP}.temporary_enrollment_state_changes c "
                "JOIN enrollments e ON e.id = c.context_id "
                "WHERE c.context_type = 'Enrollment' ORDER BY 1"
            )
        ]
    return Lateness(enrollments=enrollments, changed=len(delays), delays=delays)


def _seed(url: str, enrollments: int, first: dt.datetime, spread: float) -> None:
    """Enrollments due evenly from `first` to `first + spread`, PER_PAIRING to a pairing, the
    pairings interleaved so that each ends only at the end of the spread. Written as Canvas
    writes them (role, uuid, `enrollment_states` row valid until `end_at`), and not indexed by
    tep: the worker's sweeps discover them, as they would Canvas's."""
    pairings = max(1, enrollments // PER_PAIRING)
    step = spread / max(1, enrollments - 1)
    root = data.create_root(url, "Lateness")
    with data.connect(url) as conn:
        before = conn.execute("SELECT coalesce(max(id), 0) FROM enrollments").fetchone()
        conn.execute(
            "INSERT INTO users (id, name, workflow_state, created_at, updated_at) "
            "SELECT g, 'Recipient ' || g, 'registered', now(), now() "
            "FROM generate_series(1, %s) g",
            (enrollments,),
        )
        conn.execute(
            "INSERT INTO courses (id, name, account_id, root_account_id, enrollment_term_id, "
            "workflow_state, created_at, updated_at) "
            "VALUES (1, 'Course', %(root)s, %(root)s, %(term)s, 'available', now(), now())",
            {"root": root.account_id, "term": root.term_id},
        )
        conn.execute(
            "INSERT INTO course_sections (id, course_id, root_account_id, name, default_section, "
            "workflow_state, created_at, updated_at) "
            "VALUES (1, 1, %s, 'Section', true, 'active', now(), now())",
            (root.account_id,),
        )
        conn.execute(
            "INSERT INTO temporary_enrollment_pairings (id, root_account_id, workflow_state, "
            "ending_enrollment_state, created_at, updated_at) "
            "SELECT g, %s, 'active', 'deleted', now(), now() FROM generate_series(1, %s) g",
            (root.account_id, pairings),
        )
        # One user each: Canvas's unique index allows one enrollment per (user, type, role,
        # section).
        conn.execute(
            "INSERT INTO enrollments (user_id, course_id, course_section_id, root_account_id, "
            "type, role_id, uuid, workflow_state, end_at, temporary_enrollment_pairing_id, "
            "created_at, updated_at) "
            "SELECT 1 + g, 1, 1, %(root)s, 'TeacherEnrollment', %(role)s, "
            "md5('lateness-' || g), 'active', "
            "%(first)s::timestamptz + g * %(step)s * interval '1 second', "
            "1 + mod(g, %(pairings)s), now(), now() FROM generate_series(0, %(n)s - 1) g",
            {
                "root": root.account_id,
                "role": root.role_ids["TeacherEnrollment"],
                "first": first,
                "step": step,
                "pairings": pairings,
                "n": enrollments,
            },
        )
        conn.commit()
    data.cache_enrollment_states(
        url, after_id=int(before[0]) if before else 0, at=dt.datetime.now(dt.UTC)
    )


def _changed(url: str) -> int:
    with data.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {data.TEP}.temporary_enrollment_state_changes "
            "WHERE context_type = 'Enrollment'"
        ).fetchone()
        return int(row[0]) if row else 0
