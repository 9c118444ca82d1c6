"""API keys, the run's key book, TLS settings."""
