"""`rl.clients`: the episodes an RL policy's own clients play through its API (`rl.experience`).

A client starts an episode, asks `/act` (or logs its own action) at each step and reports the
rewards (docs/client-rl.md); each completed step is a transition in the policy's replay table,
stored before the client's next call is answered.
"""

from __future__ import annotations

from pydantic import Field

from core.config.base import Section


class ClientEpisodesSection(Section):
    """Limits and slices of client episodes (serving/episode_join.py)."""

    episode_ttl_s: float = Field(default=300.0, gt=0)  # an episode no call touches this long is truncated
    max_open_episodes: int = Field(default=1024, ge=1)  # per client key: starts past it are refused (429)
    max_steps_per_s: float | None = Field(default=None, gt=0)  # per client key (429 past it); None: no limit
    # with a gate: the share of episodes (by a hash of their id) held out of training, its off-policy evidence
    holdout: float = Field(default=0.2, ge=0, lt=1)
    # how long a group of steps gathers before a write (0: those that arrived while the last one was written)
    commit_interval_s: float = Field(default=0.0, ge=0)
