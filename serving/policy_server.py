"""`POST /v1/policies/{policy_id}/act`: observation in, action, q-values and version out.

Each RL loop deploys its own app (named after the loop) under `/v1/policies/<policy_id>`,
which answers `POST .../act` for that policy; an app serving several policies under
`/v1/policies` answers `POST /v1/policies/{policy_id}/act` for each.

The action is greedy unless the policy's `serving.exploration` samples it
(epsilon, or a softmax over the Q-values); the answer then says the
probability it was drawn with (`propensity`) and the distribution
(`action_probs`), so a client that logs them can evaluate other policies on
its own transitions (core/stats/ope.py `per_decision_is`).

While the gate runs a canary (gate/stages/canary.py), a share of client keys
is answered by the candidate (serving/stage_follower.py): the key is the
`x-evolve-client` header, or one key per observation in `clients` for a
batch of several clients' observations; `version` then says, per row,
which version answered.

The body is read through serving/body.py with limits that follow the policy's observation
width (413 past the size, 400 past depth or counts, before it is parsed); with `serving.auth`
on, a key of scope `predict` is required; past `MAX_QUEUED_REQUESTS` waiting per caller, Serve
answers 503 with `Retry-After`.

No answer is computed from a non-finite number: an observation value beyond float32's range is
a 422 naming it, and so is one whose Q-values overflow on a sound version. A version that cannot
answer at all (a non-finite weight, or non-finite Q-values on an all-zero observation) is never
answered from: 503 with the reason while it is live (a canary of it answers nobody: its rows go
to live), and the policy's gate, when one runs, is told (an `unservable` item of its evidence)
and rolls it back.

Each replica subscribes to the publisher (long-poll) for every policy it
serves and swaps weights in place when a new version is live: requests keep
being answered by the previous version until the swap, which is one
`load_state_dict` under the event loop, so no request fails during it.
"""

# no `from __future__ import annotations`: FastAPI must see the request model itself, or it
# takes `request` for a query parameter inside a Serve ingress class

import asyncio
import logging

import uuid
from typing import Any

from fastapi import HTTPException, Request
from fastapi_offline import FastAPIOffline

from ray import serve
from ray.serve.config import BackpressureConfig

import numpy as np

from core.stats.exploration import ExplorationSection, choose, serving_distribution
from serving.stage_follower import StageFollower
from serving.stage_follower import follow as follow_stage
from serving.auth_guard import RouteGuard, admit, docs_need_key, grpc_headers
from serving.refusals import grpc_refusal
from serving import policy_grpc as rpc
from serving.join_rules import FeedbackRejected
from serving.body import read_json
from serving import episode_routes as episodes
from serving.episode_requests import EndRequest, LogActionRequest, StartRequest, step_rows
from serving.act_requests import (ACT_BODY, MAX_ACT_BODY_BYTES, MAX_BATCH, REFUSALS, ActRequest,  # noqa: F401 (re-exported)
                                  ActResponse, _body, _obs_field, _one_obs, act_limits, client_keys, parse_act, to_batch)
from core.models.q import PolicySpec
from core.models.q_policy import QPolicy

log = logging.getLogger(__name__)
APP_NAME = "policies"
ROUTE_PREFIX = "/v1/policies"
CLIENT_HEADER = "x-evolve-client"
MAX_QUEUED_REQUESTS = 1000  # per caller: past it a request is refused at once rather than queued without bound

# Swagger UI's assets from the fastapi-offline package, not a CDN: the docs render offline
api = FastAPIOffline(title="Evolve policies", version="0.1.0")
docs_need_key(api)  # before @serve.ingress, which copies the app


# what each episode route does with its body: (joiner, body, client key, served policy) -> answer
def _start_call(joiner: Any, body: Any, client: str | None, policy: QPolicy) -> Any:
    return episodes.start(joiner, body, client)


def _end_call(joiner: Any, body: Any, client: str | None, policy: QPolicy) -> Any:
    return episodes.end(joiner, body, client, lambda o, where: _one_obs(o, where, policy.spec))


def _log_call(joiner: Any, body: Any, client: str | None, policy: QPolicy) -> Any:
    return episodes.log_action(joiner, body, client, lambda o: to_batch(o, policy.spec), policy.spec.n_actions,
                               policy.version)


@serve.deployment(name="policy_server", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class PolicyServer:
    def __init__(self, publisher: Any, policy_ids: list[str], exploration: dict[str, dict] | None = None,
                 registry_uri: str | None = None, canary: dict[str, float] | None = None, auth: dict | None = None,
                 gates: dict[str, Any] | None = None, joiners: dict[str, Any] | None = None):
        self.publisher = publisher
        self.joiners = dict(joiners or {})  # policy id -> its episode joiner (client episodes)
        self.gates = dict(gates or {})  # policy id -> its gate actor, told of an unservable version
        self._faults: dict[tuple[str, int], str | None] = {}
        self.guard = RouteGuard(auth)  # API keys (serving.auth), or only the client header when off
        self.explore = {pid: ExplorationSection.model_validate((exploration or {}).get(pid, {})) for pid in policy_ids}
        self._rng = np.random.default_rng()
        self.policies: dict[str, QPolicy] = {}
        self.subscriber = f"serve-{uuid.uuid4().hex[:8]}"
        self.policy_ids = set(policy_ids)
        self._tasks = [asyncio.get_event_loop().create_task(self._follow(pid)) for pid in policy_ids]
        self.canaries = {pid: StageFollower(registry_uri, pid, fraction, self._policy_of(pid))
                         for pid, fraction in (canary or {}).items()}
        for follower in self.canaries.values():
            self._tasks.append(asyncio.get_event_loop().create_task(follow_stage(follower)))

    def _policy_of(self, policy_id: str):
        """How a stored version of the policy answers: with the live policy's spec (the same model);
        None until a live version is served."""

        def load(weights: Any, files: dict, version: int) -> QPolicy | None:
            live = self.policies.get(policy_id)
            return None if live is None else QPolicy(live.spec, weights, version)

        return load

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

    @api.post("/act", response_model=ActResponse, openapi_extra=ACT_BODY,
              responses={code: {"description": "refused, with the reason in `detail`"}
                         for code in (400, 401, 403, 404, 413, 422, 429, 503)})
    async def act_here(self, http: Request) -> ActResponse:
        """The app of one policy (under /v1/policies/<policy_id>): its /act."""
        if len(self.policy_ids) != 1:
            raise HTTPException(404, detail=f"this app serves {sorted(self.policy_ids)}: POST /<policy_id>/act")
        return await self.act(next(iter(self.policy_ids)), http)

    @api.post("/{policy_id}/act", response_model=ActResponse, openapi_extra=ACT_BODY,
              responses={code: {"description": "refused, with the reason in `detail`"}
                         for code in (400, 401, 403, 404, 413, 422, 429, 503)})
    async def act(self, policy_id: str, http: Request) -> ActResponse:
        try:
            client = admit(self.guard, http.headers, "predict")
            body = await read_json(http, act_limits(self._served(policy_id).spec))
        except FeedbackRejected as exc:
            raise HTTPException(exc.status, detail=exc.detail, headers=exc.headers()) from None
        return await self._act(policy_id, body, client)

    async def _act(self, policy_id: str, body: Any, client: str | None) -> ActResponse:
        """An /act body's answer (HTTPException when refused); `client`: the caller's key."""
        try:
            policy = self._served(policy_id)
            request = parse_act(body)
            rows, single = to_batch(request.obs, policy.spec)
            episode = step_rows(request, len(rows), single)
            joiner = self._joiner(policy_id) if episode is not None else None
            # a canary keeps each episode on one side (one version plays it), else each client
            sticky = [r.episode_id for r in episode[0]] if episode is not None and request.clients is None else None
            keys = sticky or client_keys(request.clients, client, len(rows))
        except FeedbackRejected as exc:
            raise HTTPException(exc.status, detail=exc.detail, headers=exc.headers()) from None
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        obs = np.asarray(rows, dtype=np.float32)
        q, versions = self._q_values(policy_id, policy, obs, keys)
        overflowed = np.flatnonzero(~np.isfinite(q).all(axis=1))
        if overflowed.size:
            i = int(overflowed[0])
            raise HTTPException(422, detail=f"{_obs_field(request.obs, single, i)}: policy {policy_id!r} "
                                            f"v{versions[i]} gives non-finite Q-values for it (its values are too "
                                            "large for the model)")
        dist = serving_distribution(q, self.explore[policy_id], log_probs=False)
        actions, propensity = choose(dist, self._rng)
        steps = None
        if episode is not None:
            episodes.fill(episode[0], obs, actions, propensity, dist, versions)
            answers = await episodes.act_steps(joiner, episode[0], episode[1], client)
            steps = [a["step"] for a in answers]
            for i, a in enumerate(answers):
                if a.get("repeat"):  # a retried step gets the action it was served
                    actions[i], propensity[i], versions[i] = a["action"], a["propensity"], a["version"]
                    dist[i] = a["action_probs"]
        one = (lambda x: x[0].tolist()) if single else (lambda x: x.tolist())
        version = int(versions[0]) if single or (versions == versions[0]).all() else versions.tolist()
        return ActResponse(policy_id=policy_id, version=version, action=one(actions), q_values=one(q),
                           propensity=one(propensity), action_probs=one(dist),
                           step=None if steps is None else (steps[0] if single else steps))

    def _q_values(self, policy_id: str, policy: QPolicy, obs: np.ndarray, keys: list) -> tuple[np.ndarray, np.ndarray]:
        """Each row's Q-values and the version that gave them: live's, or the canary's for its keys."""
        fault = self._fault(policy_id, policy)
        if fault is not None:
            raise HTTPException(503, detail=f"policy {policy_id!r} v{policy.version} is not answered from: {fault}; "
                                            "retry once a sound version is live")
        q, versions = policy.q_values(obs), np.full(len(obs), policy.version)
        canary = self.canaries.get(policy_id)
        current = canary.current if canary is not None else None
        on_canary = canary.route(keys) if canary is not None else np.zeros(len(obs), dtype=bool)
        if current is not None and self._fault(policy_id, current) is not None:
            on_canary[:] = False  # an unservable canary answers nobody: its rows stay on live
        if on_canary.any() and current is not None:
            q[on_canary] = current.q_values(obs[on_canary])
            versions[on_canary] = current.version
        return q, versions

    # ---- client episodes (serving/episode_routes.py) ------------------------------------------------
    @api.post("/episodes", responses=REFUSALS, openapi_extra=_body(StartRequest))
    async def start_here(self, http: Request) -> dict:
        return await self.start_episodes(self._only(), http)

    @api.post("/episodes/end", responses=REFUSALS, openapi_extra=_body(EndRequest))
    async def end_here(self, http: Request) -> dict:
        return await self.end_episodes(self._only(), http)

    @api.post("/log_action", responses=REFUSALS, openapi_extra=_body(LogActionRequest))
    async def log_here(self, http: Request) -> dict:
        return await self.log_action(self._only(), http)

    @api.get("/episodes/{episode_id}", responses=REFUSALS)
    async def view_here(self, episode_id: str, http: Request) -> dict:
        return await self.view_episode(self._only(), episode_id, http)

    @api.post("/{policy_id}/episodes", responses=REFUSALS, openapi_extra=_body(StartRequest))
    async def start_episodes(self, policy_id: str, http: Request) -> dict:
        return await self._episode_call(policy_id, http, _start_call)

    @api.post("/{policy_id}/episodes/end", responses=REFUSALS, openapi_extra=_body(EndRequest))
    async def end_episodes(self, policy_id: str, http: Request) -> dict:
        return await self._episode_call(policy_id, http, _end_call)

    @api.post("/{policy_id}/log_action", responses=REFUSALS, openapi_extra=_body(LogActionRequest))
    async def log_action(self, policy_id: str, http: Request) -> dict:
        return await self._episode_call(policy_id, http, _log_call)

    @api.get("/{policy_id}/episodes/{episode_id}", responses=REFUSALS)
    async def view_episode(self, policy_id: str, episode_id: str, http: Request) -> dict:
        try:
            client = admit(self.guard, http.headers, "predict")
            joiner = self._joiner(policy_id)
        except FeedbackRejected as exc:
            raise HTTPException(exc.status, detail=exc.detail, headers=exc.headers()) from None
        return await episodes.view(joiner, episode_id, client)

    async def _episode_call(self, policy_id: str, http: Request, call) -> dict:
        try:
            client = admit(self.guard, http.headers, "predict")
            body = await read_json(http, act_limits(self._served(policy_id).spec))
        except FeedbackRejected as exc:
            raise HTTPException(exc.status, detail=exc.detail, headers=exc.headers()) from None
        return await self._episode_body(policy_id, body, client, call)

    async def _episode_body(self, policy_id: str, body: Any, client: str | None, call) -> dict:
        try:
            policy = self._served(policy_id)
            return await call(self._joiner(policy_id), body, client, policy)
        except FeedbackRejected as exc:
            raise HTTPException(exc.status, detail=exc.detail, headers=exc.headers()) from None
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None

    # ---- gRPC: EvolvePolicies (serving/policy_grpc.py); Serve's proxy calls the method named like the rpc
    async def Act(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 (the rpc's name)
        async def run(policy_id: str, client: str | None) -> Any:
            return rpc.act_message(await self._act(policy_id, rpc.act_body(request), client))

        return await self._grpc(grpc_context, request, "ActResponse", rpc.ACT_FIELDS, run)

    async def StartEpisodes(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        async def run(policy_id: str, client: str | None) -> Any:
            return rpc.start_message(await self._episode_body(policy_id, rpc.start_body(request), client, _start_call))

        return await self._grpc(grpc_context, request, "StartEpisodesResponse", rpc.START_FIELDS, run)

    async def LogAction(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        async def run(policy_id: str, client: str | None) -> Any:
            return rpc.log_message(await self._episode_body(policy_id, rpc.log_body(request), client, _log_call))

        return await self._grpc(grpc_context, request, "LogActionResponse", rpc.LOG_FIELDS, run)

    async def EndEpisodes(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        async def run(policy_id: str, client: str | None) -> Any:
            return rpc.end_message(await self._episode_body(policy_id, rpc.end_body(request), client, _end_call))

        return await self._grpc(grpc_context, request, "EndEpisodesResponse", rpc.END_FIELDS, run)

    async def GetEpisode(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        async def run(policy_id: str, client: str | None) -> Any:
            return rpc.episode_message(await episodes.view(self._joiner(policy_id), request.episode_id, client))

        return await self._grpc(grpc_context, request, "EpisodeState", {}, run)

    async def _grpc(self, context: Any, request: Any, response: str, fields: dict[str, str], run) -> Any:
        """One rpc: the caller's key checked, `run(policy_id, client)`'s message, or the refusal as the
        call's status (and an empty `response`)."""
        from serving.proto import evolve_pb2 as pb

        try:
            client = admit(self.guard, grpc_headers(context), "predict")
            policy_id = rpc.decoded(request).policy_id or self._only_policy()
            return await run(policy_id, client)
        except FeedbackRejected as exc:
            status, detail = exc.status, exc.detail
        except HTTPException as exc:
            status, detail = exc.status_code, str(exc.detail)
        except ValueError as exc:
            status, detail = 422, str(exc)
        grpc_refusal(context, FeedbackRejected(status, rpc.in_message_terms(detail, fields)))
        return getattr(pb, response)()

    def _only_policy(self) -> str:
        if len(self.policy_ids) != 1:
            raise FeedbackRejected(422, f"policy_id: this application serves {sorted(self.policy_ids)}; name one")
        return next(iter(self.policy_ids))

    def _only(self) -> str:
        if len(self.policy_ids) != 1:
            raise HTTPException(404, detail=f"this app serves {sorted(self.policy_ids)}: use /<policy_id>/...")
        return next(iter(self.policy_ids))

    def _joiner(self, policy_id: str) -> Any:
        joiner = self.joiners.get(policy_id)
        if joiner is None:
            raise FeedbackRejected(404, f"policy {policy_id!r} takes no client episodes (its loop's experience "
                                        "is rollouts alone)")
        return joiner

    def _served(self, policy_id: str) -> QPolicy:
        if policy_id not in self.policy_ids:
            raise FeedbackRejected(404, f"unknown policy {policy_id!r}; served: {sorted(self.policy_ids)}")
        policy = self.policies.get(policy_id)
        if policy is None:
            raise FeedbackRejected(503, f"policy {policy_id!r} has no live version yet; retry shortly")
        return policy

    def _fault(self, policy_id: str, policy: QPolicy) -> str | None:
        """Why `policy`'s version cannot answer at all (None: it can); found once per version, and
        then told to the policy's gate when one runs."""
        key = (policy_id, policy.version)
        if key not in self._faults:
            if len(self._faults) >= 256:  # versions come and go: forget old verdicts, not the gate's
                self._faults.clear()
            fault = self._faults[key] = policy.fault()
            if fault is not None:
                log.warning("policy %s v%s is unservable: %s", policy_id, policy.version, fault)
                gate = self.gates.get(policy_id)
                if gate is not None:
                    gate.evidence.remote(policy_id, [{"type": "unservable", "version": policy.version,
                                                      "reason": fault}])
        return self._faults[key]


def deploy_policy_server(publisher: Any, policy_ids: list[str], replicas: int = 1, num_cpus: float = 0.1,
                         exploration: dict[str, ExplorationSection] | None = None, registry_uri: str | None = None,
                         canary: dict[str, float] | None = None, auth: dict | None = None,
                         gates: dict[str, Any] | None = None, app_name: str = APP_NAME,
                         route_prefix: str = ROUTE_PREFIX, joiners: dict[str, Any] | None = None) -> str:
    """Deploy the app `app_name` under `route_prefix`; returns the prefix.
    `canary`: policy id -> the share of client keys its canary answers (needs `registry_uri`);
    `auth`: the run's guard settings (serving/auth_guard.py), None when auth is off;
    `gates`: policy id -> its gate actor's handle, told when a version cannot answer;
    `joiners`: policy id -> its episode joiner (serving/episodes.py), for client episodes."""
    explore = {pid: cfg.model_dump() for pid, cfg in (exploration or {}).items()}
    app = PolicyServer.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus}, max_queued_requests=MAX_QUEUED_REQUESTS,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    ).bind(publisher, policy_ids, explore, registry_uri, canary, auth, gates, joiners)
    serve.run(app, name=app_name, route_prefix=route_prefix, logging_config={"log_level": "WARNING"})
    return route_prefix


def undeploy_policy_server(app_name: str = APP_NAME) -> None:
    serve.delete(app_name)
