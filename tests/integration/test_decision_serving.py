"""The decision app on a real Ray cluster: rank and reward over HTTP, rewards joined into replay, the
default reward of a decision left unanswered, bad input refused naming the field, a new version hot-swapped.

One cluster, one Serve instance and one app for the module; a policy trained offline on a simulated
stream is published to a real registry and made live; joined rows go through a real one-shard
replay store and are read back from it.
"""

import json
import math
import time

import grpc
import httpx
import numpy as np
import pytest
import ray
from ray import serve

from actors.replay_client import ReplayClient
from actors.replay_shard import launch_shards
from core.config.decisions import DecisionExploreSection, DecisionModelSection, DecisionServingSection
from core.config.replay import ReplaySection, TableSection
from core.decisions.files import policy_files
from core.decisions.policy import DecisionPolicy
from core.storage.registry import PolicyRegistry
from serving.decision_app import DECISION_JOINER, deploy_decision_app
from serving.feedback_app import grpc_options, stop_joiner
from tests.conftest import free_port
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

POLICY, TABLE, WAIT_S = "offers", "decisions", 3.0
LIMITS = DecisionServingSection(reward_min=-1.0, reward_max=1.0, default_reward=0.0, reward_wait_s=WAIT_S,
                                max_actions=32)
ACTIONS = [{"id": t, "features": {"item": {"topic": t}}} for t in ("news", "sport", "music")]


def _policy(best: str, updates: int = 300) -> DecisionPolicy:
    """A policy that learned `best` earns reward 1 for a reader of any age (the others 0)."""
    pol = DecisionPolicy(DecisionModelSection(bits=12, interactions=[["user", "item"]]),
                         DecisionExploreSection(kind="epsilon", epsilon=0.3))
    rng = np.random.default_rng(0)
    for _ in range(updates):
        req = pol.request({"user": {"age": float(rng.integers(18, 80)) / 80}}, ACTIONS)
        k = int(rng.integers(3))
        pol.learn(req, k, 1.0 if ACTIONS[k]["id"] == best else 0.0, 1 / 3)
    return pol


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decisions")
    ray.init(num_cpus=2, include_dashboard=False, namespace="decision-test", log_to_driver=False)
    try:
        http_port, grpc_port = free_port(), free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options(grpc_port),
                    logging_config={"log_level": "WARNING"})
        rcfg = ReplaySection(num_shards=1, tables={TABLE: TableSection(kind="decisions", capacity=10_000)})
        writer = ReplayClient(launch_shards(rcfg, str(tmp / "replay"), seed=0), rcfg, seed=0)
        registry = PolicyRegistry(tmp / "registry")
        weights, files = policy_files(_policy("sport"))
        registry.promote(POLICY, registry.publish(POLICY, weights, {}, files=files))
        app = deploy_decision_app(registry.uri, POLICY, LIMITS, writer, TABLE, refresh_s=0.5)
        http = f"http://127.0.0.1:{http_port}/v1/decisions/{POLICY}"
        wait_until(lambda: httpx.get(f"{http}/healthz", timeout=10).status_code == 200, 120, "the decision app")
        yield {"http": http, "grpc": f"127.0.0.1:{grpc_port}", "writer": writer, "joiner": app.joiner,
               "registry": registry}
        serve.delete(app.app_name)
        stop_joiner(DECISION_JOINER)
        serve.shutdown()
    finally:
        ray.shutdown()


def _rank(served, **body) -> httpx.Response:
    return httpx.post(f"{served['http']}/rank", json=body, timeout=30)


def _reward(served, **body) -> httpx.Response:
    return httpx.post(f"{served['http']}/reward", json=body, timeout=30)


def _all_rows(served) -> list[dict]:
    ray.get(served["joiner"].flush.remote(10), timeout=30)
    return served["writer"].export(TABLE).to_pylist()


def _rows(served, n: int) -> list[dict]:
    def stored():
        rows = _all_rows(served)
        return rows if len(rows) >= n else None

    return wait_until(stored, 60, f"{n} joined rows in replay")


def test_rank_serves_mostly_the_learned_action_with_its_propensity_and_never_an_excluded_one(served):
    served_ids = []
    for _ in range(40):
        answer = _rank(served, context={"user": {"age": 0.5}}, actions=ACTIONS)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        probability = {r["id"]: r["probability"] for r in body["ranking"]}
        assert body["model_version"] == 1 and math.isclose(sum(probability.values()), 1.0, abs_tol=1e-6)
        assert body["ranking"][0]["id"] == "sport" and body["propensity"] == probability[body["action_id"]]
        served_ids.append(body["action_id"])
    assert served_ids.count("sport") > 20  # epsilon 0.3 over three actions: 0.8 of the time
    for _ in range(10):
        body = _rank(served, context={"user": {"age": 0.5}}, actions=ACTIONS, exclude=["sport"]).json()
        assert body["action_id"] != "sport" and {r["id"] for r in body["ranking"]} == {"news", "music"}


def test_a_reward_is_stored_once_with_the_decision_and_refusals_follow_the_join_rules(served):
    body = _rank(served, context={"user": {"age": 0.3, "tags": ["a", "b"]}}, actions=ACTIONS).json()
    first = _reward(served, event_id=body["event_id"], reward=0.75)
    assert first.status_code == 200, first.text
    assert first.json() == {"event_id": body["event_id"], "accepted": True, "model_version": 1,
                            "action_id": body["action_id"], "reward": 0.75}
    assert _reward(served, event_id=body["event_id"], reward=0.75).json() == first.json()  # idempotent
    assert _reward(served, event_id=body["event_id"], reward=-0.5).status_code == 409
    assert _reward(served, event_id="never-served", reward=1.0).status_code == 404
    wrong = _reward(served, event_id=body["event_id"], reward=3.0)
    assert wrong.status_code == 422 and "'reward'" in wrong.text and "[-1, 1]" in wrong.text
    row = next(r for r in _rows(served, 1) if r["event_id"] == body["event_id"])
    assert row["reward"] == 0.75 and row["reward_source"] == "client" and row["action_id"] == body["action_id"]
    assert json.loads(row["context"]) == {"user": {"age": 0.3, "tags": ["a", "b"]}}
    assert row["propensity"] == pytest.approx(body["propensity"]) and json.loads(row["actions"]) == ACTIONS


def test_a_decision_left_without_a_reward_is_stored_with_the_default_once_its_window_closes(served):
    body = _rank(served, context={"user": {"age": 0.9}}, actions=ACTIONS).json()
    time.sleep(WAIT_S + 0.5)  # the window is the thing under test: nothing to poll until it closes
    row = wait_until(lambda: next((r for r in _rows(served, 1) if r["event_id"] == body["event_id"]), None),
                     30, "the default reward's row")
    assert row["reward"] == 0.0 and row["reward_source"] == "default"
    late = _reward(served, event_id=body["event_id"], reward=1.0)
    assert late.status_code == 410 and "default reward=0" in late.text


@pytest.mark.parametrize("body, field", [
    ({"context": {}, "actions": []}, "'actions'"),
    ({"actions": [{"id": "a"}, {"id": "a"}]}, "'actions[1].id'"),
    ({"actions": [{"id": "a", "features": {"item": {"where": {"city": "x"}}}}]}, "'actions[0].features.item.where'"),
    ({"context": {"user": {"age": [1, 2]}}, "actions": ACTIONS}, "'context.user.age[0]'"),
    ({"actions": [{"id": str(i)} for i in range(10_000)]}, "'actions'"),
    ({"actions": ACTIONS, "exclude": "news"}, "'exclude'"),
    ({"actions": ACTIONS, "colour": "red"}, "'colour'"),
])
def test_bad_ranks_are_refused_naming_the_field_and_the_next_rank_is_answered(served, body, field):
    refused = _rank(served, **body)
    assert 400 <= refused.status_code < 500 and field in refused.text, refused.text
    assert _rank(served, actions=ACTIONS).status_code == 200


def test_a_nan_feature_is_refused_naming_its_field(served):
    raw = '{"context": {"user": {"age": NaN}}, "actions": [{"id": "a"}]}'
    refused = httpx.post(f"{served['http']}/rank", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= refused.status_code < 500 and "age" in refused.text, refused.text


def test_a_new_live_version_is_served_without_a_restart(served):
    registry = served["registry"]
    weights, files = policy_files(_policy("music"))
    registry.promote(POLICY, registry.publish(POLICY, weights, {"parent_version": 1}, files=files))
    body = wait_until(lambda: (b := _rank(served, actions=ACTIONS).json())["model_version"] == 2 and b, 30,
                      "version 2 served")
    assert body["ranking"][0]["id"] == "music"


@pytest.mark.parametrize("route", ["/rank", "/reward"])
def test_hostile_bodies_are_refused_and_the_app_keeps_answering(served, route):
    from serving.decision_requests import REWARD_LIMITS, rank_limits
    from tests.integration.test_hostile_bodies import hostile

    size = rank_limits(LIMITS).bytes if route == "/rank" else REWARD_LIMITS.bytes
    for shape, body in hostile(size, b"actions" if route == "/rank" else b"event_id").items():
        answer = httpx.post(served["http"] + route, content=body, timeout=60,
                            headers={"content-type": "application/json"})
        assert 400 <= answer.status_code < 500, f"{shape}: {answer.status_code} {answer.text[:200]}"
        assert json.loads(answer.text)["detail"]
    assert _rank(served, actions=ACTIONS).status_code == 200


def test_generated_requests_from_the_live_spec_get_no_server_error(served):
    """schemathesis cases from the decision app's own OpenAPI spec, valid and invalid, for each route."""
    from tests.integration.test_fuzz import fuzz_spec

    total, errors, routes = fuzz_spec(served["http"])
    print(f"decision fuzz: {total} cases over {sorted(routes)}, {len(errors)} server errors")
    assert {"/rank", "/reward"} <= set(routes) and total >= 200 and not errors, (routes, errors[:5])


def test_simulated_users_rank_and_reward_through_the_real_routes(served):
    from actors.decision_users import DecisionUsersWorker
    from core.config.decisions import DecisionUsersSection

    worker = DecisionUsersWorker(served["http"], DecisionUsersSection(stream="led", reward_share=0.5), seed=3)
    before = len(_all_rows(served))
    worker.run_requests(40)
    s = worker.stats()
    assert s["requests"] == 40 and s["rank_failed"] == 0 and s["reward_failed"] == 0, s
    assert 5 <= s["rewards_sent"] <= 35 and 0 <= s["mean_reward"] <= 1
    rows = _rows(served, before + s["rewards_sent"])
    assert sum(r["reward_source"] == "client" for r in rows) >= s["rewards_sent"]


def test_rank_and_reward_over_grpc_follow_the_http_rules(served):
    from google.protobuf.struct_pb2 import Struct

    from serving.proto import evolve_pb2 as pb
    from serving.proto import evolve_pb2_grpc as pb_grpc

    def struct(value: dict) -> Struct:
        s = Struct()
        s.update(value)
        return s

    meta = (("application", "decisions"),)
    actions = [pb.DecisionAction(id=a["id"], features=struct(a["features"])) for a in ACTIONS]
    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = pb_grpc.EvolveFeedbackStub(channel)
        answer = stub.Rank(pb.RankRequest(context=struct({"user": {"age": 0.4}}), actions=actions), metadata=meta,
                           timeout=30)
        assert answer.event_id and answer.action_id in {a["id"] for a in ACTIONS} and len(answer.ranking) == 3
        assert math.isclose(sum(r.probability for r in answer.ranking), 1.0, abs_tol=1e-6)
        got = stub.Reward(pb.RewardRequest(event_id=answer.event_id, reward=1.0), metadata=meta, timeout=30)
        assert got.accepted and got.action_id == answer.action_id and got.reward == 1.0
        with pytest.raises(grpc.RpcError) as bad:
            stub.Rank(pb.RankRequest(actions=[pb.DecisionAction(id="a"), pb.DecisionAction(id="a")]), metadata=meta,
                      timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "actions[1].id" in bad.value.details()
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Reward(pb.RewardRequest(event_id="never-served", reward=0.5), metadata=meta, timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    row = next(r for r in _rows(served, 1) if r["event_id"] == answer.event_id)
    assert row["reward"] == 1.0 and row["reward_source"] == "client"
