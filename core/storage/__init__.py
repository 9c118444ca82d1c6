"""Where state lives: run storage paths, the policy registry, leases and locks, one run per storage."""
