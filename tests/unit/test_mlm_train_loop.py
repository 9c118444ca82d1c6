"""The shared train loop without Ray: reports, checkpoints, stop flag, export, resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from learners.mlm import MLMObjective
from learners.objective import WorkerContext
from learners.train_loop import LOOP_FILE, POLICY_DIR, LoopHooks, LoopSpec, read_policy, run_loop
from tests.unit.test_mlm_objective import T, _objective, _patterned


class ListSource:
    def __init__(self, blocks, batch_size):
        self.blocks, self.batch_size = torch.from_numpy(blocks).long(), batch_size

    def batches(self, ctx, seed):
        i = 0
        while True:
            yield self.blocks[i : i + self.batch_size]
            i = (i + self.batch_size) % (len(self.blocks) - self.batch_size)


class Recorder:
    """LoopHooks that keep every checkpoint directory and post, and stop when told."""

    def __init__(self, tmp: Path, stop_at_post: int | None = None):
        self.tmp, self.posts, self.checkpoints, self.stop_at_post = tmp, [], [], stop_at_post

    def hooks(self) -> LoopHooks:
        return LoopHooks(report=self.report, broadcast_stop=lambda flag: flag, post=self.posts.append,
                         stop_requested=self.stop)

    def report(self, metrics, directory):
        if directory:
            keep = self.tmp / f"ckpt{len(self.checkpoints)}"
            shutil.copytree(directory, keep)
            self.checkpoints.append((metrics, keep))

    def stop(self):
        progress = [p for p in self.posts if p["kind"] == "progress"]
        return self.stop_at_post is not None and len(progress) >= self.stop_at_post


def _spec(**kw):
    obj = _objective(_patterned(16))
    return LoopSpec(objective_factory=MLMObjective, objective_config=obj.setup_, source=ListSource(_patterned(256), 8),
                    report_every=5, eval_every=10, checkpoint_every=10, **kw)


def test_runs_to_max_steps_with_checkpoints_curve_and_export(tmp_path):
    rec = Recorder(tmp_path)
    state = run_loop(_spec(max_steps=20), WorkerContext(), rec.hooks(), resume_dir=None)
    assert state.step == 20 and state.tokens == 20 * 8 * T
    assert [p["step"] for p in state.curve] == [0, 10, 20]
    assert rec.posts[0] == {"kind": "started", "step": 0}
    assert [m["step"] for m, _ in rec.checkpoints] == [10, 20, 20] and rec.checkpoints[-1][0]["final"]
    weights, files, meta = read_policy(rec.checkpoints[-1][1] / POLICY_DIR)
    assert "embeddings.word_embeddings.weight" in weights and "tokenizer.json" in files
    assert meta["step"] == 20 and "masked_accuracy" in meta["metrics"]
    progress = [p for p in rec.posts if p["kind"] == "progress"]
    assert progress and all(p["tokens_per_s"] > 0 for p in progress)
    assert {"loss", "accuracy", "lr", "total_tokens"} <= set(progress[-1])


def test_stop_flag_ends_early_and_still_exports(tmp_path):
    rec = Recorder(tmp_path, stop_at_post=2)
    state = run_loop(_spec(max_steps=1000), WorkerContext(), rec.hooks(), resume_dir=None)
    assert state.step == 10  # progress posted at 5 and 10; the stop is read at step 10
    assert (rec.checkpoints[-1][1] / POLICY_DIR / "weights.safetensors").is_file()


def test_resume_continues_the_step_counter_and_the_curve(tmp_path):
    first = Recorder(tmp_path / "a")
    run_loop(_spec(max_steps=10), WorkerContext(), first.hooks(), resume_dir=None)
    ckpt = first.checkpoints[-1][1]
    assert json.loads((ckpt / LOOP_FILE).read_text())["step"] == 10
    second = Recorder(tmp_path / "b")
    state = run_loop(_spec(max_steps=20), WorkerContext(), second.hooks(), resume_dir=str(ckpt))
    assert second.posts[0] == {"kind": "resumed", "step": 10, "tokens": 10 * 8 * T}
    assert state.step == 20 and state.resumes == 1 and state.tokens == 20 * 8 * T
    assert [p["step"] for p in state.curve] == [0, 10, 20]  # no second "step 0" evaluation
    assert all(p["kind"] != "eval" or p["step"] > 10 for p in second.posts)


def test_other_ranks_report_without_checkpoints(tmp_path):
    rec = Recorder(tmp_path)
    run_loop(_spec(max_steps=10), WorkerContext(rank=1, world_size=2), rec.hooks(), resume_dir=None)
    assert rec.checkpoints == [] and rec.posts == []  # rank 1 neither evaluates nor posts


def test_a_loop_that_knows_its_before_skips_the_step_0_evaluation(tmp_path):
    rec = Recorder(tmp_path)
    state = run_loop(_spec(max_steps=10, eval_at_start=False), WorkerContext(), rec.hooks(), resume_dir=None)
    assert [p["step"] for p in state.curve] == [10] and rec.posts[0]["kind"] == "started"
