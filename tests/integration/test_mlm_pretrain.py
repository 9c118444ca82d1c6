"""`evolve pretrain` on real Ray: two DDP workers, stopped mid-way by Ctrl-C, resumed, published twice."""

import json
import signal

import pytest
from transformers import BertConfig, BertModel

from core.storage.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import CliProcess, run_cli

pytestmark = pytest.mark.integration

# A model and corpus small enough that start-up dominates: this tests the plumbing, not learning.
TINY = [
    "--set", "loops.mlm.corpus.max_texts=1500", "--set", "loops.mlm.tokenizer.vocab_size=600",
    "--set", "loops.mlm.model.num_layers=1", "--set", "loops.mlm.model.hidden_size=32", "--set", "loops.mlm.model.num_heads=2",
    "--set", "loops.mlm.model.intermediate_size=64", "--set", "loops.mlm.seq_len=32", "--set", "loops.mlm.eval_sequences=32",
    "--set", "loops.mlm.batch_size=8", "--set", "loops.mlm.eval_every=10", "--set", "loops.mlm.checkpoint_every=10",
    "--set", "loops.mlm.report_every=5", "--set", "run.progress_interval_s=1", "--set", "learner.num_workers=2",
    "--set", "cluster.include_dashboard=true",
]


def test_ddp_run_stopped_midway_resumes_from_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    first = CliProcess("pretrain", "configs/mlm.yaml", "--run-dir", str(run), *TINY,
                       "--set", f"cluster.dashboard_port={free_port()}")
    try:
        try:
            first.wait_for_line("ckpt=", timeout_s=150)  # a periodic checkpoint exists: stop mid-way
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{first.output[-3000:]}") from None
        first.proc.send_signal(signal.SIGINT)
        assert first.wait(timeout_s=90) == 0, first.output
    finally:
        first.kill()
    s1 = json.loads((run / "summary.json").read_text())
    mlm1 = s1["loops"]["mlm"]
    assert s1["run"]["stopped_by"] == "interrupt", first.output
    assert mlm1["steps"] >= 10 and mlm1["published_version"] == 1
    assert mlm1["initial_masked_accuracy"] < 0.01
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    learner = [e for e in events if e["loop"] == "mlm" and e["event"] == "learner"]
    assert learner and all(e["world_size"] == 2 for e in learner)  # DDP on two workers
    # the loop's progress line (cluster/progress_lines.py: one per loop, empty figures left out)
    assert any(line.split()[:1] == ["mlm"] and "step=" in line and "tok/s=" in line for line in first.lines), \
        first.output[-3000:]
    assert mlm1["stopped_by"] == "run_stopped"

    target = mlm1["steps"] + 10
    second = run_cli("pretrain", "configs/mlm.yaml", "--run-dir", str(run), *TINY,
                     "--set", f"cluster.dashboard_port={free_port()}", "--set", f"loops.mlm.max_steps={target}",
                     timeout_s=150)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resumed from the checkpoint at step {mlm1['steps']}" in second.stdout
    s2 = json.loads((run / "summary.json").read_text())
    mlm2 = s2["loops"]["mlm"]
    assert s2["run"]["stopped_by"] == "loops_done" and mlm2["stopped_by"] == "max_steps"
    assert mlm2["resumed_from_step"] == mlm1["steps"] and mlm2["steps"] == target
    assert mlm2["tokens"] > mlm1["tokens"]
    steps = [p["step"] for p in mlm2["curve"]]
    assert steps[0] == 0 and steps[-1] == target and steps == sorted(set(steps))  # one curve across both runs
    assert {"initial_masked_accuracy", "masked_accuracy", "perplexity", "tokens", "tokens_per_s", "curve"} <= set(mlm2)

    registry = PolicyRegistry(run / "registry")
    assert registry.versions("encoder") == [1, 2]
    v2 = registry.get("encoder", 2)
    assert v2.parent_version == 1 and v2.data_range["steps"] == [mlm1["steps"], target]
    loaded = registry.load("encoder", 2)
    assert {"tokenizer.json", "config.json", "mlm_head.safetensors"} <= set(loaded.files)
    config = BertConfig.from_dict(json.loads(loaded.files["config.json"]))
    BertModel(config, add_pooling_layer=False).load_state_dict(loaded.weights)  # the encoder fits exactly
