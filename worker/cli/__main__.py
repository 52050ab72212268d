"""`python -m worker.cli`: the `tep` command."""

from worker.cli import main

main()
