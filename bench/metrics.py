"""`python -m bench.metrics`: one metrics scrape at 10,000,000 audit rows, against the same
scrape at a small history measured in the same run.

A scratch PostgreSQL database gets Canvas's rows for `--pairings` pairings (bench/data.py), then
audit rows made by the server (`INSERT ... SELECT ... FROM generate_series`): enrollments expired
into every ending state and pairings ended, as sweeps write them, a tenth of the rows about
pairings, plus a month of idle sweep runs. The metric totals are then filled from them by revision
0005's own fill (timed: what the upgrade costs on such a table), so they hold what the writers
would have kept.

At each size, the scrape is :func:`tasks.metrics.render_metrics`, the function both endpoints
call, timed `--repeat` times after a warm-up (median and max reported), with no webhook receiver
configured. The aggregate-per-scrape code this replaced (`git show HEAD:tasks/metrics.py`, when
that is still the old code) is timed at the smaller sizes only: it grows with the audit table.
The target (issue 13): the scrape at 10,000,000 audit rows takes at most 50 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import Engine, delete

from bench import data
from models import make_engine, make_sessionmaker
from models.tep import MetricTotal
from tasks import metrics

TARGET_MS = 50.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FILL_REVISION = PROJECT_ROOT / "migrations" / "versions" / "0005_metric_totals.py"
# Audit rows are inserted this many at a time (one statement each): bounded memory for the sort
# of each index build, and progress to show.
CHUNK = 1_000_000
# Idle runs, one a minute for 30 days, as beat leaves them.
RUNS = 30 * 1440

# Rows g = 1, 2, ...: every tenth is a pairing ending, the rest enrollments expired into the
# ending states in turn, each stamped a second apart after AS_OF.
AUDIT_SQL = """
INSERT INTO {tep}.temporary_enrollment_state_changes
  (context_type, context_id, temporary_enrollment_pairing_id, root_account_id, from_state,
   to_state, reason, run_id, actor_id, created_at)
SELECT
  CASE WHEN mod(g, 10) = 0 THEN 'TemporaryEnrollmentPairing' ELSE 'Enrollment' END,
  CASE WHEN mod(g, 10) = 0 THEN 1 + mod(g, %(pairings)s) ELSE %(first)s + mod(g, %(enrollments)s)
  END,
  1 + mod(g, %(pairings)s),
  %(root)s,
  'active',
  CASE WHEN mod(g, 10) = 0 THEN 'ended'
       ELSE (ARRAY['deleted','completed','inactive'])[1 + mod(g, 3)] END,
  'expired',
  'bench-run-' || (g / 1000),
  NULL,
  %(as_of)s::timestamptz + g * interval '1 second'
FROM generate_series(%(low)s::bigint, %(high)s) g
""".replace("{tep}", data.TEP)

RUNS_SQL = """
INSERT INTO {tep}.temporary_enrollment_sweep_runs
  (id, trigger, as_of, account_id, started_at, finished_at, enrollments_changed, pairings_ended,
   pairings_skipped, summary)
SELECT 'bench-idle-' || g, 'interval', t, NULL, t, t + interval '5 milliseconds', 0, 0, 0,
       '{"pairings_skipped": []}'
FROM generate_series(1, %(runs)s) g, LATERAL (SELECT %(as_of)s::timestamptz
  + g * interval '1 minute' AS t) m
""".replace("{tep}", data.TEP)

# Sent notices, two a pairing (the one before its end and the one after), for the one gauge that
# still counts a table that grows with history until `tep prune` bounds it: `tep_notices`.
NOTICES_SQL = """
INSERT INTO {tep}.temporary_enrollment_notices
  (temporary_enrollment_pairing_id, root_account_id, kind, threshold_seconds, ends_at,
   workflow_state, attempts, sent_at, created_at, updated_at)
SELECT g / 2, %(root)s, CASE WHEN mod(g, 2) = 0 THEN 'before_end' ELSE 'ended' END,
       CASE WHEN mod(g, 2) = 0 THEN 86400 ELSE 0 END, %(as_of)s::timestamptz, 'sent', 1,
       %(as_of)s::timestamptz, %(as_of)s::timestamptz, %(as_of)s::timestamptz
FROM generate_series(1, %(notices)s) g
""".replace("{tep}", data.TEP)


@dataclasses.dataclass
class Figure:
    audit_rows: int
    new_ms: list[float]
    old_ms: list[float] | None = None

    @staticmethod
    def summary(values: list[float]) -> str:
        return f"median {statistics.median(values):.1f} ms, max {max(values):.1f} ms"


def fill_module() -> types.ModuleType:
    """Revision 0005, loaded for its `fill` (Alembic's own loader is not needed to call it)."""
    spec = importlib.util.spec_from_file_location("tep_revision_0005", FILL_REVISION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_collector() -> Callable[[Any], Collector] | None:
    """The collector as HEAD has it, if HEAD still aggregates the audit table on each scrape."""
    try:
        source = subprocess.run(
            ["git", "show", "HEAD:tasks/metrics.py"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if "metric_totals" in source:
        return None  # HEAD is the new code already: nothing old to compare with
    module = types.ModuleType("tep_old_metrics")
    try:
        exec(compile(source, "HEAD:tasks/metrics.py", "exec"), module.__dict__)
    except ImportError as error:  # what it imports has moved since
        print(f"  (the old scrape cannot be loaded: {error})", file=sys.stderr)
        return None
    collector: Callable[[Any], Collector] = module.LifecycleCollector
    return collector


def time_scrape(registry: CollectorRegistry, repeat: int) -> list[float]:
    """Milliseconds of `repeat` scrapes of `registry` (as an endpoint serves it), after one."""
    generate_latest(registry)  # warm-up: the connection, statement caches, the tables' pages
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        generate_latest(registry)
        times.append((time.perf_counter() - start) * 1000)
    return times


def registry_of(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def add_audit_rows(url: str, root: data.Root, pairings: int, made: int, size: int) -> None:
    with data.connect(url) as conn:
        row = conn.execute("SELECT min(id), count(*) FROM enrollments").fetchone()
        assert row is not None
        first, count = row
        for low in range(made + 1, size + 1, CHUNK):
            params = {
                "pairings": pairings,
                "first": first,
                "enrollments": count,
                "root": root.account_id,
                "as_of": data.AS_OF,
                "low": low,
                "high": min(size, low + CHUNK - 1),
            }
            conn.execute(AUDIT_SQL, params)
            conn.commit()
    with data.connect(url, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {data.TEP}.temporary_enrollment_state_changes")


def refill_totals(engine: Engine, fill: types.ModuleType) -> float:
    """The totals made again from the audit table by revision 0005's fill; its seconds."""
    with engine.begin() as connection:
        connection.execute(delete(MetricTotal))
        start = time.perf_counter()
        fill.fill(connection)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__)
    add = parser.add_argument
    add("--audit-rows", type=int, default=10_000_000, help="the large history (default 10M)")
    add("--baseline-rows", type=int, default=10_000, help="the small history (default 10,000)")
    add("--old-rows", type=int, default=300_000, help="a middle size, for the old scrape too")
    add("--pairings", type=int, default=10_000, help="pairings of 10 enrollments each")
    add("--repeat", type=int, default=21, help="scrapes timed at each size (default 21)")
    add("--notices", type=int, default=2_000_000, help="sent notices, timed last (0: none)")
    options = parser.parse_args(argv)
    sizes = sorted({options.baseline_rows, options.old_rows, options.audit_rows})

    def say(text: str) -> None:
        print(text, flush=True)

    old = old_collector()
    figures: list[Figure] = []
    with_notices: list[float] = []
    with data.scratch_database() as url:
        shape = data.Shape(pairings=options.pairings, per_pairing=10, unrelated=0)
        say(f"building {shape.due:,} enrollments in {shape.pairings:,} pairings")
        root = data.build(url, shape)
        with data.connect(url) as conn:
            conn.execute(RUNS_SQL, {"runs": RUNS, "as_of": data.AS_OF})
            conn.commit()
        engine = make_engine(data.sqlalchemy_url(url))
        read = make_sessionmaker(engine, read_only=True)
        scrape = registry_of(metrics.LifecycleCollector(read))
        fill = fill_module()
        made = 0
        try:
            for size in sizes:
                say(f"audit rows: {made:,} -> {size:,}")
                add_audit_rows(url, root, options.pairings, made, size)
                made = size
                say(f"  revision 0005's fill: {refill_totals(engine, fill):.1f} s")
                figure = Figure(size, time_scrape(scrape, options.repeat))
                say(f"  scrape: {Figure.summary(figure.new_ms)}")
                if old is not None and size < options.audit_rows:
                    figure.old_ms = time_scrape(registry_of(old(read)), max(3, options.repeat // 4))
                    say(f"  old aggregate-per-scrape: {Figure.summary(figure.old_ms)}")
                figures.append(figure)
            if options.notices:
                with data.connect(url) as conn:
                    params = {"root": root.account_id, "as_of": data.AS_OF}
                    conn.execute(NOTICES_SQL, {**params, "notices": options.notices})
                    conn.commit()
                with data.connect(url, autocommit=True) as conn:
                    conn.execute(f"VACUUM (ANALYZE) {data.TEP}.temporary_enrollment_notices")
                with_notices = time_scrape(scrape, options.repeat)
                say(f"  with {options.notices:,} sent notices: {Figure.summary(with_notices)}")
        finally:
            engine.dispose()

    base, big = figures[0], figures[-1]
    largest = statistics.median(big.new_ms)
    ratio = largest / statistics.median(base.new_ms)
    met = largest <= TARGET_MS
    say("")
    say(f"| audit rows | scrape (of {options.repeat}) | old aggregate-per-scrape |")
    say("|---:|---|---|")
    for figure in figures:
        was = Figure.summary(figure.old_ms) if figure.old_ms else "not measured"
        say(f"| {figure.audit_rows:,} | {Figure.summary(figure.new_ms)} | {was} |")
    say("")
    if options.notices:
        say(
            f"and with {options.notices:,} sent notices besides (`tep_notices` counts them): "
            f"{Figure.summary(with_notices)}"
        )
    say(
        f"scrape at {big.audit_rows:,} over {base.audit_rows:,} audit rows: {ratio:.2f}; "
        f"{largest:.1f} ms {'<=' if met else '>'} {TARGET_MS:.0f} ms: {'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
