"""`tep canvas check|sync|send`, `tep sweep` and `tep restore` beside a hosted Canvas, as an
operator runs them: real `tep` processes against the live test Canvas, through the fault proxy."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from models import utcnow
from tests.canvas_rest.conftest import TestCanvas
from tests.processes import PROJECT_ROOT

HOUR = dt.timedelta(hours=1)


def tep(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def settings(canvas: TestCanvas, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "TEP_DATABASE_URL": f"sqlite:///{tmp_path / 'tep.sqlite'}",
        "TEP_CANVAS_URL": canvas.url,
        "TEP_CANVAS_TOKEN": canvas.token,
        "TEP_CANVAS_ACCOUNT_IDS": str(canvas.account_id),
        **extra,
    }


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stderr
    return done


def test_an_operator_syncs_sweeps_sends_and_restores_through_canvas(
    canvas: TestCanvas, tmp_path: Path
) -> None:
    env = settings(canvas, tmp_path)
    ok(tep(env, "db", "upgrade"))
    checked = tep(env, "canvas", "check")
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr  # 1: a warning
    assert "problem:" not in checked.stdout and canvas.token not in checked.stdout

    provider = canvas.add_user("Provider")
    recipient = canvas.add_user("Substitute", email="sub@example.edu")
    course_id, _section = canvas.add_course("Biology 101")
    canvas.enroll(provider, course_id)
    # Due in an hour; the operator sweeps as of then (--yes): deterministic, and Canvas still
    # shows the enrollment live, so the command really changes Canvas's row.
    end_at = utcnow().replace(microsecond=0) + HOUR
    pairing_id, [enrollment_id] = canvas.make_pairing(
        provider, recipient, [course_id], "inactive", end_at=end_at
    )

    synced = json.loads(ok(tep(env, "canvas", "sync", "--json")).stdout)
    assert synced["enrollments"]["new"] >= 1 and synced["requests"] > 0
    later = (end_at + dt.timedelta(minutes=1)).isoformat()
    swept = json.loads(ok(tep(env, "sweep", "--as-of", later, "--yes", "--json")).stdout)
    assert swept["enrollments_changed"]["inactive"] == 1, (synced, swept)
    # Decided in tep, not yet made in Canvas: the pairing waits for Canvas's answer.
    assert swept["pairings_ended"] == 0
    assert canvas.enrollment(enrollment_id).workflow_state == "active"
    status = json.loads(ok(tep(env, "status", "--json")).stdout)
    assert status["canvas"]["open_commands"] == 1

    sent = json.loads(ok(tep(env, "canvas", "send", "--json")).stdout)
    assert sent["outcomes"]["confirmed"] == 1 and sent["pairings_ended"] == 1
    assert canvas.enrollment(enrollment_id).workflow_state == "inactive"
    assert [(c.from_state, c.to_state) for c in canvas.state_changes(enrollment_id)] == [
        ("active", "inactive")
    ]

    restored = ok(tep(env, "restore", str(pairing_id)))
    assert "Canvas confirmed every change" in restored.stdout, restored.stdout
    assert canvas.enrollment(enrollment_id).workflow_state == "active"


def test_a_token_canvas_refuses_is_one_line_without_the_token(
    canvas: TestCanvas, tmp_path: Path
) -> None:
    bad = "7~" + "x" * 40
    env = settings(canvas, tmp_path, TEP_CANVAS_TOKEN=bad)
    ok(tep(env, "db", "upgrade"))
    for args in (("canvas", "sync"), ("canvas", "check")):
        done = tep(env, *args)
        assert done.returncode != 0
        output = done.stdout + done.stderr
        assert bad not in output and "Traceback" not in output
        assert "401" in output and "TEP_CANVAS_TOKEN" in output, output
    done = tep(env, "canvas", "sync")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr


def test_canvas_commands_need_a_canvas_url(tmp_path: Path) -> None:
    env = {"TEP_DATABASE_URL": f"sqlite:///{tmp_path / 'tep.sqlite'}"}
    ok(tep(env, "db", "upgrade"))
    done = tep(env, "canvas", "sync")
    assert done.returncode == 2
    assert done.stderr == (
        "tep: TEP_CANVAS_URL is not set: tep is not running beside a hosted Canvas\n"
    )
