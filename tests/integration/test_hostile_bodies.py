"""Hostile bodies at each body route's size limit, sent while other clients keep predicting.

One cluster for the module: the feedback app (HTTP predict and feedback, gRPC Predict and
Feedback) with its default `max_text_chars` (a predict body of up to 6.2 MB) and the policy
server (/act, 4 MiB) on one Serve instance, a tiny classifier and a CartPole Q-network published
through the real PolicyPublisher. While one client sends, one after another, the worst shapes
(runs of escaped quotes, deep nesting, long numbers, many keys, lone surrogates, many values and
containers) filled to each route's limit, two others send predicts and acts: every hostile body
is refused with a 4xx or answered, and every predict and act is answered 200 within a second.
"""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import ray
from ray import serve

from actors.replay_client import ReplayClient
from actors.replay_shard import launch_shards
from core.config.feedback import FeedbackSection
from core.config.replay import ReplaySection, TableSection
from core.models.q import spec_for_env
from core.models.q_policy import QPolicy
from core.models.classifier import from_encoder
from serving.feedback_app import bound_grpc_messages, deploy_feedback_app, grpc_options, stop_joiner, undeploy_feedback_app
from serving.policy_server import MAX_ACT_BODY_BYTES, deploy_policy_server, undeploy_policy_server
from serving.publisher import PolicyPublisher
from serving.requests import FEEDBACK_BODY_BYTES, max_body_bytes
from tests.conftest import free_port
from tests.integration.helpers import wait_until
from tests.integration.test_feedback_serving import LABELS, _tiny_files

pytestmark = pytest.mark.integration

POLICY, CART = "sentiment", "cart"
ANSWER_BOUND_S = 1.0  # the acceptance line: a predict beside a hostile body is answered within a second
SPEC = spec_for_env("CartPole-v1", "dqn", [16])
GRPC_META = (("application", "feedback"),)


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    bound_grpc_messages(FeedbackSection().serving.max_text_chars)  # as `evolve run` does before Ray starts
    ray.init(num_cpus=2, include_dashboard=False, namespace="hostile-test", log_to_driver=False)
    try:
        http_port, grpc_port = free_port(), free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options(grpc_port),
                    logging_config={"log_level": "WARNING"})
        rcfg = ReplaySection(num_shards=1, tables={"feedback": TableSection(kind="feedback", capacity=10_000),
                                                  "text": TableSection(kind="text", capacity=10_000)})
        writer = ReplayClient(launch_shards(rcfg, str(tmp / "replay"), seed=0), rcfg, seed=0)
        registry = str(tmp / "registry")
        publisher = PolicyPublisher.remote(registry)
        cfg = FeedbackSection(policy_id=POLICY, serving={"feedback_ttl_s": 60, "max_batch_size": 8,
                                                         "batch_wait_timeout_s": 0.005})
        deploy_feedback_app(publisher, registry, cfg, writer)
        files, texts = _tiny_files()
        bundle = from_encoder(None, files, LABELS, seed=0)
        ray.get(publisher.publish.remote(POLICY, bundle.weights(), {}, files=bundle.files()), timeout=60)
        ray.get(publisher.publish.remote(CART, _cart_weights(), {}, spec=SPEC.to_dict()), timeout=60)
        deploy_policy_server(publisher, [CART], registry_uri=registry)
        http = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: httpx.post(f"{http}/v1/predict", json={"text": "很好"}, timeout=10).status_code == 200,
                   90, "the feedback app serving")
        wait_until(lambda: _act(http, [0.0] * 4).status_code == 200, 90, "the policy server serving")
        yield {"http": http, "grpc": f"127.0.0.1:{grpc_port}", "publisher": publisher, "texts": texts,
               "max_text_chars": cfg.serving.max_text_chars}
        undeploy_policy_server()
        undeploy_feedback_app()
        stop_joiner()
        serve.shutdown()
    finally:
        ray.shutdown()


def _cart_weights(fill: float | None = None) -> dict[str, np.ndarray]:
    weights = {k: v.numpy() for k, v in QPolicy(SPEC).model.state_dict().items()}
    return weights if fill is None else {k: np.full_like(v, fill) for k, v in weights.items()}


def _act(http: str, obs) -> httpx.Response:
    return httpx.post(f"{http}/v1/policies/{CART}/act", json={"obs": obs}, timeout=30)


# ---- the shapes ----------------------------------------------------------------------------------
def _fill(head: bytes, unit: bytes, tail: bytes, size: int) -> bytes:
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


def _items(head: bytes, item, tail: bytes, size: int) -> bytes:
    width = len(item(0)) + 1  # every item as wide as the first
    return head + b",".join(item(i) for i in range((size - len(head) - len(tail)) // width)) + tail


def hostile(size: int, field: bytes) -> dict[str, bytes]:
    """The worst shapes, each filled to `size` bytes; `field`: a string field of the route's body."""
    return {
        "escaped quotes, unclosed": _fill(b'{"' + field + b'": "', b'\\"', b"", size),
        "escaped quotes, closed": _fill(b'{"' + field + b'": "', b'\\"', b'"}', size),
        "escaped quotes, bare": _fill(b"", b'\\"', b"", size),
        "deep nesting": _fill(b"", b"[", b"", size),
        "deep nesting, closed": _fill(b"", b"[", b"", size // 2) + _fill(b"", b"]", b"", size // 2),
        "one long integer": _fill(b'{"reward": ', b"9", b"}", size),
        "integers of 4300 digits": _items(b"[", lambda i: b"9" * 4300, b"]", size),
        "one long float": _fill(b'{"reward": 0.', b"1", b"}", size),
        "many keys": _items(b"{", lambda i: b'"k%09d":0' % i, b"}", size),
        "lone surrogates": _fill(b'{"' + field + b'": "', b"\\ud800", b'"}', size),
        "many values": _fill(b"[", b"0,", b"0]", size),
        "many empty arrays": _fill(b"[", b"[],", b"[]]", size),
    }


def _raw_string_field(number: int, value: bytes) -> bytes:
    """A protobuf string field written by hand: `value` need not be UTF-8 (a client library refuses that)."""
    length, varint = len(value), b""
    while True:
        byte, length = length & 0x7F, length >> 7
        varint += bytes([byte | (0x80 if length else 0)])
        if not length:
            return bytes([number << 3 | 2]) + varint + value


# ---- the clients ---------------------------------------------------------------------------------
class Beside:
    """Clients that keep sending a valid predict and act, one at a time each, and time every answer."""

    def __init__(self, http: str, text: str):
        self.http, self.text, self.stop = http, text, threading.Event()
        self.answers: list[tuple[str, float, float, int]] = []  # (route, sent at, seconds, status)
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(route,), daemon=True) for route in ("predict", "act")]

    def __enter__(self) -> "Beside":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def _loop(self, route: str) -> None:
        url, body = ((f"{self.http}/v1/predict", {"text": self.text}) if route == "predict"
                     else (f"{self.http}/v1/policies/{CART}/act", {"obs": [0.01, -0.02, 0.03, 0.0]}))
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.post(url, json=body).status_code
                except httpx.HTTPError as exc:
                    self.errors.append(f"{route}: {type(exc).__name__}: {exc}")
                    continue
                self.answers.append((route, sent, time.monotonic() - sent, status))


def _send_http(http: str, route: str, raw: bytes) -> tuple[int, str, float]:
    start = time.monotonic()
    answer = httpx.post(f"{http}{route}", content=raw, headers={"content-type": "application/json"}, timeout=60)
    return answer.status_code, answer.text[:120], time.monotonic() - start


def _send_grpc(channel: grpc.Channel, method: str, raw: bytes) -> tuple[str, str, float]:
    call = channel.unary_unary(f"/evolve.v1.EvolveFeedback/{method}", request_serializer=None,
                               response_deserializer=None)
    start = time.monotonic()
    try:
        call(raw, metadata=GRPC_META, timeout=60)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    return code.name, details[:120], time.monotonic() - start


def test_hostile_bodies_neither_fail_nor_hold_other_requests(apps):
    http = apps["http"]
    routes = {"/v1/feedback": (FEEDBACK_BODY_BYTES, b"event_id"),
              "/v1/predict": (max_body_bytes(apps["max_text_chars"]), b"text"),
              f"/v1/policies/{CART}/act": (MAX_ACT_BODY_BYTES, b"clients")}
    predict_limit = max_body_bytes(apps["max_text_chars"])
    grpc_bodies = {
        ("Predict", "one text at the limit of escaped quotes"): _raw_string_field(1, b'\\"' * (predict_limit // 2 - 8)),
        ("Predict", "texts past the count"): b"".join([_raw_string_field(1, b"x")] * (predict_limit // 3)),
        ("Predict", "a lone surrogate"): _raw_string_field(1, "a\ud800b".encode("utf-8", "surrogatepass")),
        ("Feedback", "an event id of escaped quotes"): _raw_string_field(1, b'\\"' * (FEEDBACK_BODY_BYTES // 2 - 8)),
        ("Feedback", "a lone surrogate"): _raw_string_field(1, "e\udfff".encode("utf-8", "surrogatepass")),
    }
    sent: list[tuple[str, str, object, str, float]] = []  # (route, shape, status, reason, seconds)
    with Beside(http, apps["texts"][0]) as beside:
        wait_until(lambda: len(beside.answers) >= 10, 30, "the clients beside answered")
        began = time.monotonic()
        for route, (limit, field) in routes.items():
            for shape, raw in hostile(limit, field).items():
                assert len(raw) <= limit, (route, shape)
                sent.append((route, shape, *_send_http(http, route, raw)))
        with grpc.insecure_channel(apps["grpc"], options=[("grpc.max_send_message_length", -1)]) as channel:
            for (method, shape), raw in grpc_bodies.items():
                sent.append((f"gRPC {method}", shape, *_send_grpc(channel, method, raw)))
        ended = time.monotonic()
    for route, shape, status, reason, seconds in sent:
        print(f"{route:24s} {shape:42s} {status!s:18s} {seconds * 1000:7.0f} ms  {reason}")
    during = [a for a in beside.answers if began <= a[1] <= ended]
    for route in ("predict", "act"):
        times = sorted(s for r, _, s, _ in during if r == route)
        print(f"beside: {len(times)} {route}s while the hostile bodies were in flight ({ended - began:.1f} s), "
              f"p50 {times[len(times) // 2] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")
    over = _raw_string_field(1, b"x" * (predict_limit + 1024))  # past the proxy's message cap
    with grpc.insecure_channel(apps["grpc"], options=[("grpc.max_send_message_length", -1)]) as channel:
        status, reason, _ = _send_grpc(channel, "Predict", over)
    assert status == "RESOURCE_EXHAUSTED", (status, reason)  # refused by the proxy, never read into a replica
    refused_or_answered = {s for _, _, s, _, _ in sent} - {200, 400, 413, 422, "OK", "INVALID_ARGUMENT"}
    assert not refused_or_answered, [x for x in sent if x[2] in refused_or_answered]
    assert not beside.errors, beside.errors[:5]
    assert all(status == 200 for _, _, _, status in during), [a for a in during if a[3] != 200][:5]
    assert {r for r, _, _, _ in during} == {"predict", "act"} and len(during) >= 20
    slowest = max(during, key=lambda a: a[2])
    assert slowest[2] < ANSWER_BOUND_S, f"a {slowest[0]} beside a hostile body took {slowest[2]:.2f} s"


@pytest.fixture(scope="module")
def large_weights(apps):
    """A version with weights as large as a long-trained network's: sound (finite Q-values on
    ordinary observations), but an observation of 1e38 overflows float32 inside it."""
    version = ray.get(apps["publisher"].publish.remote(CART, _cart_weights(fill=1.0), {}, spec=SPEC.to_dict()),
                      timeout=60)
    wait_until(lambda: _act(apps["http"], [0.0] * 4).json().get("version") == version, 60, "the version served")
    return version


@pytest.mark.parametrize("value, single, batch", [
    (1e38, "obs: policy 'cart'", "obs[2]: policy 'cart'"),  # within float32, but the Q-values overflow
    (1e39, "obs[3] is 1e+39", "obs[2][3] is 1e+39"),  # infinite once cast to float32
    (-1e39, "obs[3] is -1e+39", "obs[2][3] is -1e+39"),
])
def test_an_observation_that_overflows_float32_is_422_naming_it(apps, large_weights, value, single, batch):
    answer = _act(apps["http"], [0.0, 0.0, 0.0, value])
    assert answer.status_code == 422 and answer.json()["detail"].startswith(single), answer.text
    rows = _act(apps["http"], [[0.0] * 4, [0.0] * 4, [0.0, 0.0, 0.0, value]])
    assert rows.status_code == 422 and rows.json()["detail"].startswith(batch), rows.text
    assert _act(apps["http"], [0.0, 0.0, 0.0, 1e3]).status_code == 200


def test_a_version_that_cannot_answer_is_503_until_a_sound_one_is_live(apps):
    http, publisher = apps["http"], apps["publisher"]
    bad = ray.get(publisher.publish.remote(CART, _cart_weights(fill=1e30), {}, spec=SPEC.to_dict()), timeout=60)
    answer = wait_until(lambda: (r := _act(http, [0.0] * 4)).status_code == 503 and r, 60, "the unsound version live")
    assert f"v{bad} is not answered from" in answer.json()["detail"] and "not finite" in answer.json()["detail"]
    good = ray.get(publisher.publish.remote(CART, _cart_weights(), {}, spec=SPEC.to_dict()), timeout=60)
    wait_until(lambda: (r := _act(http, [0.0] * 4)).status_code == 200 and r.json()["version"] == good, 60,
               "a sound version answering again")
