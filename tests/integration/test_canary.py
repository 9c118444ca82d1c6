"""Gate stages on live traffic on a real Ray cluster: a canary (sticky per client) and a shadow (unseen by clients).

One cluster for the module: the real PolicyPublisher, GateActor (`gate.stages: [canary]`),
joiner and feedback app; a second policy with its own gate (`gate.stages: [shadow]`),
joiner and app beside them.  The users in this test agree with the live version (each
feedback's label is what live answers), so live's reward is 1 and the poisoned candidate
(live's head flipped) earns 0: the sequential test must abort it quickly, and the shadow
stage must refuse it once its answers are joined with enough feedback.
"""

import json
import threading
import time

import httpx
import numpy as np
import pytest
import ray
from ray import serve
from transformers import BertConfig

from core.config.feedback import FeedbackSection
from core.data.hashing import stable_unit_hash
from core.models.classifier import from_encoder, from_version
from core.data.corpus import review_texts
from core.models.tokenizer import tokenizer_files, train_wordpiece
from serving.feedback_app import CLIENT_HEADER, deploy_feedback_app, stop_joiner, undeploy_feedback_app
from cluster.gate_actor import GateActor, gate_name
from serving.publisher import PolicyPublisher
from tests.conftest import free_port
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

POLICY = "sentiment"
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def canary_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("canary")
    ray.init(num_cpus=2, include_dashboard=False, namespace="canary-test", log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        registry = str(tmp / "registry")
        publisher = PolicyPublisher.options(name="canary-test-publisher").remote(registry)
        texts = review_texts()[::50][:600]
        tok = train_wordpiece(texts, vocab_size=800, min_frequency=1)
        config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
        files = {**tokenizer_files(tok), "config.json": json.dumps(config.to_dict(), default=str).encode()}
        live = from_encoder(None, files, LABELS, seed=0)
        cfg = FeedbackSection(policy_id=POLICY, serving={"feedback_ttl_s": 60, "max_batch_size": 8,
                                                         "batch_wait_timeout_s": 0.005})
        cfg.gate.stages = ["canary"]
        cfg.gate.canary.fraction, cfg.gate.canary.min_requests = 0.3, 20
        cfg.data.max_heldout = 50
        gate = GateActor.options(name=gate_name(POLICY)).remote(
            registry, "text_classifier", {"data": cfg.data.model_dump(mode="json")}, cfg.gate.model_dump(mode="json"),
            "canary-test-publisher")
        weights = {k: v.numpy() for k, v in live.weights().items()}
        assert ray.get(gate.bootstrap.remote(POLICY, weights, live.files()), timeout=120)["version"] == 1
        app = deploy_feedback_app(publisher, registry, cfg, None, gate_name=gate_name(POLICY))
        http = f"http://127.0.0.1:{port}/v1"
        wait_until(lambda: httpx.post(f"{http}/predict", json={"text": "很好"}, timeout=30).status_code == 200, 90,
                   "version 1 served")
        poisoned = {k: v.copy() for k, v in weights.items()}
        poisoned["head.weight"], poisoned["head.bias"] = weights["head.weight"][::-1].copy(), weights["head.bias"][::-1].copy()
        agreed = [LABELS[k] for k in from_version(weights, live.files()).predict_proba(texts).argmax(1)]
        yield {"http": http, "gate": gate, "agreed": agreed, "fraction": cfg.gate.canary.fraction, "poisoned": poisoned, "weights": weights,
               "files": live.files(), "texts": texts, "app": app, "port": port, "registry": registry,
               "publisher": publisher}
        undeploy_feedback_app()
        stop_joiner()
        serve.shutdown()
    finally:
        ray.shutdown()


SHADOW_POLICY, SHADOW_APP, SHADOW_JOINER = "sentiment-shadow", "feedback-shadow", "shadow-test-joiner"


@pytest.fixture(scope="module")
def shadow_world(canary_world):
    """A second policy served beside the first, its gate with the `shadow` stage only."""
    w = canary_world
    cfg = FeedbackSection(policy_id=SHADOW_POLICY, serving={"feedback_ttl_s": 60, "max_batch_size": 8,
                                                            "batch_wait_timeout_s": 0.005})
    cfg.gate.stages = ["shadow"]
    cfg.gate.shadow.fraction, cfg.gate.shadow.min_rows = 0.5, 40
    cfg.data.max_heldout = 50
    gate = GateActor.options(name=gate_name(SHADOW_POLICY)).remote(
        w["registry"], "text_classifier", {"data": cfg.data.model_dump(mode="json")}, cfg.gate.model_dump(mode="json"),
        "canary-test-publisher")
    assert ray.get(gate.bootstrap.remote(SHADOW_POLICY, w["weights"], w["files"]), timeout=120)["version"] == 1
    deploy_feedback_app(w["publisher"], w["registry"], cfg, None, gate_name=gate_name(SHADOW_POLICY),
                        app_name=SHADOW_APP, route_prefix="/shadow", joiner_name=SHADOW_JOINER)
    http = f"http://127.0.0.1:{w['port']}/shadow"
    wait_until(lambda: httpx.post(f"{http}/predict", json={"text": "很好"}, timeout=30).status_code == 200, 90,
               "the shadow policy's version 1 served")
    yield {**w, "http": http, "gate": gate}
    undeploy_feedback_app(SHADOW_APP)
    stop_joiner(SHADOW_JOINER)


class Users:
    """Threads of users with stable keys: predict, then feedback with the label live would give."""

    def __init__(self, world, threads: int = 4, keys: int = 40):
        self.world, self.keys = world, [f"user-{k}" for k in range(keys)]
        self.seen: list[tuple[float, str, int]] = []  # (time answered, client key, answering version)
        self.sent: dict[int, float] = {}  # index in `seen` -> when that request was sent
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        rng = np.random.default_rng(i)
        texts, agreed, http = self.world["texts"], self.world["agreed"], self.world["http"]
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                key, i = self.keys[rng.integers(len(self.keys))], int(rng.integers(len(texts)))
                sent = time.time()
                try:
                    r = client.post(f"{http}/predict", json={"text": texts[i]}, headers={CLIENT_HEADER: key})
                except Exception as exc:  # a client error is a failed request too
                    with self.lock:
                        self.failed.append(f"predict {exc!r}")
                    continue
                if r.status_code != 200:
                    with self.lock:
                        self.failed.append(f"predict {r.status_code} {r.text[:200]}")
                    continue
                answer = r.json()
                with self.lock:
                    self.sent[len(self.seen)] = sent
                    self.seen.append((time.time(), key, answer["model_version"]))
                f = client.post(f"{http}/feedback", json={"event_id": answer["event_id"], "label": agreed[i]})
                if f.status_code != 200:
                    with self.lock:
                        self.failed.append(f"feedback {f.status_code} {f.text[:200]}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _no_failures(users: Users) -> bool:
    assert users.failed == [], users.failed[:3]
    return True


def test_a_poisoned_canary_is_aborted_and_traffic_returns_to_live(canary_world):
    w, gate = canary_world, canary_world["gate"]
    # Which side a client is on is a stable hash of its key and the canary version: the test
    # names each key's side itself, so no assertion depends on how long the canary lasted.
    keys = Users(w).keys
    side = {k: 2 if stable_unit_hash(f"{k}#canary-v2") < w["fraction"] else 1 for k in keys}
    assert {1, 2} <= set(side.values()), side  # both sides hold clients
    with Users(w) as users:
        wait_until(lambda: _no_failures(users) and len(users.seen) >= 40, 180, "traffic on version 1")
        started = ray.get(gate.submit.remote(POLICY, w["poisoned"], w["files"], {}), timeout=120)
        assert started["decision"] == "canary" and started["version"] == 2
        wait_until(lambda: any(v == 2 for _, _, v in users.seen), 60, "the canary answering some clients")
        first_canary = min(t for t, _, v in users.seen if v == 2)
        wait_until(lambda: ray.get(gate.stage.remote(POLICY, "canary")) is None, 120, "the canary decided")
        mark = len(users.seen)
        # the replica re-reads the registry's stage every second: it has dropped the canary once a
        # canary-side client is answered by live again
        wait_until(lambda: any(side[k] == 2 and v == 1 for _, k, v in users.seen[mark:]), 60, "live again")
        back_at = next(t for t, k, v in users.seen[mark:] if side[k] == 2 and v == 1)
        back = len(users.seen)
        wait_until(lambda: len(users.seen) >= back + 60, 60, "traffic after the canary")
    events = ray.get(gate.drain_events.remote())
    ended = [e for e in events if e["event"] == "canary_ended"]
    assert len(ended) == 1 and ended[0]["decision"] == "refuse", ended
    assert ended[0]["diff_cs"][1] < 0 and ended[0]["candidate_requests"] <= 300
    assert users.failed == [], users.failed[:5]
    answered_by_canary = {key for _, key, v in users.seen if v == 2}
    assert answered_by_canary and all(side[k] == 2 for k in answered_by_canary), answered_by_canary
    # The one replica held the canary from its first answer to its last (it loads a stage's version
    # once), so every request sent and answered in between went to its key's side: sticky, with
    # no settling time to assume.
    until = max(t for t, _, v in users.seen if v == 2)
    during = [(key, v) for i, (t, key, v) in enumerate(users.seen) if users.sent[i] >= first_canary and t <= until]
    assert all(v == side[key] for key, v in during), [(k, v) for k, v in during if v != side[k]][:5]
    after = {v for i, (_, _, v) in enumerate(users.seen) if users.sent[i] >= back_at}
    assert after == {1}, after  # 100 % back on live
    summary = ray.get(gate.summary.remote(POLICY))
    assert summary["live_version"] == 1
    print(f"canary aborted after {ended[0]['candidate_requests']} candidate requests "
          f"({ended[0]['duration_s']} s); {len(users.seen)} requests, 0 failed")


def test_a_poisoned_shadow_never_answers_a_client_and_is_refused_on_its_joined_answers(shadow_world):
    w, gate = shadow_world, shadow_world["gate"]
    with Users(w) as users:
        wait_until(lambda: _no_failures(users) and len(users.seen) >= 20, 120, "traffic on version 1")
        started = ray.get(gate.submit.remote(SHADOW_POLICY, w["poisoned"], w["files"], {}), timeout=120)
        assert started["decision"] == "shadow" and started["version"] == 2
        assert ray.get(gate.stage.remote(SHADOW_POLICY, "shadow"))["version"] == 2
        wait_until(lambda: ray.get(gate.stage.remote(SHADOW_POLICY, "shadow")) is None, 120, "the shadow decided")
        models = httpx.get(f"{w['http']}/models", timeout=30).json()
    events = ray.get(gate.drain_events.remote())
    ended = [e for e in events if e["event"] == "shadow_ended"]
    assert len(ended) == 1 and ended[0]["decision"] == "refuse", ended
    assert ended[0]["exposure"] >= 40 and ended[0]["diff_ci"][1] < 0, ended  # its own answers, joined
    assert users.failed == [], users.failed[:5]
    assert {v for _, _, v in users.seen} == {1}  # every client got live's answer, all along
    (policy,) = [p for p in models["policies"] if p["policy_id"] == SHADOW_POLICY]
    assert policy["in_flight"] == [] and policy["live_version"] == 1
    assert [s["stage"] for s in policy["versions"][-1]["gate"]["stages"]] == ["shadow"]
    print(f"shadow refused after {ended[0]['exposure']} joined answers ({ended[0]['duration_s']} s); "
          f"{len(users.seen)} requests, all answered by v1")
