"""`rl.traffic`: the clients of an RL policy's `/act` route, the live evidence of its gate (`rl.gate`,
core/config/gate.py).

Simulated clients play episodes through POST /v1/policies/<id>/act (each episode under a client
key drawn from `clients`), and hand each finished episode, with the propensity of every served
action, to the gate.
"""

from __future__ import annotations

from pydantic import Field

from core.config.base import Section


class ActTrafficSection(Section):
    """Clients of `/act`: started whenever `rl.gate.stages` is set and the loop does not learn from client
    episodes alone (`experience` rollouts or both: they are the gate's evidence), or `enabled`."""

    enabled: bool = False  # start the clients without a gate too
    episodes_at_once: int = Field(default=16, ge=1)  # episodes in flight: one batched /act per step
    clients: int = Field(default=1000, ge=1)  # distinct client keys; each episode draws one
    max_requests_per_s: float = Field(default=40.0, gt=0)  # batched /act calls per second at most
    num_cpus: float = Field(default=0.0, ge=0)  # Ray CPUs: light (it mostly waits on HTTP), not reserved
    seed: int = 0  # the clients' episode and key draws
