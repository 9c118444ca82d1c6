"""Traffic workers against an in-process fake of the predict / feedback endpoints (httpx.MockTransport):
feedback policy, label noise and poison, retries, batching, pacing, and the held-out split never sent."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest

from actors.traffic import TrafficWorker
from core.config.data import TrafficSection
from core.data.labeled import LabeledData

LABELS = ["neg", "pos"]


class FakeServe:
    """Answers "pos" to everything (so a served answer is right exactly when the truth is 1)."""

    def __init__(self, fail_predicts: int = 0, fail_feedbacks: int = 0, drop_feedbacks: int = 0,
                 gone: set[str] | None = None, crash_predicts: int = 0, garbage_predicts: int = 0,
                 html_predicts: int = 0):
        self.lock = threading.Lock()
        self.fail_predicts, self.fail_feedbacks, self.drop_feedbacks = fail_predicts, fail_feedbacks, drop_feedbacks
        self.crash_predicts, self.garbage_predicts, self.html_predicts = crash_predicts, garbage_predicts, html_predicts
        self.gone = gone or set()  # texts whose feedback is answered 410 (expired)
        self.events: dict[str, dict] = {}
        self.feedback: list[dict] = []
        self.bodies: list[dict] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        now = time.monotonic()
        with self.lock:
            if request.url.path == "/v1/predict":
                self.bodies.append(body)
                if self.crash_predicts:
                    self.crash_predicts -= 1
                    raise RuntimeError("handler bug")
                if self.html_predicts:
                    self.html_predicts -= 1
                    return httpx.Response(200, content=b"<html>proxy error</html>")
                if self.fail_predicts:
                    self.fail_predicts -= 1
                    return httpx.Response(503, json={"detail": "replicas swapping"})
                if self.garbage_predicts:
                    self.garbage_predicts -= 1
                    return httpx.Response(200, json={"detail": "not what a client expects"})
                texts = body["texts"] if "texts" in body else [body["text"]]
                out = []
                for text in texts:
                    eid = uuid.uuid4().hex
                    self.events[eid] = {"text": text, "at": now}
                    out.append({"event_id": eid, "label": "pos", "probabilities": [0.3, 0.7], "model_version": 3})
                return httpx.Response(200, json={"predictions": out} if "texts" in body else out[0])
            if request.url.path == "/v1/feedback":
                if self.drop_feedbacks:
                    self.drop_feedbacks -= 1
                    raise httpx.ConnectError("connection refused", request=request)
                if self.fail_feedbacks:
                    self.fail_feedbacks -= 1
                    return httpx.Response(503, headers={"retry-after": "0"})
                event = self.events.get(body["event_id"])
                if event is None:
                    return httpx.Response(404)
                if event["text"] in self.gone:
                    return httpx.Response(410, json={"detail": "feedback window closed"})
                self.feedback.append({**body, "text": event["text"], "delay": now - event["at"]})
                return httpx.Response(200, json={"ok": True})
        return httpx.Response(404)


def _rows(n: int) -> list[tuple[str, int]]:
    return [(f"review {i}", i % 2) for i in range(n)]


def _worker(server: FakeServe, rows, **traffic) -> TrafficWorker:
    cfg = TrafficSection(**{"concurrency": 4, "feedback_delay_s": (0.0, 0.0), **traffic})
    return TrafficWorker("http://evolve.test", rows, LABELS, cfg, repeat=False, seed=1, backoff_s=0.001,
                         transport=server.transport)


def test_feedback_policy_labels_or_rewards():
    server, rows = FakeServe(), _rows(200)
    w = _worker(server, rows, p_label=0.3)
    w.run(timeout_s=60)
    s = w.stats()
    truth = dict(rows)
    assert s["predicts"] == 200 and s["feedbacks"] == 200 and not s["running"] and s["feedback_pending"] == 0
    labeled = [f for f in server.feedback if "label" in f]
    rewarded = [f for f in server.feedback if "reward" in f]
    assert 35 <= len(labeled) <= 85 and len(labeled) + len(rewarded) == 200  # p_label 0.3 of 200 (sd 6.5)
    assert s["feedback_labels"] == len(labeled) and s["feedback_rewards"] == len(rewarded)
    assert all(f["label"] == LABELS[truth[f["text"]]] for f in labeled)  # label names, no noise
    assert all(f["reward"] == (1.0 if truth[f["text"]] == 1 else 0.0) for f in rewarded)
    assert all(set(f) == {"event_id", "label", "text", "delay"} or set(f) == {"event_id", "reward", "text", "delay"}
               for f in server.feedback)
    assert s["accuracy"] == 0.5 and s["by_version"] == {"3": {"served": 200, "first_sight": 200, "accuracy": 0.5}}
    assert s["model_version"] == 3 and s["errors"] == {"predict": {}, "feedback": {}}


def test_label_noise_flips_the_given_share_and_poison_flips_all():
    server, rows = FakeServe(), _rows(400)
    _worker(server, rows, label_noise=0.3).run(timeout_s=60)
    truth = dict(rows)
    flipped = sum(f["label"] != LABELS[truth[f["text"]]] for f in server.feedback)
    assert len(server.feedback) == 400 and 85 <= flipped <= 155  # 30% of 400 (sd 9)

    server = FakeServe()
    w = _worker(server, rows[:100], p_label=0.5, label_noise=0.0)
    w.set_poison(True)
    w.run(timeout_s=60)
    for f in server.feedback:
        wrong = LABELS[1 - truth[f["text"]]]
        if "label" in f:
            assert f["label"] == wrong
        else:  # a poisoned user calls "pos" right exactly when the truth is neg
            assert f["reward"] == (1.0 if wrong == "pos" else 0.0)
    assert w.stats()["accuracy"] == 0.5  # prequential accuracy is scored against the truth


def test_label_ids_when_configured():
    server = FakeServe()
    cfg = TrafficSection(concurrency=1, feedback_delay_s=(0.0, 0.0))
    TrafficWorker("http://evolve.test", _rows(6), LABELS, cfg, repeat=False, label_format="id",
                  transport=server.transport).run(timeout_s=30)
    assert sorted(f["label"] for f in server.feedback) == [0, 0, 0, 1, 1, 1]


def test_transient_failures_are_retried_and_counted():
    server = FakeServe(fail_predicts=3, fail_feedbacks=2, drop_feedbacks=1, gone={"review 5"})
    w = _worker(server, _rows(20))
    w.run(timeout_s=60)
    s = w.stats()
    assert s["predicts"] == 20 and s["predict_failed"] == 0
    assert s["errors"]["predict"] == {"503": 3}
    assert s["errors"]["feedback"] == {"503": 2, "connection": 1, "410": 1}  # 410 is final: not retried
    assert s["retries"] == 6 and s["feedbacks"] == 19 and s["feedback_failed"] == 1


def test_a_broken_server_never_stops_the_worker():
    server = FakeServe(crash_predicts=2, html_predicts=1, fail_predicts=100)
    w = TrafficWorker("http://evolve.test", _rows(8), LABELS, TrafficSection(concurrency=2, feedback_delay_s=(0, 0)),
                      repeat=False, max_retries=2, backoff_s=0.001, transport=server.transport)
    w.run(timeout_s=60)
    s = w.stats()
    assert not s["running"] and s["predicts"] == 0 and s["predict_failed"] > 0
    assert s["errors"]["predict"]["exception"] == 2 and s["errors"]["predict"]["bad_json"] == 1
    assert s["errors"]["predict"]["503"] == 5 * 3  # 5 rows left, 3 attempts each
    assert "handler bug" in s["last_error"]
    server.fail_predicts = 0  # the service comes back: traffic flows again
    w2 = TrafficWorker("http://evolve.test", _rows(8), LABELS, TrafficSection(concurrency=2, feedback_delay_s=(0, 0)),
                       repeat=False, transport=server.transport)
    w2.run(timeout_s=30)
    assert w2.stats()["feedbacks"] == 8


def test_batched_requests_and_unreadable_answers():
    server = FakeServe(garbage_predicts=1)
    w = _worker(server, _rows(10), batch_size=4, concurrency=1)
    w.run(timeout_s=30)
    s = w.stats()
    assert [len(b.get("texts", [])) for b in server.bodies] == [4, 4, 2]
    assert s["errors"]["predict"] == {"bad_response": 1} and s["predicts"] == 6 and s["feedbacks"] == 6


def test_requests_per_s_paces_and_feedback_waits_its_delay():
    server = FakeServe()
    w = _worker(server, _rows(10), requests_per_s=25.0, feedback_delay_s=(0.15, 0.25))
    started = time.monotonic()
    w.run(timeout_s=30)
    elapsed = time.monotonic() - started
    assert elapsed >= 9 / 25 + 0.15 - 0.02  # 10 requests at 25/s, then the last feedback's delay
    assert len(server.feedback) == 10 and min(f["delay"] for f in server.feedback) >= 0.15 - 1e-3


def test_held_out_texts_are_never_sent_and_shards_split_the_stream():
    train = [(f"train {i}", i % 2) for i in range(60)]
    heldout = [(f"held {i}", i % 2) for i in range(20)]
    data = LabeledData(train=train, heldout=heldout, labels=LABELS)
    server = FakeServe()
    cfg = TrafficSection(concurrency=3, feedback_delay_s=(0.0, 0.0))
    for shard in ((0, 2), (1, 2)):
        TrafficWorker.from_data("http://evolve.test", data, cfg, shard=shard, repeat=False,
                                transport=server.transport).run(timeout_s=30)
    sent = [b["text"] for b in server.bodies]
    assert sorted(sent) == sorted(t for t, _ in train)  # each traffic row once across the two shards
    assert not set(sent) & {t for t, _ in heldout}


def test_a_live_stream_runs_until_stopped():
    server = FakeServe()
    cfg = TrafficSection(concurrency=2, feedback_delay_s=(0.0, 0.01))
    w = TrafficWorker("http://evolve.test", _rows(5), LABELS, cfg, transport=server.transport)  # repeat: forever
    w.start()
    deadline = time.monotonic() + 30
    while w.stats()["predicts"] < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    w.stop()
    s = w.stats()
    assert s["predicts"] >= 50 and not s["running"]
    # five rows sent forever: at most five first sights, the rest scored as repeats
    assert s["first_sight"] <= 5 and s["repeat_accuracy"] == pytest.approx(0.4, abs=0.1)
    w.close()


def test_a_grouped_stream_reports_the_group_it_is_in():
    train = [(f"a {i}", i % 2) for i in range(10)] + [(f"b {i}", i % 2) for i in range(10)]
    data = LabeledData(train=train, heldout=[("held", 0)], labels=LABELS, groups=["a"] * 10 + ["b"] * 10)
    server = FakeServe()
    cfg = TrafficSection(concurrency=1, feedback_delay_s=(0.0, 0.0))
    w = TrafficWorker.from_data("http://evolve.test", data, cfg, order="grouped", group_order=["b", "a"],
                                repeat=False, transport=server.transport)
    assert w.stats()["group"] is None and w.stats()["rows_taken"] == 0
    w.run(timeout_s=30)
    sent = [b["text"] for b in server.bodies]
    assert [t[0] for t in sent] == ["b"] * 10 + ["a"] * 10  # group after group, in group_order
    assert w.stats()["group"] == "a" and w.stats()["rows_taken"] == 20
    with pytest.raises(ValueError, match="one group per row"):
        TrafficWorker("http://evolve.test", _rows(3), LABELS, cfg, groups=["a"], transport=server.transport)


def test_after_a_concept_drift_the_users_of_a_group_mean_the_other_label():
    from core.config.data import ConceptDriftSection

    train = [(f"a {i}", 1) for i in range(10)] + [(f"b {i}", 1) for i in range(10)]
    data = LabeledData(train=train, heldout=[("held", 0)], labels=LABELS, groups=["a"] * 10 + ["b"] * 10)
    server = FakeServe()  # answers "pos" (1) to everything
    cfg = TrafficSection(concurrency=1, feedback_delay_s=(0.0, 0.0),
                         concept_drift=ConceptDriftSection(after_rows=15, groups=["b"]))
    w = TrafficWorker.from_data("http://evolve.test", data, cfg, order="grouped", group_order=["a", "b"],
                                repeat=False, transport=server.transport)
    w.run(timeout_s=30)
    by_text = {server.events[f["event_id"]]["text"]: f["label"] for f in server.feedback}
    assert all(by_text[f"a {i}"] == "pos" for i in range(10))  # group a: never drifted
    # group b (rows 11-20 of the stream, shuffled within the group): "neg" from row 16 on
    assert sorted(by_text[f"b {i}"] for i in range(10)) == ["neg"] * 5 + ["pos"] * 5
    assert w.stats()["accuracy"] == pytest.approx(15 / 20)  # "pos" is wrong for the users who now mean "neg"


def test_with_a_run_key_every_request_carries_it_and_feedback_names_the_predicting_user():
    seen: list[tuple[str, str | None, str | None]] = []
    server = FakeServe()
    inner = server.handle

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, request.headers.get("authorization"), request.headers.get("x-evolve-client")))
        reply = inner(request)
        if request.url.path == "/v1/predict":
            users[reply.json()["event_id"]] = request.headers.get("x-evolve-client")
        elif request.url.path == "/v1/feedback":
            assert users[body["event_id"]] == request.headers.get("x-evolve-client")
        return reply

    users: dict[str, str | None] = {}
    cfg = TrafficSection(concurrency=2, feedback_delay_s=(0.0, 0.0), clients=5)
    w = TrafficWorker("http://evolve.test", _rows(40), LABELS, cfg, repeat=False, seed=1, backoff_s=0.001,
                      transport=httpx.MockTransport(handle), api_key="evk_ab12cd34_secret")
    w.run(timeout_s=60)
    assert w.stats()["feedbacks"] == 40 and len(server.feedback) == 40
    assert {auth for _, auth, _ in seen} == {"Bearer evk_ab12cd34_secret"}
    assert all(user and user.startswith("traffic") for _, _, user in seen)
    assert len({user for path, _, user in seen if path == "/v1/feedback"}) > 1


def test_act_client_sends_the_run_key_and_the_episode_user():
    """With auth on the run's key is a proxy key: each request names its simulated user."""
    from actors.act_traffic import ActClientWorker
    from core.config.rl_gate import ActTrafficSection

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"action": [0], "propensity": [1.0], "version": 1})

    cfg = ActTrafficSection(episodes_at_once=1, clients=5)
    worker = ActClientWorker("http://act/v1/policies/p/act", "CartPole-v1", cfg, lambda e: None,
                             transport=httpx.MockTransport(answer), api_key="sk-run")
    try:
        assert worker._ask(worker.env.reset(seed=0)[0]) is not None
    finally:
        worker.env.close()
    assert seen[0].headers["authorization"] == "Bearer sk-run"
    assert seen[0].headers["x-evolve-client"] == worker.keys[0]


def test_with_a_ready_path_nothing_is_sent_before_a_version_is_live():
    server, seen = FakeServe(), {"checks": 0, "early": 0}
    answer = server.handle

    def handle(request: httpx.Request) -> httpx.Response:
        ready = seen["checks"] > 3
        if request.url.path == "/v1/healthz":
            seen["checks"] += 1
            return httpx.Response(200 if ready else 503)
        seen["early"] += not ready
        return answer(request)

    cfg = TrafficSection(concurrency=2, feedback_delay_s=(0.0, 0.0))
    w = TrafficWorker("http://evolve.test", _rows(20), LABELS, cfg, repeat=False, seed=1, await_route=True,
                      ready_path="/v1/healthz", transport=httpx.MockTransport(handle))
    w.run(timeout_s=60)
    s = w.stats()
    assert seen["checks"] > 3 and seen["early"] == 0
    assert s["predicts"] == 20 and s["errors"] == {"predict": {}, "feedback": {}}


class MemorizingServe(FakeServe):
    """Answers the label it was last told for a text (feedback it could have been trained on), else "pos"."""

    def __init__(self):
        super().__init__()
        self.told: dict[str, str] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/v1/predict":
            texts = body["texts"] if "texts" in body else [body["text"]]
            with self.lock:
                out = []
                for text in texts:
                    eid = uuid.uuid4().hex
                    self.events[eid] = {"text": text, "at": time.monotonic()}
                    out.append({"event_id": eid, "label": self.told.get(text, "pos"), "model_version": 3})
            return httpx.Response(200, json={"predictions": out} if "texts" in body else out[0])
        response = super().handle(request)
        with self.lock:
            if request.url.path == "/v1/feedback" and response.status_code == 200 and "label" in body:
                self.told[self.events[body["event_id"]]["text"]] = body["label"]
        return response


def test_an_input_seen_before_does_not_count_in_prequential_accuracy():
    """A served version that memorises its feedback answers every repeat right and every new input
    wrong: the prequential figure is the new inputs' 0, the repeats are counted apart."""
    server = MemorizingServe()
    rows = [(f"review {i}", 0) for i in range(10)]  # truth "neg"; the server says "pos" to what it was not told
    cfg = TrafficSection(concurrency=1, p_label=1.0, feedback_delay_s=(0.0, 0.0))
    w = TrafficWorker("http://evolve.test", rows, LABELS, cfg, recent_window=5, transport=server.transport)
    w.start()
    deadline = time.monotonic() + 30
    while w.stats()["predicts"] < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    w.stop()
    s = w.stats()
    w.close()
    assert s["predicts"] >= 40 and s["first_sight"] == 10 and s["repeats"] == s["predicts"] - 10
    assert s["accuracy"] == 0.0 and s["repeat_accuracy"] == 1.0  # one worker: each feedback lands before the next ask
    assert s["recent_accuracy"] is None  # the last five answers were all repeats
    assert s["by_version"] == {"3": {"served": s["predicts"], "first_sight": 10, "accuracy": 0.0}}


def test_first_sight_is_per_input_not_per_row():
    server = FakeServe()
    rows = [("same", 1), ("same", 1), ("other", 0)]
    w = _worker(server, rows)  # one pass
    w.run(timeout_s=30)
    s = w.stats()
    assert (s["first_sight"], s["repeats"], s["accuracy"], s["repeat_accuracy"]) == (2, 1, 0.5, 1.0)
