"""The `evolve` CLI and the wiring of a run: cluster connection, run directory, reports."""
