"""`python -m coe.cli ...`: the `coe` command without the console script."""

from coe.cli import run

run()
