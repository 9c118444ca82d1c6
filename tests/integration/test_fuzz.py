"""Fuzz the feedback app on a real Serve deployment: schemathesis cases generated from the LIVE
OpenAPI spec for every /v1 route, each answered without a server error (5xx other than 503
overload); plus the bodies a schema never generates (a lone surrogate, deep nesting) sent raw.

The deployment is test_feedback_serving's module fixture (one cluster, a tiny published model).
"""

import grpc
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_feedback_serving import served  # noqa: F401 (the module's deployment)

pytestmark = pytest.mark.integration

EXAMPLES_PER_MODE = 300  # per route, valid and invalid bodies each: the two body routes give 1,200 cases


def _server_errors(http: str, operation, mode: schemathesis.GenerationMode) -> tuple[int, list[str]]:
    """(cases sent, the server errors among them) for one operation of the live spec."""
    sent, errors = [0], []

    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode))
    def send(case):
        response = case.call(base_url=http, timeout=30)
        sent[0] += 1
        if response.status_code >= 500 and response.status_code != 503:
            errors.append(f"{case.method} {case.path} {case.body!r:.200} -> {response.status_code} {response.text:.200}")

    send()
    return sent[0], errors


def fuzz_spec(http: str) -> tuple[int, list[str], list[str]]:
    """(cases sent, server errors, routes) over every operation of the app's live spec at `http`:
    valid and invalid bodies for a POST, valid requests for a GET."""
    schema = schemathesis.openapi.from_url(f"{http}/openapi.json")
    total, errors, routes = 0, [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        routes.append(operation.path)
        body = operation.method.upper() == "POST"  # a GET without parameters has no invalid form
        for mode in schemathesis.GenerationMode if body else [schemathesis.GenerationMode.POSITIVE]:
            sent, found = _server_errors(http, operation, mode)
            total += sent
            errors += found
    return total, errors, routes


def test_generated_requests_get_no_server_error(served):  # noqa: F811
    total, errors, routes = fuzz_spec(served["http"])
    assert {"/predict", "/feedback"} <= set(routes)
    print(f"fuzz: {total} cases over {sorted(routes)}, {len(errors)} server errors")
    assert total >= 1000 and not errors, errors[:5]


@pytest.mark.parametrize("route", ["predict", "feedback"])
def test_lone_surrogate_is_4xx(served, route):  # noqa: F811
    body = b'{"text":"a\\ud800b"}' if route == "predict" else b'{"event_id":"a\\ud800b","reward":1}'
    answer = httpx.post(f"{served['http']}/{route}", content=body, timeout=30,
                        headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text


@pytest.mark.parametrize("route", ["predict", "feedback"])
def test_deep_json_is_400(served, route):  # noqa: F811
    answer = httpx.post(f"{served['http']}/{route}", content=b"[" * 10_000 + b"]" * 10_000, timeout=30,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "deeper" in answer.json()["detail"]


def test_oversize_body_is_413(served):  # noqa: F811
    answer = httpx.post(f"{served['http']}/feedback", content=b" " * (1 << 20), timeout=30,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 413


GRPC_EXAMPLES = 150  # per rpc
_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def _grpc_call(call, message) -> grpc.StatusCode:
    try:
        call(message, metadata=(("application", "feedback"),), timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_generated_grpc_messages_get_no_internal_error(served):  # noqa: F811
    from serving.proto import evolve_pb2, evolve_pb2_grpc

    faults, codes = [], set()
    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = evolve_pb2_grpc.EvolveFeedbackStub(channel)

        @settings(max_examples=GRPC_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(texts=st.lists(st.text(max_size=300), max_size=300))
        def predict(texts):
            code = _grpc_call(stub.Predict, evolve_pb2.PredictRequest(texts=texts))
            codes.add(code)
            if code in _FAULTS:
                faults.append(("Predict", texts[:3], code))

        @settings(max_examples=GRPC_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(event_id=st.text(max_size=300), label=st.none() | st.text(max_size=50),
               reward=st.none() | st.floats(allow_nan=True, allow_infinity=True))
        def feedback(event_id, label, reward):
            message = evolve_pb2.FeedbackRequest(event_id=event_id, label=label, reward=reward)
            code = _grpc_call(stub.Feedback, message)
            if code in _FAULTS:
                faults.append(("Feedback", event_id[:40], label, reward, code))

        predict()
        feedback()
    assert not faults, faults[:5]
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes  # the messages reached the app
