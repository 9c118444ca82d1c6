"""The feedback loop's model server: predict and feedback over HTTP (FastAPI) and gRPC, one Serve deployment.

    POST /v1/predict   {"text": "..."} | {"texts": [...]}  -> label, probabilities, event_id, model_version,
                                                           novelty (with a `novelty` loop: core/models/novelty.py)
                       {"text": "...", "text_pair": "..."} | {"pairs": [["...", "..."], ...]}  (a pair model)
    POST /v1/feedback  {"event_id", "label"?, "reward"?}    -> accepted (joined by the shared FeedbackJoiner)
    GET  /v1/healthz   readiness: 200 once a version is live, else 503
    GET  /v1/models    the registry catalog (the app owns the /v1 prefix, so it answers what the gateway would)
    gRPC evolve.v1.EvolveFeedback/{Predict,Feedback} through Serve's gRPC proxy (metadata application=feedback)

With `serving.auth` on, every route but healthz needs an API key (`Authorization: Bearer`,
or gRPC metadata) of its scope (serving/auth_guard.py); the key's id is the feedback's sender.

Texts from concurrent requests (HTTP and gRPC alike) are classified together by
`@serve.batch` (feedback.max_batch_size counted in texts, batch_wait_timeout_s; a
request of max_batch_size texts or more is a batch by itself); `batching=False`
deploys the same class classifying each request alone (the benchmark's baseline).
Inference runs on one worker thread per replica: the event loop keeps accepting
requests and filling the next batch meanwhile, and the fast tokenizer is never
used from two threads at once.

Hot swap: each replica long-polls the publisher; a new version's files come from
the registry (cached while their hashes do not change), its weights from the
object store, the bundle is built off the event loop and swapped in by one
reference assignment.  A batch reads the reference once and a request's texts
stay in one batch, so a request is answered by one version, and no request
fails during a swap.

Gate stages on live traffic: with `canary`, a sticky share of clients is answered
by the canary version; with `shadow`, a random share of requests is also
classified (greedily) by the shadow version, whose answers only the events carry
(`shadow_version`, `shadow_prediction`): the client gets live's answer.
"""

# no `from __future__ import annotations`: FastAPI must see the annotations themselves

import asyncio
import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray
from fastapi import Request
from fastapi_offline import FastAPIOffline
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig

from core.stats.exploration import ExplorationSection
from core.config.feedback import FeedbackSection
from core.storage.registry import WEIGHTS_FILE, PolicyRegistry
from core.models.classifier import from_version
from serving.stage_follower import StageFollower
from serving.stage_follower import follow as follow_stage
from serving.catalog import describe_policies
from serving.classify import Served, classify, greedy_answers
from serving.novelty import NoveltyFollower
from serving.novelty import follow as follow_novelty
from serving.auth_guard import RouteGuard, admit, docs_need_key, grpc_headers
from serving.refusals import grpc_refusal, http_refusals
from serving.join import JOINER_NAME, FeedbackRejected, get_or_create_joiner
from serving.feedback_schemas import (FeedbackRequest, FeedbackResponse, Health, Prediction, PredictBatchResponse,
                                     PredictRequest, error_responses, request_body)
from serving.requests import (FEEDBACK_LIMITS, check_inputs_fit, grpc_feedback, grpc_inputs, max_body_bytes,
                              parse_feedback, parse_predict, predict_limits, read_json)

log = logging.getLogger(__name__)
GRPC_MESSAGE_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"

APP_NAME = "feedback"
ROUTE_PREFIX = "/v1"
CLIENT_HEADER = "x-evolve-client"  # a client's stable key: a canary keeps each client on one side
# the generated ones, decoding leniently: EvolveFeedback and EvolvePolicies
GRPC_SERVICERS = ["serving.grpc_messages.add_servicer_to_server", "serving.grpc_messages.add_policy_servicer_to_server"]

# Swagger UI's assets from the fastapi-offline package, not a CDN: /v1/docs renders offline
api = FastAPIOffline(
    title="Evolve feedback",
    description="Classify texts and send feedback on the predictions; the served model keeps learning from it.",
    version="0.1.0",
)
docs_need_key(api)  # with keys on, /v1/docs and /v1/openapi.json need one too


def _set(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}  # protobuf: an unset optional, not None


def _count_texts(requests: list[tuple]) -> int:
    return sum(len(request[0]) for request in requests)  # (texts, shadow answers, sender)


# defined above the deployment class: @serve.ingress pickles the FastAPI app, and with it this
# class by value, when it decorates; a global defined later is missing in the replica
def grpc_client_key(grpc_context: Any) -> str | None:
    """The `x-evolve-client` metadata of a gRPC call: the same sticky key as the HTTP header."""
    metadata = grpc_context.invocation_metadata() if grpc_context is not None else ()
    return next((v for k, v in metadata if k.lower() == CLIENT_HEADER), None)


def _load_bundle(weights: Any, files: dict[str, bytes], device: str) -> Any:
    return from_version(weights, files).place(device)


@serve.deployment(name="feedback_server", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class FeedbackServer:
    def __init__(self, publisher: Any, joiner: Any, registry_uri: str, policy_id: str, max_text_chars: int,
                 max_batch_size: int, batch_wait_timeout_s: float, batching: bool = True,
                 novelty_policy_id: str | None = None, exploration: dict | None = None,
                 canary_fraction: float | None = None, shadow_fraction: float | None = None,
                 auth: dict | None = None):
        self.publisher, self.joiner, self.policy_id = publisher, joiner, policy_id
        self.guard = RouteGuard(auth)  # API keys (serving.auth), or only the client header when off
        self.explore = ExplorationSection.model_validate(exploration or {})
        self._rng = np.random.default_rng()
        self.registry = PolicyRegistry(registry_uri)
        self.max_text_chars, self.batching, self.max_batch_size = max_text_chars, batching, max_batch_size
        self._forwards, self._texts = 0, 0  # texts per forward: how well batching works
        self.replica = f"serve-{uuid.uuid4().hex[:8]}"
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"  # a GPU when serving.replica_num_gpus asks for one
        self.served: Served | None = None
        self._files_key: tuple | None = None
        self._files: dict[str, bytes] = {}
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._classify_batch.set_max_batch_size(max_batch_size)
        self._classify_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._task = asyncio.get_event_loop().create_task(self._follow())
        self.novelty = NoveltyFollower(registry_uri, novelty_policy_id) if novelty_policy_id else None
        if self.novelty is not None:
            self._novelty_task = asyncio.get_event_loop().create_task(follow_novelty(self.novelty))
        self.canary = StageFollower(registry_uri, policy_id, canary_fraction, self._served) if canary_fraction else None
        if self.canary is not None:
            self._canary_task = asyncio.get_event_loop().create_task(follow_stage(self.canary))
        # the gate's `shadow` stage: its version also answers a random share of requests, unseen by clients
        self.shadow = (StageFollower(registry_uri, policy_id, shadow_fraction, self._served, stage="shadow",
                                     sticky=False)
                       if shadow_fraction else None)
        if self.shadow is not None:
            self._shadow_task = asyncio.get_event_loop().create_task(follow_stage(self.shadow))

    def _served(self, weights: Any, files: dict[str, bytes], version: int) -> Served:
        """A stored version as this replica answers with it (a gate stage's: beside live, on its device)."""
        return Served(_load_bundle(weights, files, self.device), version)

    # ---- following the publisher (hot swap) ------------------------------------------
    async def _follow(self) -> None:
        version = 0
        while True:
            try:
                reply = await self.publisher.next_version.remote(self.policy_id, version, self.replica)
                if reply is None:
                    continue
                new_version, (ref,), _spec = reply
                weights = await ref
                files = await asyncio.to_thread(self._version_files, new_version)
                bundle = await asyncio.to_thread(_load_bundle, weights, files, self.device)  # seconds: off the loop
                self.served = Served(bundle, new_version)  # the swap: one reference assignment
                version = new_version
                self.publisher.ack.remote(self.policy_id, version, self.replica)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving the version we have; retry the subscription
                log.warning("feedback server: following %s failed (%s); retrying", self.policy_id, exc)
                await asyncio.sleep(1.0)

    def _version_files(self, version: int) -> dict[str, bytes]:
        """The version's tokenizer/config/labels; read only when their hashes changed."""
        meta = self.registry.get(self.policy_id, version)
        key = tuple(sorted((name, e.sha256) for name, e in meta.files.items() if name != WEIGHTS_FILE))
        if key != self._files_key:
            self._files = self.registry.load(self.policy_id, version).files
            self._files_key = key
        return self._files

    # ---- shared request logic ----------------------------------------------------------
    async def _predict(self, texts: list[str], client_key: str | None = None, sender: str | None = None) -> list[dict]:
        if self.served is None:
            raise FeedbackRejected(503, f"no live version of {self.policy_id!r} yet; retry shortly")
        check_inputs_fit(texts, self.served.bundle.pairs)  # before a batch: a misfit fails this request alone
        canary = self.canary.routes(client_key) if self.canary is not None else None
        shadow = await self._shadow_answers(texts)
        if canary is not None:  # a small share of traffic: answered alone, by the canary version
            preds, recorded = await self._classify(texts, canary, shadow, [sender] * len(texts))
        elif self.batching and len(texts) < self.max_batch_size:
            preds, recorded = await self._classify_batch((texts, shadow, sender))
        else:  # batching off, or the request is a full batch already
            preds, recorded = await self._classify(texts, None, shadow, [sender] * len(texts))
        # the client gets its event ids only once any replica's feedback can find them
        await asyncio.shield(recorded)
        return preds

    async def _shadow_answers(self, texts: list[str]) -> list[tuple[int, int]] | None:
        """The shadow's greedy (version, answer) per text for a drawn share of requests, else None.
        Scored before live's forward so the events carry both when the joiner records them."""
        shadow = self.shadow.routes(None) if self.shadow is not None else None
        if shadow is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(self._infer_pool, greedy_answers, shadow, texts)

    # one item = one request's texts (all answered by one forward, hence one version), its
    # shadow answers or None and its sender; the batch is counted in texts; the config's size and
    # wait are set in __init__
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=_count_texts)
    async def _classify_batch(self, requests: list[tuple[list[str], list | None, str | None]]
                              ) -> list[tuple[list[dict], asyncio.Future]]:
        shadow = [a for texts, answers, _ in requests for a in (answers or [None] * len(texts))]
        preds, recorded = await self._classify([text for texts, _, _ in requests for text in texts], None,
                                               shadow if any(a is not None for a in shadow) else None,
                                               [who for texts, _, who in requests for _ in texts])
        out, start = [], 0
        for texts, _, _ in requests:
            out.append((preds[start:start + len(texts)], recorded))
            start += len(texts)
        return out

    async def _classify(self, texts: list[str], served: Served | None = None, shadow: list | None = None,
                        senders: list[str | None] | None = None) -> tuple[list[dict], asyncio.Future]:
        served = served or self.served  # read once: the whole batch is answered by one version
        loop = asyncio.get_running_loop()
        preds, events = await loop.run_in_executor(self._infer_pool, classify, served, texts, self.policy_id,
                                                   self.replica, self.novelty, self.explore, self._rng, shadow)
        for event, sender in zip(events, senders or ()):  # the joiner caps each sender's open events
            event["client"] = sender
        self._forwards, self._texts = self._forwards + 1, self._texts + len(texts)
        # recorded in the background: the next batch need not wait for the joiner's answer
        return preds, asyncio.ensure_future(self._record(events))

    async def _record(self, events: list[dict]) -> None:
        try:
            await asyncio.wait_for(self.joiner.record.remote(events), timeout=10)
        except Exception as exc:  # the predictions still stand; their feedback will get 404
            log.warning("feedback server: recording %d events failed (%s)", len(events), exc)

    async def _feedback(self, event_id: str, label: Any, reward: Any, client: str | None = None) -> dict:
        reply = await self.joiner.feedback.remote(event_id, label, reward, client)
        if reply["status"] != 200:
            raise FeedbackRejected(reply["status"], reply["detail"], reply.get("retry_after_s"))
        return reply["body"]

    # ---- HTTP ------------------------------------------------------------------------
    @api.post("/predict", response_model=Prediction | PredictBatchResponse, openapi_extra=request_body(PredictRequest),
              responses=error_responses(400, 401, 403, 413, 422, 429, 503))
    async def predict(self, request: Request) -> Prediction | PredictBatchResponse:
        with http_refusals():
            sender = admit(self.guard, request.headers, "predict")
            body = await read_json(request, predict_limits(self.max_text_chars))
            texts, single = parse_predict(body, self.max_text_chars)
            preds = await self._predict(texts, request.headers.get(CLIENT_HEADER), sender)
        return Prediction(**preds[0]) if single else PredictBatchResponse(predictions=preds)

    @api.post("/feedback", response_model=FeedbackResponse, openapi_extra=request_body(FeedbackRequest),
              responses=error_responses(400, 401, 403, 404, 409, 410, 413, 422, 429, 500, 503))
    async def feedback(self, request: Request) -> FeedbackResponse:
        with http_refusals():
            client = admit(self.guard, request.headers, "feedback")
            body = await read_json(request, FEEDBACK_LIMITS)
            answer = await self._feedback(*parse_feedback(body), client)
        return FeedbackResponse(**answer)

    @api.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz(self):
        served = self.served
        body = Health(status="ok" if served else "waiting_for_model", policy_id=self.policy_id,
                      model_version=served.version if served else None, batching=self.batching,
                      texts_per_forward=round(self._texts / self._forwards, 2) if self._forwards else None)
        if served is None:  # readiness: a load balancer keeps traffic away until a version is live
            return JSONResponse(body.model_dump(), status_code=503)
        return body

    @api.get("/models", responses=error_responses(401, 403, 429))
    async def models(self, request: Request) -> dict:
        if self.guard.enabled:  # lineage and metrics: operators only
            with http_refusals():
                admit(self.guard, request.headers, "admin")
        return await asyncio.to_thread(describe_policies, self.registry)

    # ---- gRPC (Serve's proxy calls the method named like the rpc) --------------------------
    async def Predict(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 (the rpc's name)
        from serving.proto import evolve_pb2

        try:
            sender = admit(self.guard, grpc_headers(grpc_context), "predict")
            preds = await self._predict(grpc_inputs(request, self.max_text_chars), grpc_client_key(grpc_context),
                                        sender)
        except FeedbackRejected as exc:
            grpc_refusal(grpc_context, exc)
            return evolve_pb2.PredictResponse()
        return evolve_pb2.PredictResponse(predictions=[evolve_pb2.Prediction(**_set(p)) for p in preds])

    async def Feedback(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        from serving.proto import evolve_pb2

        try:
            client = admit(self.guard, grpc_headers(grpc_context), "feedback")
            answer = await self._feedback(*grpc_feedback(request), client)
        except FeedbackRejected as exc:
            grpc_refusal(grpc_context, exc)
            return evolve_pb2.FeedbackResponse()
        correct = answer.pop("correct")
        return evolve_pb2.FeedbackResponse(**answer, **({} if correct is None else {"correct": correct}))


# ---- deploying ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackApp:
    app_name: str
    route_prefix: str
    joiner: Any  # FeedbackJoiner handle: stats(), flush()


def bound_grpc_messages(max_text_chars: int, at_least: int = 0) -> int:
    """Cap the gRPC proxy's messages at the largest predict a client may send (Serve's own cap is
    2 GiB, with no option for it but an environment variable its proxy reads when it starts): call
    before Ray starts, so the proxy of an embedded cluster inherits it. Returns the cap."""
    cap = max(max_body_bytes(max_text_chars), at_least)  # at_least: an RL policy's largest act
    os.environ[GRPC_MESSAGE_ENV] = str(cap)
    return cap


def grpc_options(port: int) -> dict[str, Any]:
    """`serve.start(grpc_options=...)` that serves EvolveFeedback and EvolvePolicies (stubs generated if missing).

    Serve's gRPC proxy binds [::]:port (Ray 2.60 has no host option), unlike HTTP.
    """
    from serving.proto.build import ensure_stubs

    ensure_stubs()
    return {"port": port, "grpc_servicer_functions": list(GRPC_SERVICERS)}


def deploy_feedback_app(publisher: Any, registry_uri: str, cfg: FeedbackSection, writer: Any | None, *,
                        batching: bool = True, num_cpus: float = 0.1, num_gpus: float = 0.0,
                        max_ongoing_requests: int | None = None,
                        app_name: str = APP_NAME, route_prefix: str = ROUTE_PREFIX,
                        joiner_name: str = JOINER_NAME, gate_name: str | None = None,
                        slices: Callable[[str, bool], str | None] | None = None,
                        novelty_policy_id: str | None = None,
                        exploration: ExplorationSection | None = None, auth: dict | None = None) -> FeedbackApp:
    """Start the shared joiner (writes to `writer`, a replay client; None = rows dropped; it hands
    the gate actor `gate_name`, when given, the evidence of every kept feedback, and keeps out of
    training what the gate's `slices` rule holds out) and the app.

    Serve must already run (deploy_gateway's serve.start, with `grpc_options(...)` for gRPC).
    """
    joiner = get_or_create_joiner(writer, cfg.serving.feedback_ttl_s, cfg.table("feedback"), cfg.table("text"),
                                  name=joiner_name, gate_name=gate_name, policy_id=cfg.policy_id, slices=slices)
    # a replica must admit a whole batch of requests at once, or Serve's default (5) caps the batch
    srv = cfg.serving
    ongoing = max_ongoing_requests or max(64, 2 * srv.max_batch_size)
    app = FeedbackServer.options(
        num_replicas=srv.num_replicas, max_ongoing_requests=ongoing, ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_queued_requests=srv.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    ).bind(publisher, joiner, registry_uri, cfg.policy_id, srv.max_text_chars, srv.max_batch_size,
           srv.batch_wait_timeout_s, batching, novelty_policy_id,
           (exploration or ExplorationSection()).model_dump(),
           cfg.gate.canary.fraction if "canary" in cfg.gate.stages else None,
           cfg.gate.shadow.fraction if "shadow" in cfg.gate.stages else None, auth)
    serve.run(app, name=app_name, route_prefix=route_prefix, logging_config={"log_level": "WARNING"})
    return FeedbackApp(app_name, route_prefix, joiner)


def undeploy_feedback_app(app_name: str = APP_NAME) -> None:
    serve.delete(app_name)


def stop_joiner(joiner_name: str = JOINER_NAME, flush_timeout_s: float = 10.0) -> None:
    """Write the joined rows still queued to the replay store, then end the joiner (if it runs)."""
    import ray

    try:
        joiner = ray.get_actor(joiner_name)
    except ValueError:  # never started
        return
    try:
        ray.get(joiner.flush.remote(flush_timeout_s), timeout=flush_timeout_s + 5)
    finally:
        ray.kill(joiner, no_restart=True)


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document as served under ROUTE_PREFIX (docs/openapi.json is a copy)."""
    spec = json.loads(json.dumps(api.openapi()))
    spec["servers"] = [{"url": ROUTE_PREFIX}]
    return spec


if __name__ == "__main__":  # python -m serving.feedback_app > docs/openapi.json
    print(json.dumps(openapi_spec(), indent=2, sort_keys=True))
