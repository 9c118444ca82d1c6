"""A live feedback loop (`evolve run`, small model, candidates often) for the chaos tests."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import free_port
from tests.integration.helpers import CliProcess

BUDGET_S = 150  # start-up takes a good share on 2 cores; the kill comes once a first candidate is live


def start_feedback_run(run_dir: Path, *sets: str, budget_s: int = BUDGET_S) -> tuple[CliProcess, str]:
    http_port = free_port()
    args = [
        "run", "configs/sentiment.yaml", "--budget-s", str(budget_s), "--run-dir", str(run_dir),
        "--set", f"serving.http_port={http_port}", "--set", f"serving.grpc_port={free_port()}",
        # no dashboard: metrics are not under test, and on a loaded machine it can miss Ray's start-up deadline
        "--set", "cluster.include_dashboard=false", "--set", "run.progress_interval_s=2",
        "--set", "loops.sentiment.model={encoder_registry: null, vocab_size: 800, num_layers: 1, hidden_size: 64, "
                 "num_heads: 2, intermediate_size: 128, max_len: 32}",
        "--set", "loops.sentiment_mlm=null", "--set", "loops.sentiment.model.encoder_loop=null",
        "--set", "loops.sentiment.data.max_heldout=100",
        "--set", "loops.sentiment.learning.candidate_every=5", "--set", "loops.sentiment.learning.batch_size=16",
        "--set", "loops.sentiment.traffic.requests_per_s=10", "--set", "loops.sentiment.traffic.actor_num_cpus=0.1",
        # uniform, not fifo: a fifo table drops the rows the learner took, and the export must show every row
        "--set", "replay.tables.sentiment.sampler=uniform",
        "--set", "loops.sentiment.gate.tolerance=0.99", "--set", "loops.sentiment.gate.rollback_margin=1.0",
    ]
    for s in sets:
        args += ["--set", s]
    return CliProcess(*args), f"http://127.0.0.1:{http_port}"
