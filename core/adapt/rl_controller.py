"""The adaptive controller of an RL loop: what it changes when the env's dynamics change.

A drop of the training episodes' returns of a policy that had solved its env
means the env no longer behaves as the policy learned it (CartPole with a
reversed push: configs/drift_cartpole.yaml).  The rows in replay were acted in
the old world, and the actors, at the end of their epsilon schedule, barely
explore; so on an alarm the controller can ask for

    replay_cutoff   the transitions table stops serving the rows inserted before the alarm: the
                    learner learns from the new dynamics only (core/replay/table.py `cutoff`)
    epsilon_boost   with `epsilon` > 0: each rollout actor's epsilon restarts at `epsilon` and decays
                    linearly back to the schedule's end over `epsilon_steps` vector steps
                    (core/rl/drift.py)

The boost is off by default: right after a cutoff the boosted rows are most
of the table, and their n-step returns (no off-policy correction) value the
exploring policy, not the greedy one, so the learner is slower to find the
new greedy policy than without the boost.

A drop of the returns also comes from the learner itself: a DQN that has solved
its env can unlearn it (its replay holds only the states a good policy visits).
So before it acts, the loop asks whether the world changed: the last confirmed
version (the reference) plays the env as it is now for `reference_episodes`
greedy episodes; if it still reaches `reference_share` of the solve return, the
world did not change and the alarm is a regression of the learner, reported and
not answered (cutting replay would take away what it needs to relearn).

One adaptation per `cooldown_env_steps` env steps: alarms inside the cooldown
are recorded and answered with no action (a policy still failing, or a
boost, keeps returns low for a while).
The detector watches returns as a share of the solve return, so one setting
fits any env and DetectorSection's `delta` (< 1) reads as a share.
"""

from __future__ import annotations

from pydantic import Field

from core.config.adapt import DetectorSection
from core.adapt.controller import Cooldown, Decision
from core.adapt.detectors import Alarm
from core.config.base import Section


def _returns_detector() -> DetectorSection:
    # Page-Hinkley on return / solve_return: a solved policy's episodes sit near 1 with rare dips
    # (an exploratory action at the wrong time), which `delta` absorbs; a policy that fails on new
    # physics loses most of the share in every episode, which crosses `threshold` in a few episodes.
    return DetectorSection(kind="page_hinkley", delta=0.05, threshold=5.0, min_instances=30, recent=50)


class RLAdaptSection(Section):
    """enabled: false keeps the RL loop as it is without an adaptive layer."""

    enabled: bool = False  # the adaptive layer: the returns detector and its actions
    returns: DetectorSection = Field(default_factory=_returns_detector)  # on train returns / solve_return
    # Feed the detector only once the loop has solved the env: before that, returns move
    # because the policy is still learning, not because the env changed.
    after_solved: bool = True
    cooldown_env_steps: int = Field(default=50_000, ge=0)  # env steps (all actors) between adaptations
    epsilon: float = Field(default=0.0, ge=0, le=1)  # the boost's epsilon right after an alarm; 0: no boost
    epsilon_steps: int = Field(default=300, ge=1)  # vector steps of one actor back to the schedule's end
    replay_cutoff: bool = True  # the learner stops sampling rows from before the alarm
    # Greedy episodes of the last confirmed version on the env as it is now, before acting on an
    # alarm; 0: act on every alarm.
    reference_episodes: int = Field(default=10, ge=0)
    # The reference at this share of the solve return or above: the world did not change.
    reference_share: float = Field(default=0.8, gt=0, le=1)


class RLController:
    def __init__(self, cfg: RLAdaptSection):
        self.cfg = cfg
        self.cooldown = Cooldown(cfg.cooldown_env_steps, "env steps")
        self.decisions: list[Decision] = []

    def on_alarm(self, alarm: Alarm, env_steps: int) -> Decision:
        """`env_steps`: the loop's env steps so far, all actors (the cooldown's clock)."""
        cfg = self.cfg
        busy = self.cooldown.busy(env_steps)
        if busy is not None:
            decision = Decision(alarm, suppressed=busy)
        else:
            actions = []
            if cfg.replay_cutoff:
                actions.append({"action": "replay_cutoff"})
            if cfg.epsilon > 0:
                actions.append({"action": "epsilon_boost", "epsilon": cfg.epsilon, "steps": cfg.epsilon_steps})
            decision = Decision(alarm, actions=actions)
        self.decisions.append(decision)
        return decision
