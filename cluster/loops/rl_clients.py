"""An RL loop's client episodes (`experience: clients | both`): its episode joiner, figures and summary.

    external client --POST .../episodes, /act, /log_action, /episodes/end--> PolicyServer (Serve)
                                                                                 | one call per request
    EpisodeJoiner (serving/episodes.py) --transitions, durable before the answer--> replay table
          | finished episodes (with a gate)                                         ^ sample
          v                                                                         |
    GateActor (q_policy): canary on every client episode, OPE on the held-out slice   learner

With `experience: clients` the loop starts no rollout actors: the learner trains on what clients
report, and the evaluator still judges every version.
"""

from __future__ import annotations

from typing import Any

import ray

from cluster.gate_actor import gate_name
from cluster.learner_run import get_or
from core.config.rl import RLSection
from serving.episodes import get_or_create_episode_joiner


class ClientEpisodes:
    def __init__(self, rl: RLSection, name: str):
        self.rl, self.name = rl, name
        self.active = rl.experience in ("clients", "both")  # the config refuses either with serving off
        self.joiner = None
        self.figures_: dict[str, Any] = {}

    def start(self, replay: Any) -> dict[str, Any] | None:
        """The policy server's joiners (None when clients play no episodes)."""
        if not self.active:
            return None
        rl, c = self.rl, self.rl.clients
        self.joiner = get_or_create_episode_joiner(
            replay, rl.policy_id, rl.table, rl.learning.gamma, episode_ttl_s=c.episode_ttl_s,
            max_open_per_client=c.max_open_episodes, max_steps_per_s=c.max_steps_per_s, holdout=c.holdout,
            gate_name=gate_name(rl.policy_id) if rl.gate.stages else None, commit_interval_s=c.commit_interval_s)
        return {rl.policy_id: self.joiner}

    def poll(self) -> dict[str, Any]:
        if self.joiner is None:
            return {}
        s = get_or(self.joiner.stats.remote(), None)
        if s is not None:
            self.figures_ = {"client_steps": s["steps_acknowledged"], "client_episodes": s["episodes_ended"]
                             + s["episodes_truncated_by_ttl"], "client_return": _round(s["mean_return"]),
                             "client_open": s["episodes_open"]}
            self.stats = s
        return self.figures_

    def summary(self) -> dict[str, Any]:
        return {"client_episodes": getattr(self, "stats", {})} if self.joiner is not None else {}

    def stop(self) -> None:
        if self.joiner is not None:
            ray.wait([self.joiner.flush.remote(10.0)], timeout=15)
            self.poll()

    def teardown(self) -> None:
        if self.joiner is not None:
            ray.kill(self.joiner, no_restart=True)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
