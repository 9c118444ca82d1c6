"""Evolve's RL client library: an application (a game, a simulator) plays episodes through a
served RL policy over HTTP. It needs httpx and numpy (gymnasium for `evolve_client.play`),
never Ray or the rest of Evolve."""

from evolve_client.policy_client import PolicyClient
from evolve_client.requester import PolicyClientError

__all__ = ["PolicyClient", "PolicyClientError"]
