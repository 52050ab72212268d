"""A tiny run of the benchmark (bench/): every measurement runs and its counts are right, on the
tables tep's migrations create (`managed`) and on Canvas's real schema in `existing` mode
(`--canvas-schema`: tests/canvas_schema, with Canvas production's update guard failing and a
non-UTC zone).

No timings are asserted; they mean nothing at this size. What can fail here is the benchmark's
own bookkeeping: data built with the wrong shape, a sweep (alone or with others at once) that
changes a row twice or misses one, a cache row or user not following, a floor that Canvas's
guard refuses, a per-row baseline or a live worker that does not finish.
"""

from __future__ import annotations

import dataclasses

import pytest

from bench import canvas as canvas_bench
from bench import run as bench
from tests import services

pytestmark = pytest.mark.postgres

TINY = bench.Options(
    pairings=40,
    per_pairing=3,
    unrelated=300,
    repeat=1,
    batch_size=7,  # pairings: several batches, so claims across batches are exercised
    batch_sizes=(5, 50),
    baseline_rows=30,
    idle_factor=2,
    idle_runs=2,
    concurrency=(1, 2, 3),
    lateness=False,
    explain=True,
)


@pytest.fixture(autouse=True)
def _postgres() -> None:
    error = services.postgres_reachable()
    if error is not None:
        services.unavailable("PostgreSQL", error)


MODES = [pytest.param(False, id="managed"), pytest.param(True, id="canvas-schema")]


@pytest.mark.parametrize("canvas_schema", MODES)
def test_every_measurement_runs_and_counts_are_exact(canvas_schema: bool) -> None:
    options = dataclasses.replace(TINY, canvas_schema=canvas_schema)
    results = bench.run(options, progress=lambda _: None)

    failed = [c for c in results.checks if not c.ok]
    assert failed == []
    whats = {c.what for c in results.checks}
    # Each measurement checked its own counts: floor, sweep, exactly-once, idle growth,
    # baseline, the RSS comparison and every concurrent run.
    for expected in (
        "deadline index: rows indexed",
        "floor run 1: rows updated",
        "floor run 1: enrollment_states rows updated",
        "sweep run 1: changed",
        "enrollments audited",
        "enrollment_states rows following their enrollments",
        "users of the due enrollments touched",
        "pairings ended (tep's pairing ends)",
        "unrelated enrollment_states rows untouched",
        "first sweep: changed",
        "first sweep: enrollments audited",
        "rows after growing",
        "ended pairings after growing",
        "per-row baseline: rows changed",
        "small sweep: changed",
        "2 sweepers: changed in total",
        "3 sweepers: enrollments audited",
        "sweep at batch 5: changed",
        "sweep at batch 50: changed",
    ):
        assert expected in whats
    assert {c.found for c in results.checks if c.what == "sweep run 1: changed"} == {120}
    measures = [row.measure for row in results.rows]
    assert results.rows[0].value == options.mode
    assert any(m.startswith("sweep time / floor time") for m in measures)
    assert any(m.startswith("first sweep after installing") for m in measures)
    assert any(m.startswith("3 sweepers") for m in measures)
    assert any(m.startswith("sweep at batch 50 pairings: 1 batches") for m in measures)
    batch = results.explain["expire + cache + touch users + audit (one data-modifying CTE)"]
    assert "Update on enrollments" in batch
    assert "Insert on enrollment_states" in batch
    assert "Update on enrollment_states" in results.explain["floor: UPDATE enrollment_states"]
    assert "the window: next due deadlines by (end_at, id)" in results.explain
    table = bench.table(results)
    assert table.startswith("| measure | value | target | met |")
    assert f"{len(results.checks)}/{len(results.checks)} checks as expected" in table


@pytest.mark.redis
@pytest.mark.integration
@pytest.mark.parametrize("canvas_schema", MODES)
def test_lateness_with_a_live_worker_and_beat(redis_url: str, canvas_schema: bool) -> None:
    results = bench.Results()
    options = bench.Options(
        lateness_enrollments=20,
        lateness_spread=2.0,
        interval=1.0,
        redis_url=redis_url,
        canvas_schema=canvas_schema,
    )

    bench._lateness(options, results, progress=lambda _: None)

    assert [(c.expected, c.found) for c in results.checks] == [(20, 20)]
    assert results.figures["lateness_p99"] >= results.figures["lateness_p50"] >= 0


def test_bad_arguments_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.parse(["--concurrency", "two"])
    assert exit_.value.code == 2
    assert "--concurrency 'two': give counts such as 1,2,4" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["db", "api"])
def test_the_canvas_bench_runs_and_its_counts_are_exact(seed: str) -> None:
    """bench/canvas.py at 6 expiries (two pairings): the test Canvas behind the throttling
    proxy, both syncs, the sweep, the delivery and the bare baseline, each checked."""
    options = canvas_bench.Options(expiries=6, per_pairing=3, seed=seed)
    results = canvas_bench.run(options, progress=lambda _: None)

    assert [c for c in results.checks if not c.ok] == []
    assert len(results.checks) >= 15
    figures = canvas_bench.figures(results)
    assert figures["delivery_requests"] == figures["baseline_requests"] == 6
    assert figures["requests_per_expiry"] == 1.0
    assert figures["bucket_ceiling_requests_per_second"] > 0
    assert "checks as expected" in canvas_bench.table(results)


def test_the_canvas_bench_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        canvas_bench.parse(["--expiries", "0"])
    assert exit_.value.code == 2
    assert "--expiries must be at least 1" in capsys.readouterr().err
