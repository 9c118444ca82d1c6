"""A stable number in [0, 1) for a string: fixed splits (held-out rows, held-back feedback)."""

from __future__ import annotations

import hashlib


def stable_unit_hash(text: str) -> float:
    """The same value in every process (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
