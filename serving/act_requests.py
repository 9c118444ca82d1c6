"""`/act`'s request rules: the body's model, its limits, the observations as a batch.

Every refusal is a ValueError whose message starts with the field it is about (the route answers
422); serving/policy_server.py routes to these, over HTTP and gRPC alike.
"""

# no `from __future__ import annotations`: FastAPI reads these models' fields at runtime

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from core.models.q import PolicySpec, obs_width
from serving import episode_routes as episodes
from serving.body import JsonLimits
from serving.episode_requests import EpisodeFields

MAX_BATCH = 1024
MAX_ACT_BODY_BYTES = 4 * 1024 * 1024  # a full batch of wide observations, each float written out
FLOAT32_MAX = float(np.finfo(np.float32).max)  # an observation is cast to float32 for the model


class ActRequest(EpisodeFields):
    """One observation (a list of floats, or an int state) or a batch of them; with an episode id, a
    step of that client episode (docs/client-rl.md)."""

    obs: float | list[float] | list[list[float]] = Field(..., description="observation or batch of observations")
    clients: list[str] | None = Field(None, description="a batch's client keys, one per observation "
                                                        "(a canary keeps each client on one side)")


def _body(model: type[BaseModel]) -> dict:
    """A route's JSON body in the OpenAPI spec (the routes read it through serving/body.py, not FastAPI)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


ACT_BODY = _body(ActRequest)


class ActResponse(BaseModel):
    policy_id: str
    version: int | list[int] = Field(..., description="the version that answered (per row during a canary)")
    action: int | list[int]
    q_values: list[float] | list[list[float]]
    propensity: float | list[float] = Field(..., description="the probability each action was served with")
    action_probs: list[float] | list[list[float]] = Field(..., description="the serving distribution")
    step: int | list[int] | None = Field(None, description="with episode ids: the step each action is")


REFUSALS = {code: {"description": "refused, with the reason in `detail`"}
            for code in (400, 401, 403, 404, 409, 410, 413, 422, 429, 503)}


def _one_obs(obs: Any, where: str, spec: PolicySpec) -> list[float]:
    """One observation (an end's `final_obs`) checked as /act checks its own; ValueError naming `where`."""
    try:
        rows, single = to_batch(obs, spec)
    except ValueError as exc:  # to_batch names the field `obs`: name it `where`
        reason = str(exc)
        raise ValueError(where + reason[len("obs"):] if reason.startswith("obs") else f"{where}: {reason}") from None
    if not single:
        raise ValueError(f"{where}: one observation, not a batch")
    return [float(x) for x in rows[0]]


def act_limits(spec: PolicySpec) -> JsonLimits:
    """An /act body holds at most MAX_BATCH rows of the policy's width, and one client key per row."""
    return JsonLimits(bytes=MAX_ACT_BODY_BYTES, values=MAX_BATCH * (obs_width(spec) + 2) + 64, keys=64,
                      containers=MAX_BATCH + 16)


def to_batch(obs: Any, spec: PolicySpec) -> tuple[list[list[float]], bool]:
    """Normalise a request's obs to a [B, width] batch; raises ValueError with the reason."""
    width = obs_width(spec)
    single = not (isinstance(obs, list) and obs and isinstance(obs[0], list))
    rows = [obs if isinstance(obs, list) else [obs]] if single else obs
    if not rows or len(rows) > MAX_BATCH:
        raise ValueError(f"obs: a batch holds 1..{MAX_BATCH} observations, got {len(rows)}")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{_obs_field(obs, single, i)}: an observation has {width} value(s), got {len(row)}")
        for j, x in enumerate(row):
            if not math.isfinite(x) or abs(x) > FLOAT32_MAX:
                where = _obs_field(obs, single, i, j)
                raise ValueError(f"{where} is {x!r}: an observation value must be finite within float32's range "
                                 f"(|x| <= {FLOAT32_MAX:.4g})")
        if spec.discrete_obs and not (float(row[0]).is_integer() and 0 <= row[0] < spec.obs_dim):
            raise ValueError(f"{_obs_field(obs, single, i)}: a state must be an integer in [0, {spec.obs_dim}), "
                             f"got {row[0]}")
    return rows, single


def _obs_field(obs: Any, single: bool, i: int, j: int | None = None) -> str:
    """How a reason names one value (or, with j None, one row) of a request's obs."""
    if single:
        return "obs" if not isinstance(obs, list) or j is None else f"obs[{j}]"
    return f"obs[{i}]" if j is None else f"obs[{i}][{j}]"


def parse_act(body: Any) -> ActRequest:
    """The request model of a parsed /act body; FeedbackRejected (422) with the reason."""
    return episodes.parse(ActRequest, body)


def client_keys(clients: list[str] | None, header: str | None, n: int) -> list[str | None]:
    """One client key per row: the batch's own, else the request's header for every row."""
    if clients is None:
        return [header] * n
    if len(clients) != n:
        raise ValueError(f"clients must name one key per observation: {len(clients)} keys for {n} observations")
    return list(clients)
