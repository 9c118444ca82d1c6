"""The statistics decisions rest on: paired tests, off-policy estimates, sequential tests, exploration, continual metrics."""
