"""`python -m bench`: see bench/run.py and the README, "Benchmark"."""

from bench.run import main

if __name__ == "__main__":
    raise SystemExit(main())
