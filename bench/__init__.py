"""The sweep's benchmark on PostgreSQL (issue 4): `python -m bench --help`, README "Benchmark"."""
