"""Pretraining and feedback learning in one run (configs/sentiment.yaml with no encoder, shrunk): the
MLM loop publishes encoders while it trains, the classifier's learner re-bases onto them, and the
summary names each encoder version with the gate's decision on every candidate built on it."""

import json

import pytest

from core.storage.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.integration

BUDGET_S = 150
MLM = "loops.sentiment_mlm"
TINY = [
    # a corpus, tokenizer and encoder small enough that the learner steps a few times a second
    f"{MLM}.corpus.max_texts=1500", f"{MLM}.tokenizer.vocab_size=600", f"{MLM}.seq_len=32",
    f"{MLM}.model={{num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64}}",
    f"{MLM}.batch_size=8", f"{MLM}.eval_every=10", f"{MLM}.eval_sequences=16", f"{MLM}.warmup_steps=10",
    f"{MLM}.publish_min_gain=0.0", f"{MLM}.report_every=5",
    "loops.sentiment.model.encoder_registry=null", "loops.sentiment.model.max_len=32",
    "loops.sentiment.data.max_heldout=100", "loops.sentiment.learning.candidate_every=5",
    "loops.sentiment.learning.batch_size=16", "loops.sentiment.traffic.requests_per_s=20",
    "loops.sentiment.traffic.actor_num_cpus=0.1", "loops.sentiment.gate.tolerance=0.99",
    "loops.sentiment.gate.rollback_margin=1.0",
    "cluster.include_dashboard=false", "run.progress_interval_s=2", "serving.grpc=false",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rebase")
    sets = [a for s in [*TINY, f"serving.http_port={free_port()}"] for a in ("--set", s)]
    done = run_cli("run", "configs/sentiment.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
                   *sets, timeout_s=BUDGET_S + 180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {"dir": tmp / "run", "out": done.stdout, "summary": json.loads((tmp / "run/summary.json").read_text())}


def test_the_classifier_rebases_onto_encoders_the_run_pretrains(run):
    loops = run["summary"]["loops"]
    mlm, fb = loops["sentiment_mlm"], loops["sentiment"]
    assert mlm["published_while_training"], run["out"][-3000:]
    assert fb["origin"]["encoder_loop"] == "sentiment_mlm" and fb["encoder_loop"] == "sentiment_mlm"
    rebased = [e for e in fb["encoders"] if e["encoder_version"] >= 1]
    assert rebased, (fb["encoders"], run["out"][-3000:])
    assert all(e["encoder_version"] in mlm["published_while_training"] for e in rebased)
    assert "the learner re-based onto encoder v" in run["out"]
    # every candidate built on a pretrained encoder has the gate's decision, and says which encoder it is on
    decided = [d for e in rebased for d in e["decisions"]]
    assert decided and all(d["decision"] in ("promote", "refuse") for d in decided), rebased
    registry = PolicyRegistry(run["dir"] / "registry", create=False)
    for e in rebased:
        for d in e["decisions"]:
            assert registry.get("sentiment", d["version"]).info["encoder_version"] == e["encoder_version"]
    events = [json.loads(line) for line in (run["dir"] / "events.jsonl").read_text().splitlines()]
    assert any(ev["event"] == "rebased" and ev["loop"] == "sentiment" for ev in events)
