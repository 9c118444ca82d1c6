"""benchmarks/gpu_generate.py on its tiny preset on the CPU: the prompts, the model, the learner's batch,
the FLOPs accounting and the JSON line gpu_check.sh reads (no timings are asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_generate as gg  # noqa: E402

GPU_CHECK_KEYS = ("params", "tokens_per_s_batched", "tokens_per_s_unbatched", "batched_over_unbatched",
                  "pg_step_s", "pg_mfu")


@pytest.fixture(scope="module")
def texts_and_tokenizer():
    return gg.reviews_and_tokenizer(gg.PRESETS["tiny"])


@pytest.fixture(scope="module")
def tiny_run():
    return gg.run("tiny", torch.device("cpu"))


def test_prompts_are_distinct_review_openings(texts_and_tokenizer):
    texts, _ = texts_and_tokenizer
    prompts = gg.openings(texts, 32)
    assert len(prompts) == len(set(prompts)) == 32
    assert all(len(p) == gg.OPENING_CHARS and not any(c.isspace() for c in p) for p in prompts)
    with pytest.raises(ValueError, match="distinct openings"):
        gg.openings(texts[:3], 10)


def test_matmul_weights_count_the_blocks_and_the_tied_output_layer(texts_and_tokenizer):
    _, tok = texts_and_tokenizer
    p = gg.PRESETS["tiny"]
    model = gg.build_model(tok, p)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied: stored once
    d = p.n_embd
    # per block: qkv d x 3d, attention out d x d, MLP d x 4d and 4d x d; then the output layer V x d
    assert gg.matmul_weights(model) == p.n_layer * 12 * d * d + len(tok) * d
    assert sum(x.numel() for x in model.parameters()) > gg.matmul_weights(model) - len(tok) * d


def test_pg_flops_and_mfu_on_a_known_case():
    # 4 forwards (policy forward + backward = 3, the reference's 1) of 2 N + 4 L d T
    assert gg.pg_flops_per_token(n_matmul=100, layers=2, width=4, seq_len=8) == 4 * (200 + 256)
    # 0.5 B matmul weights, 24 x 1280, 80 positions: 8 N dominates
    per_token = gg.pg_flops_per_token(500_000_000, 24, 1280, 80)
    assert per_token == 8 * 500_000_000 + 16 * 24 * 1280 * 80
    assert gg.mfu(flops=4e14, seconds=2.0, peak=1000.0) == pytest.approx(0.2)
    assert gg.mfu(4e14, 2.0, None) is None and gg.mfu(4e14, 0.0, 1000.0) is None


def test_the_tiny_run_gives_the_keys_gpu_check_reads_with_consistent_shapes(tiny_run):
    out, p = tiny_run, gg.PRESETS["tiny"]
    json.loads(json.dumps(out))  # one JSON object, nothing unserialisable
    assert all(k in out for k in GPU_CHECK_KEYS)
    assert out["device"] == "cpu" and out["generate_dtype"] == "float32" and out["pg_precision"] == "fp32"
    assert out["pg_mfu"] is None and out["peak_tflops"] is None  # no peak known for a CPU
    # every completion has at least one token and at most max_new_tokens
    completions = p.prompts * p.n
    assert completions <= out["batched_tokens"] <= completions * p.max_new_tokens
    assert p.unbatched_prompts <= out["unbatched_tokens"] <= p.unbatched_prompts * p.max_new_tokens
    assert out["batched_over_unbatched"] == pytest.approx(
        out["tokens_per_s_batched"] / out["tokens_per_s_unbatched"], rel=0.01)
    rows, width = out["pg_batch"]
    assert rows == completions and out["pg_tokens"] <= rows * width
    assert out["pg_updates"] == p.pg_steps and math.isfinite(out["pg_loss"]) and out["pg_kl"] >= 0
    per_token = gg.pg_flops_per_token(out["matmul_params"], p.n_layer, p.n_embd, width)
    assert out["pg_flops_per_step"] == out["pg_tokens"] * per_token


def test_the_learners_batch_is_laid_out_as_the_completion_source_lays_it_out(texts_and_tokenizer):
    from core.models.generator import Sampling, TransformersEngine

    texts, tok = texts_and_tokenizer
    engine = TransformersEngine(gg.build_model(tok, gg.PRESETS["tiny"]), tok)
    completions = engine.generate(gg.openings(texts, 3), Sampling(max_new_tokens=5, n=2, seed=0))
    batch = gg.pg_batch(completions, engine.pad_id)
    t = batch.tensors
    assert len(batch) == 6 and t["group"].tolist() == [0, 0, 1, 1, 2, 2]
    assert set(t["reward"].tolist()) <= {0.0, 1.0}
    for row, c in enumerate(c for per in completions for c in per):
        assert t["target_mask"][row].sum() == len(c.token_ids)
        assert t["old_logprobs"][row][t["target_mask"][row] > 0].tolist() == pytest.approx(c.logprobs, abs=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_asking_for_cuda_without_it_is_one_line_not_a_traceback():
    with pytest.raises(SystemExit) as exc:
        gg.main(["--device", "cuda", "--preset", "tiny"])
    assert "no CUDA device" in str(exc.value.code) and "\n" not in str(exc.value.code)
