"""The feedback loop through `evolve run` on a real embedded cluster: Serve app, traffic actors,
joiner -> replay, Ray Train online learner, gate -> publisher -> replicas, summary; then
`evolve rollback` on the stopped run's registry.

Sized to check the wiring in about a minute (a small random-init model, a small held-out set,
a candidate every few updates); learning to the target is the acceptance run's job.
"""

import json

import httpx
import pytest

from cluster.cli import main as evolve
from core.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, serving, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 100  # Ray Train takes ~40 s to start its worker on 2 busy cores


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sentiment")
    http_port = free_port()
    proc = CliProcess(
        "run", "configs/sentiment.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"serving.grpc_port={free_port()}",
        "--set", f"cluster.dashboard_port={free_port()}", "--set", "run.progress_interval_s=2",
        "--set", "feedback.encoder_registry=null", "--set", "feedback.vocab_size=800",
        "--set", "feedback.model={num_layers: 1, hidden_size: 64, num_heads: 2, intermediate_size: 128}",
        "--set", "feedback.max_len=32", "--set", "feedback.data.max_heldout=100",
        "--set", "feedback.candidate_every=5", "--set", "feedback.batch_size=16",
        "--set", "feedback.traffic.requests_per_s=20",
    )
    with serving(proc, timeout_s=150):
        yield {"proc": proc, "run": tmp / "run", "http": f"http://127.0.0.1:{http_port}"}


def test_clients_get_predictions_and_feedback_is_joined(sentiment_run):
    http = sentiment_run["http"]

    def predict():
        r = httpx.post(f"{http}/v1/predict", json={"text": "质量很好，物流也快"}, timeout=10)
        return r.json() if r.status_code == 200 else None

    pred = wait_until(predict, 150, "the feedback app answering /v1/predict")
    assert pred["label"] in ("neg", "pos") and pred["model_version"] >= 1
    fb = httpx.post(f"{http}/v1/feedback", json={"event_id": pred["event_id"], "label": "pos"}, timeout=10)
    assert fb.status_code == 200 and fb.json()["accepted"]
    unknown = httpx.post(f"{http}/v1/feedback", json={"event_id": "no-such-event", "label": "pos"}, timeout=10)
    assert unknown.status_code == 404 and "unknown event_id" in unknown.json()["detail"]


def test_the_run_learns_gates_and_reports(sentiment_run):
    proc, run = sentiment_run["proc"], sentiment_run["run"]
    assert proc.wait(timeout_s=BUDGET_S + 240) == 0, proc.output[-3000:]
    s = json.loads((run / "summary.json").read_text())["loops"]["sentiment"]
    assert s["origin"]["encoder"] == "random_init"
    assert s["predictions"] > 100 and s["feedback_events"] > 100, s
    assert s["learner_updates"] >= 5 and s["initial_heldout_accuracy"] is not None
    decisions = [p["decision"] for p in s["promotions"]]
    assert decisions[0] == "initial" and len(decisions) >= 2, decisions  # the learner's candidates reached the gate
    for p in s["promotions"][1:]:  # no promoted version observed worse than its parent beyond the tolerance
        if p["decision"] == "promote":
            assert p["heldout_accuracy"] >= p["parent_heldout_accuracy"] - 0.01 - 1e-9, p
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "gate_decision" for e in events) == len(decisions)


def test_rollback_on_the_stopped_run(sentiment_run, capsys):
    run = sentiment_run["run"]
    reg = PolicyRegistry(run / "registry")
    history = reg.stages("sentiment")["live"]["history"]
    if len(history) < 2:
        pytest.skip(f"the run promoted nothing past v1 (live history {history}): nothing to roll back to")
    live = reg.latest("sentiment", "live").version
    assert evolve(["rollback", "sentiment", "--run-dir", str(run)]) == 0
    assert reg.latest("sentiment", "live").version != live
    assert f"v{live} -> v" in capsys.readouterr().out
