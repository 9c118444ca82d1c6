"""The generator's loop through `evolve run configs/generate.yaml` on a real embedded cluster.

Version 1 is a small random GPT-2-shaped model built from config (no pretraining run here); the
simulated users ask for completions and rate them by the judge, the policy-gradient learner learns
from the joined completions, and the gate judges its candidates on held-out prompts within the
reward-hacking bounds.  Sized to check the wiring: a candidate every few updates, a small held-out
set.  Whether the reward rises by the issue's margin is the slow tier's and the benchmark's question.
"""

import json

import httpx
import pytest

from core.storage.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, serving, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 150


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generate")
    http_port = free_port()
    proc = CliProcess(
        "run", "configs/generate.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"cluster.dashboard_port={free_port()}",
        "--set", "cluster.include_dashboard=false", "--set", "run.progress_interval_s=2",
        "--set", "loops.generate.model.start_policy=null", "--set", "loops.generate.model.n_layer=1",
        "--set", "loops.generate.model.n_embd=32", "--set", "loops.generate.model.vocab_size=800",
        "--set", "loops.generate.prompts.max_heldout=24", "--set", "loops.generate.learning.batch_size=8",
        "--set", "loops.generate.learning.candidate_every=4", "--set", "loops.generate.serving.default_max_new_tokens=8",
        "--set", "loops.generate.users.max_new_tokens=8", "--set", "replay.tables.generate.min_size=16",
        env={"EVOLVE_CACHE_DIR": str(tmp / "cache")},  # the judge is made here, not in the user's cache
    )
    with serving(proc, timeout_s=240):
        yield {"proc": proc, "run": tmp / "run", "http": f"http://127.0.0.1:{http_port}/v1/generate"}


def test_a_completion_comes_with_its_log_probabilities_and_its_feedback_is_taken(gen_run):
    http = gen_run["http"]

    def generate():
        r = httpx.post(http, json={"prompt": "这家酒店", "n": 2, "max_new_tokens": 6}, timeout=30)
        return r.json() if r.status_code == 200 else None

    reply = wait_until(generate, 180, "the generator answering /v1/generate")
    first, second = reply["completions"]
    assert reply["model_version"] >= 1 and len(first["logprobs"]) == len(first["token_ids"]) >= 1
    assert all(lp <= 0 for lp in first["logprobs"])
    r = httpx.post(f"{http}/feedback", json={"event_id": first["event_id"], "better_than": second["event_id"]},
                   timeout=30)
    assert r.status_code == 200, r.text
    bad = httpx.post(http, json={"prompt": "", "max_new_tokens": 6}, timeout=30)
    assert bad.status_code == 422 and "prompt" in bad.json()["detail"]


def test_the_loop_learns_from_its_users_and_the_gate_judges_with_the_bounds(gen_run):
    proc, run = gen_run["proc"], gen_run["run"]
    assert proc.wait(timeout_s=BUDGET_S + 240) == 0, proc.output[-3000:]
    s = json.loads((run / "summary.json").read_text())["loops"]["generate"]
    assert s["origin"]["policy"] is None and s["initial_reward"] is not None
    assert s["completions"] > 50 and s["feedback"] > 30, s
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    updates = max((e.get("step", 0) for e in events if e.get("loop") == "generate" and e.get("event") == "learner"),
                  default=0)
    judged = [e for e in events if e.get("event") == "gate_decision" and e.get("version", 1) > 1]
    assert updates > 0 and judged, f"updates {updates}, candidates judged {len(judged)}\n{proc.output[-2000:]}"
    gate = PolicyRegistry(run / "registry", create=False).get("generate", judged[0]["version"]).gate
    stages = [st["stage"] for st in gate["stages"]]
    assert stages[0] == "heldout" and (judged[0]["decision"] == "refuse" or "bounds" in stages), gate
