"""The generation engine: shapes, log-probabilities against a manual forward pass, batching, storage."""

import math

import pytest
import torch

from core.data.corpus import review_texts
from core.models.generator import (Sampling, TransformersEngine, build_causal_lm, causal_lm_files,
                                   causal_lm_from_files)
from core.models.tokenizer import train_wordpiece

PROMPTS = ["这个酒店很好", "书不错", "电脑的屏幕太暗了，客服也不理人"]


@pytest.fixture(scope="module")
def engine():
    tok = train_wordpiece(review_texts()[::200][:300], vocab_size=600, min_frequency=1)
    return TransformersEngine(build_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=0), tok)


def _manual_logprobs(engine, prompt_ids, tokens, temperature=1.0, top_p=1.0):
    """log p of each token given everything before it, from one full forward pass (no cache, no padding)."""
    ids = torch.tensor([prompt_ids + tokens])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    out = []
    for step, token in enumerate(tokens):
        scores = logits[step] / temperature
        if top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p
            probs = torch.softmax(scores, -1)
            order = torch.argsort(probs, descending=True)
            keep = torch.cumsum(probs[order], 0) - probs[order] < top_p
            masked = torch.full_like(scores, -math.inf)
            masked[order[keep]] = scores[order[keep]]
            scores = masked
        out.append(float(torch.log_softmax(scores, -1)[token]))
    return out


def test_n_completions_per_prompt_with_one_logprob_per_token(engine):
    out = engine.generate(PROMPTS, Sampling(n=3, max_new_tokens=6, temperature=1.0, seed=1))
    assert [len(c) for c in out] == [3, 3, 3]
    for prompt, completions in zip(PROMPTS, out):
        for c in completions:
            assert c.prompt_ids == engine.prompt_ids(prompt)
            assert 1 <= len(c.token_ids) <= 6
            assert len(c.logprobs) == len(c.sampling_logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs + c.sampling_logprobs)
            assert c.finish == ("stop" if c.token_ids[-1] == engine.end_id else "length")
            assert isinstance(c.text, str)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_logprobs_match_a_manual_forward_pass(engine, temperature, top_p):
    """Both log-probabilities of each sampled token (model and sampling distribution) equal what a
    cache-free forward pass of the unpadded sequence gives, for every row of a left-padded batch."""
    out = engine.generate(PROMPTS, Sampling(n=2, max_new_tokens=8, temperature=temperature, top_p=top_p, seed=3))
    for completions in out:
        for c in completions:
            raw = _manual_logprobs(engine, c.prompt_ids, c.token_ids)
            drawn = _manual_logprobs(engine, c.prompt_ids, c.token_ids, temperature, top_p)
            assert c.logprobs == pytest.approx(raw, abs=1e-4)
            assert c.sampling_logprobs == pytest.approx(drawn, abs=1e-4)
    if temperature != 1.0:  # the two differ where the sampling distribution is not the model's
        assert any(c.logprobs != pytest.approx(c.sampling_logprobs, abs=1e-3) for cs in out for c in cs)


def test_greedy_batch_equals_one_prompt_at_a_time(engine):
    greedy = Sampling(max_new_tokens=10, temperature=0.0)
    batched = engine.generate(PROMPTS, greedy)
    for prompt, (together,) in zip(PROMPTS, batched):
        (alone,) = engine.generate([prompt], greedy)[0]
        assert together.token_ids == alone.token_ids
        assert together.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
        assert together.sampling_logprobs == [0.0] * len(together.token_ids)  # a greedy token's propensity is 1


def test_a_seed_repeats_a_sampled_batch(engine):
    sampling = Sampling(n=2, max_new_tokens=8, temperature=1.0, seed=7)
    first, second = engine.generate(PROMPTS, sampling), engine.generate(PROMPTS, sampling)
    assert [[c.token_ids for c in cs] for cs in first] == [[c.token_ids for c in cs] for cs in second]


def test_a_stored_version_generates_the_same(engine):
    weights, files = causal_lm_files(engine.model, engine.tokenizer)
    model, tok = causal_lm_from_files(weights, files)
    again = TransformersEngine(model, tok)
    greedy = Sampling(max_new_tokens=8, temperature=0.0)
    assert ([c.token_ids for c in again.generate(PROMPTS, greedy)[0]]
            == [c.token_ids for c in engine.generate(PROMPTS, greedy)[0]])


@pytest.mark.parametrize("bad", [dict(n=0), dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0),
                                 dict(top_p=1.5)])
def test_sampling_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        Sampling(**bad)
