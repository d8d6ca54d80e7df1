"""Serve the fault-injecting upstream: `python -m coe.testing --port 8301`."""

from coe.testing.fake_upstream import main

main()
