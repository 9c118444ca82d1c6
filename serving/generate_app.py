"""A generate loop's model server: completions and their feedback over HTTP (FastAPI) and gRPC, one Serve app.

    POST <prefix>            {"prompt", "max_new_tokens"?, "temperature"?, "top_p"?, "n"?}
                             -> policy_id, model_version, group_id, completions: [{event_id, text,
                                token_ids, logprobs, sampling_logprobs, finish}]
    POST <prefix>/feedback   {"event_id", "thumbs": "up"|"down"} | {"event_id", "reward"}
                             | {"event_id", "better_than": another completion of the same prompt}
    GET  <prefix>/healthz    readiness: 200 once a version is served, else 503
    gRPC evolve.v1.EvolveFeedback/{Generate,CompletionFeedback} (metadata application=<loop name>)

The prefix is the loop's `serving.route_prefix` (`/v1/generate` by default). With `serving.auth` on,
generate needs a key of scope `predict` and feedback one of scope `feedback` (serving/auth_guard.py);
the key's id is the sender.  Limits (prompt characters, `max_new_tokens`, `n`, temperature) come
from the loop's `serving` section; a request past one is a 4xx naming the field
(serving/generate_requests.py), its body read by serving/body.py's rules first.

Requests are decoded together by `@serve.batch` (counted in completions): those that share
max_new_tokens, temperature and top_p go through one `generate` call of the engine
(core/models/generator.py), each prompt with its `n` completions, on one worker thread per
replica.  Every completion is recorded with the shared joiner (serving/join.py) before the
client hears its event id, as a `CompletionEvent` (serving/completion_join.py); its feedback
is joined there under the feedback route's rules (TTL, idempotent repeats, 404 / 409 / 410, the
per-sender cap) and the joined row is stored in the loop's `completions` replay table before
the feedback is answered 200.

The replica serves the policy's live version in the registry and re-reads the live pointer
every `refresh_s`: a new version is loaded off the event loop and swapped in by one reference
assignment, so a request is answered by one version.
"""

# no `from __future__ import annotations`: FastAPI must see the annotations themselves

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.routing import get_route_path

from core.config.generate import GenerateServingSection
from core.models.generator import Completion, Sampling, TransformersEngine, causal_lm_from_files
from core.storage.registry import PolicyRegistry
from serving.auth_guard import RouteGuard, admit, docs_need_key, grpc_headers
from serving.completion_join import completion_event
from serving.generate_requests import (COMPLETION_FEEDBACK_LIMITS, check_fits, generate_limits, grpc_completion_feedback,
                                       grpc_generate, parse_completion_feedback, parse_generate)
from serving.generate_schemas import (CompletionFeedbackRequest, CompletionFeedbackResponse, GenerateRequest,
                                      GenerateResponse, GeneratorHealth)
from serving.feedback_schemas import error_responses, request_body
from serving.refusals import grpc_refusal, http_refusals
from serving.join import FeedbackRejected, get_or_create_joiner
from serving.body import read_json
from serving.refresh import keep_refreshed

log = logging.getLogger(__name__)

ROUTE_PREFIX = "/v1/generate"
GENERATE_JOINER = "evolve-generate-joiner"

api = FastAPIOffline(title="Evolve generate",
                     description="Completions of a prompt with their token log-probabilities, and feedback on them.",
                     version="0.1.0")
docs_need_key(api)


class BarePrefix:
    """ASGI middleware: a request for the prefix itself (POST /v1/generate) is the app's "/" route, not a
    redirect to /v1/generate/ (a client following it would resend its body, or not)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and get_route_path(scope) == "":
            scope = {**scope, "path": scope["path"] + "/"}
            if scope.get("raw_path") is not None:
                scope["raw_path"] = scope["raw_path"] + b"/"
        await self.app(scope, receive, send)


api.add_middleware(BarePrefix)


@dataclass(frozen=True)
class ServedGenerator:
    engine: Any  # a core.models.generator.GenerationEngine
    version: int


def decode_batch(engine: Any, requests: list[tuple[str, Sampling]]) -> list[list[Completion] | FeedbackRejected]:
    """Each request's completions, or the refusal of that request alone (a prompt past the context).

    Requests with the same sampling settings and `n` share one `generate` call."""
    out: list[Any] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, (prompt, sampling) in enumerate(requests):
        try:
            check_fits(len(engine.prompt_ids(prompt)), sampling, engine.context)
        except FeedbackRejected as exc:
            out[i] = exc
            continue
        groups.setdefault((sampling.key(), sampling.n), []).append(i)
    for members in groups.values():
        sampling = requests[members[0]][1]
        for i, completions in zip(members, engine.generate([requests[i][0] for i in members], sampling)):
            out[i] = completions
    return out


def _count_completions(requests: list[tuple[str, Sampling]]) -> int:
    return sum(sampling.n for _, sampling in requests)


def _load(registry: PolicyRegistry, policy_id: str, version: int, device: str) -> ServedGenerator:
    loaded = registry.load(policy_id, version)
    model, tokenizer = causal_lm_from_files(loaded.weights, loaded.files)
    return ServedGenerator(TransformersEngine(model, tokenizer, device), version)


@serve.deployment(name="generate_server", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class GenerateServer:
    def __init__(self, joiner: Any, registry_uri: str, policy_id: str, serving: dict, auth: dict | None = None,
                 refresh_s: float = 2.0):
        self.joiner, self.policy_id = joiner, policy_id
        self.limits = GenerateServingSection.model_validate(serving)
        self.guard = RouteGuard(auth)
        self.registry = PolicyRegistry(registry_uri, create=False)
        self.replica = f"gen-{uuid.uuid4().hex[:8]}"
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.served: ServedGenerator | None = None
        self._calls, self._completions = 0, 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="generate")  # the tokenizer is never shared by threads
        self._decode.set_max_batch_size(self.limits.max_batch_size)
        self._decode.set_batch_wait_timeout_s(self.limits.batch_wait_timeout_s)
        self._task = asyncio.get_event_loop().create_task(
            keep_refreshed(self._refresh, f"generator {policy_id}", refresh_s))

    def _refresh(self) -> None:
        """Serve the live version (read in a worker thread; the swap is one assignment)."""
        meta = self.registry.latest(self.policy_id, "live")
        if meta is not None and (self.served is None or self.served.version != meta.version):
            self.served = _load(self.registry, self.policy_id, meta.version, self.device)

    # ---- shared request logic -----------------------------------------------------------
    async def _generate(self, prompt: str, sampling: Sampling, sender: str | None) -> dict:
        if self.served is None:
            raise FeedbackRejected(503, f"no live version of {self.policy_id!r} yet; retry shortly", 1)
        version, result = await self._decode((prompt, sampling))
        if isinstance(result, FeedbackRejected):
            raise result
        group = uuid.uuid4().hex
        events = [completion_event(uuid.uuid4().hex, group, prompt, c, sampling.temperature, sampling.top_p,
                                   self.policy_id, version, self.replica, sender) for c in result]
        try:  # the client hears its event ids only once any replica's feedback can find them
            await asyncio.wait_for(self.joiner.record.remote(events), timeout=10)
        except Exception as exc:  # the completions still stand; their feedback will get 404
            log.warning("generate server: recording %d events failed (%s)", len(events), exc)
        return {"policy_id": self.policy_id, "model_version": version, "group_id": group,
                "completions": [{"event_id": e.event_id, "text": c.text, "token_ids": c.token_ids,
                                 "logprobs": c.logprobs, "sampling_logprobs": c.sampling_logprobs,
                                 "finish": c.finish} for e, c in zip(events, result)]}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02, batch_size_fn=_count_completions)
    async def _decode(self, requests: list[tuple[str, Sampling]]) -> list[tuple[int, Any]]:
        served = self.served  # read once: the whole batch is answered by one version
        results = await asyncio.get_running_loop().run_in_executor(self._pool, decode_batch, served.engine, requests)
        self._calls += 1
        self._completions += sum(len(r) for r in results if isinstance(r, list))
        return [(served.version, r) for r in results]

    async def _feedback(self, event_id: str, label: int | None, reward: float | None, better_than: str | None,
                        client: str | None) -> dict:
        reply = await self.joiner.feedback.remote(event_id, label, reward, client, better_than)
        if reply["status"] != 200:
            raise FeedbackRejected(reply["status"], reply["detail"], reply.get("retry_after_s"))
        return reply["body"]

    # ---- HTTP ---------------------------------------------------------------------------
    @api.post("/", response_model=GenerateResponse, openapi_extra=request_body(GenerateRequest),
              responses=error_responses(400, 401, 403, 413, 422, 429, 503))
    async def generate(self, request: Request) -> GenerateResponse:
        with http_refusals():
            sender = admit(self.guard, request.headers, "predict")
            body = await read_json(request, generate_limits(self.limits))
            answer = await self._generate(*parse_generate(body, self.limits), sender)
        return GenerateResponse(**answer)

    @api.post("/feedback", response_model=CompletionFeedbackResponse,
              openapi_extra=request_body(CompletionFeedbackRequest),
              responses=error_responses(400, 401, 403, 404, 409, 410, 413, 422, 429, 500, 503))
    async def feedback(self, request: Request) -> CompletionFeedbackResponse:
        with http_refusals():
            client = admit(self.guard, request.headers, "feedback")
            body = await read_json(request, COMPLETION_FEEDBACK_LIMITS)
            answer = await self._feedback(*parse_completion_feedback(body), client)
        return CompletionFeedbackResponse(**answer)

    @api.get("/healthz", response_model=GeneratorHealth, responses={503: {"model": GeneratorHealth}})
    async def healthz(self):
        served = self.served
        body = GeneratorHealth(status="ok" if served else "waiting_for_model", policy_id=self.policy_id,
                               model_version=served.version if served else None,
                               completions_per_call=round(self._completions / self._calls, 2) if self._calls else None)
        if served is None:
            return JSONResponse(body.model_dump(), status_code=503)
        return body

    # ---- gRPC (Serve's proxy calls the method named like the rpc) --------------------------
    async def Generate(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 (the rpc's name)
        from serving.proto import evolve_pb2 as pb

        try:
            sender = admit(self.guard, grpc_headers(grpc_context), "predict")
            answer = await self._generate(*grpc_generate(request, self.limits), sender)
        except FeedbackRejected as exc:
            grpc_refusal(grpc_context, exc)
            return pb.GenerateResponse()
        return pb.GenerateResponse(policy_id=answer["policy_id"], model_version=answer["model_version"],
                                   group_id=answer["group_id"],
                                   completions=[pb.Completion(**c) for c in answer["completions"]])

    async def CompletionFeedback(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from serving.proto import evolve_pb2 as pb

        try:
            client = admit(self.guard, grpc_headers(grpc_context), "feedback")
            answer = await self._feedback(*grpc_completion_feedback(request), client)
        except FeedbackRejected as exc:
            grpc_refusal(grpc_context, exc)
            return pb.CompletionFeedbackResponse()
        return pb.CompletionFeedbackResponse(**answer)


# ---- deploying ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateApp:
    app_name: str
    route_prefix: str
    joiner: Any  # the joiner's handle: stats(), flush()


def deploy_generate_app(registry_uri: str, policy_id: str, serving: GenerateServingSection, writer: Any | None,
                        table: str, *, app_name: str = "generate", joiner_name: str = GENERATE_JOINER,
                        auth: dict | None = None, num_cpus: float = 0.1, num_gpus: float = 0.0,
                        refresh_s: float = 2.0) -> GenerateApp:
    """Start the joiner (its rows go to `table` through `writer`, a replay client; None: dropped)
    and the app under `serving.route_prefix`. Serve must already run (with `grpc_options` for gRPC)."""
    joiner = get_or_create_joiner(writer, serving.feedback_ttl_s, table, None, name=joiner_name,
                                  policy_id=policy_id, max_events=serving.max_events)
    app = GenerateServer.options(
        num_replicas=serving.num_replicas, max_ongoing_requests=max(64, 2 * serving.max_batch_size),
        max_queued_requests=serving.max_queued_requests,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    ).bind(joiner, registry_uri, policy_id, serving.model_dump(), auth, refresh_s)
    serve.run(app, name=app_name, route_prefix=serving.route_prefix, logging_config={"log_level": "WARNING"})
    return GenerateApp(app_name, serving.route_prefix, joiner)
