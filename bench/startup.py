"""`python -m bench.startup`: how long `tep --help` and `tep sweep --dry-run` take to start.

Each command is a fresh process, as an operator runs it: `python -c "from worker.cli import
main; main()" ...` (what the `tep` script runs), in a scratch folder whose SQLite database is
migrated and empty. The baseline is measured in the same run, interleaved with the commands so
that a busy machine slows all of them alike: `python -c pass` (the interpreter) and `python -c
"import typer"` (the interpreter and the CLI library, the floor of any typer command), and
`python -c "import sqlalchemy.orm"`, the floor of a command that reads the database through the
rules. The target (issue 13) is 0.35 s for each command; the ratios say how far above those
floors tep is, which holds better than the seconds from one machine to another.

`--source DIR` measures another copy of the code (a checkout of the commit before a change, say):
it goes first on the children's PYTHONPATH. Bytecode is written and read as for an installed
package (PYTHONDONTWRITEBYTECODE is dropped for the children), and a warm-up round is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 0.35
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEP = "from worker.cli import main; main()"
BASELINES = {
    "python -c pass": ["-c", "pass"],
    'python -c "import typer"': ["-c", "import typer"],
    # The floor of anything that reads the database through the rules: the ORM they are
    # written in. `tep sweep --dry-run` over this is what tep itself adds.
    'python -c "import sqlalchemy.orm"': ["-c", "import sqlalchemy.orm"],
}
COMMANDS = {
    "tep --help": ["-c", TEP, "--help"],
    "tep sweep --dry-run": ["-c", TEP, "sweep", "--dry-run"],
}


def child_env(source: Path, workdir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TEP_") and key != "PYTHONDONTWRITEBYTECODE"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    env["TEP_DATABASE_URL"] = f"sqlite:///{workdir / 'tep.sqlite'}"
    env["COLUMNS"] = "100"
    return env


def run_once(args: list[str], env: dict[str, str], workdir: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], env=env, cwd=workdir, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench.startup: {' '.join(args)} failed: {done.stderr.strip()}")
    return elapsed


def measure(source: Path, runs: int) -> dict[str, float]:
    """Median seconds of each baseline and command over `runs` interleaved rounds."""
    with tempfile.TemporaryDirectory(prefix="tep-startup-") as scratch:
        workdir = Path(scratch)
        env = child_env(source, workdir)
        run_once(["-c", TEP, "db", "upgrade"], env, workdir)
        where = subprocess.run(
            [sys.executable, "-c", "import worker; print(worker.__file__)"],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"code: {Path(where).parent.parent}; {runs} runs each", file=sys.stderr)
        programs = {**BASELINES, **COMMANDS}
        times: dict[str, list[float]] = {name: [] for name in programs}
        for round_ in range(runs + 1):
            for name, args in programs.items():
                elapsed = run_once(args, env, workdir)
                if round_:  # the first round warms the caches and writes the bytecode
                    times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def report(medians: dict[str, float]) -> list[str]:
    bare = medians["python -c pass"]
    typer_floor = medians['python -c "import typer"']
    orm_floor = medians['python -c "import sqlalchemy.orm"']
    lines = [f"{'median of':<36}{'seconds':>8}"]
    for name in BASELINES:
        lines.append(f"{name:<36}{medians[name]:>8.3f}")
    for name in COMMANDS:
        seconds = medians[name]
        verdict = "yes" if seconds <= TARGET_SECONDS else "no"
        lines.append(
            f"{name:<36}{seconds:>8.3f}   {seconds / bare:5.1f}x python   "
            f"{seconds / typer_floor:4.1f}x typer   {seconds / orm_floor:4.1f}x orm   "
            f"<= {TARGET_SECONDS} s: {verdict}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=21, help="runs of each program (median)")
    parser.add_argument(
        "--source", type=Path, default=PROJECT_ROOT, help="the code to measure (default: this)"
    )
    parser.add_argument("--json", type=Path, help="also write the medians to this file")
    options = parser.parse_args(argv)
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    medians = measure(options.source.resolve(), options.runs)
    print("\n".join(report(medians)))
    if options.json:
        options.json.write_text(json.dumps(medians, indent=2) + "\n")
    return 0 if all(medians[name] <= TARGET_SECONDS for name in COMMANDS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
