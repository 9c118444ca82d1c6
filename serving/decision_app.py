"""A decision policy's server: rank a request's actions and take the reward of the one served (HTTP, FastAPI).

    POST <prefix>/<policy>/rank    {"context", "actions": [{"id", "features"}], "exclude"?}
                                   -> event_id, action_id, propensity, ranking: [{id, probability}]
    POST <prefix>/<policy>/reward  {"event_id", "reward"}  (in the declared [reward_min, reward_max])
    GET  <prefix>/<policy>/healthz readiness: 200 once a version is served, else 503
    gRPC evolve.v1.EvolveFeedback/{Rank,Reward} (metadata application=<the app's name>)

The prefix is the loop's `serving.route_prefix` (`/v1/decisions`). With `serving.auth` on, rank
needs a key of scope `predict` and reward one of scope `feedback` (serving/auth_guard.py); the
key's id is the sender.  A request past a limit or with a feature that is not one is a 4xx naming
the field (serving/decision_requests.py), its body read by serving/body.py's rules first.

Every decision is recorded with the shared joiner (serving/join.py) as a `DecisionEvent`
(serving/decision_join.py) before the client hears its event id; its reward is joined there under
the feedback route's rules (TTL = `reward_wait_s`, idempotent repeats, 404 / 409 / 410, the
per-sender cap) and the row is in the loop's `decisions` replay table before the reward is
answered 200.  A decision left without a reward is stored with `default_reward` once its window
closes.  The replica serves the policy's live version and re-reads the live pointer every
`refresh_s`; a request is answered by one version (one reference read).
"""

# no `from __future__ import annotations`: FastAPI must see the annotations themselves

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.config import BackpressureConfig

from core.config.decisions import DecisionServingSection
from core.decisions.files import policy_from_files
from core.decisions.policy import DecisionPolicy
from core.storage.registry import PolicyRegistry
from serving.auth_guard import RouteGuard, admit, docs_need_key, grpc_headers
from serving.body import read_json
from serving.decision_join import DecisionEvent
from serving.decision_requests import REWARD_LIMITS, grpc_rank, grpc_reward, parse_rank, parse_reward, rank_limits
from serving.decision_schemas import DecisionHealth, RankRequest, RankResponse, RewardRequest, RewardResponse
from serving.feedback_schemas import error_responses, request_body
from serving.join import FeedbackRejected, get_or_create_joiner
from serving.refresh import keep_refreshed
from serving.refusals import grpc_refusal, http_refusals

log = logging.getLogger(__name__)

DECISION_JOINER = "evolve-decision-joiner"

api = FastAPIOffline(title="Evolve decisions",
                     description="Rank actions from context and action features; learn from the reward of the one served.",
                     version="0.1.0")
docs_need_key(api)


@dataclass(frozen=True)
class ServedPolicy:
    policy: DecisionPolicy
    version: int


@serve.deployment(name="decision_server", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class DecisionServer:
    def __init__(self, joiner: Any, registry_uri: str, policy_id: str, serving: dict, auth: dict | None = None,
                 refresh_s: float = 2.0):
        self.joiner, self.policy_id = joiner, policy_id
        self.limits = DecisionServingSection.model_validate(serving)
        self.guard = RouteGuard(auth)
        self.registry = PolicyRegistry(registry_uri, create=False)
        self.replica = f"dec-{uuid.uuid4().hex[:8]}"
        self.rng = np.random.default_rng()
        self.served: ServedPolicy | None = None
        self._task = asyncio.get_event_loop().create_task(
            keep_refreshed(self._refresh, f"decision policy {policy_id}", refresh_s))

    def _refresh(self) -> None:
        meta = self.registry.latest(self.policy_id, "live")
        if meta is not None and (self.served is None or self.served.version != meta.version):
            loaded = self.registry.load(self.policy_id, meta.version, as_numpy=True)
            self.served = ServedPolicy(policy_from_files(loaded.weights, loaded.files, self.limits.max_actions),
                                       meta.version)

    def _served(self) -> ServedPolicy:
        served = self.served  # read once: the whole decision is one version's
        if served is None:
            raise FeedbackRejected(503, f"no live version of {self.policy_id!r} yet; retry shortly", 1)
        return served

    async def _rank(self, served: ServedPolicy, parsed: tuple, sender: str | None) -> dict:
        request, context, actions = parsed
        decision = served.policy.decide(request, self.rng)
        event = DecisionEvent(uuid.uuid4().hex, context, actions, decision.chosen, decision.propensity,
                              decision.probabilities, self.policy_id, served.version, self.replica,
                              default_reward=self.limits.default_reward, client=sender)
        try:  # the client hears its event id only once any replica's reward can find it
            await asyncio.wait_for(self.joiner.record.remote([event]), timeout=10)
        except Exception as exc:  # the decision still stands; its reward will get 404
            log.warning("decision server: recording an event failed (%s)", exc)
        probability = dict(zip(decision.ids, decision.probabilities))
        return {"policy_id": self.policy_id, "model_version": served.version, "event_id": event.event_id,
                "action_id": decision.action, "propensity": decision.propensity,
                "ranking": [{"id": i, "probability": probability[i]} for i in decision.ranking]}

    async def _reward(self, event_id: str, reward: float, client: str | None) -> dict:
        reply = await self.joiner.feedback.remote(event_id, None, reward, client)
        if reply["status"] != 200:
            raise FeedbackRejected(reply["status"], reply["detail"], reply.get("retry_after_s"))
        return reply["body"]

    @api.post("/rank", response_model=RankResponse, openapi_extra=request_body(RankRequest),
              responses=error_responses(400, 401, 403, 413, 422, 429, 503))
    async def rank(self, request: Request) -> RankResponse:
        with http_refusals():
            sender = admit(self.guard, request.headers, "predict")
            body = await read_json(request, rank_limits(self.limits))
            served = self._served()
            answer = await self._rank(served, parse_rank(body, served.policy), sender)
        return RankResponse(**answer)

    @api.post("/reward", response_model=RewardResponse, openapi_extra=request_body(RewardRequest),
              responses=error_responses(400, 401, 403, 404, 409, 410, 413, 422, 429, 500, 503))
    async def reward(self, request: Request) -> RewardResponse:
        with http_refusals():
            client = admit(self.guard, request.headers, "feedback")
            body = await read_json(request, REWARD_LIMITS)
            answer = await self._reward(*parse_reward(body, self.limits), client)
        return RewardResponse(**answer)

    @api.get("/healthz", response_model=DecisionHealth, responses={503: {"model": DecisionHealth}})
    async def healthz(self):
        served = self.served
        body = DecisionHealth(status="ok" if served else "waiting_for_model", policy_id=self.policy_id,
                              model_version=served.version if served else None)
        if served is None:
            return JSONResponse(body.model_dump(), status_code=503)
        return body


    # ---- gRPC (Serve's proxy calls the method named like the rpc) --------------------------
    async def Rank(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 (the rpc's name)
        from serving.proto import evolve_pb2 as pb

        try:
            sender = admit(self.guard, grpc_headers(grpc_context), "predict")
            served = self._served()
            answer = await self._rank(served, grpc_rank(request, served.policy), sender)
        except FeedbackRejected as exc:
            grpc_refusal(grpc_context, exc)
            return pb.RankResponse()
        ranking = [pb.RankedAction(**r) for r in answer.pop("ranking")]
        return pb.RankResponse(**answer, ranking=ranking)

    async def Reward(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from serving.proto import evolve_pb2 as pb

        try:
            client = admit(self.guard, grpc_headers(grpc_context), "feedback")
            answer = await self._reward(*grpc_reward(request, self.limits), client)
        except FeedbackRejected as exc:
            grpc_refusal(grpc_context, exc)
            return pb.RewardResponse()
        return pb.RewardResponse(**answer)


@dataclass(frozen=True)
class DecisionApp:
    app_name: str
    route_prefix: str
    joiner: Any  # the joiner's handle: stats(), flush()


def deploy_decision_app(registry_uri: str, policy_id: str, serving: DecisionServingSection, writer: Any | None,
                        table: str, *, app_name: str = "decisions", joiner_name: str = DECISION_JOINER,
                        auth: dict | None = None, num_cpus: float = 0.1, refresh_s: float = 2.0,
                        gate_name: str | None = None, slices: Callable[[str, bool], str | None] | None = None
                        ) -> DecisionApp:
    """Start the joiner (its rows go to `table` through `writer`, a replay client; None: dropped; with
    `gate_name`, the rewards go to that gate actor as evidence and `slices` holds some out of training)
    and the app under `<serving.route_prefix>/<policy_id>`. Serve must already run."""
    joiner = get_or_create_joiner(writer, serving.reward_wait_s, table, None, name=joiner_name, gate_name=gate_name,
                                  policy_id=policy_id, slices=slices, max_events=serving.max_events)
    app = DecisionServer.options(
        num_replicas=serving.num_replicas, max_ongoing_requests=64, max_queued_requests=serving.max_queued_requests,
        ray_actor_options={"num_cpus": num_cpus},
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    ).bind(joiner, registry_uri, policy_id, serving.model_dump(), auth, refresh_s)
    prefix = f"{serving.route_prefix.rstrip('/')}/{policy_id}"
    serve.run(app, name=app_name, route_prefix=prefix, logging_config={"log_level": "WARNING"})
    return DecisionApp(app_name, prefix, joiner)
