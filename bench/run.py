"""`python -m bench`: build the data, take every measurement, print the table.

Every measurement starts from a file copy of one built template database, so each sees exactly
the same rows; all of them are scratch databases of the benchmark's own, dropped at the end.
Floor and sweep runs alternate, so that their ratio compares runs taken under the same load.

`--canvas-schema` takes every measurement on Canvas's real schema in `existing` mode (bench/data.py)
instead of the tables tep's migrations create (`managed`); the code measured is the same.

Two templates are built: Canvas's rows alone, as `tep db upgrade` leaves a Canvas database (the
first sweep after installing is measured there: a nightly run, which rebuilds tep's deadline index
from Canvas's rows, then sweeps), and a copy of it whose deadline index the sweep's discovery has
filled, as every later sweep finds it (everything else is measured there).
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
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg

from bench import data, explain, lateness, measure, timers
from tasks import lifecycle
from tasks.lifecycle import DEFAULT_BATCH_SIZE

REDIS_URL = os.environ.get("TEP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

# The targets of issue 4.
MAX_SWEEP_OVER_FLOOR = 2.0
MIN_SWEEP_OVER_BASELINE = 25.0
MAX_IDLE_GROWTH = 1.5
MAX_PEAK_RSS_MB = 250.0
MAX_RSS_GROWTH = 1.2
LATENESS_SLACK_SECONDS = 2.0


@dataclasses.dataclass
class Options:
    pairings: int = 100_000
    per_pairing: int = 10
    unrelated: int = 1_000_000
    repeat: int = 3
    batch_size: int = DEFAULT_BATCH_SIZE
    baseline_rows: int = 20_000
    idle_factor: int = 10
    idle_runs: int = 25
    concurrency: tuple[int, ...] = (1, 2, 4)
    # More sweeps of the same backlog at other batch sizes (one run each), to tune the default.
    batch_sizes: tuple[int, ...] = ()
    lateness_enrollments: int = 1_000
    lateness_spread: float = 60.0
    interval: float = 5.0
    lateness: bool = True
    explain: bool = False
    # Canvas's real schema, tep in `existing` mode (issue 10 point 10), instead of `managed`.
    canvas_schema: bool = False
    redis_url: str = REDIS_URL
    json_path: str | None = None

    @property
    def shape(self) -> data.Shape:
        return data.Shape(self.pairings, self.per_pairing, self.unrelated)

    @property
    def mode(self) -> str:
        return "existing (Canvas's schema)" if self.canvas_schema else "managed"

    @property
    def small_shape(self) -> data.Shape:
        """A tenth of the due work over the same unrelated rows (the RSS comparison)."""
        return data.Shape(max(1, self.pairings // 10), self.per_pairing, self.unrelated)


@dataclasses.dataclass
class Row:
    measure: str
    value: str
    target: str = ""
    ok: bool | None = None


@dataclasses.dataclass
class Results:
    rows: list[Row] = dataclasses.field(default_factory=list)
    checks: list[measure.Check] = dataclasses.field(default_factory=list)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    explain: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def counts_ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def targets_ok(self) -> bool:
        return all(row.ok is not False for row in self.rows)

    def add(self, measure: str, value: str, target: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(measure, value, target, ok))


Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s" if seconds > 0 else "-"


@contextmanager
def _copy(template: str) -> Iterator[str]:
    with data.scratch_database(template) as url:
        # Each measurement starts with nothing left to flush: the floor's single UPDATE writes
        # more WAL than max_wal_size, and the checkpoint it sets off would otherwise land in
        # whichever run comes next (a sweep after a floor, a floor after a sweep).
        with data.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        yield url


def run(options: Options, progress: Progress = _stderr) -> Results:
    results = Results()
    shape = options.shape
    results.add("tables", options.mode)
    with ExitStack() as stack:
        progress(
            f"building {shape.pairings:,} pairings x {shape.per_pairing} due + "
            f"{shape.unrelated:,} unrelated enrollments, tables: {options.mode}"
        )
        started = time.monotonic()
        bare_url = stack.enter_context(data.scratch_database())
        data.build(bare_url, shape, canvas_schema=options.canvas_schema)
        bare = data.name_of(bare_url)
        template_url = stack.enter_context(data.scratch_database(template=bare))
        indexed = data.index_deadlines(template_url)
        results.checks.append(measure.Check("deadline index: rows indexed", shape.due, indexed))
        template = data.name_of(template_url)
        results.figures["build_seconds"] = time.monotonic() - started
        progress(f"built in {results.figures['build_seconds']:.0f} s")

        _floor_and_sweep(options, template, results, progress)
        _first_sweep(options, bare, results, progress)
        _batch_sizes(options, template, results, progress)
        _baseline(options, template, results, progress)
        _rss(options, results, progress)
        _concurrency(options, template, results, progress)
        if options.explain:
            progress("EXPLAIN ANALYZE of the floor and of one sweep batch")
            with _copy(template) as url:
                results.explain = explain.collect(url, options.batch_size)
    if options.lateness:
        _lateness(options, results, progress)
        timers.bench(options, results, progress)  # issue 15: at the default interval (60 s)
    return results


def _floor_and_sweep(options: Options, template: str, results: Results, progress: Progress) -> None:
    shape = options.shape
    floors: list[measure.FloorResult] = []
    sweeps: list[measure.SweepResult] = []
    for attempt in range(1, options.repeat + 1):
        with _copy(template) as url:
            result_floor = measure.floor(url)
            results.checks.append(
                measure.Check(f"floor run {attempt}: rows updated", shape.due, result_floor.rows)
            )
            results.checks.append(
                measure.Check(
                    f"floor run {attempt}: enrollment_states rows updated",
                    shape.due,
                    result_floor.state_rows,
                )
            )
            floors.append(result_floor)
            progress(
                f"floor {attempt}/{options.repeat}: {result_floor.seconds:.2f} s "
                f"(enrollments {result_floor.enrollments_seconds:.2f} s, "
                f"enrollment_states {result_floor.states_seconds:.2f} s)"
            )
        with _copy(template) as url:
            _, (result,) = measure.sweepers(url, 1, options.batch_size)
            sweeps.append(result)
            progress(
                f"sweep {attempt}/{options.repeat}: {result.seconds:.2f} s, "
                f"{result.batches} batches (longest {result.longest_batch:.2f} s), "
                f"discovery {result.discovery_seconds:.2f} s ({result.discovered:,} rows), "
                f"peak RSS {result.peak_rss_mb:.0f} MB"
            )
            results.checks.append(
                measure.Check(f"sweep run {attempt}: changed", shape.due, result.changed)
            )
            if attempt == options.repeat:
                results.checks.extend(measure.exactly_once(url, shape))
                idle = Results()
                _idle(options, url, idle, progress)
                results.checks.extend(idle.checks)
                results.figures.update(idle.figures)

    floor = statistics.median(f.seconds for f in floors)
    sweep = statistics.median(s.seconds for s in sweeps)
    results.figures.update(
        floor_seconds=[f.seconds for f in floors],
        floor_enrollments_seconds=[f.enrollments_seconds for f in floors],
        floor_states_seconds=[f.states_seconds for f in floors],
        sweep_seconds=[s.seconds for s in sweeps],
        sweep_discovery_seconds=[s.discovery_seconds for s in sweeps],
    )
    results.figures["sweep_peak_rss_mb"] = max(s.peak_rss_mb for s in sweeps)
    n = f" (median of {options.repeat})" if options.repeat > 1 else ""
    results.add(
        f"floor: UPDATE enrollments + UPDATE enrollment_states, {shape.due:,} rows each, "
        f"one transaction{n}",
        f"{floor:.2f} s, {rate(shape.due, floor)}",
    )
    results.add(
        f"floor, the enrollments UPDATE alone (the floor of issue 4){n}",
        f"{statistics.median(f.enrollments_seconds for f in floors):.2f} s",
    )
    results.add(
        f"sweep: run_sweep, batch {options.batch_size:,} pairings, audited{n}",
        f"{sweep:.2f} s, {rate(shape.due, sweep)}",
    )
    results.add(
        f"sweep: of which discovery (deadline index brought up to Canvas's rows){n}",
        f"{statistics.median(s.discovery_seconds for s in sweeps):.2f} s",
    )
    results.add(
        "sweep time / floor time",
        f"{sweep / floor:.2f}",
        f"<= {MAX_SWEEP_OVER_FLOOR}",
        sweep / floor <= MAX_SWEEP_OVER_FLOOR,
    )
    results.add(
        "longest batch (row locks held, at most), median of the sweeps",
        f"{statistics.median(s.longest_batch for s in sweeps):.2f} s",
    )
    results.figures["sweep_rows_per_second"] = shape.due / sweep
    results.rows.extend(idle.rows)


def _first_sweep(options: Options, bare: str, results: Results, progress: Progress) -> None:
    """The first sweep after installing, on Canvas's rows with tep's deadline index empty: a
    nightly run, which rebuilds the index from Canvas's rows before it sweeps. One run."""
    shape = options.shape
    floor = statistics.median(results.figures["floor_seconds"])
    with _copy(bare) as url:
        _, (result,) = measure.sweepers(
            url, 1, options.batch_size, trigger=lifecycle.TRIGGER_NIGHTLY
        )
        results.checks.append(measure.Check("first sweep: changed", shape.due, result.changed))
        results.checks.extend(
            dataclasses.replace(c, what=f"first sweep: {c.what}")
            for c in measure.exactly_once(url, shape)
        )
    progress(
        f"first sweep after installing (nightly): {result.seconds:.2f} s, rebuild "
        f"{result.discovery_seconds:.2f} s ({result.discovered:,} rows)"
    )
    results.add(
        f"first sweep after installing: nightly run, deadline index rebuilt "
        f"({result.discovered:,} rows in {result.discovery_seconds:.2f} s), then swept",
        f"{result.seconds:.2f} s, {result.seconds / floor:.2f} x floor",
    )
    results.figures["first_sweep"] = dataclasses.asdict(result)


def _batch_sizes(options: Options, template: str, results: Results, progress: Progress) -> None:
    """The same sweep at other batch sizes, one run each, against the floor's median."""
    floor = statistics.median(results.figures["floor_seconds"])
    for size in options.batch_sizes:
        with _copy(template) as url:
            _, (result,) = measure.sweepers(url, 1, size)
        results.checks.append(
            measure.Check(f"sweep at batch {size:,}: changed", options.shape.due, result.changed)
        )
        progress(
            f"batch {size:,}: {result.seconds:.2f} s, {result.batches} batches "
            f"(longest {result.longest_batch:.2f} s)"
        )
        results.add(
            f"sweep at batch {size:,} pairings: {result.batches} batches, longest "
            f"{result.longest_batch:.2f} s",
            f"{result.seconds:.2f} s, {result.seconds / floor:.2f} x floor",
        )
        results.figures[f"batch_{size}"] = dataclasses.asdict(result)


def _idle(options: Options, url: str, results: Results, progress: Progress) -> None:
    """On the swept copy, where nothing is due any more: idle sweeps at its size and, on a copy
    grown to `idle_factor` times the rows, taking turns with it."""
    shape = options.shape

    def enrollment_rows(at: str) -> int:
        with psycopg.connect(at) as conn:
            row = conn.execute("SELECT count(*) FROM enrollments").fetchone()
            return int(row[0]) if row else 0

    def settle(at: str) -> None:
        # Both idle figures are taken on settled databases. The sweep just left a million dead
        # index entries behind, which autovacuum clears within minutes in production (grow()
        # vacuums too); and the checkpoint that follows millions of fresh rows would otherwise
        # set the latency of the idle sweep's one commit.
        with psycopg.connect(at, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")

    def count(at: str, sql: str) -> int:
        with data.connect(at) as conn:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0

    ends = f"SELECT count(*) FROM {data.TEP}.temporary_enrollment_pairing_ends"
    index = f"SELECT count(*) FROM {data.TEP}.temporary_enrollment_deadlines"
    settle(url)
    base_rows, base_ended = enrollment_rows(url), count(url, ends)
    with data.scratch_database(template=data.name_of(url)) as grown:
        progress(
            f"adding {options.idle_factor - 1} x ({shape.pairings:,} ended pairings, "
            f"{shape.pairings:,} pairings ending later, {2 * shape.due + shape.unrelated:,} "
            "enrollments), none due"
        )
        added = data.grow(grown, shape, options.idle_factor)
        settle(grown)
        grown_rows, grown_ended = enrollment_rows(grown), count(grown, ends)
        results.checks.extend(
            [
                measure.Check("rows after growing", base_rows + added.enrollments, grown_rows),
                measure.Check(
                    "ended pairings after growing", base_ended * options.idle_factor, grown_ended
                ),
                measure.Check(
                    "deadline index after growing (future rows)",
                    added.future_pairings * shape.per_pairing,
                    count(grown, index),
                ),
            ]
        )
        one_runs, many_runs = measure.idle([url, grown], options.idle_runs, options.batch_size)
    one, many = statistics.median(one_runs), statistics.median(many_runs)
    progress(
        f"idle: {one * 1000:.1f} ms at {base_rows:,} rows, {many * 1000:.1f} ms at {grown_rows:,}"
    )
    n = f" (median of {options.idle_runs}, taking turns)"
    results.add(
        f"idle sweep, {base_rows:,} enrollments, {base_ended:,} ended pairings{n}",
        f"{one * 1000:.1f} ms",
    )
    results.add(
        f"idle sweep, {grown_rows:,} enrollments ({grown_rows / base_rows:.1f}x), "
        f"{grown_ended:,} ended pairings, {added.future_pairings * shape.per_pairing:,} "
        f"future deadlines{n}",
        f"{many * 1000:.1f} ms",
    )
    results.add(
        f"idle {options.idle_factor}x / idle 1x",
        f"{many / one:.2f}",
        f"<= {MAX_IDLE_GROWTH}",
        many / one <= MAX_IDLE_GROWTH,
    )
    results.figures.update(idle_1x_seconds=one_runs, idle_nx_seconds=many_runs)


def _baseline(options: Options, template: str, results: Results, progress: Progress) -> None:
    with _copy(template) as url:
        seconds, rows = measure.baseline(url, options.baseline_rows, options.per_pairing)
    expected = (
        min(options.baseline_rows, options.shape.due) // options.per_pairing * options.per_pairing
    )
    results.checks.append(
        measure.Check("per-row baseline: rows changed", max(expected, options.per_pairing), rows)
    )
    progress(f"per-row baseline: {rows:,} rows in {seconds:.2f} s")
    per_row = rows / seconds
    sweep = results.figures["sweep_rows_per_second"]
    results.add(
        f"per-row ORM baseline, {rows:,} rows, batches of {measure.BASELINE_BATCH}",
        f"{per_row:,.0f} rows/s",
    )
    results.add(
        "sweep rows/s / baseline rows/s",
        f"{sweep / per_row:.1f}",
        f">= {MIN_SWEEP_OVER_BASELINE:.0f}",
        sweep / per_row >= MIN_SWEEP_OVER_BASELINE,
    )


def _rss(options: Options, results: Results, progress: Progress) -> None:
    small = options.small_shape
    progress(f"building {small.due:,} due enrollments for the RSS comparison")
    with data.scratch_database() as url:
        data.build(url, small, canvas_schema=options.canvas_schema)
        data.index_deadlines(url)
        _, (sweep,) = measure.sweepers(url, 1, options.batch_size)
        results.checks.append(measure.Check("small sweep: changed", small.due, sweep.changed))
    big = results.figures["sweep_peak_rss_mb"]
    progress(
        f"peak RSS {sweep.peak_rss_mb:.0f} MB at {small.due:,}, "
        f"{big:.0f} MB at {options.shape.due:,}"
    )
    results.add(f"peak RSS, sweep of {small.due:,} enrollments", f"{sweep.peak_rss_mb:.0f} MB")
    results.add(
        f"peak RSS, sweep of {options.shape.due:,} enrollments",
        f"{big:.0f} MB",
        f"<= {MAX_PEAK_RSS_MB:.0f} MB",
        big <= MAX_PEAK_RSS_MB,
    )
    growth = big / sweep.peak_rss_mb
    results.add(
        "peak RSS growth", f"{growth:.2f}", f"<= {MAX_RSS_GROWTH}", growth <= MAX_RSS_GROWTH
    )


def _concurrency(options: Options, template: str, results: Results, progress: Progress) -> None:
    shape = options.shape
    one = shape.due / statistics.median(results.figures["sweep_seconds"])
    for count in options.concurrency:
        if count == 1:
            results.add("1 sweeper (the sweep above)", f"{one:,.0f} rows/s")
            continue
        with _copy(template) as url:
            seconds, done = measure.sweepers(url, count, options.batch_size)
            results.checks.append(
                measure.Check(
                    f"{count} sweepers: changed in total", shape.due, sum(r.changed for r in done)
                )
            )
            results.checks.extend(
                dataclasses.replace(c, what=f"{count} sweepers: {c.what}")
                for c in measure.exactly_once(url, shape)
            )
        throughput = shape.due / seconds
        progress(
            f"{count} sweepers: {seconds:.2f} s, {'/'.join(str(r.changed) for r in done)} rows each"
        )
        results.add(
            f"{count} sweepers at once",
            f"{throughput:,.0f} rows/s",
            ">= 1 sweeper",
            throughput >= one,
        )
        results.figures[f"sweepers_{count}_seconds"] = seconds


def _lateness(options: Options, results: Results, progress: Progress) -> None:
    progress(
        f"lateness: worker + beat every {options.interval:g} s, "
        f"{options.lateness_enrollments:,} enrollments due over {options.lateness_spread:g} s"
    )
    with data.scratch_database() as url:
        late = lateness.measure(
            url,
            options.redis_url,
            enrollments=options.lateness_enrollments,
            spread=options.lateness_spread,
            interval=options.interval,
            canvas_schema=options.canvas_schema,
        )
    results.checks.append(
        measure.Check("lateness: enrollments changed", late.enrollments, late.changed)
    )
    p50 = lateness.percentile(late.delays, 50)
    p99 = lateness.percentile(late.delays, 99)
    limit = options.interval + LATENESS_SLACK_SECONDS
    results.add(f"lateness p50, beat every {options.interval:g} s", f"{p50:.2f} s")
    results.add(
        f"lateness p99, beat every {options.interval:g} s",
        f"{p99:.2f} s",
        f"<= {limit:g} s",
        p99 <= limit,
    )
    results.figures.update(
        lateness_p50=p50, lateness_p99=p99, lateness_max=late.delays[-1] if late.delays else None
    )


def table(results: Results) -> str:
    lines = ["| measure | value | target | met |", "|---|---|---|---|"]
    for row in results.rows:
        met = "" if row.ok is None else ("yes" if row.ok else "**no**")
        lines.append(f"| {row.measure} | {row.value} | {row.target} | {met} |")
    failed = [c for c in results.checks if not c.ok]
    lines.append("")
    lines.append(
        f"Counts: {len(results.checks) - len(failed)}/{len(results.checks)} checks as expected"
        + "".join(f"\n- {c.what}: expected {c.expected:,}, found {c.found:,}" for c in failed)
    )
    return "\n".join(lines)


def machine() -> str:
    with psycopg.connect(data.ADMIN_URL) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) "
            "FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem', 'max_wal_size', "
            "'synchronous_commit', 'effective_cache_size', 'checkpoint_timeout', 'jit')"
        ).fetchone()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, {memory:.1f} GiB; "
        f"Python {platform.python_version()}; PostgreSQL {version[0] if version else '?'} "
        f"({settings[0] if settings else ''})"
    )


def parse(argv: list[str] | None = None) -> Options:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add = parser.add_argument
    add("--pairings", type=int, default=defaults.pairings, help="active pairings with due work")
    add("--per-pairing", type=int, default=defaults.per_pairing, help="due enrollments each")
    add("--unrelated", type=int, default=defaults.unrelated, help="ordinary enrollments")
    add("--repeat", type=int, default=defaults.repeat, help="floor and sweep runs (median)")
    add("--batch-size", type=int, default=defaults.batch_size, help="pairings per transaction")
    add("--baseline-rows", type=int, default=defaults.baseline_rows)
    add("--idle-factor", type=int, default=defaults.idle_factor)
    add("--idle-runs", type=int, default=defaults.idle_runs)
    add("--concurrency", default="1,2,4", help="sweepers at once, comma-separated")
    add("--batch-sizes", default="", help="also sweep at these pairings per batch, comma-separated")
    add("--lateness-enrollments", type=int, default=defaults.lateness_enrollments)
    add("--lateness-spread", type=float, default=defaults.lateness_spread, help="seconds")
    add("--interval", type=float, default=defaults.interval, help="beat interval, seconds")
    add("--no-lateness", action="store_true", help="skip the live worker and beat")
    add("--explain", action="store_true", help="print EXPLAIN ANALYZE of the main statements")
    add(
        "--canvas-schema",
        action="store_true",
        help="measure on Canvas's real schema, tep in existing mode (default: managed tables)",
    )
    add("--redis-url", default=defaults.redis_url)
    add("--json", metavar="FILE", help="also write every figure to FILE")
    args = parser.parse_args(argv)
    if min(args.pairings, args.per_pairing, args.repeat, args.batch_size, args.idle_runs) < 1:
        parser.error("sizes, --repeat, --batch-size and --idle-runs must be at least 1")
    if args.idle_factor < 2:
        parser.error("--idle-factor must be at least 2")
    try:
        concurrency = tuple(int(n) for n in args.concurrency.split(","))
    except ValueError:
        parser.error(f"--concurrency {args.concurrency!r}: give counts such as 1,2,4")
    try:
        batch_sizes = tuple(int(n) for n in args.batch_sizes.split(",") if n.strip())
    except ValueError:
        parser.error(f"--batch-sizes {args.batch_sizes!r}: give sizes such as 1000,10000")
    if any(size < 1 for size in batch_sizes):
        parser.error("--batch-sizes must all be at least 1")
    options = Options(
        pairings=args.pairings,
        per_pairing=args.per_pairing,
        unrelated=args.unrelated,
        repeat=args.repeat,
        batch_size=args.batch_size,
        baseline_rows=args.baseline_rows,
        idle_factor=args.idle_factor,
        idle_runs=args.idle_runs,
        concurrency=concurrency,
        batch_sizes=batch_sizes,
        lateness_enrollments=args.lateness_enrollments,
        lateness_spread=args.lateness_spread,
        interval=args.interval,
        lateness=not args.no_lateness,
        explain=args.explain,
        canvas_schema=args.canvas_schema,
        redis_url=args.redis_url,
        json_path=args.json,
    )
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    try:
        about = machine()
        results = run(options)
    except (psycopg.Error, RuntimeError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    print(f"\n{about}\n")
    print(table(results))
    for title, plan in results.explain.items():
        print(f"\n### {title}\n\n```\n{plan}\n```")
    if options.json_path:
        with open(options.json_path, "w") as file:
            json.dump(
                {
                    "machine": about,
                    "options": dataclasses.asdict(options),
                    "rows": [dataclasses.asdict(r) for r in results.rows],
                    "checks": [dataclasses.asdict(c) for c in results.checks],
                    "figures": results.figures,
                    "explain": results.explain,
                },
                file,
                indent=2,
            )
    return 0 if results.counts_ok else 1
