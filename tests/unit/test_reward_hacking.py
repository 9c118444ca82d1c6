"""What the generator's gate measures, piece by piece: repetition, KL, sequence-level OPE, paired scores,
and the teacher-forced log-probabilities of completions someone else sampled."""

import numpy as np
import pytest
import torch

from core.data.corpus import review_texts
from core.models.completion_logprobs import completion_logprobs
from core.models.generator import Sampling, TransformersEngine, build_causal_lm
from core.models.tokenizer import train_wordpiece
from core.stats.ope import compare_sequences
from core.stats.paired import compare
from core.stats.reward_hacking import behaviour, mean_kl, repetition_rate


def test_repetition_counts_ngrams_seen_before_in_the_same_completion():
    assert repetition_rate([[1, 2, 3, 4, 5]], n=3) == 0.0
    assert repetition_rate([[7, 7, 7, 7, 7]], n=3) == pytest.approx(2 / 3)  # 3 trigrams, 2 seen before
    assert repetition_rate([[1, 2, 1, 2, 1, 2]], n=2) == pytest.approx(3 / 5)
    # across completions nothing is a repeat: [1, 2, 3] twice is two fresh trigrams
    assert repetition_rate([[1, 2, 3], [1, 2, 3]], n=3) == 0.0
    assert repetition_rate([[1, 2]], n=3) == 0.0  # too short for a trigram


def test_kl_is_the_mean_per_token_log_ratio_and_behaviour_counts_tokens():
    assert mean_kl([[-1.0, -2.0], [-0.5]], [[-2.0, -2.0], [-1.5]]) == pytest.approx((1 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="one log-probability per token"):
        mean_kl([[-1.0, -2.0]], [[-1.0]])
    b = behaviour([[1, 2, 3, 4], [5, 6]], [[-1.0] * 4, [-1.0] * 2], None)
    assert (b.kl, b.length, b.tokens, b.completions) == (None, 3.0, 6, 2)


def test_sequence_ope_with_ratio_one_is_the_logged_mean_and_weights_are_cut():
    rng = np.random.default_rng(0)
    rewards = rng.uniform(size=200)
    a, b, d = compare_sequences(np.zeros(200), np.zeros(200), rewards, "snips", samples=200)
    assert a.value == pytest.approx(rewards.mean()) and a.low <= rewards.mean() <= a.high
    assert d.value == 0.0 and a.ess == pytest.approx(200)
    # one completion the target likes e^10 times more: uncut it is the estimate, cut at 5 it is not
    big = np.zeros(200)
    big[0] = 10.0
    uncut, _, _ = compare_sequences(big, np.zeros(200), rewards, "snips", samples=0)
    cut, _, _ = compare_sequences(big, np.zeros(200), rewards, "snips", max_weight=5.0, samples=0)
    assert abs(uncut.value - rewards[0]) < 0.01 and uncut.ess < 1.1
    assert cut.value == pytest.approx((5 * rewards[0] + rewards[1:].sum()) / 204)
    ips, _, _ = compare_sequences(np.full(200, -np.inf), np.zeros(200), rewards, "ips", samples=0)
    assert ips.value == 0.0  # a target that never draws the logged completions
    with pytest.raises(ValueError, match="ips or snips"):
        compare_sequences(np.zeros(3), np.zeros(3), np.ones(3), "dr")


def test_the_paired_test_on_scores_bootstraps_the_differences():
    rng = np.random.default_rng(1)
    live = rng.uniform(size=100)
    same = compare(live, live, test="bootstrap", tolerance=0.02)
    assert same.decision == "promote" and same.diff == 0.0 and (same.wins, same.losses) == (0, 0)
    worse = compare(np.clip(live - 0.2, 0, 1), live, test="bootstrap", tolerance=0.02)
    assert worse.decision == "refuse" and worse.diff < -0.1 and worse.ci[1] < -0.02
    with pytest.raises(ValueError, match="bootstrap"):
        compare(live, live, test="mcnemar")
    # right / wrong answers given as 0 / 1 floats are still counted as before
    flags = (live > 0.5).astype(float)
    assert compare(flags, flags).test.startswith("mcnemar")


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    tok = train_wordpiece(review_texts()[::400][:120], vocab_size=400, min_frequency=1)
    return TransformersEngine(build_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=0), tok)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8), (0.0, 1.0)])
def test_teacher_forced_logprobs_are_what_the_sampler_drew_with(engine, temperature, top_p):
    """A completion padded on the right, scored in one pass, gets the log-probabilities generate drew
    it with (left-padded, KV cache): both the model's and the sampling distribution's."""
    prompts = ["这个酒店很好", "书不错", "电脑的屏幕太暗了，客服也不理人"]
    drawn = [c for cs in engine.generate(prompts, Sampling(n=1 if temperature == 0 else 2, max_new_tokens=8, temperature=temperature,
                                                           top_p=top_p, seed=3)) for c in cs]
    pairs = [(c.prompt_ids, c.token_ids) for c in drawn]
    served = completion_logprobs(engine, pairs, temperature, top_p, batch=4)
    model = completion_logprobs(engine, pairs)
    for c, s, m in zip(drawn, served, model):
        np.testing.assert_allclose(s, c.sampling_logprobs, atol=1e-4)
        np.testing.assert_allclose(m, c.logprobs, atol=1e-4)
