"""`python -m bench.canvas [--expiries 1000]`: syncing and applying expiries beside a hosted
Canvas (issue 14, point 8), against the test Canvas throttled as Canvas throttles.

The test Canvas is what the connector's tests use (tests/canvas_rest/conftest.py): a real `tep
api` process on a scratch PostgreSQL database of its own, migrated, reached over HTTP through the
fault proxy, here with Canvas's leaky bucket (app/middleware/request_throttle.rb: full at 600,
outflow 10 per second, 50 up front per request; tests/canvas_rest/proxy.py `LeakyBucket`). Each
request's actual cost is, by default, the seconds the test Canvas took to answer (what the proxy
can see of Canvas's CPU plus database seconds); `--cost` fixes it, for a Canvas slower than this
one.

Seeding (not measured): N temporary enrollments in pairings of `--per-pairing` (5), ending states
deleted, completed and inactive in turn, one recipient per pairing, one provider per
`--pairings-per-provider` (2) pairings, a course per provider's enrollment. By default they are
written straight into the Canvas's database, for speed (seconds, where the API takes minutes for
1,000 on this machine), by the functions the test Canvas's own handlers call; `--seed api` makes
them through its API with TestCanvas's helpers, as Canvas's UI makes pairings (directly, not
through the proxy, in a few threads). They end
an hour from now and tep's mirror is swept as of two hours from now: tep decides them due while
the Canvas still shows them live, so each DELETE really changes the Canvas's row (past its
`end_at` the test Canvas would show the ending itself, its read-time rule). Then, on tep's own
database, the mirror (a fresh scratch PostgreSQL database, migrated, sessions made
`through_canvas=True`; `--mirror sqlite` for a file), with a `CanvasClient` at production
settings (2 in flight, `--in-flight` to change it; backoff 0.5 s up to 30 s) on the proxy:

(a) a first sync (an empty mirror: a full read), (b) a second one (incremental), (c) the sweep on
the mirror (`lifecycle.run_sweep`: one command per expiry in the outbox), (d) `deliver_commands`
until the outbox is empty.

The baseline, in the same run and through the same proxy and bucket: the same N DELETEs (a second
root account seeded alike, its own token and so its own bucket) sent by a bare loop of httpx
calls, as many in flight, no reads and no bookkeeping: the floor of sending. A throttled one is sent
again after 50 ms. Baseline and delivery alternate in order from one repeat to the next.

What the bucket allows: a request holds 50 while it runs and costs its actual cost c once it ends;
the bucket leaks 10 per second, so a client can hold 10 / c requests per second indefinitely
(after a first burst of (600 - 50) / c from an empty bucket). The run prints that ceiling for the
cost per request it measured and what the delivery achieved as a share of it; the bucket's bound
on the phase's own requests (the least time the bucket lets them take, from its level at the
start: 0 when their cost fits in its headroom) and the share of it achieved; and the in-flight
bound (requests in flight / the mean answer time), which binds first while fewer than 10 x answer
time / c requests are in flight.

Every repeat starts from fresh accounts and a fresh mirror; figures are medians over repeats.
Checks (printed, and the exit status): each count is exact, each due enrollment is changed in the
Canvas exactly once (its own audit table), each DELETE reached the Canvas once.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from models import (
    Account,
    CanvasCommand,
    CommunicationChannel,
    CourseSection,
    Enrollment,
    PairingEnd,
    Pseudonym,
    StateChange,
    TemporaryEnrollmentPairing,
    User,
    make_engine,
    make_sessionmaker,
    transaction,
    utcnow,
)
from tasks import canvas_objects, events, lifecycle
from tasks.canvas_rest import commands
from tasks.canvas_rest.client import (
    CANVAS_BUCKET_HWM,
    CANVAS_OUTFLOW_PER_SECOND,
    CANVAS_UP_FRONT_COST,
    THROTTLE_MARK,
    CanvasClient,
)
from tasks.canvas_rest.sync import SyncSummary, sync_canvas
from tests import services
from tests.api.conftest import make_world
from tests.api.server import api_server
from tests.canvas_rest.conftest import TestCanvas
from tests.canvas_rest.proxy import FaultProxy, LeakyBucket

ENDING_STATES = ("deleted", "completed", "inactive")
TASK_FOR_STATE = commands.KIND_FOR_ENDING_STATE
MAX_IN_FLIGHT = 2  # TEP_CANVAS_MAX_IN_FLIGHT's default
HOUR = dt.timedelta(hours=1)
# The delivery loop gives up (a failed check) if the outbox is not empty by then.
DELIVERY_TIMEOUT_SECONDS = 1800.0
BASELINE_THROTTLE_PAUSE = 0.05

Progress = Callable[[str], None]


@dataclasses.dataclass
class Options:
    expiries: int = 1000
    per_pairing: int = 5
    pairings_per_provider: int = 2
    repeat: int = 1
    mirror: str = "postgres"  # or "sqlite"
    cost: float | None = None  # a fixed X-Request-Cost per request; None: the answer's seconds
    in_flight: int = MAX_IN_FLIGHT  # the client's max_in_flight, and the baseline's
    seed: str = "db"  # or "api": through the Canvas's API (TestCanvas's helpers; minutes)
    seed_threads: int = 6
    json_path: str | None = None

    @property
    def pairings(self) -> int:
        return -(-self.expiries // self.per_pairing)


@dataclasses.dataclass
class Check:
    what: str
    expected: Any
    found: Any

    @property
    def ok(self) -> bool:
        return bool(self.expected == self.found)


@dataclasses.dataclass
class Phase:
    """One measured phase: what the client spent on it."""

    seconds: float = 0.0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    cost: float = 0.0  # sum of X-Request-Cost
    answer_seconds: float = 0.0  # seconds waiting for answers, summed over threads
    paused: float = 0.0  # seconds the client slept (pacing and backoff), summed over threads
    lowest_remaining: float | None = None
    bucket_start: float = 0.0  # the token's bucket level when the phase began

    @property
    def bucket_bound(self) -> float:
        """The least time Canvas's bucket lets this phase's requests take, at the cost they
        had: what does not fit in the headroom left at the start (600, less this level and one
        request's up-front 50) leaks out at 10 per second."""
        headroom = CANVAS_BUCKET_HWM - CANVAS_UP_FRONT_COST - self.bucket_start
        return max(0.0, self.cost - headroom) / CANVAS_OUTFLOW_PER_SECOND

    @property
    def cost_per_request(self) -> float:
        answered = self.requests - self.throttled
        return self.cost / answered if answered else 0.0

    @property
    def mean_answer(self) -> float:
        return self.answer_seconds / self.requests if self.requests else 0.0


@dataclasses.dataclass
class Round:
    """One repeat's figures."""

    first_sync: Phase
    second_sync: Phase
    sweep_seconds: float
    delivery: Phase
    delivery_runs: int
    retry_later: int
    outcomes: dict[str, int]
    baseline: Phase
    seed_seconds: float


@dataclasses.dataclass
class Seeded:
    canvas: TestCanvas
    # (pairing id, ending state, [(course id, enrollment id)])
    pairings: list[tuple[int, str, list[tuple[int, int]]]]

    @property
    def enrollments(self) -> list[tuple[int, int, str]]:
        """(course id, enrollment id, ending state) of every temporary enrollment."""
        return [(c, e, state) for _p, state, made in self.pairings for c, e in made]


@dataclasses.dataclass
class Results:
    options: Options
    rounds: list[Round] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)
    machine: str = ""

    def check(self, what: str, expected: Any, found: Any) -> None:
        self.checks.append(Check(what, expected, found))

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


# --------------------------------------------------------------------------------------------
# The test Canvas and the mirror


@contextmanager
def test_canvas(workdir: Path, progress: Progress) -> Iterator[tuple[str, sessionmaker[Session]]]:
    """A scratch PostgreSQL database, migrated, served by a real `tep api`: (its URL, its
    sessions)."""
    with services.scratch_postgres_database("tep_bench_canvas") as url:
        upgrade(url)
        engine = make_engine(url)
        try:
            with api_server(url, workdir / "canvas-api.log") as server:
                progress(f"test Canvas: tep api on {server.base_url}")
                yield server.base_url, make_sessionmaker(engine)
                log = server.log
            if "Traceback" in log:
                raise SystemExit(f"bench.canvas: the test Canvas logged a Traceback:\n{log}")
        finally:
            engine.dispose()


@contextmanager
def mirror_database(kind: str, workdir: Path, n: int) -> Iterator[sessionmaker[Session]]:
    """tep's own database beside the Canvas, fresh: sessions that work on a mirror."""
    with ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{workdir / f'mirror-{n}.sqlite'}"
        else:
            url = stack.enter_context(services.scratch_postgres_database("tep_bench_mirror"))
        upgrade(url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        yield make_sessionmaker(engine, through_canvas=True)


def new_account(api_url: str, factory: sessionmaker[Session], proxy: FaultProxy) -> TestCanvas:
    """A fresh root account on the test Canvas (its admin and token), behind `proxy`: what the
    `canvas` fixture makes, by hand."""
    world = make_world(api_url, factory)
    return TestCanvas(world, proxy, proxy.base_url, world.token, world.factory)


def _layout(options: Options) -> tuple[list[int], int]:
    """The size of each pairing, and how many providers (one per `pairings_per_provider`)."""
    sizes = [
        min(options.per_pairing, options.expiries - p * options.per_pairing)
        for p in range(options.pairings)
    ]
    return sizes, -(-options.pairings // options.pairings_per_provider)


def seed_api(canvas: TestCanvas, options: Options) -> Seeded:
    """`options.expiries` temporary enrollments through the Canvas's API, with TestCanvas's own
    helpers (as Canvas's UI makes pairings), ending an hour from now; a few threads."""
    end_at = utcnow().replace(microsecond=0) + HOUR
    sizes, providers = _layout(options)
    per = options.pairings_per_provider

    def provider(n: int) -> tuple[int, list[int]]:
        user = canvas.add_user(f"Provider {n}", f"provider{n}@example.edu")
        wanted = max(sizes[n * per : (n + 1) * per])
        courses = [canvas.add_course(f"Course {n}.{c}")[0] for c in range(wanted)]
        for course_id in courses:
            canvas.enroll(user, course_id)
        return user, courses

    with ThreadPoolExecutor(max_workers=options.seed_threads) as pool:
        teachers = list(pool.map(provider, range(providers)))

        def pairing(p: int) -> tuple[int, str, list[tuple[int, int]]]:
            teacher, courses = teachers[p // per]
            state = ENDING_STATES[p % len(ENDING_STATES)]
            recipient = canvas.add_user(f"Recipient {p}", f"recipient{p}@example.edu")
            chosen = courses[: sizes[p]]
            pairing_id, made = canvas.make_pairing(teacher, recipient, chosen, state, end_at)
            return pairing_id, state, list(zip(chosen, made, strict=True))

        return Seeded(canvas, list(pool.map(pairing, range(options.pairings))))


def seed_db(canvas: TestCanvas, options: Options) -> Seeded:
    """The same rows written straight into the Canvas's database, in one transaction, by the
    functions the test Canvas's own handlers call (tasks/canvas_objects.py: courses with their
    default section, enrollments with their `enrollment_states` rows and deadlines; the
    pairing's `created` audit row; users with a login and an e-mail channel, as POST
    /accounts/:id/users writes them): seconds instead of minutes for 1,000."""
    end_at = utcnow().replace(microsecond=0) + HOUR
    start_at = end_at - 7 * 24 * HOUR
    sizes, providers = _layout(options)
    per = options.pairings_per_provider
    root = canvas.account_id
    made: list[tuple[int, str, list[tuple[int, int]]]] = []

    with transaction(canvas.factory) as session:
        account = session.get_one(Account, root)
        role = canvas_objects.built_in_role(session, root, "TeacherEnrollment")

        def user(name: str, email: str) -> int:
            row = User(name=name, sortable_name=name, uuid=canvas_objects.canvas_uuid())
            session.add(row)
            session.flush()
            session.add(Pseudonym(user_id=row.id, account_id=root, unique_id=email))
            session.add(CommunicationChannel(user_id=row.id, path=email, path_type="email"))
            return row.id

        def enrollment(user_id: int, section: CourseSection, **extra: Any) -> Enrollment:
            return Enrollment(
                user_id=user_id,
                course_id=section.course_id,
                course_section_id=section.id,
                root_account_id=root,
                type="TeacherEnrollment",
                role_id=role.id,
                workflow_state="active",
                limit_privileges_to_course_section=False,
                **extra,
            )

        tag = canvas_objects.canvas_uuid()[:8]  # logins are unique per account, runs may share one
        teachers: list[tuple[int, list[CourseSection]]] = []
        rows: list[Enrollment] = []
        for n in range(providers):
            teacher = user(f"Provider {n}", f"provider{n}-{tag}@example.edu")
            wanted = max(sizes[n * per : (n + 1) * per])
            sections = [
                canvas_objects.create_course(session, account, f"Course {n}.{c}")[1]
                for c in range(wanted)
            ]
            rows += [enrollment(teacher, section) for section in sections]
            teachers.append((teacher, sections))
        canvas_objects.create_enrollments(session, rows)

        temporary: list[tuple[int, str, list[Enrollment]]] = []
        for p in range(options.pairings):
            teacher, sections = teachers[p // per]
            state = ENDING_STATES[p % len(ENDING_STATES)]
            recipient = user(f"Recipient {p}", f"recipient{p}-{tag}@example.edu")
            pairing = TemporaryEnrollmentPairing(
                root_account_id=root,
                workflow_state="active",
                ending_enrollment_state=state,
                created_by_id=canvas.admin_id,
            )
            session.add(pairing)
            session.flush()
            events.record_pairing_created(session, pairing, actor_id=canvas.admin_id)
            temporary.append(
                (
                    pairing.id,
                    state,
                    [
                        enrollment(
                            recipient,
                            section,
                            start_at=start_at,
                            end_at=end_at,
                            temporary_enrollment_source_user_id=teacher,
                            temporary_enrollment_pairing_id=pairing.id,
                        )
                        for section in sections[: sizes[p]]
                    ],
                )
            )
        canvas_objects.create_enrollments(session, [e for _p, _s, es in temporary for e in es])
        for pairing_id, state, enrollments in temporary:
            made.append((pairing_id, state, [(e.course_id, e.id) for e in enrollments]))
    return Seeded(canvas, made)


def seed(canvas: TestCanvas, options: Options) -> Seeded:
    return seed_api(canvas, options) if options.seed == "api" else seed_db(canvas, options)


# --------------------------------------------------------------------------------------------
# The measurements


def phase_since(client: CanvasClient, before: Any, seconds: float) -> Phase:
    now = client.cost
    return Phase(
        seconds=seconds,
        requests=now.requests - before.requests,
        retries=now.retries - before.retries,
        throttled=now.throttled - before.throttled,
        cost=now.cost - before.cost,
        answer_seconds=now.seconds - before.seconds,
        paused=now.paused - before.paused,
        lowest_remaining=now.lowest_remaining,
    )


def measured_sync(
    mirror: sessionmaker[Session], client: CanvasClient, account_id: int
) -> tuple[Phase, SyncSummary]:
    before = dataclasses.replace(client.cost)
    started = time.perf_counter()
    summary = sync_canvas(mirror, client, account_ids=[account_id])
    return phase_since(client, before, time.perf_counter() - started), summary


def open_commands(mirror: sessionmaker[Session]) -> tuple[int, dt.datetime | None]:
    """Open commands, and the earliest next attempt among them."""
    with mirror() as session:
        count, earliest = session.execute(
            select(func.count(), func.min(CanvasCommand.next_attempt_at)).where(
                CanvasCommand.finished_at.is_(None)
            )
        ).one()
    return int(count), earliest


def deliver_all(
    mirror: sessionmaker[Session], client: CanvasClient
) -> tuple[Phase, list[commands.DeliverySummary]]:
    """`deliver_commands` until the outbox is empty; a command Canvas could not be reached for
    is waited for (its `next_attempt_at`), as the next beat tick would."""
    before = dataclasses.replace(client.cost)
    started = time.perf_counter()
    runs: list[commands.DeliverySummary] = []
    while time.perf_counter() - started < DELIVERY_TIMEOUT_SECONDS:
        runs.append(commands.deliver_commands(mirror, client, worker_id="bench"))
        left, earliest = open_commands(mirror)
        if left == 0:
            break
        if runs[-1].claimed == 0 and earliest is not None:
            wait = (lifecycle.require_aware(earliest) - utcnow()).total_seconds()
            time.sleep(min(max(wait, 0.05), 60.0))
    return phase_since(client, before, time.perf_counter() - started), runs


def bare_deletes(
    url: str, token: str, targets: Sequence[tuple[int, int, str]], in_flight: int
) -> Phase:
    """The floor of sending: each DELETE once (again after a throttle answer), `in_flight` at
    once, one keep-alive client, nothing read or written around it."""
    phase = Phase()
    lock = threading.Lock()
    lowest: list[float] = []

    with httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=60,
        limits=httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight),
    ) as http:

        def one(target: tuple[int, int, str]) -> None:
            course_id, enrollment_id, state = target
            while True:
                started = time.perf_counter()
                answer = http.delete(
                    f"/api/v1/courses/{course_id}/enrollments/{enrollment_id}",
                    params={"task": TASK_FOR_STATE[state]},
                )
                elapsed = time.perf_counter() - started
                throttled = answer.status_code == 403 and THROTTLE_MARK in answer.text
                with lock:
                    phase.requests += 1
                    phase.answer_seconds += elapsed
                    remaining = answer.headers.get("x-rate-limit-remaining")
                    if remaining is not None:
                        lowest.append(float(remaining))
                    if throttled:
                        phase.throttled += 1
                        phase.retries += 1
                    else:
                        phase.cost += float(answer.headers.get("x-request-cost") or 0.0)
                if not throttled:
                    if answer.status_code != 200:
                        raise SystemExit(
                            f"bench.canvas: the baseline's DELETE of enrollment {enrollment_id} "
                            f"answered {answer.status_code}: {answer.text[:200]}"
                        )
                    return
                time.sleep(BASELINE_THROTTLE_PAUSE)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=in_flight) as pool:
            list(pool.map(one, targets))
        phase.seconds = time.perf_counter() - started
    phase.lowest_remaining = min(lowest) if lowest else None
    return phase


# --------------------------------------------------------------------------------------------
# What the Canvas and the mirror hold afterwards


def canvas_changes(canvas: TestCanvas, seeded: Seeded) -> Counter[tuple[int, str, str]]:
    """The Canvas's own audit rows of the seeded enrollments: (enrollment, from, to) counts."""
    ids = [e for _c, e, _s in seeded.enrollments]
    with canvas.factory() as session:
        rows = session.execute(
            select(StateChange.context_id, StateChange.from_state, StateChange.to_state).where(
                StateChange.context_type == lifecycle.ENROLLMENT,
                StateChange.context_id.in_(ids),
            )
        ).all()
    return Counter((int(e), f, t) for e, f, t in rows)


def check_canvas(results: Results, label: str, seeded: Seeded) -> None:
    changes = canvas_changes(seeded.canvas, seeded)
    expected = Counter((e, "active", state) for _c, e, state in seeded.enrollments)
    results.check(f"{label}: enrollments changed in the Canvas", len(expected), len(changes))
    results.check(
        f"{label}: enrollments changed once, active -> the pairing's ending state",
        True,
        changes == expected,
    )


def check_round(
    results: Results,
    seeded: Seeded,
    baseline: Seeded,
    first: SyncSummary,
    second: SyncSummary,
    swept: lifecycle.RunSummary,
    runs: list[commands.DeliverySummary],
    mirror: sessionmaker[Session],
) -> dict[str, int]:
    n, pairings = len(seeded.enrollments), len(seeded.pairings)
    results.check("first sync: enrollments new", n, first.total("enrollments").new)
    results.check("first sync: pairings new", pairings, first.total("pairings").new)
    results.check("first sync: full read", True, first.accounts[0].full)
    results.check("second sync: incremental (not a full read)", False, second.accounts[0].full)
    results.check("second sync: changes", 0, second.changes)
    results.check("sweep: enrollments changed", n, swept.enrollments_changed_total)
    results.check("sweep: pairings ended before Canvas answered", 0, swept.pairings_ended)
    with mirror() as session:
        outcomes = Counter(
            session.scalars(
                select(CanvasCommand.outcome).where(CanvasCommand.finished_at.is_not(None))
            )
        )
        written = session.scalar(select(func.count()).select_from(CanvasCommand))
        ends = session.scalar(select(func.count()).select_from(PairingEnd))
        confirmed = session.scalar(
            select(func.count()).where(
                StateChange.context_type == lifecycle.ENROLLMENT,
                StateChange.canvas_confirmed_at.is_not(None),
            )
        )
    results.check("sweep: commands written", n, written)
    results.check("delivery: commands confirmed", n, outcomes.get(commands.CONFIRMED, 0))
    results.check("delivery: audit rows with Canvas's confirmation", n, confirmed)
    results.check("delivery: pairings ended (tep's pairing ends)", pairings, ends)
    results.check(
        "delivery: pairings ended by the runs", pairings, sum(r.pairings_ended for r in runs)
    )
    check_canvas(results, "delivery", seeded)
    sent = Counter(
        r.path.split("?")[0]
        for r in seeded.canvas.proxy.requests
        if r.method == "DELETE" and r.status != 403
    )
    ours = {f"/api/v1/courses/{c}/enrollments/{e}" for c, e, _s in seeded.enrollments}
    results.check(
        "delivery: each DELETE reached the Canvas once",
        {1},
        {count for path, count in sent.items() if path in ours},
    )
    check_canvas(results, "baseline", baseline)
    return {str(outcome): count for outcome, count in outcomes.items()}


def run_round(
    options: Options,
    results: Results,
    api_url: str,
    factory: sessionmaker[Session],
    workdir: Path,
    n: int,
    progress: Progress,
) -> Round:
    bucket = LeakyBucket(
        capacity=CANVAS_BUCKET_HWM,
        outflow_per_second=CANVAS_OUTFLOW_PER_SECOND,
        up_front_cost=CANVAS_UP_FRONT_COST,
        cost=options.cost,
    )
    with (
        FaultProxy(api_url, bucket=bucket) as proxy,
        mirror_database(options.mirror, workdir, n) as mirror,
    ):
        started = time.perf_counter()
        ours = seed(new_account(api_url, factory, proxy), options)
        theirs = seed(new_account(api_url, factory, proxy), options)
        seed_seconds = time.perf_counter() - started
        progress(
            f"round {n}: seeded 2 x {len(ours.enrollments)} enrollments in "
            f"{len(ours.pairings)} pairings each, through the Canvas's {options.seed.upper()}, "
            f"{seed_seconds:.1f} s"
        )
        with CanvasClient(
            proxy.base_url, ours.canvas.token, max_in_flight=options.in_flight
        ) as client:
            first_phase, first = measured_sync(mirror, client, ours.canvas.account_id)
            progress(
                f"round {n}: first sync {first_phase.seconds:.2f} s, {first_phase.requests} req"
            )
            second_phase, second = measured_sync(mirror, client, ours.canvas.account_id)
            progress(
                f"round {n}: second sync {second_phase.seconds:.2f} s, {second_phase.requests} req"
            )
            started = time.perf_counter()
            swept = lifecycle.run_sweep(mirror, as_of=utcnow() + 2 * HOUR, trigger="bench")
            sweep_seconds = time.perf_counter() - started
            progress(
                f"round {n}: sweep {sweep_seconds:.2f} s, {swept.enrollments_changed_total} changed"
            )

            def baseline() -> Phase:
                level = bucket.level(f"Bearer {theirs.canvas.token}")  # the proxy's key
                phase = bare_deletes(
                    proxy.base_url, theirs.canvas.token, theirs.enrollments, options.in_flight
                )
                phase.bucket_start = level
                progress(f"round {n}: baseline {phase.seconds:.2f} s, {phase.requests} requests")
                return phase

            # Alternate which goes first, so that a machine getting busier or quieter over the
            # run weighs on both alike.
            base = baseline() if n % 2 == 0 else None
            level = bucket.level(f"Bearer {ours.canvas.token}")
            delivery, runs = deliver_all(mirror, client)
            delivery.bucket_start = level
            progress(f"round {n}: delivery {delivery.seconds:.2f} s, {delivery.requests} requests")
            if base is None:
                base = baseline()
        outcomes = check_round(results, ours, theirs, first, second, swept, runs, mirror)
    return Round(
        first_sync=first_phase,
        second_sync=second_phase,
        sweep_seconds=sweep_seconds,
        delivery=delivery,
        delivery_runs=len(runs),
        retry_later=sum(r.retry_later for r in runs),
        outcomes=outcomes,
        baseline=base,
        seed_seconds=seed_seconds,
    )


def machine_note() -> str:
    try:
        load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load unknown"
    return f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, {load}"


def run(options: Options, progress: Progress = print) -> Results:
    results = Results(options, machine=machine_note())
    progress(f"machine: {results.machine}")
    with tempfile.TemporaryDirectory(prefix="tep-bench-canvas-") as scratch:
        workdir = Path(scratch)
        with test_canvas(workdir, progress) as (api_url, factory):
            for n in range(options.repeat):
                results.rounds.append(
                    run_round(options, results, api_url, factory, workdir, n, progress)
                )
    results.machine += f"; after: {machine_note().rsplit(', ', 1)[-1]}"
    return results


# --------------------------------------------------------------------------------------------
# The report


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def figures(results: Results) -> dict[str, float]:
    """The medians over the repeats, by name (what the JSON holds, what the table shows)."""
    rounds = results.rounds
    n = results.options.expiries

    def m(get: Callable[[Round], float]) -> float:
        return median([get(r) for r in rounds])

    delivery_cost = m(lambda r: r.delivery.cost_per_request)
    ceiling = CANVAS_OUTFLOW_PER_SECOND / delivery_cost if delivery_cost else float("inf")
    mean_answer = m(lambda r: r.delivery.mean_answer)
    out: dict[str, float] = {
        "expiries": n,
        "repeats": len(rounds),
        "seed_seconds": m(lambda r: r.seed_seconds),
    }
    for name, get in (
        ("first_sync", lambda r: r.first_sync),
        ("second_sync", lambda r: r.second_sync),
        ("delivery", lambda r: r.delivery),
        ("baseline", lambda r: r.baseline),
    ):
        out[f"{name}_seconds"] = m(lambda r, g=get: g(r).seconds)  # type: ignore[misc]
        out[f"{name}_requests"] = m(lambda r, g=get: g(r).requests)  # type: ignore[misc]
        out[f"{name}_throttled"] = m(lambda r, g=get: g(r).throttled)  # type: ignore[misc]
        out[f"{name}_retries"] = m(lambda r, g=get: g(r).retries)  # type: ignore[misc]
        out[f"{name}_cost"] = m(lambda r, g=get: g(r).cost)  # type: ignore[misc]
        out[f"{name}_cost_per_request"] = m(lambda r, g=get: g(r).cost_per_request)  # type: ignore[misc]
        out[f"{name}_mean_answer"] = m(lambda r, g=get: g(r).mean_answer)  # type: ignore[misc]
    out["sweep_seconds"] = m(lambda r: r.sweep_seconds)
    out["delivery_runs"] = m(lambda r: r.delivery_runs)
    out["delivery_retry_later"] = m(lambda r: r.retry_later)
    out["delivery_paused"] = m(lambda r: r.delivery.paused)
    out["delivery_lowest_remaining"] = m(
        lambda r: r.delivery.lowest_remaining if r.delivery.lowest_remaining is not None else 0.0
    )
    out["requests_per_expiry"] = out["delivery_requests"] / n
    out["all_requests_per_expiry"] = (out["first_sync_requests"] + out["delivery_requests"]) / n
    out["expiries_per_second"] = m(lambda r: n / r.delivery.seconds)
    out["baseline_expiries_per_second"] = m(lambda r: n / r.baseline.seconds)
    out["delivery_over_baseline"] = m(lambda r: r.delivery.seconds / r.baseline.seconds)
    out["end_to_end_expiries_per_second"] = m(
        lambda r: n / (r.first_sync.seconds + r.sweep_seconds + r.delivery.seconds)
    )
    # The bucket's steady state for the cost measured: 10 per second leaks out, each request
    # leaves c behind.
    out["bucket_ceiling_requests_per_second"] = ceiling
    out["bucket_ceiling_expiries_per_second"] = ceiling / out["requests_per_expiry"]
    out["bucket_burst_requests"] = (
        (CANVAS_BUCKET_HWM - CANVAS_UP_FRONT_COST) / delivery_cost
        if delivery_cost
        else float("inf")
    )
    out["delivery_requests_per_second"] = m(lambda r: r.delivery.requests / r.delivery.seconds)
    out["share_of_bucket_ceiling"] = out["delivery_requests_per_second"] / ceiling
    for name, get in (("delivery", lambda r: r.delivery), ("baseline", lambda r: r.baseline)):
        out[f"{name}_bucket_bound_seconds"] = m(lambda r, g=get: g(r).bucket_bound)  # type: ignore[misc]
        # 1 is as fast as the bucket allows; 0 when it does not bind at all.
        out[f"{name}_share_of_bucket_bound"] = m(
            lambda r, g=get: g(r).bucket_bound / g(r).seconds  # type: ignore[misc]
        )
    out["in_flight_bound_requests_per_second"] = (
        results.options.in_flight / mean_answer if mean_answer else float("inf")
    )
    out["share_of_in_flight_bound"] = (
        out["delivery_requests_per_second"] / out["in_flight_bound_requests_per_second"]
    )
    return out


def table(results: Results) -> str:
    f = figures(results)
    n = int(f["expiries"])

    def phase_row(label: str, name: str) -> str:
        return (
            f"| {label} | {f[f'{name}_seconds']:.2f} | {f[f'{name}_requests']:.0f} | "
            f"{f[f'{name}_cost']:.3f} | {f[f'{name}_cost_per_request']:.4f} | "
            f"{f[f'{name}_throttled']:.0f} | {f[f'{name}_retries']:.0f} | "
            f"{f[f'{name}_requests'] / n:.3f} |"
        )

    cost = "the answer's seconds" if results.options.cost is None else f"{results.options.cost}"
    lines = [
        f"{n} expiries in {results.options.pairings} pairings; mirror on "
        f"{results.options.mirror}; cost per request: {cost}; medians of {len(results.rounds)}",
        "",
        "| phase | seconds | requests | X-Request-Cost | cost / request | throttled | retries "
        "| requests / expiry |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        phase_row("(a) first sync (full)", "first_sync"),
        phase_row("(b) second sync (incremental)", "second_sync"),
        f"| (c) sweep on the mirror | {f['sweep_seconds']:.2f} | 0 | | | | | |",
        phase_row("(d) delivery until the outbox is empty", "delivery"),
        phase_row(f"baseline: bare DELETE loop, {results.options.in_flight} in flight", "baseline"),
        "",
        f"- requests per expiry: {f['requests_per_expiry']:.3f} (delivery), "
        f"{f['all_requests_per_expiry']:.3f} with the first sync",
        f"- expiries per second: {f['expiries_per_second']:.1f} (delivery), baseline "
        f"{f['baseline_expiries_per_second']:.1f}; delivery / baseline time "
        f"{f['delivery_over_baseline']:.2f}; sync + sweep + delivery "
        f"{f['end_to_end_expiries_per_second']:.1f}",
        f"- the bucket at {f['delivery_cost_per_request']:.4f} per request: steady state "
        f"10 / cost = {f['bucket_ceiling_requests_per_second']:.0f} requests/s = "
        f"{f['bucket_ceiling_expiries_per_second']:.0f} expiries/s (after a first burst of "
        f"{f['bucket_burst_requests']:.0f} requests); delivery achieved "
        f"{f['delivery_requests_per_second']:.1f} requests/s = "
        f"{f['share_of_bucket_ceiling']:.3f} of it",
        (
            f"- the bucket's bound on these requests (the least time it lets them take, from "
            f"its level at the start): delivery {f['delivery_bucket_bound_seconds']:.1f} s, "
            f"achieved {f['delivery_share_of_bucket_bound']:.2f} of it; baseline "
            f"{f['baseline_bucket_bound_seconds']:.1f} s, "
            f"{f['baseline_share_of_bucket_bound']:.2f}"
            if f["delivery_bucket_bound_seconds"] or f["baseline_bucket_bound_seconds"]
            else "- the bucket's bound on these requests: none (their cost fits in its headroom)"
        ),
        f"- in flight: {results.options.in_flight} / mean answer "
        f"{f['delivery_mean_answer'] * 1000:.1f} ms = "
        f"{f['in_flight_bound_requests_per_second']:.0f} requests/s; delivery achieved "
        f"{f['share_of_in_flight_bound']:.2f} of it",
        f"- delivery: {f['delivery_runs']:.0f} deliver_commands runs, "
        f"{f['delivery_retry_later']:.0f} commands left for later, client paused "
        f"{f['delivery_paused']:.2f} s, lowest X-Rate-Limit-Remaining "
        f"{f['delivery_lowest_remaining']:.1f}",
        f"- seeding (not measured): {f['seed_seconds']:.1f} s for 2 x {n} enrollments, through "
        f"the Canvas's {'API' if results.options.seed == 'api' else 'database'}",
        f"- machine: {results.machine}",
        "",
        f"{sum(c.ok for c in results.checks)}/{len(results.checks)} checks as expected",
    ]
    lines += [
        f"  FAILED: {c.what}: expected {c.expected}, found {c.found}"
        for c in results.checks
        if not c.ok
    ]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.canvas", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--expiries", type=int, default=Options.expiries)
    parser.add_argument("--per-pairing", type=int, default=Options.per_pairing)
    parser.add_argument("--pairings-per-provider", type=int, default=Options.pairings_per_provider)
    parser.add_argument("--repeat", type=int, default=Options.repeat, help="rounds (medians)")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=MAX_IN_FLIGHT,
        help="requests in flight (TEP_CANVAS_MAX_IN_FLIGHT), for tep and the baseline alike",
    )
    parser.add_argument("--mirror", choices=("postgres", "sqlite"), default=Options.mirror)
    parser.add_argument(
        "--seed",
        choices=("db", "api"),
        default=Options.seed,
        help="seed through the Canvas's database (default, fast) or its API (TestCanvas)",
    )
    parser.add_argument(
        "--cost",
        type=float,
        default=None,
        help="a fixed X-Request-Cost per request (default: the test Canvas's answer time)",
    )
    parser.add_argument("--json", dest="json_path", help="also write the figures to this file")
    args = parser.parse_args(argv)
    for name in ("expiries", "per_pairing", "pairings_per_provider", "repeat", "in_flight"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.cost is not None and args.cost < 0:
        parser.error("--cost must not be negative")
    return Options(
        expiries=args.expiries,
        per_pairing=args.per_pairing,
        pairings_per_provider=args.pairings_per_provider,
        repeat=args.repeat,
        in_flight=args.in_flight,
        mirror=args.mirror,
        seed=args.seed,
        cost=args.cost,
        json_path=args.json_path,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    error = services.postgres_reachable()
    if error is not None:
        print(f"bench.canvas: PostgreSQL is not reachable: {error}", file=sys.stderr)
        return 2
    results = run(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(results))
    if options.json_path:
        Path(options.json_path).write_text(json.dumps(figures(results), indent=2) + "\n")
    return 0 if results.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
