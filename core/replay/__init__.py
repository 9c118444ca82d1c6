"""The replay store logic: tables, samplers, rate limiter, durable segments (no Ray)."""
