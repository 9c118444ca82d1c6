"""The pair task through `evolve run configs/pairs.yaml` on a real embedded cluster: a pair predicted
over HTTP and gRPC, its feedback joined, and the joined row with both texts in `evolve replay export`.

gRPC is on with the host on loopback, and that alone turns API keys on (Serve's gRPC proxy binds
every interface): the run reads its key from `EVOLVE_API_KEYS`, and a Predict or Feedback
without one is refused UNAUTHENTICATED. HTTP is HTTPS (`serving.tls`, a self-signed certificate
made here): the run's own traffic actors reach it through `serving.tls.ca_file`.

Sized to check the wiring (a tiny BERT written with `save_pretrained`, 300 pairs per label, a small
held-out set, a candidate every few updates); the gate is set up to promote every candidate, as in
test_feedback_loop.py, so the pair model is also learned, gated and published here.
"""

import json

import grpc
import httpx
import pyarrow.parquet as pq
import pytest

from cluster.cli import main as evolve
from core.auth.keys import mint
from core.data.corpus import people_daily_texts
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, self_signed, serving, tiny_bert_checkpoint, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 150  # start-up takes about half of it on 2 cores
A, B = "国务院总理李鹏今天在人民大会堂会见了外国客人。", "双方就两国关系和共同关心的国际问题交换了意见。"
RECORD, KEY = mint(["predict", "feedback"], "pair-test")
KEYED = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    checkpoint = tiny_bert_checkpoint(tmp / "tiny-bert", people_daily_texts()[::20])
    http_port, grpc_port = free_port(), free_port()
    cert, key = self_signed(tmp)
    proc = CliProcess(
        "run", "configs/pairs.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", "serving.grpc=true",
        "--set", f"serving.grpc_port={grpc_port}", "--set", f"cluster.dashboard_port={free_port()}",
        "--set", "cluster.include_dashboard=false", "--set", "run.progress_interval_s=2",
        "--set", "loops.pairs.model.encoder_registry=null", "--set", f"loops.pairs.model.pretrained_dir={checkpoint}",
        "--set", "loops.pairs.model.max_len=48", "--set", "loops.pairs.data.builtin_per_label=300",
        "--set", "loops.pairs.data.max_heldout=60", "--set", "loops.pairs.learning.candidate_every=5",
        "--set", "loops.pairs.learning.batch_size=16", "--set", "loops.pairs.traffic.requests_per_s=20",
        "--set", "loops.pairs.gate.tolerance=0.99", "--set", "loops.pairs.gate.rollback_margin=1.0",
        "--set", f"serving.tls={{certfile: {cert}, keyfile: {key}, ca_file: {cert}}}",
        env={"EVOLVE_CACHE_DIR": str(tmp / "cache"),  # the pair CSV is made here, not in the user's cache
             "EVOLVE_API_KEYS": json.dumps([RECORD.model_dump()])},
    )
    with serving(proc, timeout_s=180):
        yield {"proc": proc, "run": tmp / "run", "http": f"https://127.0.0.1:{http_port}/v1", "cert": str(cert),
               "grpc": f"127.0.0.1:{grpc_port}"}


def test_a_pair_is_predicted_and_its_feedback_joined(pair_run):
    http, cert = pair_run["http"], pair_run["cert"]

    def predict(body):
        r = httpx.post(f"{http}/predict", json=body, headers=KEYED, timeout=10, verify=cert)
        return r.json() if r.status_code == 200 else None

    pred = wait_until(lambda: predict({"text": A, "text_pair": B}), 150, "the pair model answering /v1/predict")
    assert pred["label"] in ("next", "other_article", "same_article") and pred["model_version"] >= 1
    batch = predict({"pairs": [[A, B], [B, A]]})
    assert len(batch["predictions"]) == 2
    # the model reads pairs only
    single = httpx.post(f"{http}/predict", json={"text": A}, headers=KEYED, timeout=10, verify=cert)
    assert single.status_code == 422 and "classifies text pairs" in single.json()["detail"]
    bad = httpx.post(f"{http}/predict", json={"pairs": [[A]]}, headers=KEYED, timeout=10, verify=cert)
    assert bad.status_code == 422 and "pairs[0]" in bad.json()["detail"]
    fb = httpx.post(f"{http}/feedback", json={"event_id": pred["event_id"], "label": "next"}, headers=KEYED,
                    timeout=10, verify=cert)
    assert fb.status_code == 200 and fb.json()["accepted"]
    pair_run["event_id"] = pred["event_id"]


def test_grpc_takes_pairs(pair_run):
    from serving.proto import evolve_pb2, evolve_pb2_grpc

    meta = (("application", "pairs"), ("authorization", f"Bearer {KEY}"))  # the loop's Serve app
    with grpc.insecure_channel(pair_run["grpc"]) as channel:
        stub = evolve_pb2_grpc.EvolveFeedbackStub(channel)
        reply = wait_until(lambda: stub.Predict(evolve_pb2.PredictRequest(texts=[A], text_pairs=[B]), metadata=meta,
                                                timeout=30), 60, "the gRPC proxy")
        refused = {}
        for name, call, request in [
                ("Predict", stub.Predict, evolve_pb2.PredictRequest(texts=[A], text_pairs=[B])),
                ("Feedback", stub.Feedback, evolve_pb2.FeedbackRequest(event_id=reply.predictions[0].event_id,
                                                                      label="next"))]:
            with pytest.raises(grpc.RpcError) as info:  # no key: refused, though the host is loopback
                call(request, metadata=meta[:1], timeout=30)
            refused[name] = info.value.code()
        print(f"\n[pairs] gRPC without a key, serving.host 127.0.0.1: {refused}")
        assert set(refused.values()) == {grpc.StatusCode.UNAUTHENTICATED}
        assert len(reply.predictions) == 1 and reply.predictions[0].model_version >= 1
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(evolve_pb2.PredictRequest(texts=[A, B], text_pairs=[B]), metadata=meta, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text_pairs" in info.value.details()


def test_the_joined_row_has_both_texts_in_the_export_and_the_run_learned(pair_run, tmp_path):
    proc, run = pair_run["proc"], pair_run["run"]
    assert proc.wait(timeout_s=BUDGET_S + 240) == 0, proc.output[-3000:]
    out = tmp_path / "feedback.parquet"
    assert evolve(["replay", "export", str(run), "pairs", str(out)]) == 0  # the loop's feedback table
    rows = pq.read_table(out).to_pylist()
    ours = [r for r in rows if r["event_id"] == pair_run.get("event_id")]
    assert len(ours) == 1 and ours[0]["text"] == A and ours[0]["text_pair"] == B and ours[0]["label"] == 0, ours
    traffic = [r for r in rows if r["event_id"] != pair_run.get("event_id")]
    # the traffic actors sent pairs, over HTTPS to a certificate they trust through serving.tls.ca_file
    assert len(traffic) > 50 and all(r["text_pair"] for r in traffic)
    s = json.loads((run / "summary.json").read_text())["loops"]["pairs"]
    assert s["inputs"].startswith("text pairs") and s["chance_accuracy"] == round(1 / 3, 4)
    assert s["origin"]["encoder"] == "pretrained" and s["origin"]["inputs"] == "pairs"
    decisions = [p["decision"] for p in s["promotions"]]
    assert decisions[0] == "initial" and decisions[1:] == ["promote"] * (len(decisions) - 1), s["promotions"]
    assert len(decisions) >= 2 and s["learner_updates"] >= 5, s
