"""`evolve run configs/clm.yaml` on real Ray, briefly: the causal LM trains on Ray Train to its
max_steps, its perplexity falls, it is published with both perplexities, loads back in one call,
and its continuations of the preset's prompts are in the run's output and events."""

import json

import pytest

from core.models.causal_lm import load_causal_lm
from core.storage.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.integration

STEPS = 40
# A model and corpus small enough that start-up dominates: this tests the plumbing and that the
# loss goes down, not how far (tests/slow/test_clm_learns.py does that).
TINY = [
    "--set", "loops.clm.corpus.max_texts=3000", "--set", "loops.clm.tokenizer.vocab_size=600",
    "--set", "loops.clm.model.num_layers=1", "--set", "loops.clm.model.hidden_size=32",
    "--set", "loops.clm.model.num_heads=2", "--set", "loops.clm.model.intermediate_size=64",
    "--set", "loops.clm.seq_len=32", "--set", "loops.clm.eval_sequences=32", "--set", "loops.clm.batch_size=16",
    "--set", "loops.clm.eval_every=20", "--set", "loops.clm.checkpoint_every=20", "--set", "loops.clm.warmup_steps=5",
    "--set", "loops.clm.report_every=5", "--set", f"loops.clm.max_steps={STEPS}", "--set", "run.progress_interval_s=1",
    "--set", "loops.clm.samples.max_new_tokens=8",
]


def test_a_short_clm_run_learns_publishes_and_prints_samples(tmp_path):
    run = tmp_path / "run"
    done = run_cli("run", "configs/clm.yaml", "--run-dir", str(run), *TINY,
                   "--set", f"cluster.dashboard_port={free_port()}", timeout_s=240)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    clm = summary["loops"]["clm"]
    assert summary["run"]["stopped_by"] == "loops_done" and clm["stopped_by"] == "max_steps", out[-3000:]
    assert clm["steps"] == STEPS and clm["published_version"] == 1
    assert clm["perplexity"] < clm["initial_perplexity"], clm
    assert clm["unigram_perplexity"] > 1 and clm["perplexity_ratio"] == pytest.approx(
        clm["perplexity"] / clm["unigram_perplexity"])
    steps = [p["step"] for p in clm["curve"]]
    assert steps == [0, 20, 40], steps

    # the progress line leads with both perplexities (cluster/progress_lines.py, the kind's figures)
    assert any(line.split()[:1] == ["clm"] and "ppl=" in line and "unigram=" in line for line in out.splitlines()), \
        out[-3000:]
    # the samples: one line per prompt of the preset, and the event
    prompts = load_prompts(run)
    for prompt in prompts:
        assert f"clm v1 sample: {prompt} | " in out, out[-3000:]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    samples = [e for e in events if e["loop"] == "clm" and e["event"] == "samples"]
    assert len(samples) == 1 and [s["prompt"] for s in samples[0]["samples"]] == prompts
    assert clm["samples"] == samples[0]["samples"]

    registry = PolicyRegistry(run / "registry")
    meta = registry.get("lm", 1)
    assert meta.metrics["perplexity"] == pytest.approx(clm["perplexity"])
    assert meta.metrics["unigram_perplexity"] == pytest.approx(clm["unigram_perplexity"])
    assert meta.info["objective"] == "clm" and meta.data_range["steps"] == [0, STEPS]
    model, tokenizer = load_causal_lm(run / "registry", "lm")  # the generator's one call
    assert model.config.model_type == "gpt2" and model.config.vocab_size == len(tokenizer)

    report = run_cli("report", str(run), timeout_s=120)
    assert report.returncode == 0, report.stderr
    assert (run / "clm_perplexity.png").is_file()


def load_prompts(run) -> list[str]:
    from core.config.loader import load_config

    return load_config(run / "config.yaml").loops["clm"].samples.prompts
