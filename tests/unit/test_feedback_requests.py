"""Request validation of the feedback app without Ray: the status and reason of every bad input; the OpenAPI copy."""

import json

import numpy as np
import pytest

from core.stats.exploration import ExplorationSection
from core.models.classifier import from_encoder
from core.models.tokenizer import tokenizer_files, train_wordpiece
from serving.feedback_app import Served, classify, openapi_spec
from serving.join import FeedbackRejected
from serving.requests import MAX_TEXTS, check_texts, parse_feedback, parse_json, parse_predict
from tests.conftest import REPO


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(FeedbackRejected) as info:
        fn(*args)
    return info.value.status, info.value.detail


def test_json_body():
    assert parse_json('{"text": "好评"}'.encode()) == {"text": "好评"}
    status, detail = _status(parse_json, "{'text': 'x'}".encode())
    assert status == 400 and "not JSON" in detail
    status, detail = _status(parse_json, b'{"text": "\xff\xfe"}')
    assert status == 400 and "not UTF-8" in detail
    assert _status(parse_json, "{}".encode("utf-16"))[0] == 400
    assert _status(parse_json, b"")[0] == 400


def test_predict_single_and_batch():
    assert parse_predict({"text": "很好"}, 10) == (["很好"], True)
    assert parse_predict({"texts": ["a", "b"]}, 10) == (["a", "b"], False)


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({}, 422, "either 'text'"),
        ({"text": "a", "texts": ["b"]}, 422, "either 'text'"),
        ({"txt": "a"}, 422, "unknown field 'txt'"),
        ({"text": None}, 422, "must be a string"),
        ({"text": 3}, 422, "must be a string"),
        ({"text": "   "}, 422, "is empty"),
        ({"texts": []}, 422, "1..256"),
        ({"texts": "abc"}, 422, "list of 1..256"),
        ({"texts": ["ok", 5]}, 422, "texts[1] must be a string"),
        ({"texts": ["x"] * (MAX_TEXTS + 1)}, 422, "1..256"),
        ({"text": "x" * 11}, 413, "'text' has 11 characters; the limit is 10"),
        ({"texts": ["ok", "x" * 11]}, 413, "texts[1] has 11 characters"),
        (["text"], 422, "JSON object"),
        ("text", 422, "JSON object"),
    ],
)
def test_predict_bad_bodies(body, status, words):
    got, detail = _status(parse_predict, body, 10)
    assert got == status and words in detail, detail


def test_feedback_bodies():
    assert parse_feedback({"event_id": "e1", "label": "pos"}) == ("e1", "pos", None)
    assert parse_feedback({"event_id": "e1", "label": 0, "reward": 1}) == ("e1", 0, 1)


@pytest.mark.parametrize(
    "body, words",
    [
        ({"label": "pos"}, "'event_id'"),
        ({"event_id": 7, "label": "pos"}, "'event_id'"),
        ({"event_id": "", "label": "pos"}, "'event_id'"),
        ({"event_id": "e1"}, "needs a 'label' or a 'reward'"),
        ({"event_id": "e1", "label": True}, "'label'"),
        ({"event_id": "e1", "label": [1]}, "'label'"),
        ({"event_id": "e1", "reward": "0.5"}, "'reward'"),
        ({"event_id": "e1", "reward": False}, "'reward'"),
        ({"event_id": "e1", "label": "pos", "extra": 1}, "unknown field 'extra'"),
    ],
)
def test_feedback_bad_bodies(body, words):
    status, detail = _status(parse_feedback, body)
    assert status == 422 and words in detail, detail


def test_grpc_texts_share_the_rules():
    assert check_texts(["a"], 5) == ["a"]
    assert _status(check_texts, ["abcdef"], 5)[0] == 413
    assert _status(check_texts, [], 5)[0] == 422


def _bundle():
    tok = train_wordpiece(["很好很好", "太差了", "一般般吧"] * 10, vocab_size=60, min_frequency=1)
    config = {"vocab_size": len(tok), "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "max_position_embeddings": 32, "pad_token_id": tok.pad_token_id}
    return from_encoder(None, {**tokenizer_files(tok), "config.json": json.dumps(config).encode()}, ["neg", "pos"])


def test_classify_stamps_one_version_and_gives_events():
    bundle = _bundle()
    preds, events = classify(Served(bundle, 7), ["很好", "太差"], "sentiment", "serve-x")
    assert [p["model_version"] for p in preds] == [7, 7] and len({p["event_id"] for p in preds}) == 2
    for p, e in zip(preds, events):
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5 and p["label"] in ("neg", "pos")
        assert e["event_id"] == p["event_id"] and e["labels"] == ["neg", "pos"]
        assert ["neg", "pos"][e["prediction"]] == p["label"] and e["policy_version"] == 7
        assert p["propensity"] == e["propensity"] == 1.0 and e["action_probs"][e["prediction"]] == 1.0  # greedy


def test_exploring_serves_sampled_labels_and_logs_their_propensities():
    bundle = _bundle()
    explore = ExplorationSection(kind="epsilon", epsilon=0.5)
    preds, events = classify(Served(bundle, 1), ["很好"] * 2000, "sentiment", "serve-x", explore=explore,
                             rng=np.random.default_rng(0))
    greedy = int(np.argmax(events[0]["probs"]))
    served = np.array([e["prediction"] for e in events])
    assert 0.7 < (served == greedy).mean() < 0.8  # 1 - eps + eps / 2
    for p, e in zip(preds, events):
        assert e["propensity"] == (0.75 if e["prediction"] == greedy else 0.25) == p["propensity"]
        assert e["action_probs"] == ([0.75, 0.25] if greedy == 0 else [0.25, 0.75])
        assert p["label"] == ["neg", "pos"][e["prediction"]]


def test_checked_in_openapi_matches_the_app():
    """docs/openapi.json is a copy; regenerate with `python -m serving.feedback_app > docs/openapi.json`."""
    checked_in = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert checked_in == openapi_spec(), "stale: python -m serving.feedback_app > docs/openapi.json"
    assert {"/predict", "/feedback", "/healthz", "/models"} <= set(checked_in["paths"])
    assert checked_in["servers"] == [{"url": "/v1"}]


def test_a_grpc_call_names_its_client_in_metadata_as_http_does_in_a_header():
    from types import SimpleNamespace

    from serving.feedback_app import grpc_client_key

    call = SimpleNamespace(invocation_metadata=lambda: [("user-agent", "grpc"), ("x-evolve-client", "c-7")])
    assert grpc_client_key(call) == "c-7"
    assert grpc_client_key(SimpleNamespace(invocation_metadata=lambda: [])) is None
    assert grpc_client_key(None) is None
