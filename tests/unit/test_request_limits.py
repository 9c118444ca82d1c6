"""Body limits of the serving routes without Ray: size (413 before parsing), depth, NaN, lone surrogates.

A plain FastAPI app runs the same helpers in the same order as the feedback app's /v1/predict route.
"""

import asyncio

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from serving.join import FeedbackRejected
from serving.requests import max_body_bytes, parse_json, parse_predict, read_body

MAX_TEXT_CHARS = 100
LIMIT = max_body_bytes(MAX_TEXT_CHARS)


def _app(parsed: list) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict:
        try:
            body = parse_json(await read_body(request, LIMIT))
            parsed.append(body)  # reached only when the body passes the size, depth and JSON checks
            texts, single = parse_predict(body, MAX_TEXT_CHARS)
        except FeedbackRejected as exc:
            raise HTTPException(exc.status, detail=exc.detail, headers=exc.headers()) from None
        return {"texts": len(texts), "single": single}

    return app


@pytest.fixture
def client_and_parsed():
    parsed: list = []
    return TestClient(_app(parsed)), parsed


def test_valid_body_passes(client_and_parsed):
    client, _ = client_and_parsed
    answer = client.post("/v1/predict", content=b'{"texts": ["a", "b"]}')
    assert answer.status_code == 200 and answer.json() == {"texts": 2, "single": False}


def test_oversize_body_is_413_before_parsing(client_and_parsed):
    client, parsed = client_and_parsed
    answer = client.post("/v1/predict", content=b'{"text": "' + b"x" * LIMIT + b'"}')
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]
    assert parsed == []


def test_oversize_chunked_body_is_413():
    class Streamed:  # no Content-Length: the limit counts streamed bytes
        headers: dict = {}

        async def stream(self):
            for _ in range(LIMIT // 1024 + 2):
                yield b"x" * 1024

    with pytest.raises(FeedbackRejected) as info:
        asyncio.run(read_body(Streamed(), LIMIT))
    assert info.value.status == 413


def test_bad_content_length_is_400():
    class Lying:
        headers = {"content-length": "lots"}

    with pytest.raises(FeedbackRejected) as info:
        asyncio.run(read_body(Lying(), LIMIT))
    assert info.value.status == 400


def test_lone_surrogate_is_4xx(client_and_parsed):
    client, _ = client_and_parsed
    answer = client.post("/v1/predict", content=b'{"text":"a\\ud800b"}')
    assert 400 <= answer.status_code < 500 and "surrogate" in answer.json()["detail"]
    batch = client.post("/v1/predict", content=b'{"texts":["fine", "a\\udfffb"]}')
    assert 400 <= batch.status_code < 500
    pair = client.post("/v1/predict", content=b'{"text":"a\\ud83d\\ude00b"}')  # a surrogate pair is one character
    assert pair.status_code == 200


def test_deep_json_is_400(client_and_parsed):
    client, parsed = client_and_parsed
    deep = b"[" * 10_000 + b"]" * 10_000
    answer = client.post("/v1/predict", content=deep)
    assert answer.status_code == 400 and "deeper" in answer.json()["detail"]
    unbalanced = client.post("/v1/predict", content=b'{"text": "' + b"[" * 90 + b'"}')  # brackets in a string
    assert unbalanced.status_code == 200
    assert len(parsed) == 1


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_is_400(client_and_parsed, constant):
    client, _ = client_and_parsed
    answer = client.post("/v1/predict", content=b'{"text": "a", "x": ' + constant + b"}")
    assert answer.status_code == 400


def test_huge_integer_is_400(client_and_parsed):
    client, _ = client_and_parsed
    answer = client.post("/v1/predict", content=b'{"texts": [' + b"9" * 5000 + b"]}")
    assert answer.status_code == 400


def test_act_body_checks():
    from core.models.q import spec_for_env
    from serving.policy_server import act_limits, parse_act

    limits = act_limits(spec_for_env("CartPole-v1", "dqn", [8]))
    assert parse_act(parse_json(b'{"obs": [0.1, 0.2]}', limits)).obs == [0.1, 0.2]
    for raw, status in [(b'{"obs": [NaN]}', 400), (b"[" * 10_000 + b"]" * 10_000, 400),
                        (b'{"obs": "x"}', 422), (b'{"clients": ["a"]}', 422), (b"[]", 422)]:
        with pytest.raises(FeedbackRejected) as info:
            parse_act(parse_json(raw, limits))
        assert info.value.status == status, raw[:40]


@pytest.mark.parametrize("obs, where", [([1e39, 0.0, 0.0, 0.0], "obs[0]"), ([0.0, -1e39, 0.0, 0.0], "obs[1]"),
                                        ([[0.0] * 4, [0.0, 0.0, 3.5e38, 0.0]], "obs[1][2]")])
def test_an_observation_beyond_float32_is_422_naming_it(obs, where):
    from core.models.q import spec_for_env
    from serving.policy_server import to_batch

    with pytest.raises(ValueError) as info:
        to_batch(obs, spec_for_env("CartPole-v1", "dqn", [8]))
    assert str(info.value).startswith(f"{where} is ") and "float32" in str(info.value)
    rows, _ = to_batch([1e38, -3.4e38, 0.0, 1.0], spec_for_env("CartPole-v1", "dqn", [8]))  # within float32
    assert rows == [[1e38, -3.4e38, 0.0, 1.0]]


def test_a_version_that_cannot_answer_says_why():
    import torch

    from core.models.q import spec_for_env
    from core.models.q_policy import QPolicy, nonfinite_weights

    policy = QPolicy(spec_for_env("CartPole-v1", "dqn", [8]))
    assert policy.fault() is None
    weights = {k: v.clone() for k, v in policy.model.state_dict().items()}
    weights["net.2.bias"][0] = float("nan")
    assert nonfinite_weights(weights) == "non-finite weights in 'net.2.bias'"
    policy.load(weights, 2)
    assert policy.fault() == "non-finite weights in 'net.2.bias'"
    huge = {k: torch.full_like(v, 1e30) for k, v in policy.model.state_dict().items()}
    policy.load(huge, 3)  # finite weights, but every Q-value overflows float32
    assert "all-zero observation" in policy.fault()
    assert nonfinite_weights({"w": torch.ones(3), "steps": torch.tensor([7])}) is None
