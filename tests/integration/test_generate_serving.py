"""The generator app on a real Ray cluster: /v1/generate over HTTP and gRPC, feedback joined into replay.

One cluster, one Serve instance and one app for the module; a tiny random-init GPT-2-shaped model
(1 layer, width 32, WordPiece on a few hundred reviews) is published to a real registry and made
live; joined rows go through a real one-shard replay store and are read back from it.
"""

import json

import grpc
import httpx
import pytest
import ray
from ray import serve

from actors.replay_client import ReplayClient
from actors.replay_shard import launch_shards
from core.config.generate import GenerateServingSection
from core.config.replay import ReplaySection, TableSection
from core.data.corpus import review_texts
from core.models.generator import build_causal_lm, causal_lm_files
from core.models.tokenizer import train_wordpiece
from core.storage.registry import PolicyRegistry
from serving.feedback_app import grpc_options, stop_joiner
from serving.generate_app import GENERATE_JOINER, deploy_generate_app
from serving.generate_requests import generate_limits
from tests.conftest import free_port
from tests.integration.helpers import wait_until
from tests.integration.test_hostile_bodies import hostile

pytestmark = pytest.mark.integration

POLICY, TABLE = "writer", "completions"
LIMITS = GenerateServingSection(max_prompt_chars=200, max_new_tokens_limit=12, max_n=4, default_max_new_tokens=6,
                                feedback_ttl_s=120, batch_wait_timeout_s=0.01)
GRPC_META = (("application", "generate"),)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generate")
    ray.init(num_cpus=2, include_dashboard=False, namespace="generate-test", log_to_driver=False)
    try:
        http_port, grpc_port = free_port(), free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options(grpc_port),
                    logging_config={"log_level": "WARNING"})
        rcfg = ReplaySection(num_shards=1, tables={TABLE: TableSection(kind="completions", capacity=10_000)})
        writer = ReplayClient(launch_shards(rcfg, str(tmp / "replay"), seed=0), rcfg, seed=0)
        registry = PolicyRegistry(tmp / "registry")
        tok = train_wordpiece(review_texts()[::100][:400], vocab_size=800, min_frequency=1)
        weights, files = causal_lm_files(build_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64), tok)
        registry.promote(POLICY, registry.publish(POLICY, weights, {}, files=files))
        app = deploy_generate_app(registry.uri, POLICY, LIMITS, writer, TABLE, refresh_s=0.5)
        http = f"http://127.0.0.1:{http_port}/v1/generate"
        wait_until(lambda: _generate(http, prompt="很好").status_code == 200, 120, "the generator serving")
        yield {"http": http, "grpc": f"127.0.0.1:{grpc_port}", "writer": writer, "joiner": app.joiner}
        serve.delete(app.app_name)
        stop_joiner(GENERATE_JOINER)
        serve.shutdown()
    finally:
        ray.shutdown()


def _generate(http: str, **body) -> httpx.Response:
    return httpx.post(http, json=body, timeout=60)


def _feedback(http: str, **body) -> httpx.Response:
    return httpx.post(f"{http}/feedback", json=body, timeout=60)


def _rows(served, n: int) -> list[dict]:
    def stored():
        ray.get(served["joiner"].flush.remote(10), timeout=30)
        rows = served["writer"].export(TABLE).to_pylist()
        return rows if len(rows) >= n else None

    return wait_until(stored, 60, f"{n} joined rows in replay")


def test_generate_over_http_gives_n_completions_with_logprobs(served):
    answer = _generate(served["http"], prompt="这家酒店", n=3, max_new_tokens=5, temperature=0.9, top_p=0.95)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["policy_id"] == POLICY and body["model_version"] == 1 and len(body["completions"]) == 3
    for c in body["completions"]:
        assert 1 <= len(c["token_ids"]) <= 5 and len(c["logprobs"]) == len(c["sampling_logprobs"]) == len(c["token_ids"])
        assert all(lp <= 0 for lp in c["logprobs"]) and c["finish"] in ("stop", "length")
    assert len({c["event_id"] for c in body["completions"]}) == 3
    health = httpx.get(f"{served['http']}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["model_version"] == 1


def test_thumbs_and_preferences_are_joined_into_replay(served):
    http = served["http"]
    one = _generate(http, prompt="书很好看", n=3).json()
    other = _generate(http, prompt="电脑太慢", n=2).json()
    a, b, c = (x["event_id"] for x in one["completions"])
    up = _feedback(http, event_id=a, thumbs="up")
    assert up.status_code == 200 and up.json() == {"event_id": a, "accepted": True, "model_version": 1,
                                                   "feedback": "thumbs"}
    assert _feedback(http, event_id=a, thumbs="up").json() == up.json()  # a repeat: the same answer
    conflict = _feedback(http, event_id=a, thumbs="down")
    assert conflict.status_code == 409 and "thumbs=up" in conflict.json()["detail"]
    across = _feedback(http, event_id=b, better_than=other["completions"][0]["event_id"])
    assert across.status_code == 422 and "'better_than'" in across.json()["detail"]
    preferred = _feedback(http, event_id=b, better_than=c)
    assert preferred.status_code == 200, preferred.text
    unknown = _feedback(http, event_id="no-such-completion", thumbs="up")
    assert unknown.status_code == 404 and "no-such-completion" in unknown.json()["detail"]
    assert _feedback(http, event_id=other["completions"][1]["event_id"], reward=0.75).status_code == 200
    rows = {r["event_id"]: r for r in _rows(served, 3)}
    assert rows[a]["feedback"] == "thumbs" and rows[a]["thumbs_up"] is True
    assert rows[a]["token_ids"] == one["completions"][0]["token_ids"]
    assert rows[a]["logprobs"] == pytest.approx(one["completions"][0]["logprobs"], abs=1e-5)
    assert rows[b]["feedback"] == "preference" and rows[b]["rejected_event_id"] == c
    assert rows[b]["rejected_token_ids"] == one["completions"][2]["token_ids"]
    assert rows[other["completions"][1]["event_id"]]["reward"] == 0.75
    assert {r["prompt"] for r in rows.values()} == {"书很好看", "电脑太慢"}


@pytest.mark.parametrize("body,status,field", [
    ({"prompt": ""}, 422, "'prompt'"),
    ({"prompt": "好", "max_new_tokens": 13}, 422, "'max_new_tokens'"),
    ({"prompt": "好", "n": 5}, 422, "'n'"),
    ({"prompt": "好", "temperature": "hot"}, 422, "'temperature'"),
    ({"prompt": "好" * 201}, 413, "'prompt'"),
])
def test_bad_generate_requests_are_4xx_naming_the_field(served, body, status, field):
    answer = _generate(served["http"], **body)
    assert answer.status_code == status and field in answer.json()["detail"], answer.text


def test_generate_and_feedback_over_grpc(served):
    from serving.proto import evolve_pb2 as pb
    from serving.proto import evolve_pb2_grpc as pb_grpc

    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = pb_grpc.EvolveFeedbackStub(channel)
        reply = stub.Generate(pb.GenerateRequest(prompt="酒店", n=2, max_new_tokens=4), metadata=GRPC_META, timeout=60)
        assert reply.model_version == 1 and len(reply.completions) == 2
        first, second = reply.completions
        assert len(first.logprobs) == len(first.token_ids) >= 1
        answer = stub.CompletionFeedback(pb.CompletionFeedbackRequest(event_id=second.event_id,
                                                                      better_than=first.event_id),
                                         metadata=GRPC_META, timeout=60)
        assert answer.accepted and answer.feedback == "better_than"
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(pb.GenerateRequest(prompt="酒店", n=9), metadata=GRPC_META, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'n'" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.CompletionFeedback(pb.CompletionFeedbackRequest(event_id="nope", thumbs="up"),
                                    metadata=GRPC_META, timeout=60)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    rows = {r["event_id"]: r for r in _rows(served, 4)}
    assert rows[second.event_id]["rejected_event_id"] == first.event_id


@pytest.mark.parametrize("route", ["", "/feedback"])
def test_hostile_bodies_are_refused_and_the_generator_keeps_answering(served, route):
    size = generate_limits(LIMITS).bytes if route == "" else 64 * 1024
    for shape, body in hostile(size, b"prompt" if route == "" else b"event_id").items():
        answer = httpx.post(served["http"] + route, content=body, timeout=60,
                            headers={"content-type": "application/json"})
        assert 400 <= answer.status_code < 500, f"{shape}: {answer.status_code} {answer.text[:200]}"
        assert json.loads(answer.text)["detail"]
    assert _generate(served["http"], prompt="好").status_code == 200


def test_simulated_users_rate_and_prefer_through_the_real_routes(served):
    from actors.generate_users import GenerateUsersWorker
    from core.config.generate import GenerateUsersSection
    from core.data.prompts import review_prompts
    from tests.unit.review_judge import judge_file

    prompts = review_prompts().traffic[:40]
    users = GenerateUsersSection(several_share=0.3, preference_share=0.3, reward_share=0.2, several_n=3,
                                 max_new_tokens=6)
    worker = GenerateUsersWorker(served["http"].removesuffix("/v1/generate"), prompts, judge_file()[0], users,
                                 seed=1, await_route=True)
    worker.run_requests(16)
    s = worker.stats()
    assert s["requests"] == 16 and s["generate_failed"] == 0 and s["feedback_failed"] == 0, s
    assert s["by_version"]["1"]["completions"] == s["completions"] and 0 <= s["mean_reward"] <= 1
    sent = s["feedback"]

    def users_rows():
        rows = [r for r in _rows(served, 1) if r["prompt"] in prompts]
        return rows if len(rows) >= sum(sent.values()) else None

    rows = wait_until(users_rows, 60, "the users' feedback joined into replay")
    kinds = [r["feedback"] for r in rows]
    assert kinds.count("preference") == sent["better_than"] and kinds.count("reward") == sent["reward"]
    assert sum(r["thumbs_up"] is True for r in rows if r["feedback"] == "thumbs") == sent["thumbs_up"]
    assert kinds.count("thumbs") == sent["thumbs_up"] + sent["thumbs_down"]


def test_generated_requests_from_the_live_spec_get_no_server_error(served):
    """schemathesis cases from the generator app's own OpenAPI spec, valid and invalid, for each route."""
    from tests.integration.test_fuzz import fuzz_spec

    total, errors, routes = fuzz_spec(served["http"])
    print(f"generate fuzz: {total} cases over {sorted(routes)}, {len(errors)} server errors")
    assert {"/", "/feedback"} & set(routes) and total >= 200 and not errors, (routes, errors[:5])
