"""The bodies of the episode routes (docs/client-rl.md), one episode or a batch, as join rows.

Every route takes singular keys for one episode or plural keys (equal-length lists) for a batch;
a refusal is a ValueError whose message starts with the field it is about (the route answers 422).
The observations themselves are checked by serving/policy_server.py's `to_batch`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from serving.episode_join import EndRow, StepRow

MAX_EPISODES_PER_CALL = 1024


class StartRequest(BaseModel):
    episode_id: str | None = Field(None, description="a name for the episode (else the server makes one)")
    episode_ids: list[str | None] | None = Field(None, description="names for a batch of episodes")
    count: int | None = Field(None, ge=1, le=MAX_EPISODES_PER_CALL, description="start this many new episodes")


class EpisodeFields(BaseModel):
    """What /act and /log_action add to an observation: whose step it is, and the reward of the one before."""

    episode_id: str | None = None
    episode_ids: list[str] | None = None
    step: int | None = Field(None, ge=0, description="the step asked for (0: the first); makes a retry safe")
    steps: list[int | None] | None = None
    reward: float | None = Field(None, description="the reward of the episode's previous step")
    rewards: list[float | None] | None = None


class LogActionRequest(EpisodeFields):
    obs: float | list[float] | list[list[float]]
    action: int | None = None
    actions: list[int] | None = None
    propensity: float | None = Field(None, description="the probability the client's policy chose it with")
    propensities: list[float | None] | None = None


class EndRequest(BaseModel):
    episode_id: str | None = None
    episode_ids: list[str] | None = None
    reward: float | None = None
    rewards: list[float | None] | None = None
    terminated: bool | list[bool] = False
    truncated: bool | list[bool] = False
    final_obs: list[float] | list[list[float] | None] | None = None
    step: int | None = Field(None, ge=0)
    steps: list[int | None] | None = None


def start_names(req: StartRequest) -> tuple[list[str | None], str, bool]:
    """(names, the field they came from, one episode?) of a start call."""
    given = [k for k in ("episode_id", "episode_ids", "count") if getattr(req, k) is not None]
    if len(given) > 1:
        raise ValueError(f"{given[1]}: give one of episode_id, episode_ids, count")
    if req.episode_ids is not None:
        _size("episode_ids", req.episode_ids)
        return list(req.episode_ids), "episode_ids", False
    if req.count is not None:
        return [None] * req.count, "count", False
    return [req.episode_id], "episode_id", True


def step_rows(req: EpisodeFields, n: int, single: bool) -> tuple[list[StepRow], str] | None:
    """The join rows of a call's `n` observations (None: the call names no episode)."""
    if req.episode_id is None and req.episode_ids is None:
        for k in ("step", "steps", "reward", "rewards"):
            if getattr(req, k) is not None:
                raise ValueError(f"{k}: names a step of an episode; give episode_id (or episode_ids) with it")
        return None
    ids = _ids(req.episode_id, req.episode_ids, n, single)
    steps = _per_row("step", req.step, req.steps, n, single)
    rewards = _per_row("reward", req.reward, req.rewards, n, single)
    for i, r in enumerate(rewards):
        _finite(_name("reward", i, single), r)
    field = "episode_id" if single else "episode_ids"
    return [StepRow(e, [], s, r) for e, s, r in zip(ids, steps, rewards)], field


def logged_actions(req: LogActionRequest, n: int, single: bool, n_actions: int) -> list[tuple[int, float | None]]:
    """(action, propensity) of each row of a log_action call."""
    actions = _per_row("action", req.action, req.actions, n, single)
    props = _per_row("propensity", req.propensity, req.propensities, n, single)
    out = []
    for i, (a, p) in enumerate(zip(actions, props)):
        if a is None:
            raise ValueError(f"{_name('action', i, single)}: the action the client took is required")
        if not 0 <= a < n_actions:
            raise ValueError(f"{_name('action', i, single)}: {a} is outside the action space [0, {n_actions})")
        if p is not None and not (math.isfinite(p) and 0 < p <= 1):
            raise ValueError(f"{_name('propensity', i, single)}: {p!r} is not a probability in (0, 1]")
        out.append((int(a), p))
    return out


def end_rows(req: EndRequest, width: int, check_obs: Any) -> tuple[list[EndRow], str, bool]:
    """The join rows of an end call; `check_obs(row, field)` refuses an observation of the wrong shape."""
    single = req.episode_ids is None
    if single and req.episode_id is None:
        raise ValueError("episode_id: name the episode to end (or episode_ids for a batch)")
    n = 1 if single else len(req.episode_ids)
    ids = _ids(req.episode_id, req.episode_ids, n, single)
    rewards = _per_row("reward", req.reward, req.rewards, n, single)
    term = _flags("terminated", req.terminated, n, single)
    trunc = _flags("truncated", req.truncated, n, single)
    steps = _per_row("step", req.step, req.steps, n, single)
    finals = [req.final_obs] if single else (req.final_obs if req.final_obs is not None else [None] * n)
    if not single and len(finals) != n:
        raise ValueError(f"final_obs: {len(finals)} observations for {n} episodes")
    rows = []
    for i in range(n):
        if rewards[i] is None:
            raise ValueError(f"{_name('reward', i, single)}: the reward of the episode's last step is required")
        _finite(_name("reward", i, single), rewards[i])
        final = finals[i]
        if final is not None:
            final = check_obs(final, "final_obs" if single else f"final_obs[{i}]")
        rows.append(EndRow(ids[i], float(rewards[i]), term[i], trunc[i], final, steps[i]))
    return rows, "episode_id" if single else "episode_ids", single


# ---- helpers ----------------------------------------------------------------------------------
def _ids(one: str | None, many: list[str] | None, n: int, single: bool) -> list[str]:
    if single:
        if many is not None:
            raise ValueError("episode_ids: one observation takes episode_id")
        return [one]
    if one is not None or many is None:
        raise ValueError("episode_ids: a batch of observations takes episode_ids, one per observation")
    if len(many) != n:
        raise ValueError(f"episode_ids: {len(many)} episodes for {n} observations")
    return list(many)


def _per_row(name: str, one: Any, many: list | None, n: int, single: bool) -> list:
    if single:
        if many is not None:
            raise ValueError(f"{name}s: one episode takes {name}")
        return [one]
    if one is not None:
        raise ValueError(f"{name}: a batch takes {name}s, one per episode")
    if many is None:
        return [None] * n
    if len(many) != n:
        raise ValueError(f"{name}s: {len(many)} values for {n} episodes")
    return list(many)


def _flags(name: str, value: bool | list[bool], n: int, single: bool) -> list[bool]:
    if isinstance(value, bool):
        return [value] * n
    if single or len(value) != n:
        raise ValueError(f"{name}: one flag per episode")
    return list(value)


def _finite(where: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a finite number")


def _name(name: str, i: int, single: bool) -> str:
    return name if single else f"{name}s[{i}]"


def _size(name: str, values: list) -> None:
    if not 1 <= len(values) <= MAX_EPISODES_PER_CALL:
        raise ValueError(f"{name}: 1..{MAX_EPISODES_PER_CALL} episodes per call, got {len(values)}")
