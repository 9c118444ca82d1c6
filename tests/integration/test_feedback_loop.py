"""The feedback loop through `evolve run` on a real embedded cluster: Serve app, traffic actors,
joiner -> replay, Ray Train online learner, gate -> publisher -> replicas, summary; then
`evolve rollback` on the stopped run's registry.

Sized to check the wiring in about a minute (a tiny BERT checkpoint written with
`save_pretrained`, as a user brings their own with `model.pretrained_dir`; a small held-out
set; a candidate every few updates); learning to the target is the `-m slow` tier's job
(tests/slow/test_feedback_learns.py).

The gate is set up to promote: `gate.tolerance` 0.99 refuses a candidate only if it loses more
than 99 accuracy points to live, and `gate.rollback_margin` 1.0 never rolls back on feedback.
So every candidate that reaches the gate must go live, which this module asserts, and the
promote path (gate -> publisher -> registry lineage) and `evolve rollback` run every time.
Refusals and automatic rollbacks are decided by the same code and are tested in
tests/unit/test_gate.py, where their inputs can be chosen.
"""

import json

import httpx
import pytest

from cluster.cli import main as evolve
from core.data.labeled import sentiment_reviews
from core.storage.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, serving, tiny_bert_checkpoint, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 150  # start-up (Ray, Serve, the routes answering, the Train worker) takes half of it on 2 cores
GATE_TOLERANCE = 0.99  # promote every candidate (see the module docstring)


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sentiment")
    checkpoint = tiny_bert_checkpoint(tmp / "tiny-bert", [t for t, _ in sentiment_reviews()[::7]])
    http_port = free_port()
    proc = CliProcess(
        "run", "configs/sentiment.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"serving.grpc_port={free_port()}",
        "--set", f"cluster.dashboard_port={free_port()}", "--set", "run.progress_interval_s=2",
        "--set", "loops.sentiment.model.encoder_registry=null",
        "--set", f"loops.sentiment.model.pretrained_dir={checkpoint}",
        "--set", "loops.sentiment.model.max_len=32", "--set", "loops.sentiment.data.max_heldout=100",
        "--set", "loops.sentiment.learning.candidate_every=5", "--set", "loops.sentiment.learning.batch_size=16",
        "--set", "loops.sentiment.traffic.requests_per_s=20",
        "--set", f"loops.sentiment.gate.tolerance={GATE_TOLERANCE}", "--set", "loops.sentiment.gate.rollback_margin=1.0",
        # the novelty loop beside it, publishing early (its share of a CPU comes from the traffic actor's)
        "--set", "loops.sentiment.traffic.actor_num_cpus=0.1",
        "--set", "loops.novelty={kind: novelty, watch: sentiment, batch_size: 16, calibration_every: 2, "
                 "min_calibration: 40, publish_every: 10, max_steps_per_s: 5}",
    )
    with serving(proc, timeout_s=150):
        yield {"proc": proc, "run": tmp / "run", "http": f"http://127.0.0.1:{http_port}", "checkpoint": checkpoint}


def test_clients_get_predictions_and_feedback_is_joined(sentiment_run):
    http = sentiment_run["http"]

    def predict():
        r = httpx.post(f"{http}/v1/predict", json={"text": "质量很好，物流也快"}, timeout=10)
        return r.json() if r.status_code == 200 else None

    pred = wait_until(predict, 150, "the feedback app answering /v1/predict")
    assert pred["label"] in ("neg", "pos") and pred["model_version"] >= 1
    novel = wait_until(lambda: (p := predict()) and p["novelty"] is not None and p, 120,
                       "a prediction scored by the novelty loop's first autoencoder")
    assert 0 <= novel["novelty"] <= 100
    fb = httpx.post(f"{http}/v1/feedback", json={"event_id": pred["event_id"], "label": "pos"}, timeout=10)
    assert fb.status_code == 200 and fb.json()["accepted"]
    unknown = httpx.post(f"{http}/v1/feedback", json={"event_id": "no-such-event", "label": "pos"}, timeout=10)
    assert unknown.status_code == 404 and "unknown event_id" in unknown.json()["detail"]


def test_the_run_learns_gates_and_reports(sentiment_run):
    proc, run = sentiment_run["proc"], sentiment_run["run"]
    assert proc.wait(timeout_s=BUDGET_S + 240) == 0, proc.output[-3000:]
    loops = json.loads((run / "summary.json").read_text())["loops"]
    s = loops["sentiment"]
    assert s["origin"]["encoder"] == "pretrained" and s["origin"]["pretrained"] == str(sentiment_run["checkpoint"].resolve())
    # the start's provenance is in the registry lineage of version 1
    assert PolicyRegistry(run / "registry").get("sentiment", 1).info["origin"]["pretrained"] == s["origin"]["pretrained"]
    assert loops["novelty"]["versions_published"] >= 1 and loops["novelty"]["reference"]["version"] == 1
    assert s["predictions"] > 100 and s["feedback_events"] > 100, s
    assert s["learner_updates"] >= 5 and s["initial_heldout_accuracy"] is not None
    promotions = s["promotions"]
    decisions = [p["decision"] for p in promotions]
    assert decisions[0] == "initial" and len(decisions) >= 2, decisions  # the learner's candidates reached the gate
    # the gate was set up to promote every candidate: each one went live, none refused or rolled back
    assert decisions[1:] == ["promote"] * (len(decisions) - 1), promotions
    assert s["promoted"] == len(decisions) and s["refused"] == 0 and s["rollbacks"] == [], s
    for before, p in zip(promotions, promotions[1:]):  # each judged against, and replacing, the one before
        assert p["parent"] == before["version"] and p["version"] > before["version"], promotions
        assert p["parent_heldout_accuracy"] == before["heldout_accuracy"], promotions
        assert p["heldout_accuracy"] >= p["parent_heldout_accuracy"] - GATE_TOLERANCE, p
    assert s["live_version"] == promotions[-1]["version"]
    assert s["heldout_accuracy"] == promotions[-1]["heldout_accuracy"]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "gate_decision" for e in events) == len(decisions)
    history = PolicyRegistry(run / "registry").stages("sentiment")["live"]["history"]
    # a prefix: a candidate the gate was still judging as the run stopped may have gone live after the summary
    assert history[:len(promotions)] == [p["version"] for p in promotions], (history, promotions)


def test_rollback_on_the_stopped_run(sentiment_run, capsys):
    run = sentiment_run["run"]
    assert sentiment_run["proc"].wait(timeout_s=BUDGET_S + 240) == 0  # stopped (the test above waited already)
    reg = PolicyRegistry(run / "registry")
    history = reg.stages("sentiment")["live"]["history"]
    assert len(history) >= 2, f"the gate promotes every candidate, yet the live history is {history}"
    live = reg.latest("sentiment", "live").version
    assert live == history[-1]
    assert evolve(["rollback", "sentiment", "--run-dir", str(run)]) == 0
    assert reg.latest("sentiment", "live").version == history[-2]  # the version live before it
    assert f"v{live} -> v{history[-2]} is live" in capsys.readouterr().out
    assert "rolled_back" in reg.get("sentiment", live).info  # marked: no later rollback goes back to it
