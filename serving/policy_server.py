"""`POST /v1/policies/{policy_id}/act`: observation in, action, q-values and version out.

The action is greedy unless the policy's `serving.exploration` samples it
(epsilon, or a softmax over the Q-values); the answer then says the
probability it was drawn with (`propensity`) and the distribution
(`action_probs`), so a client that logs them can evaluate other policies on
its own transitions (core/ope.py `per_decision_is`).

While the RL gate runs a canary (serving/rl_gate.py), a share of client keys
is answered by the candidate (serving/act_canary.py): the key is the
`x-evolve-client` header, or one key per observation in `clients` for a
batch of several clients' observations; `version` then says, per row,
which version answered.

The body is read with a size limit (413) and its nesting depth checked before it is parsed
(serving/requests.py); with `serving.auth` on, a key of scope `predict` is required; past
`MAX_QUEUED_REQUESTS` waiting per caller, Serve answers 503 with `Retry-After`.

Each replica subscribes to the publisher (long-poll) for every policy it
serves and swaps weights in place when a new version is live: requests keep
being answered by the previous version until the swap, which is one
`load_state_dict` under the event loop, so no request fails during it.
"""

# no `from __future__ import annotations`: FastAPI must see the request model itself, or it
# takes `request` for a query parameter inside a Serve ingress class

import asyncio
import logging
import math
import uuid
from typing import Any

from fastapi import HTTPException, Request
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve.config import BackpressureConfig

import numpy as np

from core.exploration import ExplorationSection, choose, serving_distribution
from serving.act_canary import ActCanary
from serving.act_canary import follow as follow_canary
from serving.auth_guard import RouteGuard, admit
from serving.join_rules import FeedbackRejected
from serving.requests import parse_json, read_body
from core.rl.models import PolicySpec
from core.rl.policy import QPolicy

log = logging.getLogger(__name__)
APP_NAME = "policies"
ROUTE_PREFIX = "/v1/policies"
MAX_BATCH = 1024
CLIENT_HEADER = "x-evolve-client"
MAX_ACT_BODY_BYTES = 4 * 1024 * 1024  # a full batch of wide observations, each float written out
MAX_QUEUED_REQUESTS = 1000  # per caller: past it a request is refused at once rather than queued without bound

# Swagger UI's assets from the fastapi-offline package, not a CDN: the docs render offline
api = FastAPIOffline(title="Evolve policies", version="0.1.0")


class ActRequest(BaseModel):
    """One observation (a list of floats, or an int state) or a batch of them."""

    obs: float | list[float] | list[list[float]] = Field(..., description="observation or batch of observations")
    clients: list[str] | None = Field(None, description="a batch's client keys, one per observation "
                                                        "(a canary keeps each client on one side)")


ACT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": ActRequest.model_json_schema()}}}}


class ActResponse(BaseModel):
    policy_id: str
    version: int | list[int] = Field(..., description="the version that answered (per row during a canary)")
    action: int | list[int]
    q_values: list[float] | list[list[float]]
    propensity: float | list[float] = Field(..., description="the probability each action was served with")
    action_probs: list[float] | list[list[float]] = Field(..., description="the serving distribution")


def to_batch(obs: Any, spec: PolicySpec) -> tuple[list[list[float]], bool]:
    """Normalise a request's obs to a [B, width] batch; raises ValueError with the reason."""
    width = 1 if spec.discrete_obs else spec.obs_dim
    single = not (isinstance(obs, list) and obs and isinstance(obs[0], list))
    rows = [obs if isinstance(obs, list) else [obs]] if single else obs
    if not rows or len(rows) > MAX_BATCH:
        raise ValueError(f"batch must hold 1..{MAX_BATCH} observations, got {len(rows)}")
    for row in rows:
        if len(row) != width:
            raise ValueError(f"observation must have {width} value(s), got {len(row)}")
        if not all(math.isfinite(x) for x in row):
            raise ValueError("observation contains NaN or inf")
        if spec.discrete_obs and not (float(row[0]).is_integer() and 0 <= row[0] < spec.obs_dim):
            raise ValueError(f"state must be an integer in [0, {spec.obs_dim}), got {row[0]}")
    return rows, single


def parse_act(raw: bytes) -> ActRequest:
    """The request model of an /act body; FeedbackRejected (400 / 422) with the reason."""
    body = parse_json(raw)
    try:
        return ActRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise FeedbackRejected(422, f"{where}: {first['msg']}") from None


def client_keys(clients: list[str] | None, header: str | None, n: int) -> list[str | None]:
    """One client key per row: the batch's own, else the request's header for every row."""
    if clients is None:
        return [header] * n
    if len(clients) != n:
        raise ValueError(f"clients must name one key per observation: {len(clients)} keys for {n} observations")
    return list(clients)


@serve.deployment(name="policy_server", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class PolicyServer:
    def __init__(self, publisher: Any, policy_ids: list[str], exploration: dict[str, dict] | None = None,
                 registry_uri: str | None = None, canary: dict[str, float] | None = None, auth: dict | None = None):
        self.publisher = publisher
        self.guard = RouteGuard(auth)  # API keys (serving.auth), or only the client header when off
        self.explore = {pid: ExplorationSection.model_validate((exploration or {}).get(pid, {})) for pid in policy_ids}
        self._rng = np.random.default_rng()
        self.policies: dict[str, QPolicy] = {}
        self.subscriber = f"serve-{uuid.uuid4().hex[:8]}"
        self.policy_ids = set(policy_ids)
        self._tasks = [asyncio.get_event_loop().create_task(self._follow(pid)) for pid in policy_ids]
        self.canaries = {pid: ActCanary(registry_uri, pid, fraction) for pid, fraction in (canary or {}).items()}
        for pid, follower in self.canaries.items():
            self._tasks.append(asyncio.get_event_loop().create_task(
                follow_canary(follower, lambda pid=pid: getattr(self.policies.get(pid), "spec", None))))

    async def _follow(self, policy_id: str) -> None:
        version = 0
        while True:
            try:
                reply = await self.publisher.next_version.remote(policy_id, version, self.subscriber)
                if reply is None:
                    continue
                version, (ref,), spec = reply
                weights = await ref
                policy = self.policies.get(policy_id)
                if policy is None:
                    self.policies[policy_id] = QPolicy(PolicySpec.from_dict(spec), weights, version)
                else:
                    policy.load(weights, version)
                self.publisher.ack.remote(policy_id, version, self.subscriber)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving the version we have; retry the subscription
                log.warning("policy %s: subscription failed (%s); retrying", policy_id, exc)
                await asyncio.sleep(1.0)

    @api.post("/{policy_id}/act", response_model=ActResponse, openapi_extra=ACT_BODY,
              responses={code: {"description": "refused, with the reason in `detail`"}
                         for code in (400, 401, 403, 404, 413, 422, 429, 503)})
    async def act(self, policy_id: str, http: Request) -> ActResponse:
        try:
            client = admit(self.guard, http.headers, "predict")
            request = parse_act(await read_body(http, MAX_ACT_BODY_BYTES))
        except FeedbackRejected as exc:
            raise HTTPException(exc.status, detail=exc.detail, headers=exc.headers()) from None
        policy = self.policies.get(policy_id)
        if policy_id not in self.policy_ids:
            raise HTTPException(404, detail=f"unknown policy {policy_id!r}; served: {sorted(self.policy_ids)}")
        if policy is None:
            raise HTTPException(503, detail=f"policy {policy_id!r} has no live version yet; retry shortly")
        try:
            rows, single = to_batch(request.obs, policy.spec)
            keys = client_keys(request.clients, client, len(rows))
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        obs = np.asarray(rows, dtype=np.float32)
        q, versions = policy.q_values(obs), np.full(len(rows), policy.version)
        canary = self.canaries.get(policy_id)
        on_canary = canary.route(keys) if canary is not None else np.zeros(len(rows), dtype=bool)
        if on_canary.any() and canary.current is not None:
            q[on_canary] = canary.current.q_values(obs[on_canary])
            versions[on_canary] = canary.current.version
        dist = serving_distribution(q, self.explore[policy_id], log_probs=False)
        actions, propensity = choose(dist, self._rng)
        one = (lambda x: x[0].tolist()) if single else (lambda x: x.tolist())
        version = int(versions[0]) if single or not on_canary.any() else versions.tolist()
        return ActResponse(policy_id=policy_id, version=version, action=one(actions), q_values=one(q),
                           propensity=one(propensity), action_probs=one(dist))


def deploy_policy_server(publisher: Any, policy_ids: list[str], replicas: int = 1, num_cpus: float = 0.1,
                         exploration: dict[str, ExplorationSection] | None = None, registry_uri: str | None = None,
                         canary: dict[str, float] | None = None, auth: dict | None = None) -> str:
    """`canary`: policy id -> the share of client keys its canary answers (needs `registry_uri`);
    `auth`: the run's guard settings (serving/auth_guard.py), None when auth is off."""
    explore = {pid: cfg.model_dump() for pid, cfg in (exploration or {}).items()}
    app = PolicyServer.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus}, max_queued_requests=MAX_QUEUED_REQUESTS,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    ).bind(publisher, policy_ids, explore, registry_uri, canary, auth)
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX, logging_config={"log_level": "WARNING"})
    return ROUTE_PREFIX


def undeploy_policy_server() -> None:
    serve.delete(APP_NAME)
