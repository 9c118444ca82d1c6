"""An RL loop's `drift` group: a change of the env's physics during a run (core/rl/drift.py).

    loops:
      cartpole:
        kind: rl
        drift:
          after_env_steps: 30000    # env steps (all actors) before the change ...
          after_solved: true        # ... counted from the loop's confirmed solve
          set: {length: 0.2}        # attributes of env.unwrapped and their new values

The loop applies it once, to every rollout actor's envs and the evaluator's,
and measures how long the loop takes to solve the changed env again.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from core.config.base import Section


class DriftSection(Section):
    after_env_steps: int | None = Field(default=None, ge=0)  # None: the env never changes
    # Count after_env_steps from the loop's confirmed solve: what is measured is a solved policy's
    # world changing, and the returns detector gets to see the solved policy's returns first.
    after_solved: bool = False
    set: dict[str, float] = Field(default_factory=dict)  # attributes of env.unwrapped and their new values
    # Recovered: this many greedy evaluations in a row on the changed env at the solve return (one
    # that reaches it while the learner is still moving is often followed by a collapse); recovery
    # counts the env steps to the first of them.
    hold_evals: int = Field(default=3, ge=1)
    # End the run once recovered (with a drift, `eval.stop_when_solved` does not end the run before that).
    stop_when_recovered: bool = True

    @property
    def enabled(self) -> bool:
        return self.after_env_steps is not None

    @model_validator(mode="after")
    def _needs_settings(self) -> "DriftSection":
        if self.after_env_steps is not None and not self.set:
            raise ValueError("drift.set must name at least one attribute to change (e.g. {length: 0.2})")
        return self
