"""A change of the world an RL loop acts in, and the rollout actor's bounded answer to it.

`PhysicsShift` wraps a gymnasium env; `shift()` sets attributes of the
unwrapped env (CartPole: `length` (half the pole), `masspole`, `masscart`,
`gravity`, `force_mag`, `tau`) to new values.  The env's `step()` reads them,
so the dynamics change from the next step on while the observation and action
spaces stay the same: the policy's network still fits, it is just wrong.
Attributes an env derives from others in its constructor are recomputed
(CartPole's `total_mass` and `polemass_length`), else the change would only
be half made.

`EpsilonBoost` is the actor's side of the adaptive layer's `epsilon_boost`:
exploration restarts at a higher epsilon and decays linearly back to the
schedule's end, so the boost ends by itself.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import gymnasium as gym

from core.config.rl import EpsilonSection


def _cartpole_derived(env: Any) -> None:
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


# env class name -> (attributes derived in its constructor, how to recompute them)
DERIVED: dict[str, tuple[tuple[str, ...], Callable[[Any], None]]] = {
    "CartPoleEnv": (("total_mass", "polemass_length"), _cartpole_derived),
}


def check_physics(env: gym.Env, settings: Mapping[str, float]) -> None:
    """Raise ValueError, naming what is wrong, unless every key is a numeric attribute of the env
    that can be set (a derived one is not: it would be overwritten from the others)."""
    base = env.unwrapped
    name = type(base).__name__
    derived = DERIVED.get(name, ((), None))[0]
    for key, value in settings.items():
        if key in derived:
            raise ValueError(f"{name}.{key} is derived from other attributes: set those instead")
        current = getattr(base, key, None)
        if key.startswith("_") or not isinstance(current, numbers.Real) or isinstance(current, bool):
            numeric = sorted(k for k, v in vars(base).items()
                             if isinstance(v, numbers.Real) and not isinstance(v, bool)
                             and not k.startswith("_") and k not in derived)
            raise ValueError(f"{name} has no numeric attribute {key!r}; it has {numeric}")
        if not isinstance(value, numbers.Real):
            raise ValueError(f"{name}.{key}: value must be a number, got {value!r}")


class PhysicsShift(gym.Wrapper):
    """Sets `settings` on the unwrapped env when `shift()` is called (at once with `shifted=True`)."""

    def __init__(self, env: gym.Env, settings: Mapping[str, float], shifted: bool = False):
        super().__init__(env)
        check_physics(env, settings)
        self.settings = {k: float(v) for k, v in settings.items()}
        self.before = {k: getattr(env.unwrapped, k) for k in self.settings}
        self.shifted = False
        if shifted:
            self.shift()

    def shift(self) -> dict[str, float]:
        """Apply the new physics (again: a no-op); returns what is now set."""
        base = self.env.unwrapped
        for key, value in self.settings.items():
            setattr(base, key, value)
        recompute = DERIVED.get(type(base).__name__, ((), None))[1]
        if recompute is not None:
            recompute(base)
        self.shifted = True
        return dict(self.settings)


def physics_wrappers(settings: Mapping[str, float] | None, shifted: bool = False) -> list[Callable[[gym.Env], gym.Env]]:
    """`wrappers=` for gym.make_vec: every sub-env gets a PhysicsShift (none without settings)."""
    if not settings:
        return []
    return [lambda env: PhysicsShift(env, settings, shifted)]


@dataclass
class EpsilonBoost:
    """From vector step `start`: epsilon `value`, back to the schedule's end linearly over `steps`."""

    start: int
    value: float
    steps: int

    def at(self, schedule: EpsilonSection, step: int) -> float:
        """Epsilon at vector step `step`: the schedule's, or the boost's while that is higher."""
        base = schedule.at(step)
        frac = (step - self.start) / max(self.steps, 1)
        if frac < 0 or frac >= 1:
            return base
        return max(base, self.value + frac * (schedule.end - self.value))
