"""Simulated users of the generator against an in-process fake of /v1/generate and its feedback route
(httpx.MockTransport), judged by the real judge: feedback shapes, the thumbs rate against the judge's
probability, preferences within one request, retries, the live figures, and the traffic prompts only."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import numpy as np
import pytest

from actors.generate_users import GenerateUsersWorker
from core.config.generate import GeneratePromptsSection, GenerateUsersSection
from core.data.prompts import review_prompts
from tests.unit.review_judge import judge_file

PROMPTS = ["这家酒店的", "这本书的内容", "电脑用了一周"]
TEXTS = ["非常好，很满意，推荐", "太差了，很失望", "一般般吧，还行", "服务很好，下次还来", "质量不行，退货了"]


class FakeGenerator:
    """Completions drawn from TEXTS; feedback checked as the real route checks its shape."""

    def __init__(self, texts=TEXTS, fail_generates: int = 0, gone_feedback: bool = False):
        self.lock = threading.Lock()
        self.texts, self.fail_generates, self.gone_feedback = list(texts), fail_generates, gone_feedback
        self.events: dict[str, dict] = {}  # event id -> {group, prompt, text}
        self.requests: list[dict] = []
        self.feedback: list[dict] = []
        self.clients: set[str] = set()
        self.rng = np.random.default_rng(0)
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.clients.add(request.headers["x-evolve-client"])
            if request.url.path == "/v1/generate":
                if self.fail_generates:
                    self.fail_generates -= 1
                    return httpx.Response(503, json={"detail": "no live version yet"})
                self.requests.append(body)
                group = uuid.uuid4().hex
                out = []
                for _ in range(body.get("n", 1)):
                    eid, text = uuid.uuid4().hex, self.texts[int(self.rng.integers(len(self.texts)))]
                    self.events[eid] = {"group": group, "prompt": body["prompt"], "text": text}
                    out.append({"event_id": eid, "text": text, "token_ids": [1], "logprobs": [-1.0],
                                "sampling_logprobs": [-1.0], "finish": "stop"})
                return httpx.Response(200, json={"policy_id": "gen", "model_version": 2, "group_id": group,
                                                 "completions": out})
            assert request.url.path == "/v1/generate/feedback"
            if self.gone_feedback:
                return httpx.Response(410, json={"detail": "expired"})
            given = [k for k in ("thumbs", "reward", "better_than") if k in body]
            assert set(body) == {"event_id", *given} and len(given) == 1, body
            assert body["event_id"] in self.events
            if "thumbs" in body:
                assert body["thumbs"] in ("up", "down")
            if "reward" in body:
                assert 0.0 <= body["reward"] <= 1.0
            if "better_than" in body:
                other = self.events[body["better_than"]]
                assert other["group"] == self.events[body["event_id"]]["group"]
                assert body["better_than"] != body["event_id"]
            self.feedback.append(body)
            kind = given[0]
            return httpx.Response(200, json={"event_id": body["event_id"], "accepted": True, "model_version": 2,
                                             "feedback": kind})


def _worker(fake, users=None, prompts=PROMPTS, **kw):
    judge, _ = judge_file()
    return GenerateUsersWorker("http://serve", prompts, judge, users, transport=fake.transport, backoff_s=0.001,
                               max_backoff_s=0.01, **kw)


def test_each_kind_of_user_sends_its_feedback_shape():
    fake = FakeGenerator()
    users = GenerateUsersSection(several_share=0.3, preference_share=0.3, reward_share=0.2, several_n=3)
    w = _worker(fake, users)
    w.run_requests(300)
    s = w.stats()
    assert s["requests"] == 300 and s["generate_failed"] == 0 and s["feedback_failed"] == 0
    assert all(s["users"][k] > 20 for k in ("thumbs", "several", "preference", "reward"))
    ns = [r["n"] for r in fake.requests]
    assert sorted(set(ns)) == [1, 2, 3]
    assert s["completions"] == sum(ns)
    assert ns.count(3) == s["users"]["several"] and ns.count(2) == s["users"]["preference"]
    kinds = [next(k for k in ("thumbs", "reward", "better_than") if k in b) for b in fake.feedback]
    assert kinds.count("better_than") == s["users"]["preference"] == s["feedback"]["better_than"]
    assert kinds.count("reward") == s["users"]["reward"] == s["feedback"]["reward"]
    assert kinds.count("thumbs") == s["users"]["thumbs"] + 3 * s["users"]["several"]
    assert s["feedback"]["thumbs_up"] + s["feedback"]["thumbs_down"] == kinds.count("thumbs")
    judge, _ = judge_file()
    for body in fake.feedback:
        e = fake.events[body["event_id"]]
        if "better_than" in body:  # the preferred completion is the one the judge reads as more positive
            o = fake.events[body["better_than"]]
            mine, theirs = judge.reward([e["prompt"]] * 2, [e["text"], o["text"]])
            assert mine >= theirs
        if "reward" in body:
            assert body["reward"] == pytest.approx(judge.reward([e["prompt"]], [e["text"]])[0])
    assert len(fake.clients) > 1 and all(c.startswith("users0-u") for c in fake.clients)


def test_a_rating_several_user_may_rate_on_a_scale():
    fake = FakeGenerator()
    users = GenerateUsersSection(several_share=1.0, preference_share=0, several_n=3, several_rating="reward")
    w = _worker(fake, users)
    w.run_requests(20)
    assert len(fake.feedback) == 60 and all(set(b) == {"event_id", "reward"} for b in fake.feedback)
    judge, _ = judge_file()
    for body in fake.feedback:
        e = fake.events[body["event_id"]]
        assert body["reward"] == pytest.approx(judge.reward([e["prompt"]], [e["text"]])[0])
    assert w.stats()["feedback"]["reward"] == 60


def test_the_thumbs_rate_follows_the_judge():
    judge, _ = judge_file()
    for text in ("一般般吧，还行", "非常好，很满意，推荐"):
        fake = FakeGenerator(texts=[text])
        w = _worker(fake, GenerateUsersSection(several_share=0, preference_share=0), prompts=["这家酒店的"], seed=3)
        w.run_requests(1500)
        p = float(judge.reward(["这家酒店的"], [text])[0])
        ups = sum(b["thumbs"] == "up" for b in fake.feedback)
        sd = np.sqrt(p * (1 - p) / 1500)
        assert abs(ups / 1500 - p) < 4 * sd + 1e-9, (text, ups / 1500, p)
        assert w.stats()["mean_reward"] == pytest.approx(p)


def test_the_live_figures_are_the_judged_reward_of_what_was_served():
    fake = FakeGenerator()
    w = _worker(fake, GenerateUsersSection(several_share=0.5, preference_share=0.5, several_n=2),
                recent_window=10)
    w.run_requests(40)
    judge, _ = judge_file()
    served = [(e["prompt"], e["text"]) for e in fake.events.values()]
    rewards = judge.reward([p for p, _ in served], [t for _, t in served])
    s = w.stats()
    assert s["completions"] == len(served) == 80
    assert s["mean_reward"] == pytest.approx(float(np.mean(rewards)))
    assert s["by_version"] == {"2": {"completions": 80, "mean_reward": pytest.approx(float(np.mean(rewards)))}}
    assert s["model_version"] == 2 and s["recent_reward"] is not None
    assert {r["prompt"] for r in fake.requests} <= set(PROMPTS)


def test_transient_failures_are_retried_and_a_final_refusal_counted():
    fake = FakeGenerator(fail_generates=3, gone_feedback=True)
    w = _worker(fake, GenerateUsersSection(several_share=0, preference_share=0))
    w.run_requests(2)
    s = w.stats()
    assert s["retries"] == 3 and s["errors"]["generate"] == {"503": 3}
    assert s["requests"] == 2 and s["generate_failed"] == 0
    assert s["feedback_failed"] == 2 and s["errors"]["feedback"] == {"410": 2}  # a 410 is not retried


def test_an_unreadable_reply_is_counted_not_judged():
    def handle(request):
        return httpx.Response(200, json={"completions": [{"text": "no id"}]})

    judge, _ = judge_file()
    w = GenerateUsersWorker("http://serve", PROMPTS, judge, transport=httpx.MockTransport(handle))
    w.run_requests(3)
    s = w.stats()
    assert s["generate_failed"] == 3 and s["completions"] == 0 and s["mean_reward"] is None
    assert s["errors"]["generate"] == {"bad_response": 3}


def test_threads_send_until_stopped_and_wait_for_a_live_version():
    fake = FakeGenerator()
    ready = threading.Event()
    polls: list[int] = []
    inner = fake.transport

    def handle(request):
        if request.url.path == "/v1/generate/healthz":
            polls.append(1)
            return httpx.Response(200 if ready.is_set() else 503, json={})
        return inner.handle_request(request)

    judge, _ = judge_file()
    w = GenerateUsersWorker("http://serve", PROMPTS, judge, GenerateUsersSection(concurrency=2),
                            transport=httpx.MockTransport(handle), await_route=True)
    w.start()
    try:
        deadline = time.monotonic() + 60
        while len(polls) < 4 and time.monotonic() < deadline:  # both threads asked, and asked again
            time.sleep(0.02)
        assert len(polls) >= 4 and w.stats()["requests"] == 0
        ready.set()
        while w.stats()["requests"] < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        w.close()
    s = w.stats()
    assert s["requests"] >= 20 and not s["running"] and s["last_error"] is None


def test_users_from_config_take_a_shard_of_the_traffic_prompts_only():
    _, path = judge_file()
    prompts_cfg = GeneratePromptsSection()
    split = review_prompts(**prompts_cfg.model_dump())
    users = GenerateUsersSection(judge_path=str(path))
    shards = [GenerateUsersWorker.from_config("http://serve", users, prompts_cfg, shard=(i, 2)) for i in range(2)]
    seen = [{next(w._prompts) for _ in range(len(split.traffic) // 2 + 1)} for w in shards]  # a shard's cycle
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(split.traffic)
    assert not (seen[0] | seen[1]) & set(split.heldout)


def test_shares_above_one_are_refused():
    with pytest.raises(ValueError, match="at most 1"):
        GenerateUsersSection(several_share=0.5, preference_share=0.4, reward_share=0.2)
    with pytest.raises(ValueError, match="at least one prompt"):
        GenerateUsersWorker("http://serve", [], judge_file()[0])
