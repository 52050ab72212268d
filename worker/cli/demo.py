"""`tep demo`: seed a demo account (worker/cli/demo_seed.py) and, with --run, watch a worker
expire its due pairings."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Annotated

import typer

from worker.cli.shared import fail, out

if TYPE_CHECKING:
    from rich.table import Table
    from sqlalchemy.orm import Session

DEMO_SWEEP_INTERVAL_SECONDS = 5
DEMO_TIMEOUT_SECONDS = 90
DEMO_MAX_TIMEOUT_SECONDS = 3600
# What a pairing without an ending state ends as (Canvas's default; tasks/lifecycle.py).
DEFAULT_ENDING_STATE = "deleted (default)"


def demo(
    run: Annotated[
        bool,
        typer.Option(
            "--run/--seed-only",
            help="Also start a worker with beat and watch it end the due pairings.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the worker.")] = float(
        DEMO_TIMEOUT_SECONDS
    ),
) -> None:
    """Seed a demo account with due and future pairings (and, with --run, watch them expire)."""
    if not 1 <= timeout <= DEMO_MAX_TIMEOUT_SECONDS:  # NaN too
        fail(f"--timeout must be 1 to {DEMO_MAX_TIMEOUT_SECONDS} seconds, not {timeout:g}")
    from migrations import upgrade
    from models import transaction, utcnow
    from worker import runtime
    from worker.cli.demo_seed import SOON, seed_demo
    from worker.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url, settings.schemas())  # the demo makes its database
    with transaction(runtime.session_factory()) as session:
        seed = seed_demo(session, utcnow())
    out().print(
        f"seeded demo account {seed.account_id}: due pairings {seed.due_pairing_ids} "
        f"({seed.due_enrollments} enrollments), expiring in "
        f"{int(SOON.total_seconds())} s {seed.soon_pairing_ids}, "
        f"future {seed.future_pairing_ids}; admin user {seed.admin_id} (AccountAdmin: "
        f"`tep token create --account {seed.account_id} --user {seed.admin_id}` for the API)"
    )
    if not run:
        out().print("start a worker to expire them: celery -A worker worker -B --loglevel INFO")
        return
    watched = seed.due_pairing_ids + seed.soon_pairing_ids
    ended = _run_worker_until_ended(watched, timeout)
    with transaction(runtime.session_factory(), commit=False) as session:
        table = pairings_table(session, watched + seed.future_pairing_ids)
    out().print(table)
    if not ended:
        fail(f"the worker did not end pairings {watched} within {timeout:.0f} s", status=1)
    out().print(
        f"the worker ended {len(watched)} pairings; `tep sweep --dry-run` now finds nothing due "
        f"for account {seed.account_id}, and `tep sweep --as-of` a week ahead previews the rest."
    )


def _run_worker_until_ended(pairing_ids: list[int], timeout: float) -> bool:
    from sqlalchemy import select

    from models import TemporaryEnrollmentPairing, transaction
    from tasks import lifecycle
    from worker import runtime

    env = dict(os.environ)
    env.setdefault("TEP_SWEEP_INTERVAL_SECONDS", str(DEMO_SWEEP_INTERVAL_SECONDS))
    # Beat's schedule file is only the demo worker's: it goes with the demo, not into the folder.
    with tempfile.TemporaryDirectory(prefix="tep-demo-") as scratch:
        command = [
            sys.executable, "-m", "celery", "-A", "worker", "worker", "-B",
            "--loglevel", "INFO", "--concurrency", "1",
            "--schedule", os.path.join(scratch, "beat-schedule"),
        ]  # fmt: skip
        # In a process group of its own: the worker's pool processes and its beat are stopped
        # with it (below), and a Ctrl-C at the terminal reaches the demo, which stops them. A
        # Ctrl-C or SIGTERM that comes while it starts is held until `worker` is known, so that
        # the worker is stopped, not left running; the worker itself starts with none held.
        held = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            worker = subprocess.Popen(
                command,
                env=env,
                process_group=0,
                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, held),
            )
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
            raise
        deadline = time.monotonic() + timeout
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # a held signal is raised here
            out().print(
                f"starting: {' '.join(command[2:])}  "
                f"(beat every {env['TEP_SWEEP_INTERVAL_SECONDS']} s)",
                highlight=False,
                soft_wrap=True,
            )
            while time.monotonic() < deadline and worker.poll() is None:
                time.sleep(1)
                with transaction(runtime.session_factory(), commit=False) as session:
                    pairings = session.scalars(
                        select(TemporaryEnrollmentPairing).where(
                            TemporaryEnrollmentPairing.id.in_(pairing_ids)
                        )
                    ).all()
                    views = lifecycle.pairing_views(session, pairings)
                if views and all(view.workflow_state == "ended" for view in views.values()):
                    time.sleep(1)  # let the worker log the task's result before it is stopped
                    return True
            return False
        finally:
            _stop_group(worker)


def _stop_group(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's whole process group (a warm shutdown, its children with it), and
    SIGKILL to what is left after 30 s: nothing of it may outlive the demo, holding its output."""
    try:
        os.killpg(worker.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)  # pool processes or beat a stopped worker left
    worker.wait()


def pairings_table(session: Session, pairing_ids: list[int]) -> Table:
    """The pairings as tep sees them, narrow enough for 80 columns: enrollments are counted by
    state, and times are UTC month-day and time, as `tep status` shows them."""
    from rich.table import Table
    from sqlalchemy import select

    from models import Enrollment, TemporaryEnrollmentPairing
    from tasks import lifecycle
    from worker.cli.status import short

    table = Table(title="Demo pairings (times in UTC)", title_justify="left")
    for column in ("pairing", "ending state", "pairing state", "ended at", "enrollments"):
        table.add_column(column, justify="right" if column == "pairing" else "left")
    pairings = session.scalars(
        select(TemporaryEnrollmentPairing)
        .where(TemporaryEnrollmentPairing.id.in_(pairing_ids))
        .order_by(TemporaryEnrollmentPairing.id)
    ).all()
    views = lifecycle.pairing_views(session, pairings)
    for pairing in pairings:
        view = views[pairing.id]
        states = collections.Counter(
            session.scalars(
                select(Enrollment.workflow_state).where(
                    Enrollment.temporary_enrollment_pairing_id == pairing.id
                )
            )
        )
        table.add_row(
            str(pairing.id),
            pairing.ending_enrollment_state or DEFAULT_ENDING_STATE,
            view.workflow_state,
            short(lifecycle.iso(view.ended_at)) if view.ended_at else "",
            ", ".join(f"{n} {state}" for state, n in sorted(states.items())),
        )
    return table
