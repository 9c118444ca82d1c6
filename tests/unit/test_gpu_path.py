"""The GPU path's logic, checked where it can run: bf16 autocast for answers and online updates
(CPU autocast stands in for CUDA here), a bundle placed on a device, replica GPUs in config.
On a machine with CUDA the last test runs the same on the GPU (benchmarks/gpu_check.sh runs it)."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from core.config.serving import ServingSection
from core.models.classifier import from_encoder
from tests.unit.test_online_learner import LABELS, _labeled, _objective, encoder_files, reviews  # noqa: F401

CUDA = torch.cuda.is_available()


def _bundle(encoder_files):
    bundle = from_encoder(None, encoder_files, LABELS, max_len=32, seed=0)
    bundle.model.drop.p = 0.0
    return bundle


def test_placing_on_cpu_keeps_fp32_answers(encoder_files, reviews):
    bundle = _bundle(encoder_files)
    texts = [t for t, _ in reviews[:6]]
    before = bundle.predict_proba(texts)
    assert bundle.place("cpu").bf16 is False and bundle.device.type == "cpu"
    np.testing.assert_allclose(bundle.predict_proba(texts), before, rtol=1e-6, atol=1e-6)


def test_bf16_answers_stay_float32_probabilities_close_to_fp32(encoder_files, reviews):
    bundle = _bundle(encoder_files)
    texts = [t for t, _ in reviews[:8] + reviews[-8:]]
    fp32 = bundle.predict_proba(texts)
    bundle.bf16 = True  # what `place("cuda")` sets; CPU autocast runs the same code path
    bf16 = bundle.predict_proba(texts)
    assert bf16.dtype == np.float32 and np.allclose(bf16.sum(1), 1.0, atol=1e-5)
    assert np.abs(bf16 - fp32).max() < 0.05, np.abs(bf16 - fp32).max()


def test_a_cpu_learner_does_not_autocast_even_with_bf16_on(encoder_files):
    obj = _objective(encoder_files, bf16=True)
    assert obj.autocast is False and obj.bundle.bf16 is False


def test_an_autocast_learner_keeps_fp32_weights_and_still_learns(encoder_files, reviews):
    obj = _objective(encoder_files)
    obj.autocast = obj.bundle.bf16 = True  # as on a CUDA worker
    batch = _labeled(reviews[:8] + reviews[-8:])
    probs = obj.bundle.predict_proba(batch.text)
    before = float(-np.log(probs[np.arange(len(batch)), batch.label]).mean())
    for _ in range(25):
        m = obj.step(batch)
    probs = obj.bundle.predict_proba(batch.text)
    after = float(-np.log(probs[np.arange(len(batch)), batch.label]).mean())
    assert m["updates"] == 1 and np.isfinite(m["loss"])
    assert all(p.dtype == torch.float32 for p in obj.model.parameters())  # master weights stay fp32
    assert after < 0.5 * before, (before, after)


def test_replica_gpus_default_to_zero_and_refuse_negatives():
    assert ServingSection().replica_num_gpus == 0.0
    assert ServingSection(replica_num_gpus=0.25).replica_num_gpus == 0.25
    with pytest.raises(pydantic.ValidationError):
        ServingSection(replica_num_gpus=-1)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_on_cuda_a_placed_bundle_answers_in_bf16_like_fp32(encoder_files, reviews):
    bundle = _bundle(encoder_files)
    texts = [t for t, _ in reviews[:8] + reviews[-8:]]
    fp32 = bundle.predict_proba(texts)
    assert bundle.place("cuda").bf16 and bundle.device.type == "cuda"
    assert np.abs(bundle.predict_proba(texts) - fp32).max() < 0.05


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_on_cuda_bf16_generation_gives_log_probabilities_close_to_fp32():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import gpu_generate as gg

    from core.models.generator import Sampling, TransformersEngine

    texts, tok = gg.reviews_and_tokenizer(gg.PRESETS["tiny"])
    fp32 = gg.build_model(tok, gg.PRESETS["tiny"]).eval()
    engine = TransformersEngine(gg.build_model(tok, gg.PRESETS["tiny"]).to(torch.bfloat16), tok, "cuda")
    completions = engine.generate(gg.openings(texts, 4), Sampling(max_new_tokens=16, n=2, seed=0))
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    for c in (c for per in completions for c in per):
        ids = torch.tensor([c.prompt_ids + c.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(fp32(input_ids=ids).logits[0, :-1].float(), -1)
        expected = logp[len(c.prompt_ids) - 1:].gather(-1, ids[0, len(c.prompt_ids):, None]).squeeze(-1)
        assert torch.isfinite(torch.tensor(c.logprobs)).all()
        assert (torch.tensor(c.logprobs) - expected).abs().max() < 0.1
