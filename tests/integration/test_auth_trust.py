"""API keys, feedback trust and overload on a live feedback app (real Serve, gate actor and joiner).

Keys come from a real key store file (`evolve keys create`'s format), followed by the replica
through the run's key book (cluster/key_service.py), as in a run. Serve listens on loopback
with its gRPC proxy on, and nothing else turns keys on: gRPC alone must (the proxy binds
every interface). Without a key the app answers 401 (gRPC: UNAUTHENTICATED), with a key of
the wrong scope 403, over the key's rate 429 with `Retry-After`; the docs routes need a key;
a key revoked with `evolve keys revoke` is refused within seconds. Then the rollback guard:
v2 is live, and v1 behind it answers every request the other way (its head reversed), so on
feedback that says v2 was wrong v1 was right; 300 such labels from ONE key must not roll v2
back (one client, however busy, is not trusted), while 300 from three keys still do.
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
import ray
from ray import serve
from transformers import BertConfig

from core.auth.keys import AuthSection, KeyStore
from core.config.feedback import FeedbackSection
from core.storage.registry import PolicyRegistry
from core.models.classifier import from_encoder
from core.data.corpus import review_texts
from core.models.tokenizer import tokenizer_files, train_wordpiece
from cluster.key_service import start_key_service
from serving.auth_guard import guard_settings
from serving.policy_server import deploy_policy_server, undeploy_policy_server
from serving.feedback_app import deploy_feedback_app, grpc_options, stop_joiner, undeploy_feedback_app
from cluster.gate_actor import GateActor, gate_name
from serving.publisher import PolicyPublisher
from tests.conftest import free_port
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

POLICY = "sentiment"
LABELS = ["neg", "pos"]
RATE, BURST = 40.0, 60


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    ray.init(num_cpus=2, include_dashboard=False, namespace="auth-test", log_to_driver=False)
    try:
        port, grpc_port = free_port(), free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, grpc_options=grpc_options(grpc_port),
                    logging_config={"log_level": "WARNING"})
        registry = str(tmp / "registry")
        publisher = PolicyPublisher.options(name="auth-test-publisher").remote(registry)
        texts = review_texts()[::50][:600]
        tok = train_wordpiece(texts, vocab_size=800, min_frequency=1)
        config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
        files = {**tokenizer_files(tok), "config.json": json.dumps(config.to_dict(), default=str).encode()}
        model = from_encoder(None, files, LABELS, seed=0)
        cfg = FeedbackSection(policy_id=POLICY, serving={"feedback_ttl_s": 120, "max_batch_size": 8,
                                                         "batch_wait_timeout_s": 0.005})
        cfg.data.max_heldout = 50
        cfg.gate.stages = []  # v2 goes live over v1 whatever the held-out set says of either
        gate = GateActor.options(name=gate_name(POLICY)).remote(
            registry, "text_classifier", {"data": cfg.data.model_dump(mode="json")}, cfg.gate.model_dump(mode="json"),
            "auth-test-publisher")
        weights = {k: v.numpy() for k, v in model.weights().items()}
        reversed_head = {**weights, "head.weight": weights["head.weight"][::-1].copy(),
                         "head.bias": weights["head.bias"][::-1].copy()}
        assert ray.get(gate.bootstrap.remote(POLICY, reversed_head, model.files()), timeout=120)["version"] == 1
        assert ray.get(gate.submit.remote(POLICY, weights, model.files(), {}), timeout=120)["decision"] == "promote"
        store = KeyStore(tmp / "keys.json")
        keys = {name: store.create(scopes, name=name)[1] for name, scopes in [
            ("mallory", ["predict", "feedback"]), ("reader", ["predict"]),
            *[(f"user{i}", ["predict", "feedback"]) for i in range(3)]]}
        # enabled left unset, the host loopback: only gRPC turns keys on
        section = AuthSection(keys_file=tmp / "keys.json", keys_env="EVOLVE_AUTH_TEST_UNSET",
                              rate_per_s=RATE, burst=BURST)
        settings, book = start_key_service(guard_settings(section, "127.0.0.1", grpc=True), section, "auth-test")
        deploy_feedback_app(publisher, registry, cfg, None, gate_name=gate_name(POLICY), auth=settings)
        http = f"http://127.0.0.1:{port}/v1"
        bearer = {"Authorization": f"Bearer {keys['reader']}"}
        wait_until(lambda: httpx.post(f"{http}/predict", json={"text": "很好"}, headers=bearer,
                                      timeout=30).json().get("model_version") == 2, 90, "version 2 served")
        yield {"http": http, "gate": gate, "keys": keys, "texts": texts, "registry": PolicyRegistry(registry),
               "registry_uri": registry, "publisher": publisher, "grpc": f"127.0.0.1:{grpc_port}",
               "keys_file": tmp / "keys.json", "book": book, "settings": settings, "port": port}
        undeploy_feedback_app()
        stop_joiner()
        serve.shutdown()
    finally:
        ray.shutdown()


def _post(client: httpx.Client, url: str, key: str, body: dict) -> httpx.Response:
    """A polite client: on 429 it waits as long as Retry-After says, then sends again."""
    while True:
        r = client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
        if r.status_code != 429:
            return r
        threading.Event().wait(float(r.headers["Retry-After"]))


def _wrong_labels(world, key: str, n: int, offset: int) -> int:
    """Predict, then send the label live did NOT give; returns the feedbacks accepted."""
    accepted = 0
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            r = _post(client, f"{world['http']}/predict", key, {"text": world["texts"][(offset + i) % 600]})
            assert r.status_code == 200, r.text
            wrong = LABELS[1 - LABELS.index(r.json()["label"])]
            f = _post(client, f"{world['http']}/feedback", key, {"event_id": r.json()["event_id"], "label": wrong})
            accepted += f.status_code == 200
    return accepted


def test_no_key_is_401_a_wrong_scope_403_over_the_rate_429(world):
    http, keys = world["http"], world["keys"]
    none = httpx.post(f"{http}/feedback", json={"event_id": "x", "label": "pos"}, timeout=30)
    assert none.status_code == 401 and "API key" in none.json()["detail"]
    bad = httpx.post(f"{http}/predict", json={"text": "好"}, headers={"Authorization": "Bearer evk_0_x"}, timeout=30)
    assert bad.status_code == 401
    reader = {"Authorization": f"Bearer {keys['reader']}"}
    scope = httpx.post(f"{http}/feedback", json={"event_id": "x", "label": "pos"}, headers=reader, timeout=30)
    assert scope.status_code == 403 and "feedback" in scope.json()["detail"]
    assert httpx.get(f"{http}/models", headers=reader, timeout=30).status_code == 403  # lineage: admin only
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:  # faster than RATE per second
        replies = list(pool.map(lambda _: client.post(f"{http}/predict", json={"text": "很好"}, headers=reader),
                                range(3 * BURST)))
    over = [r for r in replies if r.status_code == 429]
    assert over and {r.status_code for r in replies} == {200, 429}
    assert all(int(r.headers["Retry-After"]) >= 1 and "requests/s" in r.json()["detail"] for r in over)


def test_grpc_on_loopback_without_a_key_is_unauthenticated(world):
    """Serve's gRPC proxy binds [::] whatever serving.host: gRPC alone turns keys on."""
    from serving.proto import evolve_pb2, evolve_pb2_grpc

    meta = (("application", "feedback"),)
    with grpc.insecure_channel(world["grpc"]) as channel:
        stub = evolve_pb2_grpc.EvolveFeedbackStub(channel)
        keyed = (*meta, ("authorization", f"Bearer {world['keys']['reader']}"))
        reply = wait_until(lambda: stub.Predict(evolve_pb2.PredictRequest(texts=["很好"]), metadata=keyed, timeout=30),
                           60, "the gRPC proxy answering a keyed Predict")
        assert reply.predictions[0].model_version >= 1
        refused = {}
        for name, call, request in [("Predict", stub.Predict, evolve_pb2.PredictRequest(texts=["很好"])),
                                    ("Feedback", stub.Feedback,
                                     evolve_pb2.FeedbackRequest(event_id=reply.predictions[0].event_id, label="pos"))]:
            with pytest.raises(grpc.RpcError) as info:
                call(request, metadata=meta, timeout=30)
            refused[name] = info.value.code()
            assert "API key" in info.value.details()
        print(f"\n[auth] gRPC without a key on a loopback host: {refused}")
        assert refused == {"Predict": grpc.StatusCode.UNAUTHENTICATED, "Feedback": grpc.StatusCode.UNAUTHENTICATED}
        with pytest.raises(grpc.RpcError) as info:  # a predict-only key may not send feedback
            stub.Feedback(evolve_pb2.FeedbackRequest(event_id=reply.predictions[0].event_id, label="pos"),
                          metadata=keyed, timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_docs_routes_need_a_key(world):
    http, reader = world["http"], {"Authorization": f"Bearer {world['keys']['reader']}"}
    # the /act app's docs too: a policy server beside the feedback app, with the same keys
    policies = f"http://127.0.0.1:{world['port']}{deploy_policy_server(world['publisher'], ['cart'], auth=world['settings'])}"
    try:
        for base in (http, policies):
            for path in ("/docs", "/openapi.json"):
                wait_until(lambda: httpx.get(f"{base}{path}", timeout=30).status_code != 404, 60, f"{base}{path}")
                assert httpx.get(f"{base}{path}", timeout=30).status_code == 401, (base, path)
                assert httpx.get(f"{base}{path}", headers=reader, timeout=30).status_code == 200, (base, path)
    finally:
        undeploy_policy_server()
    assert httpx.get(f"{http}/healthz", timeout=30).status_code == 200  # readiness stays open


def test_a_key_revoked_with_evolve_keys_is_refused_within_seconds(world):
    from cluster.cli import main
    from core.auth.keys import key_id

    store = KeyStore(world["keys_file"])
    _, key = store.create(["predict"], name="leaver")
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{world['http']}/predict"
    wait_until(lambda: httpx.post(url, json={"text": "好"}, headers=headers, timeout=30).status_code == 200, 30,
               "the new key taken (the replica follows the book)")
    assert main(["keys", "revoke", key_id(key), "--file", str(world["keys_file"]),
                 "--env", "EVOLVE_AUTH_TEST_UNSET"]) == 0
    revoked_at = time.monotonic()
    wait_until(lambda: httpx.post(url, json={"text": "好"}, headers=headers, timeout=30).status_code == 401, 10,
               "the revoked key refused", every_s=0.1)
    print(f"\n[auth] revoked key refused {time.monotonic() - revoked_at:.2f}s after `evolve keys revoke`")


def test_one_key_cannot_roll_back_three_keys_can(world):
    gate, registry = world["gate"], world["registry"]
    assert _wrong_labels(world, world["keys"]["mallory"], 300, 0) == 300
    summary = ray.get(gate.summary.remote(POLICY), timeout=60)
    assert registry.latest(POLICY, "live").version == 2 and summary["rollbacks"] == []
    threads = [threading.Thread(target=_wrong_labels, args=(world, world["keys"][f"user{i}"], 100, 100 * i))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wait_until(lambda: registry.latest(POLICY, "live").version == 1, 60, "the rollback to v1")
    rollbacks = ray.get(gate.summary.remote(POLICY), timeout=60)["rollbacks"]
    assert [r["to"] for r in rollbacks] == [1]


def test_overload_answers_503_with_retry_after(world):
    """A second app beside the first, one request in flight and one queued: the rest are turned away."""
    cfg = FeedbackSection(policy_id=POLICY, serving={"feedback_ttl_s": 60, "max_queued_requests": 1})
    deploy_feedback_app(world["publisher"], world["registry_uri"], cfg, None, batching=False, max_ongoing_requests=1,
                        app_name="overload", route_prefix="/overload", joiner_name="overload-joiner")
    url = world["http"].replace("/v1", "/overload") + "/predict"
    try:
        wait_until(lambda: httpx.post(url, json={"text": "很好"}, timeout=30).status_code == 200, 90, "the app up")
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(32) as pool:
            replies = list(pool.map(lambda i: client.post(url, json={"text": world["texts"][i]}), range(96)))
        codes = [r.status_code for r in replies]
        busy = [r for r in replies if r.status_code == 503]
        assert set(codes) == {200, 503} and all(r.headers.get("retry-after") == "1" for r in busy), codes
    finally:
        undeploy_feedback_app("overload")
        stop_joiner("overload-joiner")
